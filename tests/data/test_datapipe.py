"""Input pipelines: decoded-image cache, batch augmentation, tuned loaders, --cache selection."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from edgetl.contracts.preprocess import PreprocessSpec, eval_array, load_rgb, resize_shorter_side
from edgetl.core.device import DeviceSetup
from edgetl.data.augment import (
    RRC_RATIO,
    RRC_SCALE,
    augment_decoded,
    crop_resize_per_image,
    crop_resize_roi_align,
    draw_crop_randoms,
    eval_crop_decoded,
    normalize_batch,
    random_resized_crop_boxes,
)
from edgetl.data.decoded_cache import open_decoded_images, slot_shape, upright_size
from edgetl.data.folders import Sample, load_dataset
from edgetl.data.pipelines import DecodedBatches, EpochBatchSampler, decoded_caches, device_finish, image_pipeline
from edgetl.errors import ConfigError
from edgetl.train.config import FinetuneConfig
from edgetl.train.inputs import resolve_cache

SPEC = PreprocessSpec(input_size=56, resize_size=64)  # small, so the tests stay fast
SIZES = [(100, 75), (75, 100), (64, 64), (240, 60), (60, 240), (40, 30)]  # incl. beyond 3:2 and upscaled


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _photos(folder: Path, sizes: List[Tuple[int, int]], seed: int = 0) -> List[Sample]:
    """Noisy gradients (so crops and flips are visible) saved as PNG (lossless) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i, (width, height) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x * 7 + y * 3) % 256], -1)
        pixels = pixels + rng.normal(0, 12, (height, width, 3))
        path = folder / "{}.png".format(i)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        samples.append(Sample(path, i % 2))
    return samples


