"""``edgetl bench latency``: p50/p90/p99 latency and throughput of models on any backend, and a
regression gate that survives noisy CI machines.

Noise-robust method: every model is timed in rounds interleaved with a fixed reference workload
(a small deterministic conv net in ONNX Runtime, same threads). Per round, the model's fastest call
is divided by the reference's fastest call (the fastest calls are the ones least disturbed by other
load); the gate compares the median of those ratios with the baseline's, never raw milliseconds,
so a machine that is uniformly slower or busier today does not
fail the gate, while a model that got slower relative to the same yardstick does.
Torch-free at import (device side); Python 3.8 syntax.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetl.contracts.bundle import Bundle
from edgetl.contracts.engine_sidecar import sidecar_batch_range
from edgetl.contracts.formats import BACKENDS
from edgetl.contracts.schema import is_int, is_number, is_str, list_of, read_json, record
from edgetl.core.deps import torch_threads
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import text_table
from edgetl.diagnostics.machine import machine_info
from edgetl.errors import ConfigError, GateError
from edgetl.runtime.base import Runner
from edgetl.runtime.classifier import choose_backend
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.tensorrt import TrtRunner, load_sidecar
from edgetl.runtime.timing import time_interleaved
from edgetl.runtime.torch_runner import TorchRunner

log = logging.getLogger(__name__)
METHOD = (
    "latency: host wall-clock per call; 'relative': median over rounds of the model's fastest call divided "
    "by the fastest call of a fixed reference conv net (ONNX Runtime, same threads) timed in the same round"
)


MAX_REGRESSION_PCT = 15.0  # default allowed slowdown vs a baseline, percent


class RegressionError(GateError):
    """A model got slower than its baseline beyond the allowed regression (the CLI exits 3)."""


@dataclass(frozen=True)
class LatencyConfig:
    models: Sequence[str]
    backends: Sequence[str] = ("auto",)
    batches: Sequence[int] = (1, 8)
    warmup: int = 10
    iters: int = 50
    rounds: int = 5
    threads: Optional[int] = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("give at least one MODEL (an .onnx file, an .engine, a bundle or a run folder)")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ConfigError("unknown backend(s) {}; choose from {}".format(unknown, ", ".join(BACKENDS)))
        if min(self.batches) < 1 or self.warmup < 0 or self.iters < self.rounds or self.rounds < 1:
            raise ConfigError("need batch >= 1, warmup >= 0, rounds >= 1 and iters >= rounds")


@dataclass
class LatencyRow:
    model: str  # as given; baselines match rows by (file or folder name, backend, batch)
    backend: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    reference_p50_ms: float
    relative: float  # median over rounds of (model's fastest call / reference's fastest call)
    stages_ms: Optional[Dict[str, float]] = None  # CUDA: host-to-device / compute / device-to-host


@dataclass(frozen=True)
class Target:
    """One model on one backend: how to make its runner and what it takes."""

    model: str
    backend: str
    make_runner: Callable[[], Runner]
    static_batch: Optional[int]
    input_dtype: Any
    input_shape: Sequence[int]  # without the batch dimension
    batch_range: Optional[Tuple[int, int]] = None  # (min, max) of a TensorRT engine's profile, from its sidecar


def reference_onnx(path: Path) -> Path:
    """Write the fixed yardstick: 4 conv+relu layers on 3x112x112 with seeded weights, global pool."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels, nodes, inits = [3, 32, 64, 64, 128], [], []
    current = "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        weight = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32), "w%d" % i)
        inits.append(weight)
        nodes.append(
            helper.make_node(
                "Conv", [current, weight.name], ["c%d" % i], pads=[1, 1, 1, 1], strides=[2 if i % 2 == 0 else 1] * 2
            )
        )
        nodes.append(helper.make_node("Relu", ["c%d" % i], ["r%d" % i]))
        current = "r%d" % i
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        "edgetl_reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels[-1], 1, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def targets_for(
    model: str, backends: Sequence[str], device: str = "cpu", threads: Optional[int] = None
) -> List[Target]:
    """The (model, backend) pairs to time: a file is its own backend; a bundle/run gives one per backend."""
    path = Path(model)
    if path.suffix == ".onnx":
        return [_onnx_target(model, "onnx", path, None, device, threads)]
    if path.suffix == ".engine":
        return [_trt_target(model, path, None, None)]
    bundle = Bundle.load(path)
    targets = []
    for backend in backends:
        choice = choose_backend(bundle, backend)
        if choice.backend == "torch":
            size = bundle.preprocess.input_size
            run_dir = bundle.checkpoint_dir()
            assert run_dir is not None  # choose_backend picks torch only when the bundle has a checkpoint
            targets.append(Target(model, "torch", partial(TorchRunner, run_dir), None, np.float32, (3, size, size)))
            continue
        onnx_model = choice.model
        assert onnx_model is not None  # every backend but torch runs an ONNX model or an engine built from one
        if choice.backend == "trt":
            assert choice.engine is not None
            targets.append(
                _trt_target(model, bundle.root / choice.engine, bundle.root / onnx_model.file, onnx_model.batch)
            )
        else:
            path = bundle.root / onnx_model.file
            targets.append(
                _onnx_target(model, choice.backend, path, onnx_model.batch, choice.ort_device(device), threads)
            )
    return targets


