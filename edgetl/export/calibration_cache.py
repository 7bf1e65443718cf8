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
from edgetl.export.quantize import DQ_OP, Q_OP
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
    model a consumer quantizes itself). A tensor is found as the same input of the nodes (by name) that read
    its dequantized copy, or, for one no node reads (a graph output), as the same output of its producer; so
    a graph input maps to whatever the first layers read in ``fp32`` (its own input, or the normalised pixels
    of a graph that normalises itself). ExportError when a tensor has no single counterpart."""
    consumers: Dict[str, list] = {}
    for node in qdq.graph.node:
        for index, tensor in enumerate(node.input):
            consumers.setdefault(tensor, []).append((node.name, index))
    dequantized = {node.input[0]: node.output[0] for node in qdq.graph.node if node.op_type == DQ_OP}
    quantized = {node.input[0]: dequantized.get(node.output[0]) for node in qdq.graph.node if node.op_type == Q_OP}
    producer = {out: (node.name, index) for node in qdq.graph.node for index, out in enumerate(node.output)}
    fp32_nodes = {node.name: node for node in fp32.graph.node if node.name}
    scales: Dict[str, np.float32] = {}
    for tensor, scale in activation_scales(qdq).items():
        names = {
            fp32_nodes[node].input[index]
            for node, index in consumers.get(quantized.get(tensor) or "", [])
            if node in fp32_nodes and index < len(fp32_nodes[node].input)
        }
        node, index = producer.get(tensor, ("", 0))
        if not names and node in fp32_nodes:
            names = {fp32_nodes[node].output[index]}
        if len(names) != 1:
            raise ExportError("{} of the INT8 model has no single counterpart in the float model".format(tensor))
        scales[names.pop()] = scale
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
