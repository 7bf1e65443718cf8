"""Diagnosis: where edgetl's INT8 MobileNetV2 loses the signal on real data, and why every calibration
method leaves the pooled features at a cosine of about 0.91 with fp32.

Per dataset (scikit-learn's digits, Fashion-MNIST from Debian's ``dataset-fashion-mnist``, the built-in demo),
a pretrained MobileNetV2 feature-extractor run with ``edgetl finetune``'s defaults (cached under
``~/.cache/edgetl/int8-diagnosis``), exported to ``model.onnx`` by ``edgetl export`` and quantized by edgetl's
own ``quantize_onnx`` (the INT8 step of ``edgetl export --int8``) in both forms with their default calibration
(256 seeded training images): ``cpu`` (u8 activations asymmetric, s8 per-channel weights: the VNNI form, as the
issue measured it) and ``trt`` (s8 symmetric activations and weights, Q/DQ on Conv/Gemm/Add inputs).

Every INT8 model is evaluated as float Q/DQ arithmetic (ONNX Runtime, graph optimisations off), the way the
export's gate judges the trt form: that is the quantization's own error, independent of this CPU's integer
kernels (a CPU without VNNI saturates u8 x s8 products; see ``int8_forms.md``).

Measured:
- per tensor, on a sample of val images: SQNR (dB) of the INT8 model's tensor (as its consumers read it)
  against fp32, the noise each node adds, the share of the error that is a per-channel mean (what bias
  correction removes) and the spread of per-channel ranges inside one activation tensor (what cross-layer
  equalisation flattens);
- the pooled features (the head Gemm's input) INT8 vs fp32: mean cosine, and how it builds up block by block;
- ablations: the full INT8 model with only some of its quantizers kept (input / weights / activations /
  depthwise / expand / projection / residual adds / head), weights per tensor instead of per channel, the
  calibration method, the calibration set's size and which images;
- the head: the shipped head on INT8 features, and edgetl's own head solver (the convex fit finetune runs)
  refitted on INT8 training features, beside the same fit on fp32 features.

    nice python benchmarks/diagnose_int8.py   # writes benchmarks/results/int8_diagnosis.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgetl.contracts.formats import DEFAULT_CALIB_METHODS, INT8_CPU_FORMS
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, Sample
from edgetl.data.sampling import select_balanced
from edgetl.diagnostics.machine import machine_info
from edgetl.export.config import DEFAULT_CALIB_SIZE
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import EvalImages, heldout_images, load_eval_images, normalized
from edgetl.export.quantize import (
    DQ_OP,
    Q_OP,
    ImageCalibrationReader,
    calibration_samples,
    prune_quantizers,
    quantize_onnx,
)
from edgetl.train.config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
REPRODUCE = (
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train,bench]' && "
    "apt-get install dataset-fashion-mnist && nice .venv/bin/python benchmarks/diagnose_int8.py"
)
CACHE = Path.home() / ".cache" / "edgetl" / "int8-diagnosis"
FORMS = ("cpu", "trt")
CPU_TYPES = INT8_CPU_FORMS["vnni"]  # the cpu form of a VNNI machine, as the issue measured it


@dataclass(frozen=True)
class Source:
    """A dataset of the diagnosis and its split sizes (per class)."""

    name: str
    train_per_class: int
    val_per_class: int


SOURCES = {
    "digits": Source("digits", 120, 50),
    "fashion-mnist": Source("fashion-mnist", 120, 50),
    "demo": Source("demo", 250, 60),  # the demo's default size
}


def data_root(source: Source, seed: int) -> Path:
    """The ImageFolder of ``source``: bench_realdata's real datasets, or the built-in demo."""
    if source.name == "demo":
        return ensure_demo_dataset(train_per_class=source.train_per_class, val_per_class=source.val_per_class)
    from bench_realdata import DATASETS, materialise  # the sibling script: same datasets, same split

    cache = Path.home() / ".cache" / "edgetl" / "realdata"
    return materialise(DATASETS[source.name], cache, source.train_per_class, source.val_per_class, seed)


def feature_run(source: Source, seed: int) -> Path:
    """A pretrained MobileNetV2 feature-extractor run with finetune's defaults (trained once, cached)."""
    from edgetl.train.loop import finetune

    root = data_root(source, seed)
    run = CACHE / "{}-{}train-{}val-seed{}".format(source.name, source.train_per_class, source.val_per_class, seed)
    if not (run / "summary.json").is_file():
        config = FinetuneConfig(
            data=str(root), arch="mobilenet_v2", strategy="feature-extractor", seed=seed, out=str(run)
        )
        finetune(config, progress=False)
    return run


# --- the graph: which quantizer sits where -------------------------------------------------------------


@dataclass(frozen=True)
class Quantizer:
    """One quantization point of a Q/DQ model: an activation's Q->DQ pair or a weight's (or bias's) DQ."""

    kind: str  # "activation" or "weight"
    role: str  # what the tensor is in MobileNetV2 (see ``roles``)
    tensor: str  # the fp32 tensor (activation) or the weight's fp32 initializer
    dq_output: str  # what the consumers read
    slot: int = 0  # a weight's input index in its node: 1 the weight, 2 the bias
    source: str = ""  # an activation's tensor in the INT8 model (before its QuantizeLinear)


