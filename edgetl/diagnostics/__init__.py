"""Diagnostics: the machine, the Jetson's clocks, `edgetl doctor` and the GPU self-check."""
