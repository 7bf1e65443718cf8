"""What every benchmark result records about the machine it ran on, so a figure can be read (and a
latency gate trusted) only beside the hardware and package versions that produced it. Device side."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any, Dict, Optional

from edgetl.core.cpu import cpu_isa, isa_flags_of_interest
from edgetl.diagnostics.jetson import jetson_summary, read_jetson


def machine_info(threads: Optional[int]) -> Dict[str, Any]:
    """Host, Python and package versions recorded with every result."""
    versions = {}
    for package in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": cpu_isa(),  # INT8 results depend on it (edgetl.core.cpu)
        "cpu_isa_flags": isa_flags_of_interest(),
        "threads": threads,
        "python": platform.python_version(),
        "packages": versions,
    }
    jetson = jetson_summary(read_jetson())
    if jetson is not None:  # L4T/JetPack, power mode and jetson_clocks: latency on a Jetson depends on them
        info["jetson"] = {
            key: jetson[key] for key in ("l4t", "jetpack", "jetpack_tensorrt", "power_mode", "jetson_clocks_active")
        }
    return info
