"""edgetl inspect / embed: what a run's backbone learned, as PNG contact sheets and feature arrays.

- ``filters_png``: the first conv layer's filters (pretrained next to fine-tuned when the run changed them);
- ``activations_png``: the strongest activation maps of one stage for an image, overlaid on it;
- ``similar_png``: nearest neighbours of a query image by penultimate features (Euclidean);
- ``top_activating_png``: the images of a folder that excite one channel of a stage most;
- ``embed``: penultimate features of a folder of images + the file list, for retrieval or clustering.

Every image is shown as the model sees it: the eval resize + centre crop of its preprocessing spec.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from edgetl.analysis.contact_sheets import (
    change_tiles,
    filter_tiles,
    grid_columns,
    heat_overlay,
    save_png,
    side_by_side,
    thumbnail,
    tile_grid,
)
from edgetl.analysis.embeddings import FeatureModel, captured_stage, compute_features, list_images
from edgetl.contracts.preprocess import load_rgb, resize_and_crop, torch_transforms
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path, atomic_write_text
from edgetl.errors import ConfigError, WeightsError
from edgetl.train.weights import RANDOM_INIT, load_state_dict, resolve_weights

torch = require("torch")
log = logging.getLogger(__name__)

FILTER_CELL = 32  # pixels per first-conv filter
THUMB = 160  # pixels per image in neighbour / top-activating sheets
SHEET_COLUMNS = 5


def default_output_dir(run: Path) -> Path:
    """``RUN/inspect`` (the run folder of a checkpoint file)."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / "inspect"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _model_view(model: FeatureModel, path: Path) -> Image.Image:
    """The image as the model sees it (eval geometry, before normalisation)."""
    return resize_and_crop(load_rgb(path), model.preprocess)


def first_conv(model: FeatureModel) -> Tuple[str, np.ndarray]:
    """Name and weights (out, in, kh, kw) of the base's first convolution."""
    nn = torch.nn
    for name, module in model.base.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach().float().cpu().numpy()
    raise ConfigError("{} has no Conv2d layer".format(model.spec.name))


def pretrained_first_conv(model: FeatureModel, name: str) -> Optional[np.ndarray]:
    """The first conv's weights before fine-tuning, or None when the run did not start from pretrained weights."""
    source = model.weights_source
    if source is not None and source.lower() == RANDOM_INIT:
        return None
    try:
        state = load_state_dict(resolve_weights(model.spec, source))
    except WeightsError as exc:
        log.warning("cannot load the pretrained weights to compare with: %s", exc)
        return None
    weight = state.get(name + ".weight")
    return None if weight is None else weight.float().numpy()


def filters_png(model: FeatureModel, out_dir: Path) -> Tuple[Path, str]:
    """Write ``filters.png``; return it and a one-line description of what changed."""
    name, tuned = first_conv(model)
    before = pretrained_first_conv(model, name)
    columns = grid_columns(len(tuned))
    caption = [[str(i)] for i in range(len(tuned))]
    title = [
        "{} first conv ({}): {} filters {}x{}, each scaled to its own weight range".format(
            model.spec.name, name, len(tuned), *tuned.shape[2:]
        )
    ]
    if before is None or before.shape != tuned.shape:
        panels = [tile_grid(filter_tiles([tuned], FILTER_CELL)[0], caption, columns, ["this run"])]
        note = "no pretrained weights to compare with"
    elif np.array_equal(before, tuned):
        panels = [tile_grid(filter_tiles([tuned], FILTER_CELL)[0], caption, columns, ["unchanged by fine-tuning"])]
        note = "unchanged by fine-tuning (frozen)"
    else:
        change = float(np.linalg.norm(tuned - before) / max(np.linalg.norm(before), 1e-12))
        pre_tiles, tuned_tiles = filter_tiles([before, tuned], FILTER_CELL)
        panels = [
            tile_grid(pre_tiles, caption, columns, ["pretrained"]),
            tile_grid(tuned_tiles, caption, columns, ["fine-tuned"]),
            tile_grid(change_tiles(before, tuned, FILTER_CELL), caption, columns, ["change (grey = none)"]),
        ]
        note = "changed by fine-tuning: relative L2 change {:.2%}".format(change)
        title.append(
            "fine-tuning changed them by {:.2%} (relative L2); the change panel is amplified to its "
            "largest weight change".format(change)
        )
    sheet = side_by_side(panels, title)
    return save_png(sheet, Path(out_dir) / "filters.png"), note


def stage_maps(model: FeatureModel, paths: Sequence[Path], stage: str) -> np.ndarray:
    """Activation maps (N, C, H, W) of ``stage`` for images (eval preprocessing, CPU)."""
    transform = torch_transforms(model.preprocess, train=False)
    batch = torch.stack([transform(load_rgb(p)) for p in paths])
    base = model.base.cpu().eval()
    with torch.no_grad(), captured_stage(model, stage) as captured:
        base(batch)
    return captured["maps"].float().numpy()


