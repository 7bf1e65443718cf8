"""The verification sample an export ships (``verify_sample.npz``, ``edgetl.contracts.verify_sample``): at least
``MIN_IMAGES`` real crops in the run's geometry and every passed model's reference outputs, computed with ONNX
Runtime exactly as ``edgetl verify`` runs the models later; plus ``verify_data.py`` for Polygraphy.

Crops are dealt round-robin over the classes, each class's clearest predictions first (largest fp32 top-1
margin): the check is meant to catch a broken engine or runtime, not a near tie flipping under fp16/INT8.
Validation crops come first; a run with fewer val images than ``MIN_IMAGES`` adds training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from edgetl import __version__
from edgetl.contracts.bundle import VERIFY_DATA_LOADER, VERIFY_SAMPLE, ModelInfo
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.contracts.verify_sample import (
    MIN_IMAGES,
    VerificationSample,
    reference_scale,
    write_data_loader,
    write_sample,
)
from edgetl.core.fileio import sha256_file
from edgetl.export.parity import EvalImages, normalized, onnx_outputs
from edgetl.runtime.verify import TOLERANCES, ort_graph_optimizations


def top1_margins(outputs: np.ndarray) -> np.ndarray:
    """Largest minus second-largest output per row (0 for a single class)."""
    ordered = np.sort(np.asarray(outputs, np.float64), axis=1)
    return ordered[:, -1] - ordered[:, -2] if ordered.shape[1] > 1 else np.zeros(len(ordered))


def choose_rows(labels: np.ndarray, margins: np.ndarray, count: int) -> List[int]:
    """Up to ``count`` row indices, round-robin over the labels, each label's largest margins first."""
    by_label = [
        sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: -margins[i]) for label in np.unique(labels)
    ]
    rows: List[int] = []
    depth = 0
    while len(rows) < count and any(depth < len(items) for items in by_label):
        rows += [items[depth] for items in by_label if depth < len(items)][: count - len(rows)]
        depth += 1
    return rows


def write_verification(
    out: Path,
    models: Dict[str, Dict[str, Any]],
    val: EvalImages,
    val_outputs: np.ndarray,
    more_images: Callable[[int], EvalImages],
    spec: PreprocessSpec,
) -> Dict[str, Any]:
    """Write the sample and the Polygraphy data loader into ``out``; returns the manifest's ``verification``
    entry. ``models``: the manifest's passed models (the fp32 one first); ``val_outputs``: the fp32 model's
    outputs on ``val``; ``more_images(n)``: up to n training crops when val has too few."""
    fp32 = ModelInfo.from_dict(models["fp32"])
    crops, labels, outputs = val.crops, val.labels, np.asarray(val_outputs)
    if len(crops) < MIN_IMAGES:
        extra = more_images(MIN_IMAGES - len(crops))
        if len(extra):
            extra_outputs = _outputs(out, fp32, extra.crops, spec)
            crops, labels = np.concatenate([crops, extra.crops]), np.concatenate([labels, extra.labels])
            outputs = np.concatenate([outputs, extra_outputs])
    margins = top1_margins(outputs)
    rows = choose_rows(labels, margins, MIN_IMAGES)
    chosen = crops[rows]
    references = {kind: _outputs(out, ModelInfo.from_dict(data), chosen, spec) for kind, data in models.items()}
    sample = VerificationSample(chosen, references)
    write_sample(out / VERIFY_SAMPLE, sample)
    command = "polygraphy run {} --trt --onnxrt --data-loader-script {}".format(fp32.file, VERIFY_DATA_LOADER)
    write_data_loader(
        out / VERIFY_DATA_LOADER, VERIFY_SAMPLE, fp32.input_name, "NCHW", fp32.batch, command, __version__
    )
    return {
        "file": VERIFY_SAMPLE,
        "sha256": sha256_file(out / VERIFY_SAMPLE),
        "images": len(chosen),
        "from_train": sum(1 for r in rows if r >= len(val)),
        "from_val": sum(1 for r in rows if r < len(val)),
        "geometry": spec.geometry,
        "min_top1_margin": float(margins[rows].min()) if rows else None,
        "reference_scale": reference_scale(sample, "fp32"),
        "references": {
            kind: "onnxruntime CPU"
            + ("" if ort_graph_optimizations(ModelInfo.from_dict(data)) else ", optimisations off")
            for kind, data in models.items()
        },
        "tolerances": dict(TOLERANCES),
        "data_loader": VERIFY_DATA_LOADER,
    }


def _outputs(out: Path, model: ModelInfo, crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A bundle model's outputs on uint8 crops, run as ``edgetl verify`` runs it (float32)."""
    prepare = None if model.input_layout == "NHWC" else (lambda chunk: normalized(chunk, spec))
    optimize = ort_graph_optimizations(model)
    return onnx_outputs(out / model.file, crops, model.batch, prepare=prepare, optimize=optimize).astype(np.float32)