class Graph:
    """The fp32 model's structure: each tensor's producer, consumers and role."""

    def __init__(self, fp32: onnx.ModelProto) -> None:
        self.model = fp32
        self.producer = {out: node for node in fp32.graph.node for out in node.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for node in fp32.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.nodes = {node.name: node for node in fp32.graph.node}
        self.initializers = {init.name: init for init in fp32.graph.initializer}
        self.input = fp32.graph.input[0].name
        self.tensors = {self.input} | set(self.producer)
        self.output = fp32.graph.output[0].name
        self.gemm = next(node for node in fp32.graph.node if node.op_type in ("Gemm", "MatMul"))
        self.pooled = self.gemm.input[0]
        self.convs = [node for node in fp32.graph.node if node.op_type == "Conv"]
        self.last_conv = self.convs[-1].name

    def conv_role(self, node: onnx.NodeProto) -> str:
        """stem, depthwise, expand, projection, last 1x1 (the 320->1280 conv) or head."""
        if node.op_type in ("Gemm", "MatMul"):
            return "head"
        if node.op_type != "Conv":
            return node.op_type
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            return "depthwise"
        if node.input[0] == self.input:
            return "stem"
        if node.name == self.last_conv:
            return "last 1x1"
        activated = any(c.op_type in ("Clip", "Relu") for c in self.consumers.get(node.output[0], []))
        return "expand" if activated else "projection"

    def tensor_role(self, tensor: str) -> str:
        """An activation's role, named after what produced it."""
        if tensor == self.input:
            return "input"
        node = self.producer.get(tensor)
        if node is None:
            return "other"
        if node.op_type in ("Clip", "Relu"):
            source = self.producer.get(node.input[0])
            role = self.conv_role(source) if source is not None else "other"
            return {
                "stem": "ReLU6 after stem/expand",
                "expand": "ReLU6 after stem/expand",
                "depthwise": "ReLU6 after depthwise",
                "last 1x1": "ReLU6 after last 1x1",
            }.get(role, "other")
        if node.op_type == "Conv":
            role = self.conv_role(node)
            if role == "projection":
                return "projection output"
            return "{} output before ReLU6".format("stem/expand" if role in ("stem", "expand") else role)
        if node.op_type == "Add":
            return "residual add output"
        if node.op_type in ("GlobalAveragePool", "Flatten", "ReduceMean", "Reshape"):
            return "pooled features"
        if node.op_type in ("Gemm", "MatMul"):
            return "logits"
        return node.op_type

    def block_of(self, tensor: str) -> str:
        return block_name(tensor, self.pooled, self.output)


def block_name(tensor: str, pooled: str, output: str) -> str:
    """``features.N`` of torchvision's MobileNetV2 from the exported tensor's name, ``head`` after the base."""
    found = re.search(r"features\.(\d+)", tensor)
    if found:
        return "features.{}".format(found.group(1))
    if tensor in (pooled, output) or "GlobalAveragePool" in tensor or "Flatten" in tensor or "head" in tensor:
        return "head"
    return "input" if tensor == "input" else "-"


def quantizers(int8: onnx.ModelProto, graph: Graph) -> List[Quantizer]:
    """Every quantization point of ``int8`` (edgetl's Q/DQ model of ``graph``'s fp32 model)."""
    producer = {out: node for node in int8.graph.node for out in node.output}
    initializers = {init.name for init in int8.graph.initializer}
    found = []
    for node in int8.graph.node:
        if node.op_type != DQ_OP:
            continue
        source = node.input[0]
        if source in initializers:  # a weight or bias: find the fp32 initializer of the same input slot
            for consumer in int8.graph.node:
                for index, name in enumerate(consumer.input):
                    if name == node.output[0] and consumer.name in graph.nodes:
                        fp32_name = graph.nodes[consumer.name].input[index]
                        role = graph.conv_role(graph.nodes[consumer.name])
                        found.append(Quantizer("weight", role, fp32_name, node.output[0], index))
            continue
        quantize = producer.get(source)
        if quantize is not None and quantize.op_type == Q_OP:
            source = quantize.input[0]
            tensor = source if source in graph.tensors else node.output[0]  # a graph output keeps its name after DQ
            found.append(Quantizer("activation", graph.tensor_role(tensor), tensor, node.output[0], source=source))
    return found


def fake_quantize_per_tensor(weight: np.ndarray) -> np.ndarray:
    """Symmetric s8 with one scale for the whole tensor (what per-channel scales avoid)."""
    scale = max(float(np.abs(weight).max()), 1e-12) / 127.0
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(np.float32)


def ablated(
    int8: onnx.ModelProto,
    graph: Graph,
    points: Sequence[Quantizer],
    keep: Callable[[Quantizer], bool],
    per_tensor_weights: bool = False,
) -> onnx.ModelProto:
    """``int8`` with every quantizer that ``keep`` refuses bypassed: its consumers read the fp32 tensor (or the fp32
    weight). A bypassed activation that onnxruntime folded into its producer (the cpu form drops ReLU6 and clips by
    the Q/DQ range instead) gets its Clip back. With ``per_tensor_weights`` the kept weights are fake-quantized per
    tensor from the fp32 weights instead of read through their per-channel DQ."""
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    replace: Dict[str, str] = {}
    present = {init.name for init in g.initializer}
    outputs = {out.name for out in g.output}
    extra_nodes = []
    for point in points:
        if point.kind == "weight":
            per_tensor = keep(point) and per_tensor_weights and point.slot == 1
            if keep(point) and not per_tensor:
                continue
            weight = numpy_helper.to_array(graph.initializers[point.tensor]).astype(np.float32)
            name = point.tensor + ("_per_tensor" if per_tensor else "_fp32")
            if name not in present:
                weight = fake_quantize_per_tensor(weight) if per_tensor else weight
                g.initializer.append(numpy_helper.from_array(weight, name))
                present.add(name)
            replace[point.dq_output] = name
        elif not keep(point) and point.dq_output in outputs:  # the cpu form quantizes the logits too
            dequantize = producer[point.dq_output]
            quantize = producer[dequantize.input[0]]
            g.node.remove(dequantize)
            g.node.remove(quantize)
            node = producer[point.source]
            node.output[list(node.output).index(point.source)] = point.dq_output
        elif not keep(point):
            source = point.source
            fp32_producer = graph.producer.get(point.tensor)
            int8_producer = producer.get(source)
            folded = (
                fp32_producer is not None
                and int8_producer is not None
                and fp32_producer.op_type in ("Clip", "Relu")
                and int8_producer.op_type != fp32_producer.op_type
            )
            if folded:
                clip = onnx.NodeProto()
                clip.CopyFrom(fp32_producer)
                clip.name = fp32_producer.name + "_restored"
                del clip.input[:]
                clip.input.extend([source] + list(fp32_producer.input[1:]))
                del clip.output[:]
                clip.output.append(source + "_restored")
                extra_nodes.append(clip)
                for name in fp32_producer.input[1:]:
                    if name and name in graph.initializers and name not in present:
                        g.initializer.append(graph.initializers[name])
                        present.add(name)
                source = source + "_restored"
            replace[point.dq_output] = source
    for node in g.node:
        for index, name in enumerate(node.input):
            if name in replace:
                node.input[index] = replace[name]
    g.node.extend(extra_nodes)
    prune_quantizers(model)
    return _sorted(model)


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in topological order (the restored Clips were appended at the end)."""
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


# --- running the models ---------------------------------------------------------------------------------


def _session(model: onnx.ModelProto, outputs: Sequence[str]) -> ort.InferenceSession:
    """``model`` with ``outputs`` as its outputs, as float arithmetic (graph optimisations off: Q/DQ stay explicit)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_chunks(session: ort.InferenceSession, crops: np.ndarray, spec: PreprocessSpec, chunk: int = 16) -> Any:
    """Yield the session's outputs for ``crops`` (uint8 NHWC), ``chunk`` images at a time."""
    name = session.get_inputs()[0].name
    for start in range(0, len(crops), chunk):
        yield session.run(None, {name: normalized(crops[start : start + chunk], spec)})


def head_inputs(model: onnx.ModelProto, graph: Graph) -> Tuple[str, str]:
    """(logits, the pooled features as the head reads them) of ``model``, a Q/DQ copy of ``graph``'s model."""
    gemm = next(node for node in model.graph.node if node.name == graph.gemm.name)
    return graph.output, gemm.input[0]


def logits_and_features(model: onnx.ModelProto, graph: Graph, crops: np.ndarray, spec: PreprocessSpec) -> Any:
    session = _session(model, head_inputs(model, graph))
    parts = list(run_chunks(session, crops, spec))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).reshape(len(crops), -1)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-30)