def _trt_target(model: str, engine: Path, onnx_file: Optional[Path], batch: Optional[int]) -> Target:
    return Target(
        model,
        "trt",
        lambda: TrtRunner(engine, onnx_path=onnx_file),
        batch,
        np.float32,
        (),
        sidecar_batch_range(load_sidecar(engine)),
    )


def check_batches(targets: Sequence[Target], batches: Sequence[int]) -> None:
    """ConfigError before any timing when a batch lies outside an engine's optimisation profile (TensorRT
    rejects it; a static batch that differs is skipped instead)."""
    for target in targets:
        if target.batch_range is None:
            continue
        low, high = target.batch_range
        bad = [b for b in batches if not low <= b <= high and not (target.static_batch and b != target.static_batch)]
        if bad:
            raise ConfigError(
                "{} [trt] takes a batch of {} to {} (its engine's optimisation profile); --batch {} is "
                "outside it: rebuild with 'edgetl build-engine --min-batch/--max-batch'".format(
                    target.model, low, high, ",".join(str(b) for b in bad)
                )
            )


def _onnx_target(
    model: str, backend: str, path: Path, batch: Optional[int], device: str, threads: Optional[int]
) -> Target:
    return Target(model, backend, lambda: OnnxRuntimeRunner(path, device=device, threads=threads), batch, None, ())


