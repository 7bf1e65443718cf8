"""Accuracy-aware INT8 fallback: when the INT8 model misses the accuracy gate, keep its most
quantization-sensitive layers in fp32 — the fewest that make the gate pass, up to a cap.

Ranking is one pass with onnxruntime's ``qdq_loss_debug``: the fp32 and the Q/DQ model run on
calibration images (never the images the gate judges) with every intermediate tensor as an output.
A layer's score is the quantization noise it adds: the noise-to-signal ratio of its output against
fp32, minus the largest of its inputs'. Keeping a layer in fp32 removes the Q/DQ on its inputs and
weights (edgetl.export.quantize.feed_fp32), which is what that difference measures. The search
re-quantizes (calibration ranges are reused) with the top 1, 2, 4, ... layers kept in fp32, then
bisects to the fewest that pass; the gate, not the ranking, decides.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnxruntime.quantization import qdq_loss_debug

from edgetl.export.quantize import DQ_OP, Q_OP, quantized_source
from edgetl.export.recover_options import SKIPPED
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.timing import time_interleaved

RANKING_CHUNK = 8  # calibration batches per activation pass: bounds the memory of every saved tensor


@dataclass
class LayerScore:
    """How much quantization noise one layer adds (noise-to-signal ratios against fp32)."""

    node: str
    op_type: str
    added_noise: float  # its output's ratio minus the largest of its inputs'
    output_noise: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def rank_layers(fp32_path: Path, int8_path: Path, reader: Any, batches: int) -> List[LayerScore]:
    """The quantized layers of ``int8_path``, most sensitive first, scored on the first ``batches``
    batches of ``reader`` (an ``ImageCalibrationReader``)."""
    int8_model = onnx.load(str(int8_path))
    fp32_outputs = {node.name: node.output[0] for node in onnx.load(str(fp32_path)).graph.node if node.name}
    # each layer's output in both models, matched by node: onnxruntime folds a Relu/Clip into the
    # layer before it, which then produces the activation's tensor name with unclipped values
    pairs = {n.name: (n.output[0], fp32_outputs[n.name]) for n in int8_model.graph.node if n.name in fp32_outputs}
    batches = max(1, min(batches, len(reader)))
    signal: Dict[str, float] = {}
    noise: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-rank-") as tmp:
        augmented = []
        for name, path in (("fp32", fp32_path), ("int8", int8_path)):
            augmented.append(str(Path(tmp) / (name + ".onnx")))
            qdq_loss_debug.modify_model_output_intermediate_tensors(str(path), augmented[-1])
        for start in range(0, batches, RANKING_CHUNK):
            acts = []
            for model in augmented:
                reader.set_range(start, min(start + RANKING_CHUNK, batches))
                acts.append(qdq_loss_debug.collect_activations(model, reader))
            float_acts, int8_acts = acts
            for node, (int8_tensor, fp32_tensor) in pairs.items():
                if int8_tensor in int8_acts and fp32_tensor in float_acts:
                    reference = np.concatenate(float_acts[fp32_tensor]).astype(np.float64)
                    candidate = np.concatenate(int8_acts[int8_tensor]).astype(np.float64)
                    signal[node] = signal.get(node, 0.0) + float(np.square(reference).sum())
                    noise[node] = noise.get(node, 0.0) + float(np.square(candidate - reference).sum())
    reader.set_range(0, len(reader))

    def ratio(node: Optional[str]) -> float:  # a graph input (no producing node) has no noise
        return noise.get(node, 0.0) / max(signal.get(node, 0.0), 1e-30) if node else 0.0

    producer = {out: node.name for node in int8_model.graph.node for out in node.output}
    scores = []
    for node, inputs in quantized_nodes(int8_model):
        out = ratio(node.name)
        added = out - max((ratio(producer.get(t)) for t in inputs), default=0.0)
        scores.append(LayerScore(node.name, node.op_type, added, out))
    return sorted(scores, key=lambda s: -s.added_noise)


def quantized_nodes(model: onnx.ModelProto) -> List[Tuple[onnx.NodeProto, List[str]]]:
    """Each named node of a Q/DQ model that reads a dequantized activation or weight, with the fp32
    names of its activation inputs (the tensors before their QuantizeLinear)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type in (Q_OP, DQ_OP) or not node.name:
            continue
        if any(t in producer and producer[t].op_type == DQ_OP for t in node.input):
            sources = (quantized_source(producer, t) for t in node.input)
            found.append((node, [t for t in sources if t is not None]))
    return found


@dataclass
class FallbackAttempt:
    """The gate's verdict on the INT8 model with the top ``layers`` ranked layers kept in fp32."""

    layers: int
    disagreements: int
    upper_bound_points: float
    verdict: str


