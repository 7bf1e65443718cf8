"""The TensorRT calibration cache of a bundle's INT8 model: the scales its Q/DQ calibration chose, by the
name of the float tensor each one quantizes, so DeepStream's ``int8-calib-file``, ``trtexec --int8 --calib``
and DLA builds quantize exactly where and as the gated model does (format: edgetl.trt.calib_cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import onnx
from onnx import numpy_helper

from edgetl.errors import ExportError
from edgetl.export.quantize import Q_OP
from edgetl.trt.calib_cache import tensorrt_version_number, write_cache


def activation_scales(model: onnx.ModelProto) -> Dict[str, np.float32]:
    """Tensor name -> float32 scale of every activation (graph input or node output) a Q/DQ model quantizes.
    ExportError for what a cache cannot express: a zero point other than 0, a per-channel activation scale,
    or one tensor quantized with two scales."""
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales: Dict[str, np.float32] = {}
    for node in model.graph.node:
        if node.op_type != Q_OP or node.input[0] in initializers:
            continue  # weights are quantized per channel by TensorRT itself
        scale = initializers[node.input[1]]
        zero_point = initializers[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(1)
        if scale.size != 1 or np.any(zero_point != 0):
            raise ExportError(
                "{} is not quantized symmetrically per tensor (scale {}, zero point {}); a TensorRT calibration "
                "cache needs the trt INT8 form".format(node.input[0], scale.tolist(), zero_point.tolist())
            )
        value = np.float32(scale.reshape(()))
        if scales.setdefault(node.input[0], value) != value:
            raise ExportError("{} is quantized with two scales".format(node.input[0]))
    return scales


def scales_for(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> Dict[str, np.float32]:
    """The Q/DQ model's activation scales keyed by the names the same tensors have in ``fp32`` (the float
    model a consumer quantizes itself): the graph input by position, every other tensor as the same output
    of the node of the same name (onnxruntime renames a quantized graph output). ExportError if one has none."""
    producer = {out: (node.name, index) for node in qdq.graph.node for index, out in enumerate(node.output)}
    outputs = {node.name: list(node.output) for node in fp32.graph.node if node.name}
    graph_inputs = dict(zip((i.name for i in qdq.graph.input), (i.name for i in fp32.graph.input)))
    scales: Dict[str, np.float32] = {}
    for tensor, scale in activation_scales(qdq).items():
        node, index = producer.get(tensor, ("", 0))
        name = graph_inputs.get(tensor) or (outputs[node][index] if node in outputs else None)
        if name is None:
            raise ExportError("{} of the INT8 model has no counterpart in the float model".format(tensor))
        scales[name] = scale
    return scales


def write_cache_for(path: Path, int8_path: Path, fp32_path: Path, trt_version: str) -> Dict[str, Any]:
    """Write the calibration cache of the Q/DQ model at ``int8_path`` for the float model at ``fp32_path``;
    returns its manifest entry. The header names ``trt_version`` (the export's --trt-version) until the
    device sets its own."""
    scales = scales_for(onnx.load(str(int8_path)), onnx.load(str(fp32_path)))
    version = tensorrt_version_number(trt_version)
    write_cache(path, {name: float(s) for name, s in scales.items()}, version)
    entry = {"file": path.name, "from": int8_path.name, "for": fp32_path.name, "tensors": len(scales)}
    return dict(entry, header_version=version)
