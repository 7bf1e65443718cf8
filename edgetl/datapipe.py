"""Training input pipelines, selected with ``--cache``:

- ``none``: the tuned DataLoader over PIL decoding: workers from the cores, persistent workers,
  prefetching, pinned memory with non-blocking copies on CUDA.
- ``ram``: the decoded-image cache (``edgetl.decoded_cache``): decode once, then random crop and
  flip a whole batch at a time (``edgetl.augment``): in the CPU workers, or on the GPU (one
  roi_align) when training on CUDA; normalisation always runs on the training device.
- ``features``: the feature cache (``edgetl.feature_cache``) for ``--strategy feature-extractor``:
  the frozen base runs once, the head trains on stored features.
- ``auto``: ``features`` for the feature extractor, else ``ram`` unless the cache would take more
  than half the RAM (then ``none``); the choice and the reason are logged.

Every pipeline yields batches already on the training device and draws its order and
augmentation from the epoch seed alone, so resumed runs repeat uninterrupted ones.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgetl.augment import augment_decoded, draw_crop_randoms, eval_crop_decoded, normalize_batch, random_resized_crop_boxes
from edgetl.config import FinetuneConfig
from edgetl.data import DatasetSplit, Sample
from edgetl.decoded_cache import DecodedImages, cache_bytes, open_decoded_images
from edgetl.deps import require
from edgetl.errors import ConfigError
from edgetl.preprocess import PreprocessSpec, load_rgb, resize_and_crop

torch = require("torch")
log = logging.getLogger(__name__)

PREFETCH_BATCHES = 4  # per worker
MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """DataLoader workers for ``--workers auto``: the usable cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores))


def total_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def resolve_cache(config: FinetuneConfig, split: DatasetSplit, preprocess: PreprocessSpec,
                  memory_bytes: Optional[int] = None) -> Tuple[str, str]:
    """The pipeline ``--cache`` selects (``auto`` resolved) and why."""
    if config.cache != "auto":
        return config.cache, "--cache {}".format(config.cache)
    if config.strategy == "feature-extractor":
        return "features", "the base is frozen, so its features are computed once and only the head trains"
    need = cache_bytes(len(split.train) + len(split.val), preprocess)
    memory = total_memory_bytes() if memory_bytes is None else memory_bytes
    if memory is not None and need > memory / 2:
        return "none", "a decoded-image cache would take {:.1f} GB, more than half of the {:.1f} GB of RAM".format(
            need / 1e9, memory / 1e9)
    return "ram", "decoded-image cache ({:.2f} GB): images are decoded once, crops are cut per batch".format(need / 1e9)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields (rows, crop randoms or None) per batch; order and randoms follow ``set_epoch(seed)``."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, augment: bool) -> None:
        self.count, self.batch_size, self.shuffle, self.augment = count, batch_size, shuffle, augment
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Any, Optional[Any]]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.count, generator=generator) if self.shuffle else torch.arange(self.count)
        randoms = draw_crop_randoms(self.count, generator) if self.augment else None
        for start in range(0, self.count, self.batch_size):
            stop = start + self.batch_size
            yield order[start:stop], None if randoms is None else randoms[start:stop]


class PilBatches:
    """Batch-level dataset decoding with PIL: RandomResizedCrop + flip (given randoms) or the eval crop;
    uint8 NCHW batches (normalised on the device by ``device_finish``)."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec) -> None:
        self.samples, self.spec = list(samples), spec
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)

    def __getitem__(self, key: Tuple[Any, Optional[Any]]) -> Tuple[Any, Any]:
        rows, randoms = key
        images = [load_rgb(self.samples[row].path) for row in rows.tolist()]
        if randoms is None:
            crops = [resize_and_crop(img, self.spec) for img in images]
        else:
            crops = self._random_crops(images, randoms)
        return torch.from_numpy(np.stack([np.asarray(img) for img in crops])).permute(0, 3, 1, 2), self.labels[rows]

    def _random_crops(self, images: List[Any], randoms: Any) -> List[Any]:
        TF = require("torchvision.transforms.functional")
        interpolation = TF.InterpolationMode(self.spec.interpolation)
        boxes, flips = random_resized_crop_boxes([i.width for i in images], [i.height for i in images], randoms)
        size = [self.spec.input_size, self.spec.input_size]
        crops = [TF.resized_crop(img, *box, size, interpolation) for img, box in zip(images, boxes.tolist())]
        return [TF.hflip(img) if flip else img for img, flip in zip(crops, flips.tolist())]


class DecodedBatches:
    """Batch-level dataset over a decoded cache: cropped uint8 NCHW batches, or (``raw``) the gathered
    uint8 images with their geometry and randoms, to be cropped on the device by ``device_finish``."""

    def __init__(self, images: DecodedImages, labels: Sequence[int], spec: PreprocessSpec, raw: bool) -> None:
        self.images, self.spec, self.raw = images, spec, raw
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)

    def __getitem__(self, key: Tuple[Any, Optional[Any]]) -> Tuple[Any, ...]:
        rows, randoms = key
        geometry = self.images.geometry[rows]
        if self.raw:  # gathered here (pinned by the loader), augmented on the device by finish_decoded
            return self.images.pixels[rows], geometry, randoms, self.labels[rows]
        return transform_decoded(self.images.pixels, rows, geometry, randoms, self.spec), self.labels[rows]


def transform_decoded(pixels: Any, rows: Any, geometry: Any, randoms: Optional[Any], spec: PreprocessSpec) -> Any:
    """Training crop + flip when ``randoms`` are given, else the eval crop (not normalised)."""
    if randoms is None:
        return eval_crop_decoded(pixels, rows, geometry, spec)
    return augment_decoded(pixels, rows, geometry, randoms, spec)


class BatchStream:
    """One pass of a loader with each batch finished onto the device; has a length for progress bars."""

    def __init__(self, loader: Any, finish: Callable[[Any], Tuple[Any, Any]]) -> None:
        self.loader, self.finish = loader, finish

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        for batch in self.loader:
            yield self.finish(batch)


def make_loader(dataset: Any, sampler: EpochBatchSampler, workers: int, device: Any) -> Any:
    """The tuned DataLoader: batch-level items, persistent prefetching workers, pinned memory on CUDA.

    It gets a private generator: a DataLoader draws its workers' base seed from the global torch RNG
    whenever it starts an iterator, which persistent workers do only once per run; that would shift
    the dropout stream of the epoch a resumed run starts in. (The workers never use that seed.)
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0))


