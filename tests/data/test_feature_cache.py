"""Feature cache equivalence, augmented views, and finetune/resume through the new pipelines."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

import edgetl.train.loop as train_module
from edgetl.contracts.backbones import get_backbone
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.device import DeviceSetup
from edgetl.data.augment import eval_crop_decoded, normalize_batch
from edgetl.data.feature_cache import feature_pipeline
from edgetl.data.folders import load_dataset
from edgetl.data.pipelines import decoded_caches
from edgetl.train.checkpoint import load_checkpoint
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_model
from edgetl.train.loop import TrainStep, cosine_with_warmup, finetune, resume, train_one_epoch
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.step import optimizer_for

SPEC = PreprocessSpec(input_size=56, resize_size=64)
CPU = DeviceSetup.create("cpu")


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def frozen_model(pretrained_mobilenet_v2: Path) -> torch.nn.Module:
    """Real weights: a random-init frozen base (eval mode) gives ~1e-9 features, too small to learn from."""
    torch.manual_seed(0)
    return build_model(get_backbone("mobilenet_v2"), 2, HeadConfig(), "feature-extractor", 2, pretrained_mobilenet_v2)


def _train_epoch(module: torch.nn.Module, model: torch.nn.Module, batches: list) -> None:
    """One epoch through finetune's own step, optimizer and schedule."""
    config = FinetuneConfig(strategy="feature-extractor", lr=0.05, head_lr_mult=10.0)
    optimizer = optimizer_for(config, model)
    scheduler = cosine_with_warmup(optimizer, 0, len(batches))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = TrainStep(module, torch.nn.CrossEntropyLoss(), optimizer, scheduler, scaler, CPU)
    train_one_epoch(step, batches, progress=False, label="")


def test_head_on_cached_features_equals_head_through_the_frozen_base(make_image_folder, frozen_model) -> None:
    split = load_dataset(make_image_folder(counts={"a": 6, "b": 6}, size=40, split=True))
    model = frozen_model
    through_base, initial_head = copy.deepcopy(model), copy.deepcopy(model.head.state_dict())
    pipeline = feature_pipeline(split, SPEC, model, batch_size=4, views=0, seed=0, workers=0, setup=CPU)
    # the same inputs (the eval view) in the same order, through the whole model with its frozen base
    train_images, val_images = decoded_caches(split, SPEC, 0, CPU)
    inputs = normalize_batch(
        eval_crop_decoded(train_images.pixels, torch.arange(12), train_images.geometry, SPEC), SPEC
    )
    labels = torch.tensor([s.label for s in split.train])
    order = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    _train_epoch(through_base, through_base, [(inputs[rows], labels[rows]) for rows in order.split(4)])
    _train_epoch(model.head, model, pipeline.train_batches(5))
    for name, value in through_base.head.state_dict().items():
        torch.testing.assert_close(model.head.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(value, initial_head[name])  # the head did train
    for name, value in through_base.base.state_dict().items():
        assert torch.equal(model.base.state_dict()[name], value)  # frozen: weights and BN statistics
    val_inputs = normalize_batch(
        eval_crop_decoded(val_images.pixels, torch.arange(12), val_images.geometry, SPEC), SPEC
    )
    val_labels = torch.tensor([s.label for s in split.val])
    on_features = evaluate_model(model.head, pipeline.val_batches(), CPU.device, 2)
    on_images = evaluate_model(through_base, [(val_inputs, val_labels)], CPU.device, 2)
    assert on_features.top1 == on_images.top1 and on_features.confusion == on_images.confusion


def test_augmented_views_are_fixed_and_reused(
    make_image_folder, frozen_model, caplog: pytest.LogCaptureFixture
) -> None:
    split = load_dataset(make_image_folder(counts={"a": 3, "b": 3}, size=40, split=True))
    model = frozen_model
    plain = feature_pipeline(split, SPEC, model, batch_size=4, views=0, seed=0, workers=0, setup=CPU)
    views = feature_pipeline(split, SPEC, model, batch_size=4, views=2, seed=0, workers=0, setup=CPU)
    assert plain.train.shape == (1, 6, model.feature_dim) and views.train.shape == (2, 6, model.feature_dim)
    assert not torch.allclose(views.train[0], views.train[1], rtol=1e-3, atol=0)
    assert not torch.allclose(views.train[0], plain.train[0], rtol=1e-3, atol=0)
    assert torch.equal(plain.val, views.val)  # validation always uses the eval view
    with caplog.at_level(logging.INFO, logger="edgetl.data.feature_cache"):
        again = feature_pipeline(split, SPEC, model, batch_size=4, views=2, seed=0, workers=0, setup=CPU)
    assert "reusing" in caplog.text and torch.equal(again.train, views.train)
    threads = torch.get_num_threads()
    assert [torch.get_num_threads() for _ in views.train_batches(1)] == [1, 1]  # tiny head ops: one thread
    assert torch.get_num_threads() == threads
    picked = torch.cat([features for features, _ in views.train_batches(1)])  # one of the two views per image
    assert all(any(torch.equal(row, v) for v in views.train.reshape(-1, model.feature_dim)) for row in picked)


class _Killed(Exception):
    pass


def test_resume_with_the_decoded_cache_repeats_an_uninterrupted_run(
    make_image_folder,
    pretrained_mobilenet_v2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = make_image_folder(counts={"a": 4, "b": 4}, size=40, split=True)
    config = FinetuneConfig(
        data=str(data),
        strategy="partial",
        trainable_stages=1,
        cut_at="stage4",
        epochs=2,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "whole"),
    )  # cut: a small, fast base
    with caplog.at_level(logging.INFO, logger="edgetl.train.inputs"):
        whole = finetune(config, progress=False)
    assert "--cache auto: using ram" in caplog.text and whole.summary["cache"] == "ram"
    original_write = train_module._write_metrics

    def killed_after_first_epoch(path: Path, history: list) -> None:
        original_write(path, history)
        raise _Killed()  # as if the process died right after epoch 1's checkpoint

    monkeypatch.setattr(train_module, "_write_metrics", killed_after_first_epoch)
    with pytest.raises(_Killed):
        finetune(FinetuneConfig(**dict(vars(config), out=str(tmp_path / "killed"))), progress=False)
    monkeypatch.setattr(train_module, "_write_metrics", original_write)
    resumed = resume(tmp_path / "killed", progress=False)
    timing = ("epoch_time_s", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in timing} for h in whole.history
    ]
    expected, got = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    assert got["config"]["cache"] == "ram"  # auto's choice is recorded, so a resume cannot pick differently
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["cache"] == "ram"  # the resolved config


def test_finetune_on_the_feature_cache_matches_evaluating_its_checkpoint(
    make_image_folder, pretrained_mobilenet_v2: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgetl.train.evaluate import evaluate_run

    data = make_image_folder(counts={"a": 4, "b": 4}, size=40, split=True)
    config = FinetuneConfig(
        data=str(data),
        cut_at="stage4",
        epochs=2,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "run"),
    )
    with caplog.at_level(logging.INFO, logger="edgetl.train.inputs"):
        result = finetune(config, progress=False)
    assert "--cache auto: using features" in caplog.text and result.summary["cache"] == "features"
    best = result.history[result.summary["best_epoch"] - 1]  # val top-1, ties broken by val loss
    report = evaluate_run(result.run_dir, device="cpu", workers=0)  # best.pt through the PIL eval path
    assert report["top1"] == best["val_top1"] and report["loss"] == pytest.approx(best["val_loss"], abs=1e-5)
