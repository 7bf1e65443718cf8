"""``--for deepstream``: Gst-nvinfer classifier configs and their models, loaded by nvinfer as they are.

What nvinfer does (DeepStream 6.3/7.x sources: gst-plugins/gst-nvinfer/gstnvinfer_property_parser.h,
libs/nvdsinfer/nvdsinfer_model_builder.cpp):
- reads ``[property]`` key=value groups (GLib key file; lists separated by ``;``);
- feeds ``net-scale-factor * (pixel - offsets[c])`` per channel, RGB for ``model-color-format=0``, after
  scaling the frame or object to ``infer-dims`` (C;H;W): one scalar scale, so a per-channel std can only
  be approximated (``config_infer.txt``) unless the graph normalises itself (``config_infer_exact.txt``:
  float 0-255 NCHW input, ``net-scale-factor=1``);
- a classifier (``network-type=1``) parses softmax probabilities and attaches each label whose probability
  exceeds ``classifier-threshold``; ``labelfile-path`` holds the labels on one line, separated by ``;``;
- builds the engine itself (``network-mode`` 0 fp32, 1 int8, 2 fp16; INT8 needs ``int8-calib-file`` or it
  falls back to FP16) and writes it beside the ONNX as ``<onnx>_b<batch-size>_<gpu<id>|dla<core>>_<mode>.engine``,
  the name ``model-engine-file`` gives so the next start loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from edgetl.contracts.formats import CALIBRATION_CACHE, CONSUMERS, GEOMETRIES, ONNX_FILES
from edgetl.contracts.geometry import NVINFER_SCALING
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import atomic_write_text
from edgetl.errors import ExportError
from edgetl.export.targets.common import (
    TargetFailed,
    TargetInputs,
    checked_onnx,
    geometry_note,
    pixel_batch,
    val_top1,
    write_labels,
    write_readme,
)
from edgetl.export.torch_to_onnx import PIXELS_FLOAT_NCHW, ExportModule
from edgetl.trt.calibration_cache import stamp_script_lines, write_cache_for

NAME = "deepstream"
CONSUMER = "DeepStream 6.3 and 7.x (Gst-nvinfer)"
GEOMETRY = GEOMETRIES[2]  # nvinfer-stretch (NVINFER_SCALING): the whole frame stretched, nvinfer's default
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
CLASSIFIER_THRESHOLD = 0.51  # as NVIDIA's sample classifiers: above 0.5, at most one softmax label passes
MODEL, EXACT_MODEL = "model.onnx", "model_pixels.onnx"
EXACT_CACHE = "calibration_pixels.cache"  # the same scales, keyed to model_pixels.onnx (its input is the pixels)
CONFIG, EXACT_CONFIG = "config_infer.txt", "config_infer_exact.txt"
STAMP_SCRIPT = "set_calibration_version.sh"


def nvinfer_scaling(spec: PreprocessSpec) -> Tuple[float, List[float]]:
    """(net-scale-factor, offsets) closest to the spec's normalisation: offsets are the mean in pixels
    (exact), the scale is the mean of the per-channel factors 1 / (255 std) (approximate unless equal)."""
    factors = [1.0 / (255.0 * s) for s in spec.std]
    return float(np.mean(factors)), [255.0 * m for m in spec.mean]


def nvinfer_input(scale: float, offsets: List[float]) -> Callable[[np.ndarray], np.ndarray]:
    """What nvinfer feeds a model for uint8 crops: ``scale * (pixel - offsets[c])`` in float32, NCHW."""
    offset = np.asarray(offsets, np.float32)[None, :, None, None]
    return lambda crops: (pixel_batch(crops) - offset) * np.float32(scale)


def engine_name(onnx_file: str, batch: int, precision: str, dla_core: Optional[int], gpu_id: int = 0) -> str:
    """The engine file nvinfer writes for ``onnx_file`` (TrtModelBuilder::buildModel)."""
    device = "gpu{}".format(gpu_id) if dla_core is None else "dla{}".format(dla_core)
    return "{}_b{}_{}_{}.engine".format(onnx_file, batch, device, precision)


def config_text(groups: Dict[str, Dict[str, Any]], comments: List[str]) -> str:
    """A GLib key file: ``# comment`` lines, then ``[group]`` and ``key=value`` lines."""
    lines = ["# " + c for c in comments]
    for group, values in groups.items():
        lines += ["", "[{}]".format(group)] + ["{}={}".format(k, v) for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _properties(inputs: TargetInputs, onnx_file: str, scale: float, offsets: List[float]) -> Dict[str, Any]:
    config, size = inputs.config, inputs.spec.input_size
    profile = config.profile()
    batch = config.batch or (profile.max if profile else 1)
    values: Dict[str, Any] = {
        "gpu-id": 0,
        "onnx-file": onnx_file,
        "model-engine-file": engine_name(onnx_file, batch, config.precision, config.dla_core),
        "labelfile-path": "labels.txt",
        "batch-size": batch,
        "network-mode": NETWORK_MODES[config.precision],
        "network-type": 1,
        "process-mode": 1,
        "gie-unique-id": 1,
        "model-color-format": 0,
        "infer-dims": "3;{};{}".format(size, size),
        "net-scale-factor": "{:.9g}".format(scale),
        "offsets": ";".join("{:.9g}".format(o) for o in offsets),
        "maintain-aspect-ratio": int(NVINFER_SCALING[GEOMETRY].maintain_aspect_ratio),
        "symmetric-padding": int(NVINFER_SCALING[GEOMETRY].symmetric_padding),
        "output-blob-names": CONSUMERS[NAME].output_name,
        "classifier-threshold": CLASSIFIER_THRESHOLD,
    }
    if config.dla_core is not None:
        values.update({"enable-dla": 1, "use-dla-core": config.dla_core})
    return values


def _int8(inputs: TargetInputs, folder: Path, model: str, cache: str) -> Dict[str, Any]:
    """nvinfer's INT8 settings for ``model``: its calibration cache (the bundle's gated Q/DQ scales, keyed to
    that model's tensors) and the layers the INT8 fallback kept in fp32, pinned there."""
    if "calibration_cache" not in inputs.manifest:
        raise TargetFailed(["{}: INT8 needs the bundle's INT8 trt form to pass its gate".format(NAME)])
    int8_path = inputs.out / ONNX_FILES["int8"]
    try:
        write_cache_for(folder / cache, int8_path, folder / model, inputs.config.trt_version)
    except ExportError as exc:
        raise TargetFailed(["{}: {}".format(NAME, exc)]) from exc
    nodes = {node.name for node in onnx.load(str(folder / model)).graph.node}
    int8 = onnx.load(str(int8_path), load_external_data=False)
    kept = json.loads({p.key: p.value for p in int8.metadata_props}.get("int8_fp32_layers", "[]"))
    values: Dict[str, Any] = {"int8-calib-file": cache}
    if kept:  # nvinfer's implicit INT8 does not know what the fallback kept: pin those layers
        if not set(kept) <= nodes:
            raise TargetFailed(["{}: the INT8 fallback's layers are not all in {}".format(NAME, model)])
        values["layer-device-precision"] = ";".join("{}:fp32:gpu".format(n) for n in kept)
    return values


def _stamp_script(folder: Path) -> None:
    script = ["#!/bin/sh", 'set -e\ncd "$(dirname "$0")"', 'PYTHON="${PYTHON:-python3}"']
    atomic_write_text(
        folder / STAMP_SCRIPT, "\n".join(script + stamp_script_lines([CALIBRATION_CACHE, EXACT_CACHE])) + "\n"
    )
    (folder / STAMP_SCRIPT).chmod(0o755)


def write(inputs: TargetInputs, folder: Path) -> Dict[str, Any]:
    """Both configs, their models, labels.txt (and the INT8 calibration cache) and README.md in ``folder``."""
    target = CONSUMERS[NAME]
    batch = inputs.config.batch
    model = checked_onnx(inputs, folder / MODEL, NAME, ExportModule(inputs.model, softmax=True), batch)
    pixels_module = ExportModule(inputs.model, baked=inputs.spec, softmax=True, pixel_layout=PIXELS_FLOAT_NCHW)
    exact = checked_onnx(inputs, folder / EXACT_MODEL, NAME, pixels_module, batch, kind="pixels")
    scale, offsets = nvinfer_scaling(inputs.spec)
    images = inputs.images_for(GEOMETRY)
    approximate_top1 = val_top1(folder / MODEL, images, batch, nvinfer_input(scale, offsets))
    exact_top1 = val_top1(folder / EXACT_MODEL, images, batch, pixel_batch)
    write_labels(folder / "labels.txt", inputs.class_names, separator=";")
    int8 = inputs.config.precision == "int8"
    comments = ["Gst-nvinfer classifier config written by edgetl for " + CONSUMER, inputs.command()]
    approx = _properties(inputs, MODEL, scale, offsets)
    exact_values = _properties(inputs, EXACT_MODEL, 1.0, [0.0, 0.0, 0.0])
    if int8:
        approx.update(_int8(inputs, folder, MODEL, CALIBRATION_CACHE))
        exact_values.update(_int8(inputs, folder, EXACT_MODEL, EXACT_CACHE))
        _stamp_script(folder)
    atomic_write_text(folder / CONFIG, config_text({"property": approx}, comments))
    atomic_write_text(folder / EXACT_CONFIG, config_text({"property": exact_values}, comments))
    figures = {
        "geometry": GEOMETRY,
        "val_images": len(images),
        "training_geometry_top1": model["val_top1"],
        "nvinfer_scalar_std_top1": approximate_top1,
        "exact_pixels_model_top1": exact_top1,
        "net_scale_factor": scale,
        "offsets": offsets,
    }
    write_readme(folder / "README.md", "DeepStream: {}".format(inputs.payload["arch"]), _readme(inputs, figures))
    files = [MODEL, EXACT_MODEL, CONFIG, EXACT_CONFIG, "labels.txt", "README.md"]
    files += [CALIBRATION_CACHE, EXACT_CACHE, STAMP_SCRIPT] if int8 else []
    return dict(figures, consumer=CONSUMER, files=files, models=[model, exact], output=target.output_name)


def _readme(inputs: TargetInputs, figures: Dict[str, Any]) -> List[str]:
    std = ", ".join("{:g}".format(s) for s in inputs.spec.std)
    int8 = inputs.config.precision == "int8"
    return [
        "Written by `{}` for {}.".format(inputs.command(), CONSUMER),
        "```\n[primary-gie]\nenable=1\nconfig-file={}\n```\n(deepstream-app), or `nvinfer config-file-path={}` in a "
        "GStreamer pipeline. nvinfer builds the engine on the first start and writes it beside the ONNX under the "
        "name `model-engine-file` gives, so keep this folder writable.".format(CONFIG, CONFIG),
        "- `{c}` + `{m}`: the model as trained (softmax output `{o}`). nvinfer has one scalar scale, so the "
        "per-channel std ({std}) becomes `net-scale-factor={s:.9g}` (the mean of 1/(255 std)); the mean is exact "
        "as `offsets`. Val top-1 under that approximation: {a:.2%}, against {e:.2%} for the exact model below "
        "and {t:.2%} with the run's own geometry and normalisation.".format(
            c=CONFIG,
            m=MODEL,
            o=CONSUMERS[NAME].output_name,
            std=std,
            s=figures["net_scale_factor"],
            a=figures["nvinfer_scalar_std_top1"],
            e=figures["exact_pixels_model_top1"],
            t=figures["training_geometry_top1"],
        ),  # fmt: skip
        "- `{c}` + `{m}`: exact. The graph takes float 0-255 RGB pixels (NCHW) and normalises per channel itself, "
        "so nvinfer scales with `net-scale-factor=1` and no offsets. Val top-1: {e:.2%}.".format(
            c=EXACT_CONFIG, m=EXACT_MODEL, e=figures["exact_pixels_model_top1"]
        ),
        "- `labels.txt`: the {} class names on one line, separated by `;`. `classifier-threshold={}`: a label is "
        "attached when its probability exceeds it.".format(len(inputs.class_names), CLASSIFIER_THRESHOLD),
        (
            "- INT8 (`network-mode=1`): nvinfer quantizes the fp32 model with `{cache}` (`{exact}` for the exact "
            "model), the scales of the bundle's gated Q/DQ model. Their header must name the device's TensorRT: "
            "run `sh {script}` once on the device first.".format(
                cache=CALIBRATION_CACHE, exact=EXACT_CACHE, script=STAMP_SCRIPT
            )
            if int8
            else "- Precision: `network-mode={}` ({}); use 2 for FP16, or export with `--int8` for INT8.".format(
                NETWORK_MODES[inputs.config.precision], inputs.config.precision
            )
        ),
        "Val figures on {} images. {}".format(figures["val_images"], geometry_note("nvinfer", GEOMETRY)),
    ]
