"""The training device, decided once per run: which device, AMP, memory format, cudnn autotuning,
and how many loader workers. Every workstation stage takes a ``DeviceSetup`` instead of
re-deriving these choices. torch is imported lazily so the device side never pays for it."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from edgetl.core.deps import require
from edgetl.core.world import ProcessRole
from edgetl.errors import ConfigError

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or a scheduler's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(processes_on_node: int = 1) -> int:
    """DataLoader workers for ``--workers auto``: this process's share of the usable cores (the cores divided
    by the processes of a distributed run on this node), at least 1, at most 8."""
    return max(1, min(MAX_AUTO_WORKERS, usable_cores() // processes_on_node))


def resolve_workers(workers: Optional[int], processes_on_node: int = 1) -> int:
    """``None`` (``--workers auto``) -> :func:`auto_workers`; a given count is kept (it is per process)."""
    return auto_workers(processes_on_node) if workers is None else workers


def total_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


_DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def check_device_name(name: str) -> None:
    """ConfigError unless ``name`` is a torch ``--device`` edgetl trains on: auto, cpu, cuda or cuda:N (torch-free:
    the configs check it before any work, instead of torch's multi-line message when the device is made)."""
    if not isinstance(name, str) or not _DEVICE_NAME.match(name):
        raise ConfigError.about(f"{{device}} must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a one-line error."""
    check_device_name(name)
    torch = require("torch")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device {} asked for CUDA, but no CUDA device is available".format(name))
    return device


def check_process_devices(option: str, device: Any, processes_on_node: int) -> None:
    """On CUDA, each process of a distributed run takes the GPU of its local rank: ``--device`` must not name
    one GPU, and the node needs a GPU per process."""
    if device.type != "cuda" or processes_on_node == 1:
        return
    if device.index is not None:
        raise ConfigError(
            "--device {} names one GPU, but each process of a distributed run uses the GPU of its local rank: "
            "use --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs".format(option)
        )
    count = require("torch").cuda.device_count()
    if processes_on_node > count:
        raise ConfigError(
            "{} processes per node need {} GPUs; this node has {}".format(processes_on_node, processes_on_node, count)
        )


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how a run computes. ``cuda_paths`` selects the CUDA code paths (raw decoded batches
    cropped on the device, pinned memory, channels_last); it is ``device.type == "cuda"`` except in
    tests, which run those paths on the CPU under a placement checker."""

    device: Any
    use_amp: bool
    cuda_paths: bool

    @classmethod
    def create(
        cls, device: str = "auto", amp: Optional[bool] = None, role: Optional[ProcessRole] = None
    ) -> "DeviceSetup":
        """Resolve ``--device``/``--amp`` (AMP defaults to on for CUDA) and switch on cudnn autotuning.

        ``role``: a process of a distributed run, which on CUDA takes the GPU of its local rank (and makes it
        the current device)."""
        torch_device = resolve_device(device)
        if role is not None and role.distributed and torch_device.type == "cuda":
            check_process_devices(device, torch_device, role.local_world_size)
            require("torch").cuda.set_device(role.local_rank)
            torch_device = require("torch").device("cuda", role.local_rank)
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
