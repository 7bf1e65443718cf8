"""The training device, decided once per run: which device, AMP, memory format, cudnn autotuning,
and how many loader workers. Every workstation stage takes a ``DeviceSetup`` instead of
re-deriving these choices. torch is imported lazily so the device side never pays for it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

from edgetl.core.deps import require
from edgetl.errors import ConfigError

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """DataLoader workers for ``--workers auto``: the usable cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores))


def resolve_workers(workers: Optional[int]) -> int:
    """``None`` (``--workers auto``) -> :func:`auto_workers`; a given count is kept."""
    return auto_workers() if workers is None else workers


def total_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a one-line error."""
    torch = require("torch")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device {} asked for CUDA, but no CUDA device is available".format(name))
    return device


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how a run computes. ``cuda_paths`` selects the CUDA code paths (raw decoded batches
    cropped on the device, pinned memory, channels_last); it is ``device.type == "cuda"`` except in
    tests, which run those paths on the CPU under a placement checker."""

    device: Any
    use_amp: bool
    cuda_paths: bool

    @classmethod
    def create(cls, device: str = "auto", amp: Optional[bool] = None) -> "DeviceSetup":
        """Resolve ``--device``/``--amp`` (AMP defaults to on for CUDA) and switch on cudnn autotuning."""
        torch_device = resolve_device(device)
        on_cuda = torch_device.type == "cuda"
        use_amp = on_cuda if amp is None else amp
        if use_amp and not on_cuda:
            raise ConfigError("--amp needs a CUDA device; this run is on {} (use --no-amp)".format(torch_device))
        if on_cuda:
            require("torch").backends.cudnn.benchmark = True
        return cls(torch_device, use_amp, on_cuda)

    @property
    def memory_format(self) -> Any:
        torch = require("torch")
        return torch.channels_last if self.cuda_paths else torch.contiguous_format

    @property
    def pin_memory(self) -> bool:
        return self.cuda_paths and self.device.type == "cuda"

    @property
    def decode_device(self) -> Any:
        """Where the decoded-image cache decodes plain JPEGs: the CUDA device (nvjpeg), or ``None`` (PIL)."""
        return self.device if self.device.type == "cuda" else None

    def to_device(self, tensor: Any) -> Any:
        """A host tensor on the training device (non-blocking from pinned memory)."""
        return tensor.to(self.device, non_blocking=True)

    def module_to_device(self, module: Any) -> Any:
        """``module`` (parameters and buffers) on the training device in the run's memory format."""
        return module.to(self.device, memory_format=self.memory_format)

    def describe(self) -> str:
        if self.device.type == "cuda":
            return "training on {} (AMP {}, channels_last, cudnn.benchmark)".format(
                self.device, "on" if self.use_amp else "off"
            )
        return "training on CPU (no CUDA device): AMP, channels_last and cudnn.benchmark are off"