class ImagePipeline:
    """Normalised image batches on the device from a train and a val loader."""

    def __init__(self, name: str, train_loader: Any, val_loader: Any, finish: Callable[[Any], Tuple[Any, Any]]) -> None:
        self.name, self.train_loader, self.val_loader, self.finish = name, train_loader, val_loader, finish

    def module(self, model: Any) -> Any:
        """What the batches feed: the whole model."""
        return model

    def train_batches(self, epoch_seed: int) -> BatchStream:
        self.train_loader.sampler.set_epoch(epoch_seed)
        return BatchStream(self.train_loader, self.finish)

    def val_batches(self) -> BatchStream:
        return BatchStream(self.val_loader, self.finish)


def device_finish(device: Any, memory_format: Any, spec: PreprocessSpec) -> Callable[[Any], Tuple[Any, Any]]:
    """Move a loader batch to the device (non-blocking), crop raw decoded batches there, normalise."""
    def finish(batch: Tuple[Any, ...]) -> Tuple[Any, Any]:
        if len(batch) == 4:
            pixels, geometry, randoms, labels = batch
            pixels = pixels.to(device, non_blocking=True)
            images = transform_decoded(pixels, torch.arange(len(pixels), device=device), geometry, randoms, spec)
        else:
            images, labels = batch
        images = normalize_batch(images.to(device, non_blocking=True), spec)
        return images.contiguous(memory_format=memory_format), labels.to(device, non_blocking=True)

    return finish


def decoded_caches(split: DatasetSplit, spec: PreprocessSpec, workers: int, device: Any,
                   cache_dir: Optional[Path] = None) -> Tuple[DecodedImages, DecodedImages]:
    """The (train, val) decoded-image caches of a split, built if needed (GPU JPEG decode on CUDA)."""
    return tuple(open_decoded_images(samples, spec, split.root, part, cache_dir, workers, device)
                 for part, samples in (("train", split.train), ("val", split.val)))


def image_pipeline(cache: str, split: DatasetSplit, spec: PreprocessSpec, batch_size: int, workers: int,
                   device: Any, memory_format: Any, cache_dir: Optional[Path] = None) -> ImagePipeline:
    """The ``none`` (PIL) or ``ram`` (decoded cache) pipeline of a split."""
    if cache == "none":
        train_set, val_set = PilBatches(split.train, spec), PilBatches(split.val, spec)
        val_workers = workers
    else:
        train_images, val_images = decoded_caches(split, spec, workers, device, cache_dir)
        raw = device.type == "cuda"
        train_set = DecodedBatches(train_images, [s.label for s in split.train], spec, raw)
        val_set = DecodedBatches(val_images, [s.label for s in split.val], spec, raw)
        val_workers = 0  # the eval crop of a cached batch is one gather
    train_loader = make_loader(train_set, EpochBatchSampler(len(split.train), batch_size, True, True), workers, device)
    val_loader = make_loader(val_set, EpochBatchSampler(len(split.val), batch_size, False, False), val_workers, device)
    return ImagePipeline(cache, train_loader, val_loader, device_finish(device, memory_format, spec))


def build_pipeline(config: FinetuneConfig, split: DatasetSplit, spec: PreprocessSpec, model: Any, device: Any,
                   memory_format: Any, use_amp: bool) -> Any:
    """The training input pipeline ``config.cache`` names (resolved if ``auto``)."""
    cache, reason = resolve_cache(config, split, spec)
    if config.cache == "auto":
        log.info("--cache auto: using %s (%s)", cache, reason)
    workers = auto_workers() if config.workers is None else config.workers
    if cache != "features":
        return image_pipeline(cache, split, spec, config.batch_size, workers, device, memory_format)
    if not model.base_frozen:
        raise ConfigError("--cache features needs --strategy feature-extractor (a frozen base)")
    from edgetl.feature_cache import feature_pipeline

    return feature_pipeline(split, spec, model, config.batch_size, config.feature_views, config.seed, workers,
                            device, memory_format, use_amp)
