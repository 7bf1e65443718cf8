"""CUDA's placement rule on a CPU-only machine: ``OnDevice`` tensors stand in for tensors on the
training device, and any op that mixes them with ordinary (host) tensors fails the way CUDA does
("Expected all tensors to be on the same device"). ``.cpu()`` returns an ordinary tensor."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map


class PlacementError(RuntimeError):
    """An op mixed device and host tensors: it would crash on a GPU."""


def _is_host_tensor(value: Any) -> bool:
    # CUDA kernels accept 0-dim CPU tensors as scalars, so those do not count as a mix.
    return isinstance(value, torch.Tensor) and not isinstance(value, OnDevice) and value.dim() > 0


class OnDevice(torch.Tensor):
    """A CPU tensor that behaves, for placement, like one on the CUDA device."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        if func is torch.Tensor.numpy:
            raise PlacementError("can't convert a device tensor to numpy (call .cpu() first)")
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(v, OnDevice) for v in flat) and any(_is_host_tensor(v) for v in flat):
            raise PlacementError(
                "Expected all tensors to be on the same device ({} mixes device and host tensors)".format(
                    getattr(func, "__name__", func)
                )
            )
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        return tree_map(lambda v: v.as_subclass(OnDevice) if isinstance(v, torch.Tensor) else v, result)


def on_device(tensor: torch.Tensor) -> OnDevice:
    """``tensor`` as if it had been moved to the CUDA device."""
    return tensor.as_subclass(OnDevice)
