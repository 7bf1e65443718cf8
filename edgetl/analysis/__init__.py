"""Workstation side: understanding data and models. Penultimate-layer embeddings
(``embeddings``), the size x similarity rule (``rule``), ``advise`` and its ``pilot``,
``inspection`` (filters, activations, neighbours) and PNG ``contact_sheets``. Imports
``edgetl.train.loop`` and below."""
