"""Latency measured side by side: a model timed in rounds interleaved with a reference call, so
their ratio survives a machine that is slower or busier today (``edgetl bench latency``, the export's
INT8 fallback cost). Torch-free; Python 3.8 syntax."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import numpy as np


def _time_calls(call: Callable[[], Any], count: int) -> List[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def time_interleaved(
    model_call: Callable[[], Any], reference_call: Callable[[], Any], warmup: int, iters: int, rounds: int
) -> Dict[str, Any]:
    """Time ``model_call`` in rounds alternating with ``reference_call``; latency stats and the ratio."""
    _time_calls(model_call, warmup)
    _time_calls(reference_call, max(1, warmup // 2))
    model_times, reference_times, ratios = [], [], []
    per_round = iters // rounds
    for _ in range(rounds):
        reference = _time_calls(reference_call, per_round)
        times = _time_calls(model_call, per_round)
        model_times += times
        reference_times += reference
        ratios.append(float(min(times) / min(reference)))  # fastest calls: least touched by other load
    times = np.asarray(model_times)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
        "reference_p50_ms": float(np.median(reference_times)),
        "relative": float(np.median(ratios)),
    }
