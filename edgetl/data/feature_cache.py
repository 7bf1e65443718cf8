"""Feature cache for ``--strategy feature-extractor``: run the frozen base once, train the head on its output.

Train features come from the eval view (resize + centre crop, no augmentation) or, with
``--feature-views N``, from N fixed RandomResizedCrop+flip views per image (with ``--augment strong``
also TrivialAugment and RandomErasing; each epoch picks one view per image from the epoch seed, and
with ``--balance sampler`` its images class-balanced). Val features always use the eval view, so validation
equals evaluating the whole model. The base runs in eval mode with the training run's autocast
and memory format, so the head sees what it would see through the frozen base.

Features are stored in ``$EDGETL_HOME/train-features/`` keyed by the decoded caches' keys, a
hash of the base weights, the views and the seed: a second run on the same data skips the base.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Tuple

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.cleanup import FEATURES_DIR
from edgetl.core.deps import require, torch_threads
from edgetl.core.device import DeviceSetup
from edgetl.core.fileio import atomic_path, built_once, edgetl_home
from edgetl.core.progress import progress
from edgetl.core.world import ProcessRole
from edgetl.data.batch_augment import AugmentedBatches, BatchAugment
from edgetl.data.decoded_cache import DecodedImages
from edgetl.data.folders import DatasetSplit
from edgetl.data.pipelines import (
    BatchStream,
    DecodedBatches,
    EpochBatchSampler,
    decoded_caches,
    device_finish,
    epoch_order,
    make_loader,
)
from edgetl.data.sharding import Shard
from edgetl.data.strong_augment import LEVELS

torch = require("torch")
log = logging.getLogger(__name__)

FEATURE_FORMAT = 1


def view_seed(seed: int, view: int) -> int:
    """The crop seed of augmented view ``view`` (a 63-bit hash, distinct from every epoch seed)."""
    digest = hashlib.sha256("edgetl-feature-view:{}:{}".format(seed, view).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def state_hash(module: Any) -> str:
    """sha256 of a module's state dict (names and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(base: Any, batches: Any, setup: DeviceSetup, label: str = "feature cache") -> Any:
    """Stacked float32 outputs of the frozen ``base`` (eval mode) over image batches, on the device."""
    base.eval()
    outputs = []
    for images, _ in progress(batches, label, announce=True):
        with torch.autocast(setup.device.type, dtype=torch.float16, enabled=setup.use_amp):
            outputs.append(base(images).float())
    return torch.cat(outputs)


class HeadBatches(list):
    """A list of feature batches; iterating it on CPU runs the consumer with one intra-op thread.

    The head's ops are too small to split across threads: on a busy machine the per-op thread
    barrier costs more than the op (measured on 2 shared cores: 5 ms vs 20-200 ms per epoch).
    """

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        if not self or self[0][0].device.type != "cpu":
            yield from list.__iter__(self)
            return
        with torch_threads(1):
            yield from list.__iter__(self)


class FeaturePipeline:
    """Batches of cached features (device-resident) for the head alone; ``batch_size`` is the global batch,
    of which the batches are ``shard``'s part."""

    name = "features"

    def __init__(
        self,
        train: Any,
        train_labels: Any,
        val: Any,
        val_labels: Any,
        batch_size: int,
        shard: Shard = Shard(),
        sample_weights: Optional[Sequence[float]] = None,
    ) -> None:
        self.train, self.train_labels = train, train_labels  # (views, N, D), (N,)
        self.val, self.val_labels = val, val_labels
        self.batch_size, self.shard, self.sample_weights = batch_size, shard, sample_weights

    def module(self, model: Any) -> Any:
        """What the batches feed: the head."""
        return model.head

    def train_batches(self, epoch_seed: int) -> HeadBatches:
        """Shuffled like the image pipelines (same order for the same seed); one view per image."""
        count = self.train.shape[1]
        generator = torch.Generator().manual_seed(epoch_seed)
        order = epoch_order(count, True, generator, self.sample_weights)
        views = torch.randint(self.train.shape[0], (count,), generator=generator)
        order, views = order.to(self.train.device), views.to(self.train.device)
        batches = (order[lo:hi] for lo, hi in self.shard.batch_parts(count, self.batch_size, pad=True))
        return HeadBatches((self.train[views[rows], rows], self.train_labels[rows]) for rows in batches)

    def val_batches(self) -> HeadBatches:
        parts = self.shard.batch_parts(len(self.val_labels), self.batch_size, pad=False)
        return HeadBatches((self.val[lo:hi], self.val_labels[lo:hi]) for lo, hi in parts)


