"""Backbone features of image files: pooled penultimate features or one stage's channel maxima, cached.

Used by ``edgetl advise`` (the frozen pretrained backbone), ``edgetl inspect`` and ``edgetl embed``
(a run's fine-tuned backbone). Results are cached as ``.npz`` files keyed by the model's identity,
its preprocessing, what was measured and every file's path, size and mtime: change any of them and
the features are recomputed; nothing stale is ever returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from edgetl.contracts.backbones import BackboneSpec, get_backbone, preprocess_spec, weights_entry
from edgetl.contracts.preprocess import PreprocessSpec, torch_transforms
from edgetl.core.deps import require
from edgetl.core.device import resolve_device, resolve_workers
from edgetl.core.fileio import atomic_path, edgetl_home, file_fingerprints
from edgetl.data.folders import ImageDataset, Sample, check_image, image_files
from edgetl.errors import ConfigError, DataError
from edgetl.train.checkpoint import load_run, preprocess_of
from edgetl.train.model import EdgeClassifier, HeadConfig, load_base_weights
from edgetl.train.weights import fetch_weights, load_state_dict

torch = require("torch")
log = logging.getLogger(__name__)

POOLED = "pooled"  # what to measure: the pooled penultimate features (else a stage name)


@dataclass
class FeatureModel:
    """A backbone in eval mode whose ``base`` returns pooled pre-logit features, and how to feed it."""

    identity: str  # names these exact weights (cache key)
    spec: BackboneSpec
    base: Any
    preprocess: PreprocessSpec
    weights_source: Optional[str] = None  # the run's --weights option (None: torchvision's, "none": random)
    imagenet_head: Optional[Tuple[Any, Any]] = None  # pretrained classifier (weight, bias), pretrained only
    imagenet_categories: Tuple[str, ...] = ()


def pretrained_model(arch: str) -> FeatureModel:
    """The frozen torchvision backbone with its verified ImageNet weights and original classifier."""
    spec = get_backbone(arch)
    path = fetch_weights(spec)
    state = load_state_dict(path)
    model = EdgeClassifier(spec, 2, HeadConfig())  # the head is unused: only ``base`` is kept
    load_base_weights(model, state, path)
    head = (state[spec.classifier + ".weight"].float(), state[spec.classifier + ".bias"].float())
    categories = tuple(weights_entry(spec).meta["categories"])
    return FeatureModel(
        "pretrained:{}:{}".format(arch, path.name),
        spec,
        model.base.eval(),
        preprocess_spec(spec),
        imagenet_head=head,
        imagenet_categories=categories,
    )


def run_model(run: Path) -> FeatureModel:
    """The fine-tuned backbone of a run folder (its best.pt) or of a checkpoint file."""
    run = Path(run)
    checkpoint = run / "best.pt" if run.is_dir() else run
    model, payload = load_run(run)
    stat = checkpoint.stat()
    identity = "run:{}:{}:{}".format(checkpoint.resolve(), stat.st_size, stat.st_mtime_ns)
    return FeatureModel(
        identity,
        model.spec,
        model.base.eval(),
        preprocess_of(payload),
        weights_source=payload.get("config", {}).get("weights"),
    )


def list_images(root: Path, workers: int = 8) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Every readable image under ``root`` (recursive, sorted) and the skipped files with their reason."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError("image folder not found: {}".format(root))
    candidates = image_files(root)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, candidates))
    paths = [p for p, reason in zip(candidates, reasons) if reason is None]
    skipped = [(p, reason) for p, reason in zip(candidates, reasons) if reason is not None]
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    if not paths:
        raise DataError("no readable images under {}".format(root))
    return paths, skipped


def default_cache_dir() -> Path:
    """``$EDGETL_HOME/features`` if ``EDGETL_HOME`` is set, else ``~/.cache/edgetl/features``."""
    return edgetl_home() / "features"


def cache_key(model: FeatureModel, paths: Sequence[Path], measure: str) -> str:
    """Digest of the model identity, preprocessing, measure and each file's path, size and mtime."""
    text = json.dumps([model.identity, model.preprocess.to_dict(), measure, file_fingerprints(paths)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def stage_output_module(model: FeatureModel, stage: str) -> Any:
    """The last module of a convolutional stage: its output is the stage's activation maps."""
    paths = model.spec.modules_of(stage)  # ConfigError listing the stages if unknown
    if stage not in model.spec.conv_stage_names:
        raise ConfigError(
            "stage {!r} of {} is not convolutional (no activation maps); choose one of: {}".format(
                stage, model.spec.name, ", ".join(model.spec.conv_stage_names)
            )
        )
    return model.base.get_submodule(paths[-1])


@contextmanager
def captured_stage(model: FeatureModel, stage: str) -> Iterator[Dict[str, Any]]:
    """While active, ``captured["maps"]`` holds the latest output (N, C, H, W) of ``stage``."""
    captured: Dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["maps"] = output.detach()

    handle = stage_output_module(model, stage).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _compute(
    model: FeatureModel, paths: Sequence[Path], measure: str, batch_size: int, workers: int, device: Any, progress: bool
) -> np.ndarray:
    dataset = ImageDataset([Sample(Path(p), 0) for p in paths], torch_transforms(model.preprocess, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    base = model.base.to(device).eval()
    rows = []
    with torch.no_grad(), _measuring(model, measure) as captured:
        for images, _ in tqdm(loader, desc="features", leave=False, disable=None if progress else True):
            pooled = base(images.to(device))
            rows.append((pooled if measure == POOLED else captured["maps"].amax(dim=(2, 3))).float().cpu().numpy())
    return np.concatenate(rows).astype(np.float32)


@contextmanager
def _measuring(model: FeatureModel, measure: str) -> Iterator[Dict[str, Any]]:
    if measure == POOLED:
        yield {}
    else:
        with captured_stage(model, measure) as captured:
            yield captured


def compute_features(
    model: FeatureModel,
    paths: Sequence[Path],
    stage: Optional[str] = None,
    batch_size: int = 32,
    workers: Optional[int] = None,
    device: str = "auto",
    cache_dir: Optional[Path] = None,
    cache: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """float32 (N, D): pooled penultimate features of each file, or with ``stage`` each channel's spatial
    maximum in that stage's output. Cached in ``cache_dir`` (default ``default_cache_dir()``) unless ``cache``
    is False."""

    if not paths:
        raise DataError("no images to compute features of")
    measure = POOLED if stage is None else stage
    if stage is not None:
        stage_output_module(model, stage)  # validate before any work
    workers = resolve_workers(workers)
    if not cache:
        return _compute(model, paths, measure, batch_size, workers, resolve_device(device), progress)
    target = Path(cache_dir or default_cache_dir()) / "{}.npz".format(cache_key(model, paths, measure))
    names = np.array([str(Path(p).resolve()) for p in paths])
    cached = _load_cached(target, names)
    if cached is not None:
        log.debug("features from cache %s", target)
        return cached
    values = _compute(model, paths, measure, batch_size, workers, resolve_device(device), progress)
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, values=values, files=names)
    except OSError as exc:  # a read-only or full disk costs the cache, not the result
        log.warning("cannot write the feature cache %s: %s", target, exc)
    return values


def _load_cached(target: Path, names: np.ndarray) -> Optional[np.ndarray]:
    if not target.is_file():
        return None
    try:
        with np.load(target, allow_pickle=False) as archive:
            if np.array_equal(archive["files"], names):
                return archive["values"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable feature cache %s: %s", target, exc)
    return None


def imagenet_probabilities(model: FeatureModel, features: np.ndarray) -> np.ndarray:
    """Softmax of the pretrained ImageNet classifier over pooled features (pretrained models only)."""
    if model.imagenet_head is None:
        raise ConfigError("{} has no ImageNet classifier (not a pretrained backbone)".format(model.identity))
    weight, bias = model.imagenet_head
    logits = torch.from_numpy(features).float() @ weight.T + bias
    return torch.softmax(logits, dim=1).numpy()
