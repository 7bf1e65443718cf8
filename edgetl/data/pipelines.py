"""Training input pipelines, selected with ``--cache``:

- ``none``: the tuned DataLoader over PIL decoding: workers from the cores, persistent workers,
  prefetching, pinned memory with non-blocking copies on CUDA.
- ``ram``: the decoded-image cache (``edgetl.data.decoded_cache``): decode once, then random crop and
  flip a whole batch at a time (``edgetl.data.augment``): in the CPU workers, or on the GPU (one
  roi_align) when training on CUDA; normalisation always runs on the training device.
- ``features``: the feature cache (``edgetl.data.feature_cache``) for ``--strategy feature-extractor``:
  the frozen base runs once, the head trains on stored features.
- ``auto``: ``features`` for the feature extractor, else ``ram`` unless the cache would take more
  than half the RAM (then ``none``); the choice and the reason are logged.

Every pipeline yields batches already on the training device and draws its order and
augmentation from the epoch seed alone, so resumed runs repeat uninterrupted ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgetl.contracts.geometry import RANDOM_RESIZED_CROP, cached_views_suffice
from edgetl.contracts.preprocess import PreprocessSpec, geometry_pixels, load_input, load_rgb
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.data.augment import (
    augment_decoded,
    eval_crop_decoded,
    flip_flags,
    normalize_batch,
    random_resized_crop_boxes,
)
from edgetl.data.decoded_cache import DecodedImages, open_decoded_images
from edgetl.data.folders import DatasetSplit, Sample
from edgetl.data.sharding import Shard
from edgetl.data.strong_augment import LEVELS, draw_epoch_randoms, trivial_augment
from edgetl.errors import ConfigError

torch = require("torch")
log = logging.getLogger(__name__)

PREFETCH_BATCHES = 4  # per worker


def epoch_order(count: int, shuffle: bool, generator: Any, weights: Optional[Sequence[float]] = None) -> Any:
    """The order of an epoch's samples: a permutation, or (``weights``: ``--balance sampler``) ``count`` draws
    with replacement in proportion to the weights; both from ``generator`` (the epoch seed) alone."""
    if weights is not None:
        return torch.multinomial(torch.tensor(weights, dtype=torch.float64), count, True, generator=generator)
    return torch.randperm(count, generator=generator) if shuffle else torch.arange(count)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields (rows, per-image randoms or None) per batch; order and randoms follow ``set_epoch(seed)``.

    The order and randoms are drawn for the whole set, then each batch is cut to ``shard``'s part
    (``edgetl.data.sharding``; with ``pad``, an empty part becomes one padding sample), so a sample's
    place, crop and TrivialAugment draws (``trivial``) are the same for any number of processes.
    ``weights``: class-balanced order (``epoch_order``)."""

    def __init__(
        self,
        count: int,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        shard: Shard = Shard(),
        pad: bool = True,
        *,
        trivial: bool = False,
        weights: Optional[Sequence[float]] = None,
    ) -> None:
        self.count, self.batch_size, self.shuffle, self.augment = count, batch_size, shuffle, augment
        self.shard, self.pad, self.trivial, self.weights = shard, pad, trivial, weights
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        if self.shard.world_size == 1 or self.pad:
            return math.ceil(self.count / self.batch_size)
        return sum(1 for _ in self.shard.batch_parts(self.count, self.batch_size, pad=False))

    def __iter__(self) -> Iterator[Tuple[Any, Optional[Any]]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = epoch_order(self.count, self.shuffle, generator, self.weights)
        randoms = draw_epoch_randoms(self.count, generator, self.trivial) if self.augment else None
        for lo, hi in self.shard.batch_parts(self.count, self.batch_size, self.pad):
            yield order[lo:hi], None if randoms is None else randoms[lo:hi]


class PilBatches:
    """Batch-level dataset decoding with PIL: the training geometry + flip (given randoms: RandomResizedCrop, or
    a deployment geometry of the whole image), then TrivialAugment where the randoms carry its draws, or
    without randoms ``spec.geometry`` (the eval geometry; ``--augment none``: the train geometry); uint8 NCHW
    batches (normalised on the device by ``device_finish``)."""

    def __init__(
        self, samples: Sequence[Sample], spec: PreprocessSpec, train_geometry: str = RANDOM_RESIZED_CROP
    ) -> None:
        self.samples, self.spec, self.train_geometry = list(samples), spec, train_geometry
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)

    def __getitem__(self, key: Tuple[Any, Optional[Any]]) -> Tuple[Any, Any]:
        rows, randoms = key
        paths = [self.samples[row].path for row in rows.tolist()]
        if randoms is None:
            crops = [geometry_pixels(load_input(path, self.spec), self.spec) for path in paths]
        elif self.train_geometry == RANDOM_RESIZED_CROP:
            crops = [np.asarray(img) for img in self._random_crops([load_rgb(path) for path in paths], randoms)]
        else:
            spec = replace(self.spec, geometry=self.train_geometry)
            crops = [geometry_pixels(load_input(path, spec), spec) for path in paths]
            crops = [crop[:, ::-1] if flip else crop for crop, flip in zip(crops, flip_flags(randoms).tolist())]
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        return trivial_augment(images, randoms), self.labels[rows]

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
    """Training crop + flip (+ TrivialAugment where the randoms carry its draws) when ``randoms`` are given, else
    the eval crop (not normalised)."""
    if randoms is None:
        return eval_crop_decoded(pixels, rows, geometry, spec)
    return trivial_augment(augment_decoded(pixels, rows, geometry, randoms, spec), randoms)