def sqnr_db(signal: float, noise: float) -> float:
    return float(10.0 * np.log10(max(signal, 1e-30) / max(noise, 1e-30)))


def compare_outputs(
    reference: Tuple[np.ndarray, np.ndarray], candidate: Tuple[np.ndarray, np.ndarray], labels: np.ndarray
) -> Dict[str, float]:
    """The pooled features' mean cosine and SQNR, and top-1 agreement / accuracy of the logits."""
    (ref_logits, ref_features), (logits, features) = reference, candidate
    noise = float(np.square(features.astype(np.float64) - ref_features).sum())
    return {
        "feature_cosine": float(cosines(ref_features, features).mean()),
        "feature_sqnr_db": sqnr_db(float(np.square(ref_features.astype(np.float64)).sum()), noise),
        "top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
        "val_top1": float((logits.argmax(1) == labels).mean()),
    }


class TensorStats:
    """Running sums of one tensor's error against fp32 over images."""

    def __init__(self) -> None:
        self.signal = self.noise = self.cosine = 0.0
        self.images = 0
        self.channel_error: Optional[np.ndarray] = None
        self.channel_count = 0
        self.channel_absmax: Optional[np.ndarray] = None

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
        error = candidate - reference
        self.signal += float(np.square(reference).sum())
        self.noise += float(np.square(error).sum())
        flat_r, flat_c = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
        self.cosine += float(cosines(flat_r, flat_c).sum())
        self.images += len(reference)
        axes = tuple(i for i in range(reference.ndim) if i != 1)
        channel_error, absmax = error.sum(axis=axes), np.abs(reference).max(axis=axes)
        self.channel_error = channel_error if self.channel_error is None else self.channel_error + channel_error
        self.channel_absmax = absmax if self.channel_absmax is None else np.maximum(self.channel_absmax, absmax)
        self.channel_count += reference.size // reference.shape[1]

    @property
    def nsr(self) -> float:
        return self.noise / max(self.signal, 1e-30)

    def summary(self) -> Dict[str, float]:
        mean_error = self.channel_error / max(self.channel_count, 1)
        bias = float(np.square(mean_error).sum() * self.channel_count)
        absmax = self.channel_absmax
        return {
            "sqnr_db": sqnr_db(self.signal, self.noise),
            "cosine": self.cosine / max(self.images, 1),
            "bias_share": bias
            / max(self.noise, 1e-30),  # of the error: a per-channel mean, which bias correction removes
            "range_spread": float(
                absmax.max() / max(float(np.median(absmax)), 1e-12)
            ),  # tensor range / median channel's
            "channels": int(len(absmax)),
        }


def per_tensor(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, graph: Graph, crops: np.ndarray, spec: PreprocessSpec, chunk: int = 4
) -> List[Dict[str, Any]]:
    """Every activation of the fp32 model, against the INT8 model's: before its quantizer (the error that reached it)
    and after (as its consumers read it); in the fp32 graph's order."""
    int8_producer = {out: node for node in int8.graph.node for out in node.output}
    after: Dict[str, str] = {}
    for node in int8.graph.node:
        if node.op_type == DQ_OP and node.input[0] in int8_producer and int8_producer[node.input[0]].op_type == Q_OP:
            source = int8_producer[node.input[0]].input[0]
            after[source if source in graph.tensors else node.output[0]] = node.output[0]
    tensors = [graph.input] + [out for node in fp32.graph.node for out in node.output]
    rows: List[Tuple[str, str, str]] = []  # (fp32 tensor, int8 tensor, "before"/"after")
    for tensor in tensors:
        producer, fp32_producer = int8_producer.get(tensor), graph.producer.get(tensor)
        same_op = tensor == graph.input or (producer is not None and producer.op_type == fp32_producer.op_type)
        if same_op and tensor != graph.input:
            rows.append((tensor, tensor, "before"))
        if tensor in after:
            rows.append((tensor, after[tensor], "after"))
    fp32_session = _session(fp32, sorted({r[0] for r in rows}))
    int8_session = _session(int8, sorted({r[1] for r in rows}))
    fp32_names = [o.name for o in fp32_session.get_outputs()]
    int8_names = [o.name for o in int8_session.get_outputs()]
    stats = {(r[0], r[2]): TensorStats() for r in rows}
    for reference, candidate in zip(
        run_chunks(fp32_session, crops, spec, chunk), run_chunks(int8_session, crops, spec, chunk)
    ):
        ref = dict(zip(fp32_names, reference))
        cand = dict(zip(int8_names, candidate))
        for tensor, int8_tensor, where in rows:
            if ref[tensor].ndim >= 2 and ref[tensor].dtype == np.float32:  # activations, not shapes
                stats[(tensor, where)].add(ref[tensor], cand[int8_tensor])
    out = []
    for tensor in tensors:
        entry: Dict[str, Any] = {"tensor": tensor, "role": graph.tensor_role(tensor), "block": graph.block_of(tensor)}
        for where in ("before", "after"):
            if (tensor, where) in stats and stats[(tensor, where)].images:
                entry[where] = stats[(tensor, where)].summary()
        if "before" in entry or "after" in entry:
            out.append(entry)
    return out


# --- the experiments ------------------------------------------------------------------------------------

ACTIVATION_ROLES = (
    "input",
    "stem/expand output before ReLU6",
    "ReLU6 after stem/expand",
    "depthwise output before ReLU6",
    "ReLU6 after depthwise",
    "projection output",
    "residual add output",
    "last 1x1 output before ReLU6",
    "ReLU6 after last 1x1",
    "pooled features",
    "logits",
)
WEIGHT_ROLES = ("depthwise", "expand", "projection", "head")


def ablations() -> List[Tuple[str, Callable[[Quantizer], bool], bool]]:
    """(name, which quantizers stay, weights per tensor) of each ablation of the full INT8 model."""
    rows: List[Tuple[str, Callable[[Quantizer], bool], bool]] = [
        ("all (as shipped)", lambda q: True, False),
        ("weights only", lambda q: q.kind == "weight", False),
        ("activations only", lambda q: q.kind == "activation", False),
        ("all but the input", lambda q: q.role != "input", False),
        (
            "all but the head (its weights and the pooled features)",
            lambda q: q.role not in ("head", "pooled features", "logits"),
            False,
        ),
        ("all but the conv outputs before ReLU6", lambda q: not q.role.endswith("before ReLU6"), False),
        ("all, weights per tensor", lambda q: True, True),
        ("weights only, per tensor", lambda q: q.kind == "weight", True),
    ]
    for role in WEIGHT_ROLES:
        rows.append(("only the {} weights".format(role), lambda q, r=role: q.kind == "weight" and q.role == r, False))
    for role in ACTIVATION_ROLES:
        rows.append(("only the activations: " + role, lambda q, r=role: q.kind == "activation" and q.role == r, False))
    return rows