@dataclass
class FallbackSearch:
    """What the search tried and found; ``kept_fp32`` is empty when no number of layers up to the cap passed."""

    max_layers: int
    ranking: List[LayerScore]
    attempts: List[FallbackAttempt] = field(default_factory=list)
    kept_fp32: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.kept_fp32)

    def to_dict(self, shown: int = 10) -> Dict[str, Any]:
        return {
            "status": "passed" if self.passed else "failed",
            "max_layers": self.max_layers,
            "kept_fp32": self.kept_fp32,
            "attempts": [asdict(a) for a in self.attempts],
            "ranking_top": [s.to_dict() for s in self.ranking[:shown]],
            "ranked_layers": len(self.ranking),
        }


def search_fallback(
    ranking: Sequence[LayerScore], attempt: Callable[[List[str]], FallbackAttempt], max_layers: int
) -> FallbackSearch:
    """The fewest top-ranked layers (at most ``max_layers``) whose fp32 fallback passes the gate:
    1, 2, 4, ... until one passes, then bisection (more fp32 layers are assumed never to hurt).
    ``attempt(nodes)`` quantizes with ``nodes`` kept in fp32 and judges the result; the plain model
    (no layer kept) is known to have failed."""
    search = FallbackSearch(max_layers, list(ranking))
    cap = min(max_layers, len(ranking))
    names = [s.node for s in ranking]
    verdicts: Dict[int, bool] = {}

    def passes(count: int) -> bool:
        if count not in verdicts:
            result = attempt(names[:count])
            search.attempts.append(result)
            verdicts[count] = result.verdict == "passed"
        return verdicts[count]

    low, count = 0, 1
    high: Optional[int] = None
    while count <= cap:
        if passes(count):
            high = count
            break
        low = count
        count = cap if count < cap < 2 * count else 2 * count
    if high is None:
        return search
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if passes(middle) else (middle, high)
    search.kept_fp32 = names[:high]
    return search


def fall_back(
    ranking: Sequence[LayerScore],
    quantize: Callable[[Path, List[str]], None],
    evaluate: Callable[[Path], Any],
    max_layers: int,
    work: Path,
    deadline: float = math.inf,
) -> Tuple[FallbackSearch, Optional[Path]]:
    """Run the search with ``quantize(path, nodes)`` writing a model with ``nodes`` kept in fp32 and
    ``evaluate(path)`` returning its ``GateResult``; returns the search and the passing model's file
    (None when none passed). Past ``deadline`` (``time.monotonic``) no attempt runs: each is recorded as
    skipped and fails."""

    def attempt(nodes: List[str]) -> FallbackAttempt:
        if time.monotonic() >= deadline:
            return FallbackAttempt(len(nodes), 0, math.nan, SKIPPED)
        path = work / "int8_fallback_{}.onnx".format(len(nodes))
        quantize(path, nodes)
        gate = evaluate(path)
        return FallbackAttempt(len(nodes), gate.disagreements, gate.upper_bound_points, gate.verdict)

    search = search_fallback(ranking, attempt, max_layers)
    return search, work / "int8_fallback_{}.onnx".format(len(search.kept_fp32)) if search.passed else None


def latency_cost(fp32: Path, plain: Path, fallback: Path, iters: int = 60, rounds: int = 3) -> Dict[str, Any]:
    """Batch-1 ONNX Runtime CPU latency of the INT8 model with its fallback, measured side by side with
    the INT8 model without it and with fp32 (each timed interleaved with the plain INT8 model)."""
    feeds = {}
    models = {"fp32": fp32, "int8": plain, "fallback": fallback}
    runners = {name: OnnxRuntimeRunner(path) for name, path in models.items()}
    with runners["fp32"], runners["int8"], runners["fallback"]:
        for name, runner in runners.items():
            input_name, meta = next(iter(runner.input_metadata().items()))
            shape = [1] + [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape[1:]]
            feeds[name] = {input_name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}

        def timed(name: str) -> Dict[str, Any]:
            return time_interleaved(
                lambda: runners[name].infer(feeds[name]),
                lambda: runners["int8"].infer(feeds["int8"]),
                warmup=10,
                iters=iters,
                rounds=rounds,
            )

        with_fallback, fp32_stats = timed("fallback"), timed("fp32")
    return {
        "int8_p50_ms": with_fallback["reference_p50_ms"],
        "fallback_p50_ms": with_fallback["p50_ms"],
        "fp32_p50_ms": fp32_stats["p50_ms"],
        "fallback_vs_int8": with_fallback["relative"],
        "speedup_vs_fp32_without_fallback": fp32_stats["relative"],
        "speedup_vs_fp32_with_fallback": fp32_stats["relative"] / with_fallback["relative"],
        "method": "ONNX Runtime CPU on this machine, batch 1; ratios are medians of per-round fastest calls, "
        "each model timed interleaved with the INT8 model without fallback",
    }