def test_crop_boxes_follow_random_resized_crop_rules() -> None:
    width, height = torch.tensor([500, 375, 256, 1000]).repeat(250), torch.tensor([375, 500, 256, 100]).repeat(250)
    randoms = draw_crop_randoms(1000, torch.Generator().manual_seed(0))
    boxes, flips = random_resized_crop_boxes(width, height, randoms)
    top, left, h, w = boxes.T
    assert ((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h > 0) & (w > 0)).all()
    area = (h * w).double() / (width * height)
    aspect = w.double() / h
    found = (area >= RRC_SCALE[0] * 0.9) & (aspect >= RRC_RATIO[0] * 0.95) & (aspect <= RRC_RATIO[1] * 1.05)
    assert found[width != 1000].all()  # normal images: a try always fits within 10
    assert 0.4 < flips.double().mean() < 0.6
    again, _ = random_resized_crop_boxes(width, height, draw_crop_randoms(1000, torch.Generator().manual_seed(0)))
    assert torch.equal(boxes, again)
    # every try too big for a 1000x100 strip: the fallback is a centred crop with the aspect clamped to 4:3
    impossible = torch.zeros(1, randoms.shape[1], dtype=torch.float64)
    impossible[0, 0:-1:4] = 1.0  # scale 1.0 with the narrowest ratio: never fits in 100 rows
    box, _ = random_resized_crop_boxes([1000], [100], impossible)
    assert box.tolist() == [[0, (1000 - 133) // 2, 100, 133]]


def test_decoded_cache_layout_and_exact_eval_geometry(tmp_path: Path, edgetl_home: Path) -> None:
    samples = _photos(tmp_path / "photos", SIZES)
    images = open_decoded_images(samples, SPEC, tmp_path / "photos", "train")
    pixels = np.load(str(images.path), mmap_mode="r")
    assert isinstance(pixels, np.memmap) and pixels.dtype == np.uint8
    assert pixels.shape == (len(SIZES),) + slot_shape(SPEC) == (6, 64, 96, 3)
    assert images.path.parent == edgetl_home / "decoded"
    resized = np.asarray(resize_shorter_side(load_rgb(samples[0].path), SPEC))  # 85 x 64 landscape
    np.testing.assert_array_equal(pixels[0, :, :85], resized)
    np.testing.assert_array_equal(pixels[0, :, 85:], np.repeat(resized[:, -1:], 96 - 85, axis=1))  # edge replicated
    portrait = np.asarray(resize_shorter_side(load_rgb(samples[1].path), SPEC))
    np.testing.assert_array_equal(pixels[1, :, :85], portrait.transpose(1, 0, 2))  # stored transposed
    assert upright_size(images.geometry)[0].tolist() == [85, 64, 64, 96, 64, 85]
    # eval: the cached centre crop equals edgetl.contracts.preprocess's PIL path (resize + centre crop + normalise)
    batch = normalize_batch(eval_crop_decoded(images.pixels, torch.arange(len(SIZES)), images.geometry, SPEC), SPEC)
    for sample, cached in zip(samples, batch):
        np.testing.assert_allclose(cached.numpy(), eval_array(load_rgb(sample.path), SPEC), rtol=0, atol=1e-5)


def test_cache_is_rebuilt_when_the_dataset_changes(tmp_path: Path) -> None:
    samples = _photos(tmp_path / "photos", SIZES[:3])
    first = open_decoded_images(samples, SPEC, tmp_path / "photos", "train")
    built = first.path.stat().st_mtime_ns
    again = open_decoded_images(samples, SPEC, tmp_path / "photos", "train")
    assert again.path == first.path and again.path.stat().st_mtime_ns == built  # reused, not rebuilt
    Image.new("RGB", (100, 75), (10, 200, 30)).save(samples[0].path)  # same name, new content
    os.utime(samples[0].path, ns=(built + 10**9, built + 10**9))
    changed = open_decoded_images(samples, SPEC, tmp_path / "photos", "train")
    assert changed.key != first.key and changed.path != first.path
    assert not first.path.exists()  # the outdated cache is removed
    assert (changed.pixels[0, :, :85].reshape(-1, 3) == torch.tensor([10, 200, 30], dtype=torch.uint8)).all()
    fewer = open_decoded_images(samples[:2], SPEC, tmp_path / "photos", "train")
    assert fewer.key != changed.key and len(fewer) == 2


def test_the_cache_key_holds_the_decoder(tmp_path: Path) -> None:
    from edgetl.data.decoded_cache import cache_key, decoder_name

    samples = _photos(tmp_path / "photos", SIZES[:2])
    assert decoder_name(None) == decoder_name(torch.device("cpu")) == "pil"
    assert decoder_name(torch.device("cuda")) == decoder_name("cuda:1") == "nvjpeg+pil"
    assert cache_key(samples, SPEC, "pil") != cache_key(samples, SPEC, "nvjpeg+pil")


def test_a_pil_run_does_not_reuse_a_cache_another_decoder_built(tmp_path: Path) -> None:
    """A cache whose sidecar says nvjpeg built it (here: a PIL cache relabelled) is not what a CPU run asks
    for: the CPU run decodes its own."""
    import json

    samples = _photos(tmp_path / "photos", SIZES[:2])
    first = open_decoded_images(samples, SPEC, tmp_path / "photos", "train", cache_dir=tmp_path / "cache")
    meta_path = first.path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, decoder="nvjpeg+pil")))
    again = open_decoded_images(samples, SPEC, tmp_path / "photos", "train", cache_dir=tmp_path / "cache")
    assert json.loads(again.path.with_suffix(".json").read_text())["decoder"] == "pil"