@dataclass
class Bench:
    """One dataset's run, its fp32 model and the images the diagnosis measures on."""

    name: str
    run: Path
    fp32_path: Path
    fp32: onnx.ModelProto
    graph: Graph
    spec: PreprocessSpec
    calibration: List[Sample]
    val: EvalImages  # the val images the heads are scored on
    probe: EvalImages  # the val images of the ablations and calibration variants (class-balanced, seeded)
    tensor_images: np.ndarray  # the per-tensor pass's val images (class-balanced, seeded)
    fit: EvalImages  # training images the head is re-solved on
    reference: Tuple[np.ndarray, np.ndarray]  # fp32 (logits, pooled features) of ``probe``
    work: Path

    def quantize(
        self, form: str, method: str, samples: Optional[Sequence[Sample]] = None, tag: str = ""
    ) -> onnx.ModelProto:
        """edgetl's INT8 model of the fp32 model in ``form``, calibrated by ``method`` on ``samples``
        (default: the export's calibration sample)."""
        path = self.work / "int8-{}-{}{}.onnx".format(form, method, tag)
        if not path.is_file():
            reader = ImageCalibrationReader(samples or self.calibration, self.spec, "input", 1)
            started = time.perf_counter()
            quantize_onnx(self.fp32_path, path, reader, form, method, CPU_TYPES if form == "cpu" else None)
            print(
                "  quantized {} {}{} in {:.0f} s".format(form, method, tag, time.perf_counter() - started), flush=True
            )
        return onnx.load(str(path))

    def outputs(self, model: onnx.ModelProto, images: Optional[EvalImages] = None) -> Tuple[np.ndarray, np.ndarray]:
        return logits_and_features(model, self.graph, (images or self.val).crops, self.spec)

    def scores(self, model: onnx.ModelProto) -> Dict[str, float]:
        return compare_outputs(self.reference, self.outputs(model, self.probe), self.probe.labels)


def prepare(source: Source, args: argparse.Namespace, work: Path) -> Bench:
    run = feature_run(source, args.seed)
    bundle = work / "bundle"
    export_run(
        ExportConfig(
            run=str(run),
            out=str(bundle),
            calib_dir=str(work / "calibration"),
            val_images=args.val_images,
            seed=args.seed,
        )
    )
    fp32_path = bundle / "model.onnx"
    spec = PreprocessSpec.load(bundle / "preprocess.json")
    split = DatasetSplit.load(run)
    calibration, _ = calibration_samples(run, None, DEFAULT_CALIB_SIZE, args.seed)
    val = load_eval_images(split.val, spec, args.val_images, args.seed)
    probe = load_eval_images(split.val, spec, args.ablation_images, args.seed)
    tensor_images = load_eval_images(split.val, spec, args.tensor_images, args.seed).crops
    fit = heldout_images(split.train, [], spec, args.fit_images, args.seed)
    fp32 = onnx.load(str(fp32_path))
    graph = Graph(fp32)
    bench = Bench(
        source.name,
        run,
        fp32_path,
        fp32,
        graph,
        spec,
        calibration,
        val,
        probe,
        tensor_images,
        fit,
        logits_and_features(fp32, graph, probe.crops, spec),
        work,
    )
    return bench


def head_refit(bench: Bench, models: Dict[str, onnx.ModelProto], seed: int) -> List[Dict[str, Any]]:
    """Per model: the shipped head on its val features; edgetl's head solver (the convex fit finetune runs)
    refitted on its training features; and the same solver's fp32 fit applied to its features."""
    import torch

    from edgetl.train.linear_head import fit_linear_head

    smoothing = FinetuneConfig().label_smoothing
    classes = int(max(bench.val.labels.max(), bench.fit.labels.max()) + 1)
    rows, heads = [], {}
    for name, model in models.items():
        logits, val_features = bench.outputs(model)
        _, fit_features = bench.outputs(model, bench.fit)
        fit = fit_linear_head(
            torch.from_numpy(fit_features.astype(np.float32)),
            torch.from_numpy(bench.fit.labels),
            classes,
            seed=seed,
            label_smoothing=smoothing,
        )
        heads[name] = (fit.weight.numpy().astype(np.float64), fit.bias.numpy().astype(np.float64))
        rows.append(
            {
                "model": name,
                "shipped_head_val_top1": float((logits.argmax(1) == bench.val.labels).mean()),
                "refit_val_top1": _top1(val_features, heads[name], bench.val.labels),
                "fp32_fit_val_top1": _top1(val_features, heads["fp32"], bench.val.labels),
                "refit_l2": float(fit.l2),
                "fit_images": int(len(bench.fit.labels)),
            }
        )
    return rows


def _top1(features: np.ndarray, head: Tuple[np.ndarray, np.ndarray], labels: np.ndarray) -> float:
    weight, bias = head
    return float(((features @ weight.T + bias).argmax(1) == labels).mean())


def ablate(bench: Bench, model: onnx.ModelProto, points: List[Quantizer]) -> List[Dict[str, Any]]:
    """The ablation rows, then the model without the one or two activation roles that cost the most alone."""
    rows, seen = [], set()

    def measure(name: str, keep: Callable[[Quantizer], bool], per_tensor_weights: bool) -> None:
        kept = (frozenset(i for i, q in enumerate(points) if keep(q)), per_tensor_weights)
        if kept[0] and kept not in seen:  # a role this form does not quantize repeats an earlier row
            seen.add(kept)
            scores = bench.scores(ablated(model, bench.graph, points, keep, per_tensor_weights))
            rows.append(dict(scores, name=name, quantizers=len(kept[0])))

    for name, keep, per_tensor_weights in ablations():
        measure(name, keep, per_tensor_weights)
    prefix = "only the activations: "
    worst = [
        r["name"][len(prefix) :]
        for r in sorted(rows, key=lambda r: r["feature_cosine"])
        if r["name"].startswith(prefix)
    ]
    for count in (1, 2):
        roles = worst[:count]
        name = "all but the activations: " + " and ".join(roles)
        measure(name, lambda q, r=tuple(roles): q.kind != "activation" or q.role not in r, False)
    return rows


