"""CUDA's placement rules on a CPU-only machine: a placement checker for the CPU test suite.

Three pieces:

- ``OnDevice``: a CPU tensor that stands in for a tensor on the CUDA device. It reports
  ``device == cuda:0`` and ``is_cuda``, so code that allocates "where ``x`` is" (``device=x.device``,
  ``.to(x.device)``) or branches on ``x.is_cuda`` takes its CUDA path. Any op that mixes it with an
  ordinary (host) tensor of one or more dimensions raises ``PlacementError`` the way CUDA raises
  "Expected all tensors to be on the same device" (0-dim host tensors are scalars to CUDA kernels,
  indexing with host index tensors and ``copy_``/``.to`` across devices are allowed, as on CUDA).
  ``.cpu()`` / ``.to("cpu")`` return an ordinary tensor; ``.numpy()`` raises; pickling (``torch.save``)
  stores an ordinary tensor, as ``map_location="cpu"`` would load it.
- ``CudaRules``: a ``TorchFunctionMode`` that turns every move to / allocation on a CUDA device
  (``x.to("cuda")``, ``x.cuda()``, ``torch.arange(n, device=cuda)``, ``torch.tensor(..., device=...)``)
  into the CPU op with an ``OnDevice`` result, and (while active) makes ``Module.to(cuda)`` swap
  parameters and buffers for ``OnDevice`` ones instead of assigning ``.data`` (which would lose them).
- ``CudaRulesSetup``: the ``DeviceSetup`` of a checked run: device ``cuda:0`` (virtual), AMP off,
  ``cuda_paths`` on (raw decoded batches cropped on the device with roi_align, channels_last), no
  pinned memory and no nvjpeg (neither exists on the CPU).

Use ``with cuda_rules() as setup:`` (or the ``checked_setup`` fixture of the tests) and hand ``setup``
to the stage under test (``finetune(config, setup=setup)``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from edgetl.core.device import DeviceSetup

DEVICE = torch.device("cuda", 0)  # what OnDevice tensors and the checked setup report
HOST = torch.device("cpu")


class PlacementError(RuntimeError):
    """An op mixed device and host tensors: it would crash on a GPU."""


def _is_host_tensor(value: Any) -> bool:
    # CUDA kernels accept 0-dim CPU tensors as scalars, so those do not count as a mix.
    return isinstance(value, torch.Tensor) and not isinstance(value, OnDevice) and value.dim() > 0


def _is_cuda(value: Any) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, str) and value.split(":")[0] == "cuda"


def _is_host_device(value: Any) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cpu"
    return isinstance(value, str) and value == "cpu"


def _plain(value: Any) -> Any:
    """``value`` as an ordinary tensor (tags removed), without going through __torch_function__."""
    if not isinstance(value, OnDevice):
        return value
    with torch._C.DisableTorchFunctionSubclass():
        return value.as_subclass(torch.Tensor)


def _tag(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, OnDevice):
        with torch._C.DisableTorchFunctionSubclass():
            return value.as_subclass(OnDevice)
    return value


# Ops that take tensors on both sides by design (on CUDA too): copies across devices, and indexing a
# device tensor with host index tensors (advanced indexing moves them to the device).
_CROSS_DEVICE_OK = {
    torch.Tensor.copy_,
    torch.Tensor.__getitem__,
    torch.Tensor.__setitem__,
    torch.Tensor.to,
    torch.Tensor.new_tensor,
    torch.Tensor.module_load,  # load_state_dict copies host tensors into device parameters
    torch._has_compatible_shallow_copy_type,  # Module._apply's bookkeeping, not an op
}


class OnDevice(torch.Tensor):
    """A CPU tensor that behaves, for placement, like one on the CUDA device."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return DEVICE

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _plain(self).__reduce_ex__(protocol)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _moves_to_host(args, kwargs)):
            with torch._C.DisableTorchFunctionSubclass():
                return _plain(func(*args, **kwargs))
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise PlacementError("can't convert a device tensor to numpy (call .cpu() first)")
        flat, spec = tree_flatten((args, kwargs))
        if any(_is_cuda(v) for v in flat):  # e.g. x.to(x.device), torch.zeros_like(x, device=x.device)
            args, kwargs = tree_unflatten([HOST if _is_cuda(v) else v for v in flat], spec)
        if func not in _CROSS_DEVICE_OK:
            if any(isinstance(v, OnDevice) for v in flat) and any(_is_host_tensor(v) for v in flat):
                raise PlacementError(
                    "Expected all tensors to be on the same device ({} mixes device and host tensors)".format(
                        getattr(func, "__name__", func)
                    )
                )
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        return tree_map(_tag, result)


def _moves_to_host(args: Any, kwargs: Any) -> bool:
    """``Tensor.to(...)`` with a CPU device (or a host tensor as the template)."""
    targets = list(args[1:]) + [kwargs.get("device")]
    return any(_is_host_device(v) for v in targets) or any(
        isinstance(v, torch.Tensor) and not isinstance(v, OnDevice) for v in args[1:2]
    )


def on_device(tensor: torch.Tensor) -> OnDevice:
    """``tensor`` as if it had been moved to the CUDA device."""
    return _tag(tensor)


class CudaRules(TorchFunctionMode):
    """Runs torch calls that target a CUDA device on the CPU and tags their results ``OnDevice``."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return _tag(_plain(args[0]).clone() if kwargs.get("copy") else _plain(args[0]))
        flat, spec = tree_flatten((args, kwargs))
        if not any(_is_cuda(v) for v in flat):
            return func(*args, **kwargs)
        if func is torch._C._nn._parse_to:  # Module.to reads its target here; the moves come after
            return func(*args, **kwargs)
        args, kwargs = tree_unflatten([HOST if _is_cuda(v) else v for v in flat], spec)
        if func is torch.Tensor.to:  # a move of a host tensor (or a no-op on a device tensor)
            args = (_plain(args[0]),) + tuple(args[1:])
        return tree_map(_tag, func(*args, **kwargs))


@dataclass(frozen=True)
class CudaRulesSetup(DeviceSetup):
    """The training device of a checked run: a virtual ``cuda:0`` whose tensors are ``OnDevice``."""

    @classmethod
    def checked(cls) -> "CudaRulesSetup":
        return cls(DEVICE, False, True)

    @property
    def pin_memory(self) -> bool:
        return False  # no pinned memory without a CUDA runtime

    @property
    def decode_device(self) -> Optional[torch.device]:
        return None  # nvjpeg needs the real GPU: the decoded cache is built with PIL


@contextlib.contextmanager
def cuda_rules() -> Iterator[CudaRulesSetup]:
    """While active: CUDA placement rules on the CPU; yields the checked run's ``DeviceSetup``."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with CudaRules():
            yield CudaRulesSetup.checked()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
