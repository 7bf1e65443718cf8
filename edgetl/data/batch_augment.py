"""The per-batch part of ``--augment strong`` and ``--mixup``/``--cutmix``, on the training device.

RandomErasing (after normalisation, erased to 0: the mean colour), MixUp and CutMix follow the parameter
rules of torchvision's v2 ``RandomErasing``, ``MixUp`` and ``CutMix``, but draw per sample, not once
per batch, and from a generator seeded by (epoch seed, batch index) rather than from the global RNG.
The draws are made for the whole global batch and each process takes its part's rows
(``edgetl.data.sharding``), so a sample's erasing box and mixing weight do not depend on the number of
processes. A sample is mixed with its neighbour in this process's part of the batch (torchvision's
``roll(1)``): with several processes the partners differ from one process's, as BatchNorm's statistics
do, and the run is still exactly repeatable and resumable with the same number of processes.

Mixed batches carry soft targets, shape (N, classes), float32: cross-entropy takes them as they are
(with label smoothing and class weights: ``edgetl.train.objective``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Tuple

import numpy as np

from edgetl.core.deps import require
from edgetl.data.sharding import Shard

torch = require("torch")

ERASE_SCALE = (0.02, 0.33)  # torchvision's RandomErasing defaults
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10


def batch_generator(epoch_seed: int, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of the epoch with seed ``epoch_seed`` (a 63-bit hash of both)."""
    digest = hashlib.sha256("edgetl-batch-augment:{}:{}".format(epoch_seed, index).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little") >> 1)


def erase_masks(u: Any, height: int, width: int, p: float) -> Any:
    """Which pixels RandomErasing erases, (N, H, W) bool, from ``u`` (N, 1 + 4 x 10) uniforms: torchvision's
    rule (apply with probability ``p``; up to 10 tries of area and log-uniform aspect until the box fits)."""
    tries = u[:, 1:].reshape(len(u), ERASE_TRIES, 4)
    area = height * width * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    h, w = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (h < height) & (w < width)
    top, left = torch.floor(tries[..., 2] * (height - h + 1)), torch.floor(tries[..., 3] * (width - w + 1))
    first = fits.to(torch.int64).argmax(1, keepdim=True)
    top, left, h, w = (values.gather(1, first) for values in (top, left, h, w))  # (N, 1) each
    erase = (fits.any(1) & (u[:, 0] < p)).view(-1, 1, 1)
    return erase & _box(top, left, h, w, height, width, u.device)


def _box(top: Any, left: Any, h: Any, w: Any, height: int, width: int, device: Any) -> Any:
    """(N, H, W) bool: the pixels inside each sample's box (top, left, h, w; each (N, 1))."""
    ys = torch.arange(height, device=device, dtype=top.dtype).view(1, -1, 1)
    xs = torch.arange(width, device=device, dtype=top.dtype).view(1, 1, -1)
    rows = (ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1))
    return rows & (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1))


def cutmix_boxes(lam: Any, centres: Any, height: int, width: int) -> Tuple[Any, Any]:
    """CutMix's boxes (N, H, W bool) and the partner's share of each image: torchvision's rule (a box of
    side ``sqrt(1 - lam)`` around a uniform centre, clipped to the image)."""
    cx, cy = torch.floor(centres[:, 0] * width), torch.floor(centres[:, 1] * height)
    half = 0.5 * torch.sqrt(1.0 - lam)
    half_w, half_h = torch.floor(half * width), torch.floor(half * height)
    x1, x2 = (cx - half_w).clamp(min=0), (cx + half_w).clamp(max=width)
    y1, y2 = (cy - half_h).clamp(min=0), (cy + half_h).clamp(max=height)
    top, left, box_h, box_w = (v.view(-1, 1) for v in (y1, x1, y2 - y1, x2 - x1))
    boxes = _box(top, left, box_h, box_w, height, width, lam.device)
    return boxes, (x2 - x1) * (y2 - y1) / (height * width)


