"""TensorRT's INT8 calibration cache: the text a TensorRT calibrator hands back instead of calibrating
(``IInt8Calibrator.read_calibration_cache``), read by DeepStream's ``int8-calib-file``, ``trtexec --calib``
and DLA builds. edgetl writes it from the scales of its Q/DQ calibration, so every consumer quantizes
with the scales the accuracy gate judged: ``scales_for`` reads them from
the gated Q/DQ model and ``write_cache_for`` writes a bundle's cache.

Format, as TensorRT writes it and as onnxruntime's TensorRT provider and NVIDIA's qdq-translator
(Deep-Learning-Accelerator-SW) read and write it: a header line ``TRT-<version>-EntropyCalibration2``,
then one ``<tensor>: <hex>`` line per activation tensor, ``<hex>`` being the IEEE-754 bits of the
float32 scale (dynamic range / 127) as a big-endian hex number. ``<version>`` is NV_TENSORRT_VERSION
of the TensorRT that reads the cache (8.x: major*1000 + minor*100 + patch; 10+: major*10000 + ...):
TensorRT refuses a cache whose header names another release, so the header is set on the device
(``build_engine.sh``, ``set_calibration_version.sh``, or ``stamped`` in memory by edgetl's own build).
Torch-free, Python 3.8.
"""

from __future__ import annotations

import re
import shlex
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from edgetl.contracts.engine_sidecar import version_tuple
from edgetl.contracts.formats import DQ_OP, Q_OP
from edgetl.core.fileio import atomic_write_text
from edgetl.errors import ConfigError, ExportError

if TYPE_CHECKING:
    import onnx

CALIBRATOR = "EntropyCalibration2"  # the name TensorRT's IInt8EntropyCalibrator2 (and trtexec's) expects
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def tensorrt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION of a TensorRT version string: ``"8.6.2.3"`` -> 8602, ``"10.3.0.30"`` -> 100300."""
    numbers = version_tuple(version)
    if not numbers:
        raise ConfigError("not a TensorRT version: {!r}".format(version))
    major, minor, patch = (list(numbers) + [0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """The cache's spelling of a scale: its float32 bits, big-endian, as 8 hex digits."""
    return struct.pack(">f", scale).hex()


def format_cache(scales: Mapping[str, float], version: int) -> str:
    """The cache text for ``scales`` (tensor name -> float32 scale), in the given order."""
    for name, scale in scales.items():
        if not name or ":" in name or "\n" in name:
            raise ConfigError("tensor name {!r} cannot be written to a TensorRT calibration cache".format(name))
        if not scale > 0:
            raise ConfigError("tensor {} has scale {}; a calibration scale must be > 0".format(name, scale))
    lines = ["TRT-{}-{}".format(version, CALIBRATOR)]
    lines += ["{}: {}".format(name, scale_hex(scale)) for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> Tuple[int, Dict[str, float]]:
    """(header version, tensor -> float32 scale) of a cache; ConfigError naming the first bad line."""
    lines = text.splitlines()
    match = _HEADER.match(lines[0].strip()) if lines else None
    if match is None or match.group(2) != CALIBRATOR:
        raise ConfigError("not a TensorRT {} calibration cache (header {!r})".format(CALIBRATOR, lines[:1]))
    scales = {}  # type: Dict[str, float]
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or not re.match(r"^[0-9a-fA-F]{1,8}$", value) or name in scales:
            raise ConfigError("calibration cache line {} is not '<tensor>: <hex>': {!r}".format(number, line))
        scales[name] = struct.unpack(">f", bytes.fromhex(value.zfill(8)))[0]
    return int(match.group(1)), scales


def stamped(text: str, version: int) -> str:
    """The cache with its header naming TensorRT ``version`` (NV_TENSORRT_VERSION)."""
    parse_cache(text)
    rest = text.partition("\n")[2]
    return "TRT-{}-{}\n{}".format(version, CALIBRATOR, rest)


def write_cache(path: Path, scales: Mapping[str, float], version: int) -> None:
    atomic_write_text(Path(path), format_cache(scales, version))


def stamp_script_lines(caches: Sequence[str]) -> List[str]:
    """sh lines that set each calibration cache's header to this device's TensorRT (NV_TENSORRT_VERSION):
    from Python's tensorrt, else from NvInferVersion.h (JetPack's libnvinfer-dev; from TensorRT 10.11 its
    NV_TENSORRT_MAJOR/MINOR/PATCH name TRT_*_ENTERPRISE macros, resolved here); ``$PYTHON`` must be set."""
    quoted = " ".join(shlex.quote(c) for c in caches)
    return [
        "# A calibration cache names the TensorRT that reads it (TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2):",
        "# set it to this device's, from Python's tensorrt or NvInferVersion.h.",
        "trt_version_number() {",
        '  "$PYTHON" -c \'import tensorrt as t; m, n, p = (int(x) for x in t.__version__.split(".")[:3]); '
        "print(m * (10000 if m >= 10 else 1000) + n * 100 + p)' 2>/dev/null && return",
        "  for h in ${NVINFER_VERSION_H:-/usr/include/*/NvInferVersion.h /usr/include/NvInferVersion.h}; do",
        '    [ -f "$h" ] || continue',
        "    set --",
        "    for part in MAJOR MINOR PATCH; do  # from 10.11: #define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE",
        '      v=$(sed -n "s/^#define NV_TENSORRT_$part \\([A-Za-z0-9_]*\\).*/\\1/p" "$h")',
        '      case "$v" in [0-9]*) ;; ?*) v=$(sed -n "s/^#define $v \\([0-9][0-9]*\\).*/\\1/p" "$h") ;; esac',
        '      set -- "$@" $v',
        "    done",
        "    [ $# -eq 3 ] && echo $(( $1 * ($1 >= 10 ? 10000 : 1000) + $2 * 100 + $3 )) && return",
        "  done",
        "  return 1",
        "}",
        'TRT_VERSION="$(trt_version_number)" || { echo "cannot tell this device\'s TensorRT version" >&2; exit 1; }',
        "for cache in {}; do".format(quoted),
        '  sed -i "1s/^TRT-[0-9]*-/TRT-$TRT_VERSION-/" "$cache"',
        "done",
    ]


def activation_scales(model: onnx.ModelProto) -> Dict[str, np.float32]:
    """Tensor name -> float32 scale of every activation (graph input or node output) a Q/DQ model quantizes.
    ExportError for what a cache cannot express: a zero point other than 0, a per-channel activation scale,
    or one tensor quantized with two scales."""
    from onnx import numpy_helper

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
    import onnx

    scales = scales_for(onnx.load(str(int8_path)), onnx.load(str(fp32_path)))
    version = tensorrt_version_number(trt_version)
    write_cache(path, {name: float(s) for name, s in scales.items()}, version)
    entry = {"file": path.name, "from": int8_path.name, "for": fp32_path.name, "tensors": len(scales)}
    return dict(entry, header_version=version)