def activations_png(
    model: FeatureModel, image: Path, stage: str, out_dir: Path, count: int = 8
) -> Tuple[Path, List[int]]:
    """Write the ``count`` strongest channels (by mean activation) of ``stage`` for ``image`` over the image."""
    maps = stage_maps(model, [image], stage)[0]
    count = min(count, len(maps))
    means = maps.mean(axis=(1, 2))
    channels = [int(c) for c in np.argsort(-means, kind="stable")[:count]]
    view = _model_view(model, image)
    tiles = [view] + [heat_overlay(view, maps[c], maps[c].max()) for c in channels]
    captions = [["input (model's view)", ""]] + [
        ["channel {}".format(c), "mean {:.3g} max {:.3g}".format(means[c], maps[c].max())] for c in channels
    ]
    title = [
        "{}: {} ({} channels, {}x{} maps), strongest {} by mean activation".format(
            Path(image).name, stage, maps.shape[0], maps.shape[1], maps.shape[2], count
        ),
        "each map scaled to its own max: dark = weak, bright = strong",
    ]
    out = Path(out_dir) / "activations-{}-{}.png".format(_safe(stage), _safe(Path(image).stem))
    return save_png(tile_grid(tiles, captions, grid_columns(len(tiles)), title), out), channels


def nearest_neighbours(
    model: FeatureModel, query: Path, paths: Sequence[Path], features: np.ndarray, k: int
) -> List[Tuple[Path, float]]:
    """The ``k`` files closest to ``query`` by Euclidean distance of penultimate features, nearest first.
    A query that is one of ``paths`` uses its own row (distance exactly 0)."""
    resolved = [Path(p).resolve() for p in paths]
    if Path(query).resolve() in resolved:
        vector = features[resolved.index(Path(query).resolve())]
    else:
        vector = compute_features(model, [query], workers=0, cache=False)[0]
    distances = np.linalg.norm(features - vector[None, :], axis=1)
    order = np.argsort(distances, kind="stable")[:k]
    return [(Path(paths[i]), float(distances[i])) for i in order]


def similar_png(
    model: FeatureModel, query: Path, data: Path, out_dir: Path, k: int = 8, **feature_options: Any
) -> Tuple[Path, List[Tuple[Path, float]]]:
    """Write a contact sheet of the query and its ``k`` nearest neighbours in ``data`` (features cached)."""
    paths, _ = list_images(data)
    features = compute_features(model, paths, **feature_options)
    neighbours = nearest_neighbours(model, query, paths, features, k)
    tiles = [thumbnail(_model_view(model, p), THUMB) for p in [query] + [p for p, _ in neighbours]]
    captions = [["query", Path(query).name]] + [
        ["#{} d={:.3f}".format(i + 1, d), _relative(p, data)] for i, (p, d) in enumerate(neighbours)
    ]
    title = [
        "nearest neighbours of {} among {} images in {}".format(Path(query).name, len(paths), data),
        "Euclidean distance of {}'s penultimate features ({} dims)".format(model.spec.name, features.shape[1]),
    ]
    out = Path(out_dir) / "similar-{}.png".format(_safe(Path(query).stem))
    return save_png(tile_grid(tiles, captions, min(SHEET_COLUMNS, len(tiles)), title), out), neighbours


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return Path(path).name


def top_activating_png(
    model: FeatureModel, stage: str, channel: int, data: Path, out_dir: Path, k: int = 8, **feature_options: Any
) -> Tuple[Path, List[Tuple[Path, float]]]:
    """Write the ``k`` images of ``data`` whose channel ``channel`` of ``stage`` peaks highest, with its map."""
    paths, _ = list_images(data)
    peaks = compute_features(model, paths, stage=stage, **feature_options)  # (N, C) spatial maxima, cached
    if not 0 <= channel < peaks.shape[1]:
        raise ConfigError(
            "--channel must be between 0 and {} for stage {!r} of {}".format(peaks.shape[1] - 1, stage, model.spec.name)
        )
    order = np.argsort(-peaks[:, channel], kind="stable")[:k]
    chosen = [Path(paths[i]) for i in order]
    maps = stage_maps(model, chosen, stage)[:, channel]
    vmax = float(maps.max())
    tiles = [thumbnail(heat_overlay(_model_view(model, p), m, vmax), THUMB) for p, m in zip(chosen, maps)]
    captions = [
        ["#{} max {:.3g}".format(i + 1, peaks[j, channel]), _relative(p, data)]
        for i, (j, p) in enumerate(zip(order, chosen))
    ]
    title = [
        "{} channel {}: top {} of {} images in {}".format(stage, channel, len(chosen), len(paths), data),
        "ranked by the channel's spatial maximum; maps share one scale (bright = strongest)",
    ]
    out = Path(out_dir) / "top-{}-ch{}.png".format(_safe(stage), channel)
    rows = [(p, float(peaks[j, channel])) for j, p in zip(order, chosen)]
    return save_png(tile_grid(tiles, captions, min(SHEET_COLUMNS, len(tiles)), title), out), rows


def embed(model: FeatureModel, data: Path, out: Path, **feature_options: Any) -> Tuple[Path, Path, Tuple[int, int]]:
    """Write penultimate features (float32, N x D) to ``out`` (.npy) and ``<out>.json`` with the file list."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ConfigError("--out must end in .npy, got {}".format(out))
    paths, skipped = list_images(data)
    features = compute_features(model, paths, **feature_options)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, features)
    sidecar = out.with_suffix(".json")
    atomic_write_text(
        sidecar,
        json.dumps(
            {
                "features": out.name,
                "shape": list(features.shape),
                "dtype": "float32",
                "model": model.identity,
                "arch": model.spec.name,
                "preprocess": model.preprocess.to_dict(),
                "data": str(data),
                "files": [str(p) for p in paths],
                "skipped": [[str(p), reason] for p, reason in skipped],
            },
            indent=1,
        )
        + "\n",
    )
    return out, sidecar, (int(features.shape[0]), int(features.shape[1]))