@dataclass(frozen=True)
class BatchAugment:
    """Per-batch augmentation of one epoch's training batches (``shard``'s part of each global batch)."""

    batch_size: int  # the global batch
    count: int  # training samples per epoch
    num_classes: int = 0  # the soft targets' width (needed when mixing)
    erase_p: float = 0.0
    mixup: float = 0.0  # Beta alpha; 0 = off
    cutmix: float = 0.0
    shard: Shard = Shard()

    @property
    def active(self) -> bool:
        return self.erase_p > 0 or self.mixup > 0 or self.cutmix > 0

    def draws(self, epoch_seed: int, index: int, rows: int) -> Tuple[Any, ...]:
        """This part's draws of batch ``index``: erase uniforms, MixUp-or-CutMix choice, the two lambdas and
        CutMix centres, drawn for the whole global batch (always all of them, in this order) and cut."""
        start = index * self.batch_size
        total = min(start + self.batch_size, self.count) - start
        lo, hi = self.shard.part(start, start + total)
        lo, hi = (lo - start, hi - start) if hi > lo else (0, rows)  # an empty part trains on a padding sample
        rng = batch_generator(epoch_seed, index)
        erase = rng.random((total, 1 + 4 * ERASE_TRIES))
        choice = rng.random(total)
        lam_mix = rng.beta(self.mixup, self.mixup, total) if self.mixup > 0 else np.ones(total)
        lam_cut = rng.beta(self.cutmix, self.cutmix, total) if self.cutmix > 0 else np.ones(total)
        centres = rng.random((total, 2))
        return tuple(torch.from_numpy(a[lo:hi]) for a in (erase, choice, lam_mix, lam_cut, centres))

    def __call__(self, images: Any, labels: Any, epoch_seed: int, index: int) -> Tuple[Any, Any]:
        """(images, targets) of batch ``index``: images changed in place (their layout kept); targets are
        the labels, or soft targets (N, classes) when mixing."""
        draws = self.draws(epoch_seed, index, len(images))
        erase, choice, lam_mix, lam_cut, centres = (d.to(images.device) for d in draws)
        height, width = images.shape[-2:]
        if self.erase_p > 0:
            images.masked_fill_(erase_masks(erase, height, width, self.erase_p).unsqueeze(1), 0.0)
        if not (self.mixup > 0 or self.cutmix > 0):
            return images, labels
        cut = choice >= 0.5 if self.mixup > 0 and self.cutmix > 0 else torch.full_like(choice, self.cutmix > 0).bool()
        boxes, cut_share = cutmix_boxes(lam_cut, centres, height, width)
        share = torch.where(cut, cut_share, 1.0 - lam_mix)  # the partner's part of each image
        weight = torch.where(cut.view(-1, 1, 1), boxes.to(share.dtype), share.view(-1, 1, 1))
        images.lerp_(images.roll(1, 0), weight.unsqueeze(1).to(images.dtype))
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
        return images, onehot.lerp(onehot.roll(1, 0), share.view(-1, 1).to(torch.float32))


class AugmentedBatches:
    """An epoch's training batches through ``augment``; has a length for progress bars."""

    def __init__(self, batches: Any, augment: BatchAugment, epoch_seed: int) -> None:
        self.batches, self.augment, self.epoch_seed = batches, augment, epoch_seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        for index, (images, labels) in enumerate(self.batches):
            yield self.augment(images, labels, self.epoch_seed, index)


class AugmentedPipeline:
    """An input pipeline whose training batches go through ``augment`` on the device; val batches untouched."""

    def __init__(self, pipeline: Any, augment: BatchAugment) -> None:
        self.pipeline, self.augment = pipeline, augment
        self.name = pipeline.name

    def module(self, model: Any) -> Any:
        return self.pipeline.module(model)

    def train_batches(self, epoch_seed: int) -> AugmentedBatches:
        return AugmentedBatches(self.pipeline.train_batches(epoch_seed), self.augment, epoch_seed)

    def val_batches(self) -> Any:
        return self.pipeline.val_batches()
