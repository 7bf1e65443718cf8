"""What every benchmark result records about the machine it ran on, so a figure can be read (and a
latency gate trusted) only beside the hardware and package versions that produced it. Device side."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any, Dict, Optional


def machine_info(threads: Optional[int]) -> Dict[str, Any]:
    """Host, Python and package versions recorded with every result."""
    versions = {}
    for package in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "packages": versions,
    }
