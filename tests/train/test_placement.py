"""The CUDA code paths under CUDA's placement rules, on the CPU (``tests/placement.py``): finetune,
resume and evaluate with the decoded-cache device crop (roi_align, channels_last), the PIL pipeline
and the feature cache; and the checker catching bug 1 (labels left on the device in evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH
from placement import DEVICE, CudaRulesSetup, OnDevice, PlacementError, cuda_rules, on_device

import edgetl.train.evaluate as evaluate_module
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.data.augment import normalize_batch
from edgetl.data.folders import load_dataset
from edgetl.data.pipelines import DecodedBatches, EpochBatchSampler, decoded_caches, device_finish
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_run
from edgetl.train.loop import finetune, resume


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def checked() -> Iterator[CudaRulesSetup]:
    """CUDA's placement rules for the test; yields the checked run's DeviceSetup."""
    with cuda_rules() as setup:
        yield setup


def _config(data: Path, out: Path, **overrides: object) -> FinetuneConfig:
    options = dict(
        data=str(data),
        arch=TINY_ARCH,
        weights="none",
        strategy="full",
        epochs=1,
        batch_size=4,
        workers=0,
        val_split=0.25,
        out=str(out),
    )
    options.update(overrides)
    return FinetuneConfig(**options)


def test_the_checker_applies_cudas_placement_rules(checked: CudaRulesSetup) -> None:
    x = torch.arange(6, device=checked.device)  # allocated "on the device"
    assert isinstance(x, OnDevice) and x.device == DEVICE and x.is_cuda
    assert isinstance(checked.to_device(torch.ones(6)), OnDevice)
    assert isinstance(torch.ones(6).to(x.device), OnDevice)
    with pytest.raises(PlacementError):
        x + torch.ones(6)  # a host tensor of one or more dimensions
    assert isinstance(x * torch.tensor(2), OnDevice)  # 0-dim host tensors are scalars, as on CUDA
    assert isinstance(x[torch.tensor([0, 2])], OnDevice)  # host index tensors are allowed, as on CUDA
    assert type(x.cpu()) is torch.Tensor and type(x.to("cpu")) is torch.Tensor
    with pytest.raises(PlacementError):
        x.numpy()
    model = checked.module_to_device(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2)))
    assert all(isinstance(t, OnDevice) for t in list(model.parameters()) + list(model.buffers()))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)  # cuda_paths: channels_last
    with pytest.raises(PlacementError):
        model(torch.rand(1, 3, 4, 4))  # host input into device weights
    assert isinstance(model(checked.to_device(torch.rand(1, 3, 4, 4))), OnDevice)


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_finetune_resume_and_evaluate_follow_cudas_placement_rules(
    make_image_folder, tmp_path: Path, checked: CudaRulesSetup, cache: str
) -> None:
    """``ram``: raw decoded batches, cropped on the device (one roi_align), channels_last; ``none``: PIL."""
    data = make_image_folder({"a": 4, "b": 4}, size=40)
    result = finetune(_config(data, tmp_path / "run", cache=cache), progress=False, setup=checked)
    assert result.summary["device"] == "cuda:0" and result.summary["cache"] == cache
    if cache == "none":
        return  # the PIL pipeline differs only in its loader: one epoch checks its hand-over
    resumed = resume(result.run_dir, epochs=2, progress=False, setup=checked)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    report = evaluate_run(result.run_dir, batch_size=4, workers=0, setup=checked)
    assert report["count"] == 2


def test_feature_cache_follows_cudas_placement_rules(
    make_image_folder, tmp_path: Path, checked: CudaRulesSetup
) -> None:
    """The frozen base over raw decoded batches (eval view and augmented views), the head on device features."""
    data = make_image_folder({"a": 4, "b": 4}, size=40)
    config = _config(data, tmp_path / "run", strategy="feature-extractor", cache="features", feature_views=2)
    result = finetune(config, progress=False, setup=checked)
    assert result.summary["cache"] == "features"
    resumed = resume(result.run_dir, epochs=2, progress=False, setup=checked)  # reuses the stored features
    assert len(resumed.history) == 2


def test_the_checker_catches_bug_1(make_image_folder, tmp_path: Path, checked: CudaRulesSetup, monkeypatch) -> None:
    """Re-inject the first CUDA bug (evaluation kept the labels on the device while the logits went to
    the CPU): the checked fine-tune fails at the end of epoch 1, as it did on every GPU."""

    @torch.no_grad()
    def old_predict_logits(model, loader, device):
        model.eval()
        outputs, labels = [], []
        for images, target in loader:
            outputs.append(model(images.to(device)).float().cpu())
            labels.append(target)  # bug 1: no .cpu()
        return torch.cat(outputs), torch.cat(labels)

    monkeypatch.setattr(evaluate_module, "predict_logits", old_predict_logits)
    data = make_image_folder({"a": 4, "b": 4}, size=40)
    with pytest.raises(PlacementError, match="same device"):
        finetune(_config(data, tmp_path / "run", cache="ram"), progress=False, setup=checked)


def test_evaluation_of_device_labels_needs_no_checker_mode() -> None:
    """OnDevice alone (no mode active): moving an OnDevice tensor "to the device" keeps it there."""
    x = on_device(torch.ones(3))
    assert isinstance(x.to(DEVICE), OnDevice) and isinstance(torch.zeros_like(x, device=x.device), OnDevice)


def test_device_crop_batches_come_out_channels_last(make_image_folder, checked: CudaRulesSetup) -> None:
    """The raw decoded batch is cropped on the device (roi_align) and normalised straight into channels_last."""
    split = load_dataset(make_image_folder({"a": 3, "b": 3}, size=40, split=True))
    spec = PreprocessSpec(input_size=56, resize_size=64)
    train, _ = decoded_caches(split, spec, 0, checked)
    sampler = EpochBatchSampler(len(train), 4, shuffle=True, augment=True)
    sampler.set_epoch(1)
    dataset = DecodedBatches(train, [s.label for s in split.train], spec, raw=checked.cuda_paths)
    images, labels = device_finish(checked, spec)(dataset[next(iter(sampler))])
    assert isinstance(images, OnDevice) and isinstance(labels, OnDevice)
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(normalize_batch(pixels, spec, torch.channels_last), normalize_batch(pixels, spec))


@pytest.mark.parametrize("stage", [None, "stage3"])
def test_analysis_features_follow_cudas_placement_rules(tiny_run: Path, checked: CudaRulesSetup, stage) -> None:
    """advise/inspect's feature pass (pooled features, or a stage's channel maxima) on the device."""
    from edgetl.analysis.embeddings import POOLED, _compute, run_model

    model = run_model(tiny_run)
    paths = sorted((Path(tiny_run).parent / "data" / "val").glob("*/*.jpg"))[:4]
    values = _compute(model, paths, POOLED if stage is None else stage, 4, 0, checked.device, False)
    assert values.shape[0] == 4 and values.dtype == np.float32
