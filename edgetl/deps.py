"""Lazy imports of optional heavy dependencies, with an error naming what to install."""

import importlib
from types import ModuleType

from .errors import DependencyError

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
            "this needs the '{}' package, which is not importable ({}); install it with: {}".format(
                package, exc, hint
            )
        ) from exc
