"""Benchmarks behind ``edgetl bench``: ``latency`` (device side: torch-free, Python 3.8) and
``machine`` info, ``data`` (input pipelines vs the model's step) and ``variants`` (train, export
and time each transfer strategy; ``variants_report`` writes its tables and plot). Imports every
lower package."""