def test_batch_augmentation_shape_range_and_agreement_with_pil(tmp_path: Path) -> None:
    samples = _photos(tmp_path / "photos", SIZES)
    images = open_decoded_images(samples, SPEC, tmp_path / "photos", "train")
    rows = torch.arange(len(SIZES))
    randoms = draw_crop_randoms(len(SIZES), torch.Generator().manual_seed(3))
    crops = augment_decoded(images.pixels, rows, images.geometry, randoms, SPEC)
    assert crops.shape == (6, 3, 56, 56) and crops.dtype == torch.uint8
    batch = normalize_batch(crops, SPEC)
    mean, std = torch.tensor(SPEC.mean).view(3, 1, 1), torch.tensor(SPEC.std).view(3, 1, 1)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, (crops.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    assert (batch >= -mean / std - 1e-5).all() and (batch <= (1 - mean) / std + 1e-5).all()
    # the same boxes through PIL's resized_crop on the stored (upright) image: within one level
    import torchvision.transforms.functional as TF

    width, height, transposed = upright_size(images.geometry)
    boxes, flips = random_resized_crop_boxes(width, height, randoms)
    for k, sample in enumerate(samples):
        upright = resize_shorter_side(load_rgb(sample.path), SPEC)
        offset = max(0, (max(upright.size) - 96) // 2)  # the longer side beyond 3:2 is centre-cropped
        top, left, h, w = boxes[k].tolist()
        top, left = (top + offset, left) if transposed[k] else (top, left + offset)
        reference = TF.resized_crop(upright, top, left, h, w, [56, 56], TF.InterpolationMode.BILINEAR)
        reference = TF.hflip(reference) if flips[k] else reference
        reference = torch.from_numpy(np.array(reference)).permute(2, 0, 1).int()
        assert (crops[k].int() - reference).abs().max() <= 1
    # the CUDA code path (one roi_align for the batch) agrees on average within 2 levels
    aligned = crop_resize_roi_align(images.pixels, boxes, transposed, 56)
    no_flips = torch.zeros(6, dtype=torch.bool)
    unflipped = crop_resize_per_image(images.pixels, rows, boxes, transposed, no_flips, 56, "bilinear")
    assert (aligned - unflipped.float()).abs().mean() < 2.0
    assert torch.equal(crops[flips], unflipped[flips].flip(-1)) and torch.equal(crops[~flips], unflipped[~flips])


def _split_folder(tmp_path: Path) -> Path:
    for part, count in (("train", 6), ("val", 3)):
        for label, name in enumerate(("a", "b")):
            _photos(
                tmp_path / "data" / part / name, [SIZES[(i + label) % len(SIZES)] for i in range(count)], seed=label
            )
    return tmp_path / "data"


@pytest.mark.parametrize("cache", ["none", "ram"])
def test_pipelines_do_not_depend_on_workers(tmp_path: Path, cache: str) -> None:
    split = load_dataset(_split_folder(tmp_path))
    cpu = DeviceSetup.create("cpu")

    def epoch(workers: int, seed: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        pipeline = image_pipeline(cache, split, SPEC, batch_size=4, workers=workers, setup=cpu)
        rng = torch.get_rng_state()
        batches = list(pipeline.train_batches(seed)) + list(pipeline.val_batches())
        assert torch.equal(torch.get_rng_state(), rng)  # the global RNG (dropout) is left alone
        return batches

    main, workers, other = epoch(0, 7), epoch(1, 7), epoch(0, 8)
    assert [x.shape for x, _ in main] == [(4, 3, 56, 56)] * 3 + [(4, 3, 56, 56), (2, 3, 56, 56)]
    for (x, y), (x2, y2) in zip(main, workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(main[0][0], other[0][0])  # another epoch seed: another order and other crops


def test_raw_batches_cropped_on_the_device_match_worker_batches(tmp_path: Path) -> None:
    """The CUDA hand-off (gathered uint8 images, cropped by device_finish), exercised on CPU."""
    split = load_dataset(_split_folder(tmp_path))
    cpu = DeviceSetup.create("cpu")
    train, _ = decoded_caches(split, SPEC, 0, cpu)
    labels = [s.label for s in split.train]
    sampler = EpochBatchSampler(len(train), 4, shuffle=True, augment=True)
    sampler.set_epoch(3)
    finish = device_finish(cpu, SPEC)
    in_workers = [finish(DecodedBatches(train, labels, SPEC, raw=False)[key]) for key in sampler]
    on_device = [finish(DecodedBatches(train, labels, SPEC, raw=True)[key]) for key in sampler]
    assert len(in_workers) == 3
    for (x, y), (x2, y2) in zip(in_workers, on_device):
        assert x.dtype == torch.float32 and torch.equal(x, x2) and torch.equal(y, y2)


def test_auto_selection_and_validation(tmp_path: Path) -> None:
    split = load_dataset(_split_folder(tmp_path))
    frozen = FinetuneConfig(arch="mobilenet_v3_small", strategy="feature-extractor")
    assert resolve_cache(frozen, split, SPEC)[0] == "features"
    full = FinetuneConfig(arch="mobilenet_v3_small", strategy="full")
    cache, reason = resolve_cache(full, split, SPEC, memory_bytes=2 * 10**9)
    assert cache == "ram" and "decoded" in reason
    cache, reason = resolve_cache(full, split, SPEC, memory_bytes=100_000)  # the cache would not fit
    assert cache == "none" and "more than half" in reason
    assert resolve_cache(FinetuneConfig(strategy="full", cache="none"), split, SPEC)[0] == "none"
    with pytest.raises(ConfigError, match="cache features needs strategy feature-extractor"):
        FinetuneConfig(strategy="full", cache="features")
    with pytest.raises(ConfigError, match="feature_views"):
        FinetuneConfig(strategy="feature-extractor", cache="ram", feature_views=2)


@pytest.mark.gpu  # nvjpeg decode, roi_align crops on the device
def test_gpu_decode_and_device_crops(tmp_path: Path) -> None:
    from edgetl.data.decoded_cache import _read_meta

    folder = tmp_path / "jpegs"
    samples = _photos(folder, SIZES)
    for sample in samples:
        Image.open(sample.path).save(sample.path.with_suffix(".jpg"), quality=95)
    samples = [Sample(s.path.with_suffix(".jpg"), s.label) for s in samples]
    images = open_decoded_images(samples, SPEC, folder, "train", device=torch.device("cuda"))
    assert _read_meta(images.path.with_suffix(".json"))["decoder"] == "nvjpeg+pil"
    rows = torch.arange(len(samples))
    cpu_eval = torch.stack([torch.from_numpy(eval_array(load_rgb(s.path), SPEC)) for s in samples])
    gpu_eval = normalize_batch(eval_crop_decoded(images.pixels.cuda(), rows, images.geometry, SPEC), SPEC).cpu()
    assert (gpu_eval - cpu_eval).abs().mean() * 0.226 * 255 < 2.0  # nvjpeg + GPU resize: within ~2 levels of PIL
    randoms = draw_crop_randoms(len(samples), torch.Generator().manual_seed(0))
    crops = augment_decoded(images.pixels.cuda(), rows, images.geometry, randoms, SPEC)
    assert crops.is_cuda and crops.shape == (6, 3, 56, 56) and 0 <= crops.min() and crops.max() <= 255


def test_one_failed_nvjpeg_batch_falls_back_to_pil(tmp_path: Path, monkeypatch, caplog) -> None:
    """A batch nvjpeg cannot decode is decoded with PIL (logged), not the end of the cache build."""
    import torchvision.io

    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    samples = []
    for i, (width, height) in enumerate([(80, 60), (60, 80), (64, 64)]):
        path = folder / "{}.jpg".format(i)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0))

    def broken_decode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("nvjpeg: NVJPEG_STATUS_EXECUTION_FAILED")

    pil = open_decoded_images(samples, SPEC, folder, "train", tmp_path / "pil", 0, None)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken_decode)
    with caplog.at_level(logging.WARNING, logger="edgetl.data.decoded_cache"):
        fallback = open_decoded_images(samples, SPEC, folder, "train", tmp_path / "gpu", 0, torch.device("cuda"))
    assert "decoding them with PIL" in caplog.text
    assert np.array_equal(np.asarray(fallback.pixels), np.asarray(pil.pixels))
    assert torch.equal(fallback.geometry, pil.geometry)
