"""Plumbing every other package may use: optional-dependency imports (``deps``), atomic file
writes and hashing (``fileio``), terminal tables (``tables``) and the training-device setup
(``device``). Imports only ``edgetl.errors`` and the standard library/numpy; torch only lazily,
inside ``device``'s functions."""