def feature_pipeline(
    split: DatasetSplit,
    spec: PreprocessSpec,
    model: Any,
    *,
    batch_size: int,
    views: int,
    seed: int,
    workers: int,
    setup: DeviceSetup,
    cache_dir: Optional[Path] = None,
    shard: Shard = Shard(),
    augment: str = "default",
    sample_weights: Optional[Sequence[float]] = None,
) -> FeaturePipeline:
    """Features of ``split`` through ``model.base``: loaded from the cache, or computed now by this node's
    local rank 0 while its other ranks (and other jobs) wait on the cache's file lock. ``batch_size`` is
    the global batch, of which the pipeline's batches are ``shard``'s part. ``augment``: how the ``views``
    are augmented; ``sample_weights``: a class-balanced order."""
    cache_dir = Path(cache_dir or edgetl_home())
    train_images, val_images = decoded_caches(split, spec, workers, setup, cache_dir)
    parts = [
        FEATURE_FORMAT,
        train_images.key,
        val_images.key,
        state_hash(model.base),
        views,
        seed,
        setup.use_amp,
        setup.memory_format,
        setup.device.type,
    ] + ([augment] if views and augment != "default" else [])  # default's views keep their earlier key
    key = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()
    path = cache_dir / FEATURES_DIR / "{}-{}.pt".format(train_images.path.stem, key[:16])

    def reuse() -> Optional[dict]:
        stored = _load(path, key)
        if stored is not None:
            log.info("feature cache: reusing %s", path)
        return stored

    def build() -> dict:
        images = (train_images, val_images)
        stored = _compute(split, spec, model, images, batch_size, (views, augment), seed, workers, setup)
        stored["key"] = key
        with atomic_path(path) as tmp:
            torch.save(stored, str(tmp))
        _remove_orphans(path.parent, train_images.path.parent)
        return stored

    lock = path.parent / (train_images.path.stem + ".lock")
    builder = build if ProcessRole.from_env().builds_node_caches else None
    stored = built_once(lock, "the feature cache " + path.name, reuse, builder)
    labels = [
        setup.to_device(torch.tensor([s.label for s in samples], dtype=torch.int64))
        for samples in (split.train, split.val)
    ]
    train, val = setup.to_device(stored["train"]), setup.to_device(stored["val"])
    return FeaturePipeline(train, labels[0], val, labels[1], batch_size, shard, sample_weights)


def _compute(
    split: DatasetSplit,
    spec: PreprocessSpec,
    model: Any,
    images: Tuple[DecodedImages, DecodedImages],
    batch_size: int,
    augmented_views: Tuple[int, str],
    seed: int,
    workers: int,
    setup: DeviceSetup,
) -> dict:
    """Run the frozen base over the val images (eval view) and the train images (eval view or ``views``
    views augmented at level ``augment``); CPU tensors."""
    started = time.perf_counter()
    views, augment = augmented_views
    level = LEVELS[augment]

    def features(decoded: DecodedImages, labels: Sequence[int], crop_seed: Optional[int]) -> Any:
        augmented = crop_seed is not None
        sampler = EpochBatchSampler(len(decoded), batch_size, False, augmented, trivial=augmented and level.trivial)
        sampler.set_epoch(crop_seed or 0)
        dataset = DecodedBatches(decoded, labels, spec, raw=setup.cuda_paths)
        loader = make_loader(dataset, sampler, workers, setup)
        label = "feature cache: the frozen base over {} {} images{}".format(
            len(decoded), "val" if decoded is val_images else "train", "" if crop_seed is None else " (a view)"
        )
        batches: Any = BatchStream(loader, device_finish(setup, spec))
        if augmented and level.erase_p:
            erasing = BatchAugment(batch_size, len(decoded), erase_p=level.erase_p)
            batches = AugmentedBatches(batches, erasing, crop_seed)
        return extract_features(model.base, batches, setup, label)

    train_images, val_images = images
    train_labels, val_labels = [s.label for s in split.train], [s.label for s in split.val]
    view_seeds = [view_seed(seed, v) for v in range(views)] or [None]
    stored = {
        "val": features(val_images, val_labels, None).cpu(),
        "train": torch.stack([features(train_images, train_labels, s) for s in view_seeds]).cpu(),
    }
    log.info(
        "feature cache: ran the frozen base over %d train (x%d views) + %d val images in %.1f s",
        len(split.train),
        len(view_seeds),
        len(split.val),
        time.perf_counter() - started,
    )
    return stored


def _load(path: Path, key: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        stored = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: recompute
        log.warning("feature cache %s unreadable (%s); recomputing", path, str(exc).splitlines()[0])
        return None
    return stored if isinstance(stored, dict) and stored.get("key") == key else None


def _remove_orphans(features_dir: Path, decoded_dir: Path) -> None:
    """Delete feature files whose decoded-image cache (named in their file name) is gone."""
    for path in features_dir.glob("*.pt"):
        if not (decoded_dir / (path.stem.rsplit("-", 1)[0] + ".npy")).is_file():
            path.unlink(missing_ok=True)
