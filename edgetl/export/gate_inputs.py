"""The inputs the INT8 disagreement gate judges beyond the val images, and the record of what they were.

Disagreement with fp32 needs no labels, so any input from the data's distribution can be judged. In order:
the training images calibration did not use (``--gate-images`` at most), the images of ``--gate-data`` (a
folder of unlabelled images, ``--gate-images`` at most) and, only when all those together are too few to
resolve the gate's bound even with no disagreement, seeded augmented views of the val and training images:
the training augmentation's geometry (torchvision's RandomResizedCrop with its default scale and ratio, then a
horizontal flip half the time), up to ``VIEW_TARGET`` times the images the bound needs, at most
``MAX_VIEWS_PER_IMAGE`` views of one image. Views of one image are not independent draws, so a bound that
counts them as such is optimistic; the report says how many of the judged inputs were views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from edgetl.contracts.preprocess import PreprocessSpec, load_input, to_rgb
from edgetl.core.deps import require
from edgetl.data.folders import Sample, image_files
from edgetl.errors import DataError
from edgetl.export.gate import images_needed
from edgetl.export.parity import EvalImages, load_eval_images

VIEW_TARGET = 3  # views top the sample up to 3x the images the bound needs: a few disagreements can still pass
MAX_VIEWS_PER_IMAGE = 8
VIEW_TRANSFORM = "RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip (p=0.5), seeded"


@dataclass
class GateInputs:
    """The judged inputs after the val images (uint8 crops, in the order of ``parts``) and their record."""

    crops: np.ndarray
    parts: Dict[str, int] = field(default_factory=dict)  # name -> count, in order
    record: Dict[str, Any] = field(default_factory=dict)


def empty_images(spec: PreprocessSpec) -> EvalImages:
    """No images (of ``spec``'s input size)."""
    size = spec.input_size
    return EvalImages([], np.zeros(0, np.int64), np.zeros((0, size, size, 3), np.uint8))


def gate_data_images(folder: Path, spec: PreprocessSpec, limit: int, seed: int) -> EvalImages:
    """Up to ``limit`` images found under ``folder`` (a seeded subset when there are more), as eval crops."""
    files = image_files(folder)
    if not files:
        raise DataError(f"--gate-data: no images under {folder}")
    return load_eval_images([Sample(path, 0) for path in files], spec, limit, seed)


def augmented_views(sources: Sequence[Path], spec: PreprocessSpec, count: int, seed: int) -> np.ndarray:
    """``count`` augmented views (uint8 crops of ``spec.input_size``) of ``sources``, a seeded shuffle of them
    dealt round-robin, each image decoded once; the same arguments give the same views. Unreadable images
    are skipped."""
    torch = require("torch")
    transforms = require("torchvision.transforms")
    size = spec.input_size
    if count <= 0 or not sources:
        return np.zeros((0, size, size, 3), np.uint8)
    per_image = math.ceil(count / len(sources))
    order = np.random.default_rng(seed).permutation(len(sources))
    interpolation = transforms.InterpolationMode(spec.interpolation)
    crop = transforms.RandomResizedCrop(size, interpolation=interpolation)
    views: List[np.ndarray] = []
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
        torch.manual_seed(seed)
        for index in order:
            if len(views) >= count:
                break
            try:
                image = to_rgb(load_input(Path(sources[index]), spec))
            except DataError:
                continue
            for _ in range(min(per_image, count - len(views))):
                top, left, height, width = crop.get_params(image, crop.scale, crop.ratio)
                view = transforms.functional.resized_crop(image, top, left, height, width, [size, size], interpolation)
                if float(torch.rand(1)) < 0.5:
                    view = transforms.functional.hflip(view)
                views.append(np.asarray(view, dtype=np.uint8))
    return np.stack(views) if views else np.zeros((0, size, size, 3), np.uint8)


def assemble_gate_inputs(
    *,
    val_count: int,
    heldout: EvalImages,
    gate_data: EvalImages,
    view_sources: Sequence[Path],
    spec: PreprocessSpec,
    max_points: float,
    seed: int,
    gate_data_dir: str = "",
) -> GateInputs:
    """The held-out training images, then ``gate_data``, then (only when the sample is still too small for a
    verdict) views of ``view_sources``; with the record of which inputs were used."""
    needed = images_needed(max_points / 100.0)
    judged = val_count + len(heldout) + len(gate_data)
    views_wanted = 0
    if needed is not None and judged < needed:
        views_wanted = min(VIEW_TARGET * needed - judged, MAX_VIEWS_PER_IMAGE * len(view_sources))
    views = augmented_views(view_sources, spec, views_wanted, seed)
    parts = {"val": val_count, "heldout_train": len(heldout), "gate_data": len(gate_data)}
    parts["augmented_views"] = len(views)
    record: Dict[str, Any] = dict(parts, images=sum(parts.values()), images_needed=needed)
    if gate_data_dir:
        record["gate_data_dir"] = gate_data_dir
    if len(views):
        record["views"] = {
            "transform": VIEW_TRANSFORM,
            "seed": seed,
            "source_images": len(view_sources),
            "max_per_image": MAX_VIEWS_PER_IMAGE,
            "why": f"val + held-out + --gate-data give {judged} images, fewer than the {needed} the bound needs",
            "caveat": "views of one image are not independent draws: the bound counts them as if they were",
        }
    crops = np.concatenate([heldout.crops, gate_data.crops, views]).astype(np.uint8, copy=False)
    return GateInputs(crops, parts, record)
