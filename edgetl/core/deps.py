"""Lazy imports of optional heavy dependencies, with an error naming what to install."""

import importlib
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator, Optional

from edgetl.errors import DependencyError

# module name -> (pip requirement, edgetl extra that provides it)
_PROVIDERS = {
    "torch": ("torch", "train"),
    "torchvision": ("torchvision", "train"),
    "tensorrt": ("tensorrt", "trt"),
    "cuda": ("cuda-python", "trt"),
    "matplotlib": ("matplotlib", "plot"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise DependencyError saying which package/extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = _PROVIDERS.get(top, (top, None))
        hint = "pip install 'edgetl[{}]'".format(extra) if extra else "pip install {}".format(package)
        raise DependencyError(
            "this needs the '{}' package, which is not importable ({}); install it with: {}".format(package, exc, hint)
        ) from exc


@contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous count
    (unchanged where ``count`` is None or torch is not installed)."""
    try:
        torch = importlib.import_module("torch") if count else None
    except ImportError:
        torch = None
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
