"""Val top-1 of the exported fp32 model under every deployment geometry, beside the geometry the run was
selected on: real ONNX Runtime runs on the val images, each decoded and laid out as that consumer does
(``edgetl.contracts.geometry``). ``imagenet-stretch`` is normalised as imagenet does it (ImageNet's mean/std,
hard-coded), the others with the run's spec (nvinfer's one-scale approximation is the DeepStream target's)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from edgetl.contracts.formats import GEOMETRIES
from edgetl.contracts.geometry import (
    APPROXIMATIONS,
    CONSUMER_OF_GEOMETRY,
    IMAGENET_STRETCH,
    imagenet_mismatch,
    imagenet_normalize,
)
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.export.parity import EvalImages, normalized, onnx_outputs, top1


def consumer_inputs(spec: PreprocessSpec) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 crops (N, H, W, 3) -> the float32 NCHW the consumer of ``spec.geometry`` feeds the model."""
    if spec.geometry == IMAGENET_STRETCH:
        return imagenet_normalize
    return lambda crops: normalized(crops, spec)


def geometry_accuracy(
    model: Path,
    images_for: Callable[[str], EvalImages],
    spec: PreprocessSpec,
    batch: Optional[int],
    own: Dict[str, Any],
) -> Dict[str, Any]:
    """The report's ``geometry`` section: per geometry, val top-1 and image count. ``images_for``: the val images
    laid out in a geometry; ``own``: the parity check's ``{"val_top1", "images"}`` on the run's geometry, reused
    unless imagenet normalises that geometry itself."""
    known = {} if spec.geometry == IMAGENET_STRETCH else {spec.geometry: own}
    rows = {}
    for name in GEOMETRIES:
        row = known.get(name)
        if row is None:
            images = images_for(name)
            outputs = onnx_outputs(model, images.crops, batch, prepare=consumer_inputs(replace(spec, geometry=name)))
            row = {"val_top1": top1(outputs, images.labels), "images": len(images)}
        rows[name] = dict(row, consumer=CONSUMER_OF_GEOMETRY[name])
    return {
        "training_geometry": spec.geometry,
        "geometries": rows,
        "imagenet_normalization": imagenet_mismatch(spec.mean, spec.std) or "matches the run's mean/std",
        "exactness": APPROXIMATIONS,
    }
