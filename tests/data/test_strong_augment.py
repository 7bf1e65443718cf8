"""--augment levels on every pipeline, seeded per (seed, epoch, position): TrivialAugment per image in the
loaders, RandomErasing and MixUp/CutMix per batch on the device."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from edgetl.contracts.backbones import get_backbone
from edgetl.contracts.formats import AUGMENTS
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.device import DeviceSetup
from edgetl.data.augment import RANDOMS_PER_IMAGE, draw_crop_randoms
from edgetl.data.batch_augment import AugmentedPipeline, BatchAugment, erase_masks
from edgetl.data.feature_cache import feature_pipeline
from edgetl.data.folders import load_dataset
from edgetl.data.pipelines import DecodedBatches, EpochBatchSampler, decoded_caches, device_finish, image_pipeline
from edgetl.data.sharding import Shard
from edgetl.data.strong_augment import LEVELS, draw_epoch_randoms, trivial_augment
from edgetl.train.model import HeadConfig, build_model

SPEC = PreprocessSpec(input_size=48, resize_size=56)
CPU = DeviceSetup.create("cpu")
Batches = List[Tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def split(make_image_folder):
    return load_dataset(make_image_folder({"a": 5, "b": 5}, size=40, split=True))


def test_the_levels_are_the_cli_choices() -> None:
    assert tuple(LEVELS) == AUGMENTS
    assert not LEVELS["none"].crop and LEVELS["default"] == (True, False, 0.0) and LEVELS["strong"].trivial


def _epoch(split, cache: str, augment: str, seed: int, workers: int = 0, **mixing: float) -> Batches:
    pipeline = image_pipeline(cache, split, SPEC, batch_size=4, workers=workers, setup=CPU, augment=augment)
    erase_p = LEVELS[augment].erase_p
    batch_augment = BatchAugment(4, len(split.train), 2, erase_p, mixing.get("mixup", 0.0), mixing.get("cutmix", 0.0))
    batches = AugmentedPipeline(pipeline, batch_augment).train_batches(seed)
    return [(x.clone(), y.clone()) for x, y in batches]


@pytest.mark.parametrize("cache", ["none", "ram"])
@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_level_gives_normalised_batches_of_the_input_size(split, cache: str, augment: str) -> None:
    batches = _epoch(split, cache, augment, seed=3)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 48, 48)] * 2 + [(2, 3, 48, 48)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    default = _epoch(split, cache, "default", seed=3)
    same = all(torch.equal(x, d) for (x, _), (d, _) in zip(batches, default))
    assert same is (augment == "default")  # none: no crop; strong: TrivialAugment and erasing on top


@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_level_on_the_device_crop_path(split, augment: str) -> None:
    """The CUDA hand-off (raw uint8 images, cropped and TrivialAugmented by device_finish), run on CPU."""
    train, _ = decoded_caches(split, SPEC, 0, CPU)
    level = LEVELS[augment]
    sampler = EpochBatchSampler(len(train), 4, True, level.crop, trivial=level.trivial)
    sampler.set_epoch(5)
    labels = [s.label for s in split.train]
    in_workers = [DecodedBatches(train, labels, SPEC, raw=False)[key] for key in sampler]
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 48, 48) for x, _ in in_workers)
    finish = device_finish(CPU, SPEC)
    on_device = [finish(DecodedBatches(train, labels, SPEC, raw=True)[key]) for key in sampler]
    for (x, _), (x2, _) in zip(in_workers, on_device):
        assert x2.dtype == torch.float32 and torch.equal(finish((x, torch.zeros(0)))[0], x2)


def test_strong_feature_views_are_trivially_augmented_and_erased(split) -> None:
    model = build_model(get_backbone("mobilenet_v3_small"), 2, HeadConfig(), "feature-extractor", 2, None)
    common = dict(batch_size=4, views=2, seed=0, workers=0, setup=CPU)
    strong = feature_pipeline(split, SPEC, model, augment="strong", **common)
    default = feature_pipeline(split, SPEC, model, augment="default", **common)  # its own cache entry
    assert strong.train.shape == default.train.shape == (2, 10, model.feature_dim)
    assert strong.train.dtype == torch.float32 and not torch.equal(strong.train, default.train)
    assert torch.equal(strong.val, default.val)  # validation never augments


def test_same_seed_same_batches_other_epochs_differ_with_any_workers(split) -> None:
    first = _epoch(split, "ram", "strong", seed=7, mixup=0.2, cutmix=1.0)
    again = _epoch(split, "ram", "strong", seed=7, workers=1, mixup=0.2, cutmix=1.0)
    other = _epoch(split, "ram", "strong", seed=8, mixup=0.2, cutmix=1.0)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert first[0][1].shape == (4, 2) and torch.allclose(first[0][1].sum(1), torch.ones(4))  # soft targets
    assert not torch.equal(first[0][0], other[0][0])


def test_trivial_augment_draws_per_image_and_covers_every_operation() -> None:
    images = torch.randint(0, 256, (14, 3, 32, 32), dtype=torch.uint8)
    crops = draw_crop_randoms(14, torch.Generator().manual_seed(0))
    ops = torch.stack([(torch.arange(14) + 0.5) / 14, torch.full((14,), 0.9), torch.full((14,), 0.2)], 1)
    out = trivial_augment(images, torch.cat([crops, ops.double()], 1))  # one image per operation of the table
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out[0], images[0])  # "Identity"
    assert sum(not torch.equal(a, b) for a, b in zip(out, images)) >= 12  # the others change the image
    assert trivial_augment(images, crops) is images  # default's randoms carry no TrivialAugment draws
    with_trivial = draw_epoch_randoms(14, torch.Generator().manual_seed(0), trivial=True)
    assert torch.equal(with_trivial[:, :RANDOMS_PER_IMAGE], crops)  # the crops of default stay what they were


def test_random_erasing_follows_torchvisions_box_rule() -> None:
    u = torch.from_numpy(np.random.default_rng(0).random((4000, 41)))
    masks = erase_masks(u, 32, 40, p=0.25)
    erased = masks.flatten(1).float().mean(1)
    assert abs((erased > 0).float().mean().item() - 0.25) < 0.03  # about p of the images (4000 draws: 4 sigma)
    fraction = erased[erased > 0]
    assert fraction.min() >= 0.015 and fraction.max() <= 0.34  # scale (0.02, 0.33) of the area, rounded
    rows, cols = masks.any(2), masks.any(1)  # a box: every erased row holds the same erased columns
    assert torch.equal(masks.sum((1, 2)), rows.sum(1) * cols.sum(1))


def test_mixing_is_per_sample_and_its_targets_are_the_pixel_shares() -> None:
    images = torch.rand(8, 3, 16, 16)
    labels = torch.arange(8) % 4
    mixed, targets = BatchAugment(8, 8, 4, mixup=0.4)(images.clone(), labels, 11, 0)
    share = targets[torch.arange(8), labels.roll(1)]  # the partner's share (labels differ from the neighbour's)
    expected = images + share.view(-1, 1, 1, 1) * (images.roll(1, 0) - images)
    assert torch.allclose(mixed, expected, atol=1e-6) and share.unique().numel() == 8  # one lambda per sample
    cut, cut_targets = BatchAugment(8, 8, 4, cutmix=1.0)(images.clone(), labels, 11, 0)
    from_partner = (cut == images.roll(1, 0)).all(1).flatten(1).float().mean(1)
    assert torch.allclose(from_partner, cut_targets[torch.arange(8), labels.roll(1)], atol=1e-6)


def test_draws_belong_to_the_global_batch_position_not_to_the_process() -> None:
    whole = BatchAugment(6, 14, 2, 0.25, 0.2, 1.0).draws(5, 2, 2)  # the last, partial batch: 2 samples
    parts = [BatchAugment(6, 14, 2, 0.25, 0.2, 1.0, Shard(rank, 2)).draws(5, 2, 1) for rank in range(2)]
    for index, drawn in enumerate(whole):
        assert torch.equal(torch.cat([part[index] for part in parts]), drawn)
    assert not torch.equal(BatchAugment(6, 14).draws(5, 1, 6)[0], BatchAugment(6, 14).draws(5, 0, 6)[0])
