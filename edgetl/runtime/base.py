"""The one runner shape every backend has (after Polygraphy): ``activate`` / ``infer(feed) ->
outputs`` / ``deactivate``, also as a context manager, with the feed checked against the model's
input metadata; plus batching and softmax helpers shared by all backends. Python 3.8, torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, TypeVar

import numpy as np

from edgetl.errors import ConfigError

RunnerT = TypeVar("RunnerT", bound="Runner")


@dataclass(frozen=True)
class TensorMeta:
    shape: Tuple[Any, ...]  # ints; None or a name for dynamic dimensions
    dtype: Any  # numpy dtype


class Runner:
    """``activate`` / ``infer(feed) -> outputs`` / ``deactivate``, also as a context manager.

    ``infer`` takes and returns ``{tensor name: ndarray}`` and checks the feed against
    ``input_metadata()`` first, so every backend fails the same clear way on a wrong input."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def __enter__(self: RunnerT) -> RunnerT:
        self.activate()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def input_metadata(self) -> Dict[str, TensorMeta]:
        raise NotImplementedError

    def batch_range(self) -> Optional[Tuple[int, int]]:
        """(min, max) batch the active model accepts when the backend limits it (TensorRT profiles); None: any."""
        return None

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError("{} is not active: use it as a context manager or call activate()".format(self.name))
        check_feed(feed, self.input_metadata())
        return self._infer(feed)

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def check_feed(feed: Dict[str, np.ndarray], metadata: Dict[str, TensorMeta]) -> None:
    """ConfigError if the feed's names, dtypes, ranks or fixed dimensions differ from the model's."""
    if set(feed) != set(metadata):
        raise ConfigError("the model takes inputs {}, got {}".format(sorted(metadata), sorted(feed)))
    for name, meta in metadata.items():
        array = feed[name]
        if np.dtype(array.dtype) != np.dtype(meta.dtype):
            raise ConfigError("input {!r} must be {}, got {}".format(name, np.dtype(meta.dtype), array.dtype))
        fixed = [(i, d) for i, d in enumerate(meta.shape) if isinstance(d, int) and d >= 0]
        if array.ndim != len(meta.shape) or any(array.shape[i] != d for i, d in fixed):
            raise ConfigError("input {!r} must have shape {}, got {}".format(name, meta.shape, array.shape))


def infer_batched(
    runner: Runner, input_name: str, array: np.ndarray, batch: Optional[int], chunk: int = 16
) -> np.ndarray:
    """Run ``array`` through a single-input, single-output runner in chunks that fit its batch limits
    (a static ``batch``, else ``runner.batch_range()``): chunks of at most the maximum, a short last
    chunk zero-padded up to the minimum, and the padded rows dropped from the result."""
    low, high = (batch, batch) if batch else (runner.batch_range() or (1, chunk))
    step = max(low, min(chunk, high))
    outputs = []
    for start in range(0, len(array), step):
        part = array[start : start + step]
        if len(part) < low:
            part = np.concatenate([part, np.zeros((low - len(part),) + part.shape[1:], part.dtype)])
        result = runner.infer({input_name: np.ascontiguousarray(part)})
        outputs.append(next(iter(result.values()))[: len(array) - start])
    return np.concatenate(outputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