def _feed(runner: Runner, target: Target, batch: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    name, meta = next(iter(runner.input_metadata().items()))
    dims = list(target.input_shape) or [d if isinstance(d, int) and d > 0 else 224 for d in meta.shape[1:]]
    dtype = np.dtype(target.input_dtype or meta.dtype)
    if dtype == np.uint8:
        return {name: rng.integers(0, 256, [batch] + dims, dtype=np.uint8)}
    return {name: rng.standard_normal([batch] + dims).astype(dtype)}


def bench_latency(config: LatencyConfig) -> Dict[str, Any]:
    """Time every (model, backend, batch); the report holds machine info, method and one row each."""
    uses_torch = any(b in ("auto", "torch") for b in config.backends)
    with torch_threads(config.threads if uses_torch else None):
        return _bench_latency(config)


def _bench_latency(config: LatencyConfig) -> Dict[str, Any]:
    rng = np.random.default_rng(0)
    rows, skipped = [], []
    targets = [t for model in config.models for t in targets_for(model, config.backends, config.device, config.threads)]
    check_batches(targets, config.batches)
    with tempfile.TemporaryDirectory(prefix="edgetl-ref-") as tmp:
        reference = OnnxRuntimeRunner(reference_onnx(Path(tmp) / "reference.onnx"), threads=config.threads, spin=False)
        with reference:
            reference_feed = {"x": rng.standard_normal((1, 3, 112, 112)).astype(np.float32)}
            for target in targets:
                with target.make_runner() as runner:
                    for batch in config.batches:
                        if target.static_batch and batch != target.static_batch:
                            skipped.append(
                                "{} [{}] batch {}: exported with a fixed batch of {}".format(
                                    target.model, target.backend, batch, target.static_batch
                                )
                            )
                            continue
                        feed = _feed(runner, target, batch, rng)
                        stats = time_interleaved(
                            lambda: runner.infer(feed),
                            lambda: reference.infer(reference_feed),
                            config.warmup,
                            config.iters,
                            config.rounds,
                        )
                        rows.append(
                            LatencyRow(
                                target.model,
                                target.backend,
                                batch,
                                images_per_s=batch * 1000.0 / stats["mean_ms"],
                                stages_ms=getattr(runner, "last_stages_ms", None),
                                **stats,
                            )
                        )
    for reason in skipped:
        log.info("skipped %s", reason)
    return {
        "machine": machine_info(config.threads),
        "method": METHOD,
        "config": {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(config).items()},
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
    }


def row_key(row: Dict[str, Any]) -> str:
    """How a row is matched against the baseline: the model's file or folder name, backend and batch
    (so a baseline recorded in another folder or on another machine still matches)."""
    return "{} [{}] batch {}".format(Path(row["model"]).name, row["backend"], row["batch"])


def compare_to_baseline(
    report: Dict[str, Any], baseline: Dict[str, Any], max_regression_pct: float
) -> List[Dict[str, Any]]:
    """Per row: the baseline's and today's relative time and the change in percent; ``ok`` is False where
    today's ratio exceeds the baseline's by more than ``max_regression_pct``. Rows new to the baseline pass,
    but a baseline that matches no row at all is a GateError: a gate that compares nothing would pass forever."""
    previous = {row_key(r): r for r in baseline.get("rows", [])}
    if report["rows"] and not any(row_key(row) in previous for row in report["rows"]):
        raise GateError(
            "the baseline matches none of the {} timed row(s) (it has: {}); record a new one with --json-out".format(
                len(report["rows"]), ", ".join(sorted(previous)) or "no rows"
            )
        )
    verdicts = []
    for row in report["rows"]:
        base = previous.get(row_key(row))
        change = None if base is None else (row["relative"] / base["relative"] - 1.0) * 100.0
        verdicts.append(
            {
                "key": row_key(row),
                "baseline_relative": None if base is None else base["relative"],
                "relative": row["relative"],
                "change_pct": change,
                "ok": change is None or change <= max_regression_pct,
            }
        )
    return verdicts


def fail_on_regressions(verdicts: Optional[List[Dict[str, Any]]], max_regression_pct: float) -> None:
    """Raise RegressionError naming every row that regressed beyond the threshold."""
    failed = [v for v in verdicts or [] if not v["ok"]]
    if failed:
        raise RegressionError(
            "{} slower than the baseline by more than {:g}%: {}".format(
                "a model got" if len(failed) == 1 else "{} models got".format(len(failed)),
                max_regression_pct,
                "; ".join("{} (+{:.1f}%)".format(v["key"], v["change_pct"]) for v in failed),
            )
        )


def format_latency(report: Dict[str, Any], verdicts: Optional[List[Dict[str, Any]]] = None) -> str:
    """The results table (plus the baseline comparison when there is one)."""
    headers = ["model", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "img/s", "vs reference"]
    rows = [
        [
            Path(r["model"]).name,
            r["backend"],
            r["batch"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["mean_ms"],
            r["images_per_s"],
            "{:.3f}x".format(r["relative"]),
        ]
        for r in report["rows"]
    ]
    lines = [text_table(headers, rows)]
    stages = [(row_key(r), r["stages_ms"]) for r in report["rows"] if r.get("stages_ms")]
    if stages:
        lines += [
            "",
            text_table(
                ["model", "h2d ms", "compute ms", "d2h ms"], [[k, s["h2d"], s["compute"], s["d2h"]] for k, s in stages]
            ),
        ]
    lines += ["skipped: " + reason for reason in report["skipped"]]
    if verdicts is not None:
        lines += [
            "",
            text_table(
                ["model", "baseline", "now", "change", "verdict"],
                [
                    [
                        v["key"],
                        "-" if v["baseline_relative"] is None else "{:.3f}x".format(v["baseline_relative"]),
                        "{:.3f}x".format(v["relative"]),
                        "new" if v["change_pct"] is None else "{:+.1f}%".format(v["change_pct"]),
                        "ok" if v["ok"] else "REGRESSED",
                    ]
                    for v in verdicts
                ],
            ),
        ]
    return "\n".join(lines)


def write_report(path: Path, report: Dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")


def read_report(path: Path) -> Dict[str, Any]:
    """A report written by ``--json-out`` (the baseline), checked: one line naming it and the key otherwise."""
    return dict(read_json(Path(path), BASELINE_SCHEMA, ConfigError))


_ROW = record({"model": is_str, "backend": is_str, "batch": is_int, "relative": is_number})
BASELINE_SCHEMA = record({"rows": list_of(_ROW)})