def diagnose(source: Source, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    print("{}:".format(source.name), flush=True)
    bench = prepare(source, args, work)
    summary = json.loads((bench.run / "summary.json").read_text())
    result: Dict[str, Any] = {
        "dataset": source.name,
        "run": str(bench.run),
        "train_images": len(DatasetSplit.load(bench.run).train),
        "val_images_in_split": len(DatasetSplit.load(bench.run).val),
        "run_val_top1": summary.get("best_val_top1"),
        "measured_val_images": int(len(bench.val.labels)),
        "ablation_images": int(len(bench.probe.labels)),
        "tensor_images": int(len(bench.tensor_images)),
        "calibration_images": len(bench.calibration),
        "pooled_tensor": bench.graph.pooled,
        "node_inputs": {
            node.output[0]: [i for i in node.input if i and i not in bench.graph.initializers]
            for node in bench.fp32.graph.node
        },
        "forms": {},
    }
    shipped = {"fp32": bench.fp32}
    for form in FORMS:
        method = DEFAULT_CALIB_METHODS[form]
        model = shipped[form] = bench.quantize(form, method)
        points = quantizers(model, bench.graph)
        entry: Dict[str, Any] = {
            "method": method,
            "quantizers": {
                "activations": sum(q.kind == "activation" for q in points),
                "weights": sum(q.kind == "weight" for q in points),
            },
        }
        t = time.perf_counter()
        entry["tensors"] = per_tensor(bench.fp32, model, bench.graph, bench.tensor_images, bench.spec)
        print("  {} per-tensor pass {:.0f} s".format(form, time.perf_counter() - t), flush=True)
        t = time.perf_counter()
        entry["ablations"] = ablate(bench, model, points)
        print("  {} ablations {:.0f} s".format(form, time.perf_counter() - t), flush=True)
        entry["calibration"] = [
            dict(
                entry["ablations"][0],
                method=method,
                images=len(bench.calibration),
                source="default: the run's training split",
            )
        ]
        for other in args.methods if source.name in args.methods_datasets and form in args.methods_forms else []:
            if other != method:
                scores = bench.scores(bench.quantize(form, other))
                entry["calibration"].append(
                    dict(
                        scores, method=other, images=len(bench.calibration), source="default: the run's training split"
                    )
                )
        if source.name in args.calibration_sets and form == args.calibration_sets_form:
            train = DatasetSplit.load(bench.run).train
            val_samples = [Sample(Path(p), int(label)) for p, label in zip(bench.probe.paths, bench.probe.labels)]
            for size in args.calibration_sizes:
                samples = select_balanced(train, size, args.seed)
                scores = bench.scores(bench.quantize(form, method, samples, "-{}".format(len(samples))))
                entry["calibration"].append(dict(scores, method=method, images=len(samples), source="training split"))
            scores = bench.scores(bench.quantize(form, method, val_samples, "-val"))
            entry["calibration"].append(
                dict(scores, method=method, images=len(val_samples), source="the measured val images themselves")
            )
        result["forms"][form] = entry
    t = time.perf_counter()
    result["heads"] = head_refit(bench, shipped, args.seed)
    print("  heads {:.0f} s".format(time.perf_counter() - t), flush=True)
    result.update(wall_s=time.perf_counter() - started, load_before_after=[load_before, os.getloadavg()[0]])
    return result


# --- the report -----------------------------------------------------------------------------------------


def own_losses(tensors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each quantized activation with the SQNR its own quantizer costs (before minus after, dB), worst first."""
    rows = [
        dict(t, own_loss_db=t["before"]["sqnr_db"] - t["after"]["sqnr_db"])
        for t in tensors
        if "after" in t and "before" in t
    ]
    return sorted(rows, key=lambda t: -t["own_loss_db"])


def node_losses(tensors: List[Dict[str, Any]], graph_inputs: Dict[str, List[str]]) -> List[Dict[str, Any]]:
    """Each node's output (before its quantizer) against the worst of its activation inputs as read: the SQNR its
    quantized weights (and arithmetic) cost, worst first."""
    by_name = {t["tensor"]: t for t in tensors}
    rows = []
    for tensor in tensors:
        if "before" not in tensor or tensor["tensor"] not in graph_inputs:
            continue
        inputs = [by_name[i] for i in graph_inputs[tensor["tensor"]] if i in by_name]
        read = [(i.get("after") or i.get("before"))["sqnr_db"] for i in inputs]
        if read:
            rows.append(dict(tensor, input_sqnr_db=min(read), node_loss_db=min(read) - tensor["before"]["sqnr_db"]))
    return sorted(rows, key=lambda t: -t["node_loss_db"])


def block_outputs(tensors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The last measured tensor of each block, in order: how the error builds up through the network."""
    last: Dict[str, Dict[str, Any]] = {}
    for tensor in tensors:
        last[tensor["block"]] = tensor
    return [t for t in last.values() if t["block"] != "-"]


def _db(value: float) -> str:
    """An SQNR; 'exact' where the tensor did not change at all (no quantizer upstream of it)."""
    return "exact" if value > 200 else "{:.1f}".format(value)


def _f(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else "{:.{}f}".format(value, digits)


def _ablation(entry: Dict[str, Any], name: str) -> Dict[str, Any]:
    return next(row for row in entry["ablations"] if row["name"] == name)


def findings(result: Dict[str, Any]) -> List[str]:
    """The measured facts the conclusions rest on, one bullet each, computed from the results."""
    lines = []
    for data in result["datasets"]:
        for form, entry in data["forms"].items():
            full = _ablation(entry, "all (as shipped)")
            only_w, only_a = _ablation(entry, "weights only"), _ablation(entry, "activations only")
            per_tensor_w = _ablation(entry, "weights only, per tensor")
            only = sorted(
                (r for r in entry["ablations"] if r["name"].startswith("only the ")), key=lambda r: r["feature_cosine"]
            )
            but = sorted(
                (r for r in entry["ablations"] if r["name"].startswith("all but")), key=lambda r: -r["feature_cosine"]
            )
            worst = own_losses(entry["tensors"])[:3]
            pooled = next((t for t in entry["tensors"] if t["tensor"] == data["pooled_tensor"]), None)
            lines.append(
                "**{} / {} form** ({} calibration): pooled-feature cosine {:.3f} (SQNR {:.1f} dB), top-1 agreement "
                "with fp32 {:.1%}. Weights alone (per channel) {:.3f}, per tensor {:.3f}; activations alone {:.3f}. "
                "Worst single class: {} ({:.3f}); best removal: {} ({:.3f}). Costliest quantizers (own SQNR loss): "
                "{}.{}".format(
                    data["dataset"],
                    form,
                    entry["method"],
                    full["feature_cosine"],
                    full["feature_sqnr_db"],
                    full["top1_agreement"],
                    only_w["feature_cosine"],
                    per_tensor_w["feature_cosine"],
                    only_a["feature_cosine"],
                    only[0]["name"][len("only the ") :],
                    only[0]["feature_cosine"],
                    but[0]["name"][len("all but ") :],
                    but[0]["feature_cosine"],
                    "; ".join(
                        "{} {} {:.1f} dB (range spread {:.0f}x)".format(
                            t["block"], t["role"], t["own_loss_db"], t["after"]["range_spread"]
                        )
                        for t in worst
                    ),
                    ""
                    if pooled is None or "before" not in pooled
                    else " Per-channel mean share of the pooled features' error: {:.0%}.".format(
                        pooled["before"]["bias_share"]
                    ),
                )
            )
        heads = {row["model"]: row for row in data["heads"]}
        lines.append(
            "**{} heads** (val top-1 on {} images; solver refit on {} training images): fp32 shipped {:.1%}, "
            "refit {:.1%}; {}.".format(
                data["dataset"],
                data["measured_val_images"],
                heads["fp32"]["fit_images"],
                heads["fp32"]["shipped_head_val_top1"],
                heads["fp32"]["refit_val_top1"],
                "; ".join(
                    "{} form: shipped head {:.1%}, fp32-fitted solver head {:.1%}, refit on its INT8 features "
                    "{:.1%}".format(
                        form,
                        heads[form]["shipped_head_val_top1"],
                        heads[form]["fp32_fit_val_top1"],
                        heads[form]["refit_val_top1"],
                    )
                    for form in FORMS
                ),
            )
        )
    return lines


def _cos(data: Dict[str, Any], form: str, name: str) -> Optional[float]:
    row = next((r for r in data["forms"][form]["ablations"] if r["name"] == name and r.get("quantizers", 1)), None)
    return None if row is None else row["feature_cosine"]


def _per_form(result: Dict[str, Any], form: str, name: str) -> str:
    """``dataset cosine`` of one ablation row for every dataset, e.g. 'digits 0.873, demo 0.956'."""
    return ", ".join("{} {}".format(d["dataset"], _f(_cos(d, form, name))) for d in result["datasets"])


def _pooled_bias_share(data: Dict[str, Any], form: str) -> Optional[float]:
    pooled = next((t for t in data["forms"][form]["tensors"] if t["tensor"] == data["pooled_tensor"]), None)
    return None if pooled is None else pooled["before"]["bias_share"]


def findings_summary(result: Dict[str, Any]) -> List[str]:
    """The conclusions, each with the numbers it rests on (read from the results, so a re-run restates them)."""
    datasets = result["datasets"]
    only_roles = list(ACTIVATION_ROLES)
    lines = [
        "**INT8 noise is large on every dataset, the demo included; the digits' small margins make it decisive.** "
        "Pooled-feature "
        "cosine INT8 vs fp32, cpu form: {}; trt form: {} (healthy INT8: > 0.99). Top-1 agreement with fp32 on the "
        "ablation images: {}. The demo passes its gate with a cosine below 0.96 because its classes are far apart, "
        "not because its features are quantized better.".format(
            _per_form(result, "cpu", "all (as shipped)"),
            _per_form(result, "trt", "all (as shipped)"),
            "; ".join(
                "{} {}".format(
                    d["dataset"],
                    "/".join("{:.0%}".format(d["forms"][f]["ablations"][0]["top1_agreement"]) for f in FORMS),
                )
                for d in datasets
            )
            + " (cpu/trt)",
        ),
        "**Weights are not the problem (per channel); activations are.** Weights alone, per-channel as shipped: {} "
        "(cpu form; the trt form's weights are the same); per tensor they would collapse it: {}. Activations alone: "
        "cpu {}; trt {}. Of the weights, the depthwise convs cost the most ({}).".format(
            _per_form(result, "cpu", "weights only"),
            _per_form(result, "cpu", "weights only, per tensor"),
            _per_form(result, "cpu", "activations only"),
            _per_form(result, "trt", "activations only"),
            _per_form(result, "cpu", "only the depthwise weights"),
        ),
        "**Not the input, not the head.** The input's quantizer alone: {} (cpu); the pooled features' alone: {}; "
        "keeping the head Gemm and the pooled features in fp32 changes nothing: {} (cpu, against the shipped model's "
        "cosine above). The layer fallback's ranking, which puts the head's Gemm first, points at the wrong layer: "
        "the logits are where the noise shows, not where it is made.".format(
            _per_form(result, "cpu", "only the activations: input"),
            _per_form(result, "cpu", "only the activations: pooled features"),
            _per_form(result, "cpu", "all but the head (its weights and the pooled features)"),
        ),
    ]
    worst = []
    for data in datasets:
        for form in FORMS:
            roles = [(r, _cos(data, form, "only the activations: " + r)) for r in only_roles]
            roles = sorted((c, r) for r, c in roles if c is not None)
            worst.append(
                "{} {}: {}".format(data["dataset"], form, ", ".join("{} {:.3f}".format(r, c) for c, r in roles[:2]))
            )
    singles = {
        form: [c for d in datasets for c in (_cos(d, form, "only the activations: " + r) for r in only_roles) if c]
        for form in FORMS
    }
    lines.append(
        "**Where: mostly the expanded activations (the depthwise convs' inputs), in every block, compounding.** The "
        "two costliest activation classes, each quantized alone: {}. In the cpu form no class carries the loss: "
        "the worst alone keeps a cosine of {:.3f} or more while all together give the figures above, and the "
        "largest single "
        "quantizer's own SQNR loss is under {:.1f} dB (tables below). In the trt form the stem/expand quantizers "
        "(before and after ReLU6) alone cost most of it (worst single class {:.3f}). Removing the worst one or two "
        "classes on digits: cpu {} / {}, trt {} / {}.".format(
            "; ".join(worst),
            min(singles["cpu"]),
            max(own_losses(d["forms"]["cpu"]["tensors"])[0]["own_loss_db"] for d in datasets) + 0.05,
            min(singles["trt"]),
            _f(_cos(datasets[0], "cpu", "all but the activations: ReLU6 after stem/expand")),
            _f(_cos(datasets[0], "cpu", "all but the activations: ReLU6 after stem/expand and residual add output")),
            _f(_cos(datasets[0], "trt", "all but the activations: stem/expand output before ReLU6")),
            _f(
                _cos(
                    datasets[0],
                    "trt",
                    "all but the activations: stem/expand output before ReLU6 and ReLU6 after stem/expand",
                )
            ),
        )
    )
    drops = []
    for data in datasets:
        for form in FORMS:
            build = [t for t in block_outputs(data["forms"][form]["tensors"]) if t["block"].startswith("features.")]
            sqnr = [(t.get("after") or t["before"])["sqnr_db"] for t in build]
            steps = sorted(
                ((sqnr[i - 1] - sqnr[i], build[i]["block"], sqnr[i - 1], sqnr[i]) for i in range(1, len(build))),
                reverse=True,
            )
            drops.append(
                "{} {}: {}".format(
                    data["dataset"],
                    form,
                    ", ".join("{} {:.1f} -> {:.1f} dB".format(b, x, y) for _, b, x, y in steps[:2]),
                )
            )
    lines.append(
        "**The build-up: two blocks lose the most, both at their projection conv.** Largest SQNR drops from one "
        "block's output to the next: {}. Both blocks end in a projection (1x1, linear, no residual) conv that sums "
        "many quantized channels (features.1: 32, features.17: 960), whose rounding noise adds up while the signal "
        "partly cancels; the projection weights are not the cause "
        "(projection weights alone: {}). Not measured here: keeping those blocks' activations in fp32, the one "
        "fp32 fallback these numbers point at (the ranking the fallback uses points at the head).".format(
            "; ".join(drops), _per_form(result, "cpu", "only the projection weights")
        )
    )
    lines.append(
        "**The trt form: symmetric s8 spends a bit on the sign of non-negative ReLU6 outputs.** Its s8 symmetric "
        "ranges give a ReLU6 output half the levels of the cpu form's u8: the expanded ReLU6 outputs alone cost trt {} "
        "against cpu {}. It also quantizes each conv's output before its ReLU6 (ONNX Runtime's QDQ quantizer puts a "
        "Q/DQ on every Conv output and Clip is not in the trt form's op list): {} activation quantizers against the "
        "cpu form's {}; those alone cost {}, but many share their scale with the ReLU6 output after them, so dropping "
        "them gains little: {}. TensorRT's INT8 is symmetric only, so the half-range is the form's, "
        "not a choice.".format(
            _per_form(result, "trt", "only the activations: ReLU6 after stem/expand"),
            _per_form(result, "cpu", "only the activations: ReLU6 after stem/expand"),
            datasets[0]["forms"]["trt"]["quantizers"]["activations"],
            datasets[0]["forms"]["cpu"]["quantizers"]["activations"],
            _per_form(result, "trt", "only the activations: stem/expand output before ReLU6"),
            _per_form(result, "trt", "all but the conv outputs before ReLU6"),
        )
    )
    calibrations = []
    for data in datasets:
        for form in FORMS:
            rows = data["forms"][form]["calibration"]
            if len(rows) > 1:
                calibrations.append(
                    "{} {}: {}".format(
                        data["dataset"],
                        form,
                        ", ".join(
                            "{} on {} {} {:.3f}".format(
                                r["method"], r["images"], r["source"].split(":")[0], r["feature_cosine"]
                            )
                            for r in rows
                        ),
                    )
                )
    lines.append(
        "**Why every calibration method gives about the same cosine: the ranges are not what is wrong.** {}. Even "
        "calibrating on the very images measured does not help: the loss is 8-bit rounding noise of per-tensor "
        "activation scales, accumulated over 17 inverted-residual blocks, not clipping or an unrepresentative "
        "calibration set.".format("; ".join(calibrations))
    )
    lines.append(
        "**Much of what reaches the head is a per-channel shift.** Share of the pooled features' error that is a "
        "per-channel mean: {}.".format(
            "; ".join(
                "{} {}".format(d["dataset"], "/".join("{:.0%}".format(_pooled_bias_share(d, f) or 0.0) for f in FORMS))
                for d in datasets
            )
            + " (cpu/trt)"
        )
    )
    heads = []
    for data in datasets:
        by = {r["model"]: r for r in data["heads"]}
        heads.append(
            "{}: fp32 shipped {:.1%}, fp32 refit {:.1%}; cpu shipped {:.1%} -> refit {:.1%}; trt shipped {:.1%} -> "
            "refit {:.1%}".format(
                data["dataset"],
                by["fp32"]["shipped_head_val_top1"],
                by["fp32"]["refit_val_top1"],
                by["cpu"]["shipped_head_val_top1"],
                by["cpu"]["refit_val_top1"],
                by["trt"]["shipped_head_val_top1"],
                by["trt"]["refit_val_top1"],
            )
        )
    lines.append(
        "**The quantized features still hold the information: a head solved on them recovers most of it.** Val top-1 "
        "(edgetl's head solver refitted on {} training images' features of each model, compared with the same fit on "
        "fp32 features; the shipped head was solved on all training images, hence its higher fp32 figure): {}.".format(
            datasets[0]["heads"][0]["fit_images"], "; ".join(heads)
        )
    )
    lines.append(
        "**Repairs, in the order these numbers rank them.** (1) Re-solve the head on the INT8 base's features "
        "(cheap, the largest gain on digits, and it absorbs the per-channel shift). (2) Bias correction of the "
        "convs (NNCF FastBiasCorrection): it removes the per-channel-mean part of each conv's error (5-45% per conv "
        "in the tables, most of the pooled features' error on digits). (3) trt form: no Q/DQ on Conv outputs ahead "
        "of a ReLU6 (ONNX Runtime's OpTypesToExcludeOutputQuantization extra option), the placement quantize.py's "
        "docstring describes: a clean-up with a small gain (above), not a fix. (4) CLE: the costliest tensors' "
        "channel ranges spread "
        "only 3-14x (tables), so expect less from it than from (1)-(2); measure it. (5) Calibration method or set "
        "size: no gain to expect. (6) fp32 fallback of specific layers: no layer or class carries the loss, so a few "
        "fp32 layers cannot restore it (matches the 1/2/4/8-layer fallback measured before). (7) QAT, for what (1)-(2) "
        "leave; the trt form needs it "
        "most."
    )
    return lines


def markdown(result: Dict[str, Any]) -> str:
    machine = result["machine"]
    for data in result["datasets"]:
        for entry in data["forms"].values():
            for tensor in entry["tensors"]:
                tensor["block"] = block_name(tensor["tensor"], data["pooled_tensor"], "logits")
    conclusions = findings_summary(result)
    lines = [
        "# INT8 diagnosis: where MobileNetV2 loses the signal, per tensor",
        "",
        "Reproduce: `{}`".format(REPRODUCE),
        "",
        "Machine: {} ({} cores, ISA `{}`), {} ORT threads, load average {}; python {}; {}. Date {}; {} s.".format(
            machine["processor"] or machine["machine"],
            machine["cpu_count"],
            machine["cpu_isa"],
            THREADS,
            "/".join("{:.1f}".format(v) for v in result["load_before_after"]),
            machine["python"],
            ", ".join("{} {}".format(k, v) for k, v in sorted(result["packages"].items())),
            result["date"],
            round(result["wall_s"]),
        ),
        "",
        "Runs: pretrained MobileNetV2, `edgetl finetune --strategy feature-extractor` with its defaults (solved "
        "linear head); `edgetl export` wrote `model.onnx`; edgetl's `quantize_onnx` (the INT8 step of `export --int8`) "
        "quantized it in both forms with their default calibration ({} seeded training images): cpu = u8 asymmetric "
        "activations, s8 per-channel weights (the VNNI types, as the issue measured); trt = s8 symmetric activations "
        "and per-channel weights, Q/DQ on Conv/Gemm/Add inputs "
        "and (ONNX Runtime adds them) Conv outputs. Every INT8 model runs as float Q/DQ arithmetic "
        "(ONNX Runtime, graph optimisations off): the quantization's own error, not this CPU's kernels.".format(
            DEFAULT_CALIB_SIZE
        ),
        "",
        "Terms: *pooled features* = the head Gemm's input as the head reads it; *cosine* = mean per-image cosine "
        "with fp32; SQNR = 10 log10(sum fp32^2 / sum (INT8 - fp32)^2) over the images; *own loss* = a quantizer's "
        "SQNR drop (the tensor before vs after its Q/DQ); *node loss* = a node's output SQNR against the worst of "
        "its inputs as read (its quantized weights); *range spread* = the tensor's largest channel range over its "
        "median channel range (one per-tensor scale must cover it); *bias share* = the part of the error that is a "
        "per-channel mean (what bias correction removes). Ablations bypass quantizers of the shipped INT8 model "
        "(same scales), restoring a ReLU6 the cpu form had folded into a Q/DQ range.",
        "",
    ]
    if conclusions:
        lines += ["## Findings", ""] + ["- " + c for c in conclusions] + [""]
    lines += ["## Measured facts", ""] + ["- " + f for f in findings(result)] + [""]
    for data in result["datasets"]:
        lines += [
            "## {} ({} train / {} val images; run val top-1 {})".format(
                data["dataset"], data["train_images"], data["val_images_in_split"], _f(data["run_val_top1"])
            ),
            "",
            "Ablations and calibration variants on {} val images, the per-tensor pass on {}, the heads on {} "
            "(all class-balanced, seeded); measured by `{}` in {:.0f} s.".format(
                data["ablation_images"],
                data["tensor_images"],
                data["measured_val_images"],
                data["command"],
                data["wall_s"],
            ),
            "",
        ]
        for form, entry in data["forms"].items():
            lines += [
                "### {} form ({} calibration; {} activation and {} weight quantizers)".format(
                    form, entry["method"], entry["quantizers"]["activations"], entry["quantizers"]["weights"]
                ),
                "",
            ]
            header = ["pooled cosine", "pooled SQNR dB", "top-1 agreement", "val top-1"]

            def cells(row: Dict[str, Any]) -> List[str]:
                return [
                    _f(row["feature_cosine"]),
                    _db(row["feature_sqnr_db"]),
                    "{:.1%}".format(row["top1_agreement"]),
                    "{:.1%}".format(row["val_top1"]),
                ]

            lines += [
                markdown_table(
                    ["quantizers kept"] + header,
                    [[r["name"]] + cells(r) for r in entry["ablations"] if r.get("quantizers", 1)],
                ),
                "",
            ]
            lines += [
                markdown_table(
                    ["calibration", "images", "from"] + header,
                    [[r["method"], r["images"], r["source"]] + cells(r) for r in entry["calibration"]],
                ),
                "",
            ]
            build = block_outputs(entry["tensors"])
            lines += [
                "Build-up (each block's last tensor, as read):",
                "",
                markdown_table(
                    ["block", "tensor", "SQNR dB", "cosine"],
                    [
                        [
                            t["block"],
                            t["role"],
                            _f((t.get("after") or t["before"])["sqnr_db"], 1),
                            _f((t.get("after") or t["before"])["cosine"]),
                        ]
                        for t in build
                    ],
                ),
                "",
            ]
            lines += [
                "Costliest activation quantizers:",
                "",
                markdown_table(
                    [
                        "block",
                        "tensor",
                        "SQNR before dB",
                        "after dB",
                        "own loss dB",
                        "range spread",
                        "bias share of error",
                    ],
                    [
                        [
                            t["block"],
                            t["role"],
                            _f(t["before"]["sqnr_db"], 1),
                            _f(t["after"]["sqnr_db"], 1),
                            _f(t["own_loss_db"], 1),
                            "{:.0f}x".format(t["after"]["range_spread"]),
                            "{:.0%}".format(t["after"]["bias_share"]),
                        ]
                        for t in own_losses(entry["tensors"])[:8]
                    ],
                ),
                "",
            ]
            lines += [
                "Costliest nodes (quantized weights):",
                "",
                markdown_table(
                    ["block", "output", "input SQNR dB", "output SQNR dB", "node loss dB", "bias share of error"],
                    [
                        [
                            t["block"],
                            t["role"],
                            _f(t["input_sqnr_db"], 1),
                            _f(t["before"]["sqnr_db"], 1),
                            _f(t["node_loss_db"], 1),
                            "{:.0%}".format(t["before"]["bias_share"]),
                        ]
                        for t in node_losses(entry["tensors"], data["node_inputs"])[:8]
                    ],
                ),
                "",
            ]
        lines += [
            "### Heads on INT8 features",
            "",
            markdown_table(
                ["model", "shipped head val top-1", "fp32-fitted solver head", "solver refit on these features", "L2"],
                [
                    [
                        r["model"],
                        "{:.1%}".format(r["shipped_head_val_top1"]),
                        "{:.1%}".format(r["fp32_fit_val_top1"]),
                        "{:.1%}".format(r["refit_val_top1"]),
                        "{:.3g}".format(r["refit_l2"]),
                    ]
                    for r in data["heads"]
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(SOURCES), default=list(SOURCES))
    parser.add_argument("--val-images", type=int, default=300, help="val images the heads are scored on")
    parser.add_argument("--ablation-images", type=int, default=64, help="of those, the ablations' and calibrations'")
    parser.add_argument("--tensor-images", type=int, default=32, help="of those, the per-tensor pass's")
    parser.add_argument("--fit-images", type=int, default=400, help="training images the head is refitted on")
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    parser.add_argument(
        "--calibration-sets",
        nargs="*",
        default=["digits"],
        help="datasets whose calibration set is varied (size, which images)",
    )
    parser.add_argument("--calibration-sizes", nargs="*", type=int, default=[32])
    parser.add_argument("--calibration-sets-form", choices=FORMS, default="cpu")
    parser.add_argument("--methods-forms", nargs="*", choices=FORMS, default=["trt"])
    parser.add_argument("--methods-datasets", nargs="*", default=["digits"], help="datasets calibrated by every method")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the recorded .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-models", type=Path, help="keep (and reuse) the models here, not in a temporary folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    command = "python benchmarks/diagnose_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    previous = _load(args.out / "int8_diagnosis.json")
    if args.markdown_only:
        atomic_write_text(args.out / "int8_diagnosis.md", markdown(previous))  # also names each tensor's block
        atomic_write_text(args.out / "int8_diagnosis.json", json.dumps(previous, indent=1, default=float) + "\n")
        return previous
    datasets = {d["dataset"]: d for d in previous.get("datasets", [])}
    with tempfile.TemporaryDirectory(prefix="edgetl-int8-diagnosis-") as tmp:
        for name in args.datasets:
            work = (args.keep_models or Path(tmp)) / name
            work.mkdir(parents=True, exist_ok=True)
            datasets[name] = dict(diagnose(SOURCES[name], args, work), command=command)
            machine = machine_info(THREADS)
            result = {  # written after each dataset: a long run keeps what it measured
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine,
                "packages": _packages(),
                "wall_s": time.perf_counter() - started,
                "load_before_after": [load_before, os.getloadavg()[0]],
                "datasets": [datasets[n] for n in SOURCES if n in datasets],
            }
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / "int8_diagnosis.json", json.dumps(result, indent=1, default=float) + "\n")
            try:  # the measurements are kept whatever the report does (--markdown-only rewrites it)
                atomic_write_text(args.out / "int8_diagnosis.md", markdown(result))
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    print((args.out / "int8_diagnosis.md").read_text())
    return result


def _packages() -> Dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("onnx", "onnxruntime", "onnxruntime-gpu", "torch", "torchvision", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    main()