class BatchStream:
    """One pass of a loader with each batch finished onto the device; has a length for progress bars."""

    def __init__(self, loader: Any, finish: Callable[[Any], Tuple[Any, Any]]) -> None:
        self.loader, self.finish = loader, finish

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        for batch in self.loader:
            yield self.finish(batch)


def make_loader(dataset: Any, sampler: EpochBatchSampler, workers: int, setup: DeviceSetup) -> Any:
    """The tuned DataLoader: batch-level items, persistent prefetching workers, pinned memory on CUDA.

    It gets a private generator: a DataLoader draws its workers' base seed from the global torch RNG
    whenever it starts an iterator, which persistent workers do only once per run; that would shift
    the dropout stream of the epoch a resumed run starts in. (The workers never use that seed.)
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        pin_memory=setup.pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


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


def device_finish(setup: DeviceSetup, spec: PreprocessSpec) -> Callable[[Any], Tuple[Any, Any]]:
    """Move a loader batch to the device (non-blocking), crop raw decoded batches there, normalise."""

    def finish(batch: Tuple[Any, ...]) -> Tuple[Any, Any]:
        if len(batch) == 4:
            pixels, geometry, randoms, labels = batch
            pixels = setup.to_device(pixels)
            rows = setup.to_device(torch.arange(len(pixels)))
            images = transform_decoded(pixels, rows, geometry, randoms, spec)
        else:
            images, labels = batch
            images = setup.to_device(images)
        images = normalize_batch(images, spec, setup.memory_format)  # written in the run's layout: no extra copy
        return images, setup.to_device(labels)

    return finish


def decoded_caches(
    split: DatasetSplit, spec: PreprocessSpec, workers: int, setup: DeviceSetup, cache_dir: Optional[Path] = None
) -> Tuple[DecodedImages, DecodedImages]:
    """The (train, val) decoded-image caches of a split, built if needed (GPU JPEG decode on CUDA)."""
    return tuple(
        open_decoded_images(samples, spec, split.root, part, cache_dir, workers, setup.decode_device)
        for part, samples in (("train", split.train), ("val", split.val))
    )


def image_pipeline(
    cache: str,
    split: DatasetSplit,
    spec: PreprocessSpec,
    *,
    batch_size: int,
    workers: int,
    setup: DeviceSetup,
    cache_dir: Optional[Path] = None,
    shard: Shard = Shard(),
    train_geometry: str = RANDOM_RESIZED_CROP,
    augment: str = "default",
    sample_weights: Optional[Sequence[float]] = None,
) -> ImagePipeline:
    """The ``none`` (PIL: any geometry) or ``ram`` (decoded cache: random-resized-crop and center-crop only)
    pipeline of a split; ``batch_size`` is the global batch, of which the loaders yield ``shard``'s part.
    ``augment``: the per-image part of an ``--augment`` level; ``sample_weights``: a class-balanced order."""
    level = LEVELS[augment]
    if cache != "none" and not cached_views_suffice(spec.geometry, train_geometry):
        raise ConfigError("the decoded-image cache holds centre-crop views; {} / {} need --cache none".format(
            spec.geometry, train_geometry
        ))  # fmt: skip
    if cache == "none":
        unflipped = spec if train_geometry == RANDOM_RESIZED_CROP else replace(spec, geometry=train_geometry)
        train_set = PilBatches(split.train, spec if level.crop else unflipped, train_geometry)
        val_set = PilBatches(split.val, spec)
        val_workers = workers
    else:
        train_images, val_images = decoded_caches(split, spec, workers, setup, cache_dir)
        raw = setup.cuda_paths
        train_set = DecodedBatches(train_images, [s.label for s in split.train], spec, raw)
        val_set = DecodedBatches(val_images, [s.label for s in split.val], spec, raw)
        val_workers = 0  # the eval crop of a cached batch is one gather
    train_sampler = EpochBatchSampler(
        len(split.train), batch_size, True, level.crop, shard, pad=True, trivial=level.trivial, weights=sample_weights
    )
    val_sampler = EpochBatchSampler(len(split.val), batch_size, False, False, shard, pad=False)
    train_loader = make_loader(train_set, train_sampler, workers, setup)
    val_loader = make_loader(val_set, val_sampler, val_workers, setup)
    return ImagePipeline(cache, train_loader, val_loader, device_finish(setup, spec))
