"""Re-solve a feature extractor's linear head on what the INT8 base really outputs.

A frozen base's features change under quantization (noise, shifted means), and a head solved on fp32
features can be intolerant of that even when the features still separate the classes. The base is frozen, so
its INT8 features are computed once, by ONNX Runtime on the INT8 model cut at the head's input (the
dequantized tensor the head's Gemm reads, run the way the gate runs the form), and the same convex fit
finetune uses (``edgetl.train.linear_head``) solves the head on them. The new head is written into a copy of
the fp32 ONNX model, which is then quantized like the original (same calibration ranges, so the base's
quantization is unchanged).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgetl.core.deps import require
from edgetl.errors import ExportError
from edgetl.export.parity import outputs_in_chunks
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.train.linear_head import fit_linear_head

torch = require("torch")


def head_gemm(model: onnx.ModelProto) -> Optional[onnx.NodeProto]:
    """The classifier head: the Gemm (transB=1, weight and bias initializers) producing the graph's output,
    directly or through a Softmax; None when the graph ends otherwise (an MLP head ends in a Gemm too, but
    then its input is not the base's features: callers check the run's head kind)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get(model.graph.output[0].name)
    if node is not None and node.op_type == "Softmax":
        node = producer.get(node.input[0])
    initializers = {init.name for init in model.graph.initializer}
    if node is None or node.op_type != "Gemm" or len(node.input) < 3:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("transB", 0) != 1 or attributes.get("transA", 0) != 0:
        return None
    return node if node.input[1] in initializers and node.input[2] in initializers else None


def int8_features(
    fp32_path: Path,
    int8_path: Path,
    crops: np.ndarray,
    prepare: Callable[[np.ndarray], np.ndarray],
    optimize: bool,
    work: Path,
) -> np.ndarray:
    """The tensor the INT8 model's head (the node of ``fp32_path``'s head's name) reads, for uint8 ``crops``:
    the INT8 model cut there, run by ONNX Runtime."""
    head = head_gemm(onnx.load(str(fp32_path)))
    if head is None:
        raise ExportError(f"{fp32_path.name} has no linear head (a Gemm producing its output) to re-solve")
    model = onnx.load(str(int8_path))
    found = [node for node in model.graph.node if node.name == head.name]
    if len(found) != 1:
        raise ExportError(f"{int8_path.name} has no single node {head.name!r} (the fp32 model's head)")
    features = found[0].input[0]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, None))
    cut = work / "int8_features.onnx"
    onnx.save(model, str(cut))
    with OnnxRuntimeRunner(cut, optimize=optimize) as runner:
        name = next(iter(runner.input_metadata()))
        return outputs_in_chunks(lambda x: runner.infer({name: x})[features], crops, prepare).astype(np.float32)


def with_head(fp32_path: Path, out_path: Path, weight: np.ndarray, bias: np.ndarray) -> str:
    """Write ``fp32_path`` with its head's weight and bias replaced; returns the sha256 of the new float32
    weight then bias bytes."""
    model = onnx.load(str(fp32_path))
    head = head_gemm(model)
    if head is None:
        raise ExportError(f"{fp32_path.name} has no linear head (a Gemm producing its output) to re-solve")
    weight, bias = np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32)
    replaced = {head.input[1]: weight, head.input[2]: bias}
    for init in model.graph.initializer:
        if init.name in replaced:
            if tuple(init.dims) != replaced[init.name].shape:
                raise ExportError(f"head {init.name}: shape {tuple(init.dims)} != {replaced[init.name].shape}")
            init.CopyFrom(numpy_helper.from_array(replaced[init.name], init.name))
    onnx.save(model, str(out_path))
    return hashlib.sha256(weight.tobytes() + bias.tobytes()).hexdigest()


@dataclass
class HeadSolve:
    """What the re-solved head was fitted on and how; ``to_dict`` is the report entry."""

    weights_sha256: str  # of the float32 weight then bias bytes written into the model
    fit_images: int
    feature_dim: int
    l2: float
    cv_folds: int
    cv_top1: Optional[float]  # held-out top-1 of the chosen L2 in cross-validation
    train_top1: float  # of the solved head on its own INT8 features
    feature_seconds: float
    fit_seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def solve_int8_head(
    *,
    fp32_path: Path,
    int8_path: Path,
    out_fp32_path: Path,
    crops: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    prepare: Callable[[np.ndarray], np.ndarray],
    optimize: bool,
    work: Path,
    seed: int = 0,
    label_smoothing: float = 0.0,
    class_weight: Optional[Any] = None,
) -> Tuple[HeadSolve, Path]:
    """Fit the head on ``int8_path``'s features of ``crops`` (labelled ``labels``) and write it into a copy of
    ``fp32_path`` at ``out_fp32_path`` (which the caller quantizes)."""
    started = time.perf_counter()
    features = int8_features(fp32_path, int8_path, crops, prepare, optimize, work)
    feature_seconds = time.perf_counter() - started
    x, y = torch.from_numpy(features), torch.from_numpy(np.asarray(labels, np.int64))
    fit = fit_linear_head(x, y, num_classes, seed=seed, label_smoothing=label_smoothing, class_weight=class_weight)
    weight, bias = fit.weight.numpy(), fit.bias.numpy()
    sha = with_head(fp32_path, out_fp32_path, weight, bias)
    train_top1 = float(((features.astype(np.float64) @ weight.T + bias).argmax(1) == labels).mean())
    cv_top1 = next((top1 for l2, top1, _ in fit.cv if l2 == fit.l2), None)
    solve = HeadSolve(
        sha, len(labels), features.shape[1], fit.l2, fit.folds, cv_top1, train_top1, feature_seconds, fit.seconds
    )
    return solve, out_fp32_path
