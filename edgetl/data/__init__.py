"""Workstation side: images in. Class folders and splits (``folders``), seeded sampling
(``sampling``), the demo dataset (``demo``), the decoded-image cache (``decoded_cache``), batch
augmentation (``augment``), the training input pipelines (``pipelines``) and the frozen-base
feature cache (``feature_cache``). Imports ``edgetl.contracts`` and below; torch where needed."""
