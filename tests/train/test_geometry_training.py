"""finetune --eval-geometry / --train-geometry: batches in the device's geometry, the choice recorded in
preprocess.json and carried into the bundle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgetl.contracts import geometry as g
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.device import DeviceSetup
from edgetl.data.augment import draw_crop_randoms, flip_flags
from edgetl.data.folders import load_dataset
from edgetl.data.pipelines import PilBatches, image_pipeline
from edgetl.errors import ConfigError
from edgetl.train.config import FinetuneConfig
from edgetl.train.inputs import resolve_cache

SPEC = PreprocessSpec(input_size=32, resize_size=36, geometry="imagenet-stretch")


@pytest.fixture
def data(make_image_folder) -> Path:
    return make_image_folder(counts={"a": 4, "b": 4}, size=40, split=True)


def _frame(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_val_batches_are_the_eval_geometry_of_each_image(data: Path) -> None:
    split = load_dataset(data)
    frames, _ = PilBatches(split.val, SPEC)[(torch.arange(len(split.val)), None)]
    for sample, frame in zip(split.val, frames.permute(0, 2, 3, 1).numpy()):
        assert np.array_equal(frame, g.imagenet_stretch(_frame(sample.path), 32, 32))


def test_train_batches_are_the_train_geometry_flipped_by_the_epoch_randoms(data: Path) -> None:
    split = load_dataset(data)
    rows = torch.arange(len(split.train))
    randoms = draw_crop_randoms(len(rows), torch.Generator().manual_seed(3))
    batch, _ = PilBatches(split.train, SPEC, "nvinfer-letterbox-symmetric")[(rows, randoms)]
    flips = flip_flags(randoms).tolist()
    assert any(flips) and not all(flips)
    scaling = g.NVINFER_SCALING["nvinfer-letterbox-symmetric"]
    for sample, frame, flip in zip(split.train, batch.permute(0, 2, 3, 1).numpy(), flips):
        expected = g.nvinfer_scale(_frame(sample.path), 32, 32, scaling)
        assert np.array_equal(frame, expected[:, ::-1] if flip else expected)


def test_geometries_need_the_whole_image_pipeline(data: Path) -> None:
    split = load_dataset(data)
    config = FinetuneConfig(arch="mobilenet_v3_small", strategy="full", eval_geometry="nvinfer-stretch")
    cache, reason = resolve_cache(config, split, SPEC)
    assert cache == "none" and "centre-crop views" in reason
    frozen = FinetuneConfig(arch="mobilenet_v3_small", train_geometry="imagenet-stretch")  # feature extractor
    assert resolve_cache(frozen, split, SPEC)[0] == "none"
    with pytest.raises(ConfigError, match="use cache none"):
        FinetuneConfig(strategy="full", cache="ram", eval_geometry="imagenet-stretch")
    with pytest.raises(ConfigError, match="no feature_views"):
        FinetuneConfig(feature_views=2, train_geometry="imagenet-stretch")
    with pytest.raises(ConfigError, match="eval_geometry must be one of"):
        FinetuneConfig(eval_geometry="random-resized-crop")  # a training geometry only
    with pytest.raises(ConfigError, match="need --cache none"):  # the API refuses too
        image_pipeline("ram", split, SPEC, batch_size=2, workers=0, setup=DeviceSetup.create("cpu"))


def test_a_run_trained_on_a_geometry_carries_it_into_its_bundle(data: Path, tmp_path: Path) -> None:
    from edgetl.contracts.bundle import Bundle
    from edgetl.contracts.verify_sample import read_sample
    from edgetl.export.job import ExportConfig, export_run
    from edgetl.train.loop import finetune

    config = FinetuneConfig(
        data=str(data),
        arch="mobilenet_v3_small",
        strategy="full",
        weights="none",
        epochs=1,
        batch_size=4,
        workers=0,
        eval_geometry="imagenet-stretch",
        train_geometry="imagenet-stretch",
        out=str(tmp_path / "run"),
    )
    run = finetune(config, progress=False).run_dir
    assert json.loads((run / "preprocess.json").read_text())["geometry"] == "imagenet-stretch"
    assert json.loads((run / "config.json").read_text())["train_geometry"] == "imagenet-stretch"
    report = export_run(ExportConfig(run=str(run), out=str(tmp_path / "bundle"), calib_dir=str(tmp_path / "c")))
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.preprocess.geometry == "imagenet-stretch" == report["geometry"]["training_geometry"]
    sample = read_sample(tmp_path / "bundle" / "verify_sample.npz")
    stretched = {g.imagenet_stretch(_frame(s.path), 224, 224).tobytes() for s in load_dataset(data).val}
    assert sum(crop.tobytes() in stretched for crop in sample.pixels) == bundle.verification()["from_val"] == 8


def test_spec_replace_keeps_validation() -> None:
    with pytest.raises(ConfigError):
        replace(SPEC, geometry="letterbox")
