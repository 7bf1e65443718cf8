"""INT8 by explicit quantization: a static Q/DQ ONNX from onnxruntime.quantization, calibrated on
a class-balanced, seeded sample of real training images, recorded in a manifest (paths + sha256)
so the same INT8 model can be rebuilt (pass the manifest back as ``--calib-data``).

Two forms of the same model:
- ``trt``: signed int8 activations and weights, both symmetric (zero point 0), bias left in float,
  Q/DQ on the inputs of weighted layers and residual adds: what TensorRT's explicit
  quantization accepts (and the only INT8 path of TensorRT 11).
- ``cpu``: unsigned activations (asymmetric) with signed weights, Q/DQ on every op ONNX Runtime
  quantizes: the form its CPU kernels run fastest.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from edgetl.contracts.formats import CALIB_METHODS, DQ_OP, INT8_CPU_FORMS, Q_OP, Int8CpuForm
from edgetl.contracts.preprocess import PreprocessSpec, eval_array, load_input
from edgetl.contracts.schema import is_int, is_str, list_of, one_of, read_json, record
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_write_text, sha256_file
from edgetl.data.folders import DatasetSplit, Sample, image_files, scan_class_folders
from edgetl.data.sampling import select_balanced
from edgetl.errors import DataError

log = logging.getLogger(__name__)

# --calib-method (the names of edgetl.contracts.formats.CALIB_METHODS) -> onnxruntime's calibrator
ORT_CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
assert tuple(ORT_CALIBRATION_METHODS) == CALIB_METHODS, "one calibrator per name of the formats table"
_QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
MANIFEST_FORMAT = "edgetl-calibration-v1"
_TRT_QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add"]
_FOLDED_ACTIVATIONS = ("Relu", "Clip")  # onnxruntime's QDQRemovableActivation
_CHUNK = 16  # images per calibration pass: bounds the memory of collected activations


def calibration_samples(run_dir: Path, calib_data: Optional[str], size: int, seed: int) -> Tuple[List[Sample], str]:
    """The calibration images and where they came from. Missing data is a hard error."""
    if calib_data is None:
        if not (Path(run_dir) / "split.json").is_file():
            raise DataError(
                "{} has no split.json to take calibration images from; pass --calib-data DIR".format(run_dir)
            )
        pool, source = DatasetSplit.load(Path(run_dir)).train, "the run's training split"
    elif Path(calib_data).is_file() and calib_data.endswith(".json"):
        return read_calibration_manifest(Path(calib_data)), "manifest " + calib_data
    else:
        pool, source = _images_in(Path(calib_data)), calib_data
    missing = [s.path for s in pool if not Path(s.path).is_file()]
    if missing:
        raise DataError(
            "{} calibration image(s) from {} are missing (e.g. {}); pass --calib-data DIR".format(
                len(missing), source, missing[0]
            )
        )
    if not pool:
        raise DataError("no calibration images in {}".format(source))
    return select_balanced(pool, size, seed), source


def _images_in(root: Path) -> List[Sample]:
    """Class folders (balanced by class) or a flat folder of images."""
    if not root.is_dir():
        raise DataError("--calib-data folder not found: {}".format(root))
    if sum(1 for p in root.iterdir() if p.is_dir()) >= 2:
        return scan_class_folders(root)[1]
    return [Sample(p, 0) for p in image_files(root, recursive=False)]


def write_calibration_manifest(path: Path, samples: Sequence[Sample], details: Dict[str, Any]) -> None:
    entries = [{"path": str(s.path), "label": s.label, "sha256": sha256_file(Path(s.path))} for s in samples]
    atomic_write_text(path, json.dumps(dict(details, format=MANIFEST_FORMAT, images=entries), indent=1) + "\n")


CALIBRATION_MANIFEST_SCHEMA = record(
    {
        "format": one_of(MANIFEST_FORMAT),
        "images": list_of(record({"path": is_str, "sha256": is_str, "label": is_int}), min_length=1),
    }
)


def read_calibration_manifest(path: Path) -> List[Sample]:
    """The samples of a manifest, each file verified against its recorded sha256."""
    entries = read_json(path, CALIBRATION_MANIFEST_SCHEMA, DataError)["images"]
    for entry in entries:
        if not Path(entry["path"]).is_file():
            raise DataError("calibration image {} (from {}) is missing".format(entry["path"], path))
        if sha256_file(Path(entry["path"])) != entry["sha256"]:
            raise DataError("calibration image {} changed since {} was written".format(entry["path"], path))
    return [Sample(Path(e["path"]), int(e["label"])) for e in entries]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds calibration images one at a time, decoding each only when asked (nothing in __init__)."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, input_name: str, batch: int = 1) -> None:
        self.paths = [s.path for s in samples]
        self.spec, self.input_name, self.batch = spec, input_name, batch
        self.start, self.end = 0, len(self)

    def __len__(self) -> int:
        return len(self.paths) // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.start >= min(self.end, len(self)):
            return None
        first = self.start * self.batch
        self.start += 1
        images = [eval_array(load_input(p, self.spec), self.spec) for p in self.paths[first : first + self.batch]]
        return {self.input_name: np.stack(images)}


def _chunk_size(total: int) -> int:
    """The largest divisor of ``total`` up to _CHUNK (onnxruntime needs equal chunks)."""
    return max(d for d in range(1, min(_CHUNK, total) + 1) if total % d == 0)


class _DropOrtAdvice(logging.Filter):
    """onnxruntime logs advice to run its optimiser first; our graphs are already constant-folded."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    reader: ImageCalibrationReader,
    form: str,
    method: str,
    cpu_form: Optional[Int8CpuForm] = None,
    keep_fp32: Sequence[str] = (),
    calibration_cache: Optional[Path] = None,
) -> None:
    """Write the static Q/DQ INT8 model of ``fp32_path`` (per-channel weights) in ``form`` (``INT8_FORMS``);
    the ``cpu`` form takes its activation/weight types from ``cpu_form`` (``INT8_CPU_FORMS`` of the target ISA).
    The nodes named in ``keep_fp32`` stay fp32: no Q/DQ on their inputs or weights (nor on those of the
    Relu/Clip feeding them, see ``with_activations``). With ``calibration_cache``
    (a file path) the activation ranges are computed once and read back on later calls."""
    if form == "trt":
        options = dict(
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=_TRT_QUANTIZED_OPS,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    else:
        types = cpu_form or INT8_CPU_FORMS["vnni"]
        options = dict(
            activation_type=_QUANT_TYPES[types.activations],
            weight_type=_QUANT_TYPES[types.weights],
            reduce_range=types.reduce_range,
            extra_options={},
        )
    options["extra_options"]["CalibStridedMinMax"] = _chunk_size(len(reader))
    keep_fp32 = with_activations(onnx.load(str(fp32_path)), keep_fp32) if keep_fp32 else []
    if calibration_cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        options["calibration_cache_path"] = str(calibration_cache)  # onnxruntime >= 1.24; older ones recalibrate
    require("onnxruntime").set_default_logger_severity(3)  # calibration sessions warn about folded constants
    root = logging.getLogger()
    advice = _DropOrtAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(
                str(fp32_path),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                calibrate_method=ORT_CALIBRATION_METHODS[method],
                nodes_to_exclude=list(keep_fp32),
                **options,
            )
    finally:
        root.removeFilter(advice)
    if keep_fp32:
        model = onnx.load(str(out_path))
        feed_fp32(model, set(keep_fp32))
        onnx.save(model, str(out_path))


def with_activations(model: onnx.ModelProto, nodes: Sequence[str]) -> List[str]:
    """``nodes`` and the Relu/Clip nodes producing their inputs. onnxruntime drops such an activation
    when it can clip by its output's Q/DQ range instead, so a kept node fed straight from the
    unquantized tensor would skip the activation: the activation stays in the graph, in fp32 too."""
    producer = {out: node for node in model.graph.node for out in node.output}
    kept = list(nodes)
    for node in model.graph.node:
        if node.name in nodes:
            for name in node.input:
                source = producer.get(name)
                if source is not None and source.op_type in _FOLDED_ACTIVATIONS and source.name not in kept:
                    kept.append(source.name)
    return kept


def quantized_source(producer: Dict[str, onnx.NodeProto], tensor: str) -> Optional[str]:
    """The float tensor that ``tensor`` is the QuantizeLinear -> DequantizeLinear copy of (None: not one)."""
    dequantize = producer.get(tensor)
    if dequantize is None or dequantize.op_type != DQ_OP:
        return None
    quantize = producer.get(dequantize.input[0])
    return quantize.input[0] if quantize is not None and quantize.op_type == Q_OP else None


def feed_fp32(model: onnx.ModelProto, nodes: Set[str]) -> None:
    """Give the ``nodes`` their activations unquantized: onnxruntime quantizes a producer's output for
    every consumer, kept-fp32 ones included; the Q/DQ pairs this leaves unused are removed."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name not in nodes:
            continue
        for index, name in enumerate(node.input):
            node.input[index] = quantized_source(producer, name) or name
    prune_quantizers(model)


def prune_quantizers(model: onnx.ModelProto) -> None:
    """Drop the Q/DQ nodes, and then the initializers, that nothing reads any more."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        unused = [n for n in graph.node if n.op_type in (Q_OP, DQ_OP) and not any(o in used for o in n.output)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)
