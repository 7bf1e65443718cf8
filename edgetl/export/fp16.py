"""Float16 ONNX conversion, for strongly typed TensorRT (>= 11 has no FP16 builder flag).

Weights, constants and every intermediate tensor become float16; the graph inputs and outputs
stay float32 with a Cast at each boundary, so applications feed and read the same arrays as
with the fp32 model. Python 3.8 syntax; needs only onnx and numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgetl.errors import ExportError

_FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that the ONNX spec types as float32 whatever the data type (op type -> input indices).
_FLOAT32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


def _to_fp16(tensor: TensorProto) -> TensorProto:
    values = np.clip(numpy_helper.to_array(tensor), -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(values, tensor.name)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 model with float32 graph inputs/outputs."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for attr in node.attribute
    ):
        raise ExportError("float16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")
    keep_float32 = {
        node.input[i] for node in graph.node for i in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()) if i < len(node.input)
    }
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep_float32:
            graph.initializer[index].CopyFrom(_to_fp16(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                if not (node.op_type == "Constant" and node.output[0] in keep_float32):
                    attr.t.CopyFrom(_to_fp16(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    _cast_boundaries(graph)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)


def _cast_boundaries(graph: onnx.GraphProto) -> None:
    """Cast float32 graph inputs to float16 on entry and float16 results back to float32 on exit."""
    initializers = {init.name for init in graph.initializer}
    entry, exit_ = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT or value.name in initializers:
            continue
        half = value.name + "_fp16"
        for node in graph.node:
            node.input[:] = [half if name == value.name else name for name in node.input]
        entry.append(
            onnx.helper.make_node("Cast", [value.name], [half], to=TensorProto.FLOAT16, name=value.name + "_to_fp16")
        )
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = value.name + "_fp16"
        for node in graph.node:
            node.output[:] = [half if name == value.name else name for name in node.output]
            node.input[:] = [half if name == value.name else name for name in node.input]
        exit_.append(
            onnx.helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT, name=value.name + "_to_fp32")
        )
    nodes = entry + list(graph.node) + exit_
    del graph.node[:]
    graph.node.extend(nodes)
