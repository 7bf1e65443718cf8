"""Training with --augment strong, --mixup/--cutmix and --balance: options recorded in the run, eval/deploy
preprocessing untouched, MixUp refused on the feature cache, and resume equivalence after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH

import edgetl.train.loop as loop_module
from edgetl.cli import main
from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.data.folders import load_dataset
from edgetl.errors import ConfigError
from edgetl.train.checkpoint import load_checkpoint, load_run
from edgetl.train.config import FinetuneConfig
from edgetl.train.inputs import resolve_cache
from edgetl.train.loop import finetune, resume

METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr_base", "lr_head")


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_mixing_is_refused_on_the_feature_cache_before_any_work(tmp_path: Path) -> None:
    for mixing in (dict(mixup=0.2), dict(cutmix=1.0)):
        with pytest.raises(ConfigError, match="mixup/cutmix mix images, and cache features"):
            FinetuneConfig(cache="features", **mixing)
    with pytest.raises(ConfigError, match="feature_views are augmented views"):
        FinetuneConfig(feature_views=2, augment="none")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["finetune", str(tmp_path / "nowhere"), "--cache", "features", "--mixup", "0.2",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--cache features" in result.output and not out.exists()


def test_auto_cache_picks_an_image_pipeline_when_mixing(make_image_folder) -> None:
    split = load_dataset(make_image_folder({"a": 3, "b": 3}, split=True))
    spec = PreprocessSpec(input_size=32, resize_size=36)
    frozen = FinetuneConfig(arch=TINY_ARCH, strategy="feature-extractor", mixup=0.2)
    cache, reason = resolve_cache(frozen, split, spec, memory_bytes=10**9)
    assert cache == "ram" and "--mixup/--cutmix mix images" in reason


def test_resume_after_an_interruption_matches_an_uninterrupted_augmented_balanced_run(
    make_image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder({"a": 10, "b": 4, "c": 6}, size=40)  # imbalanced: the sampler matters

    def config(out: Path) -> FinetuneConfig:
        # partial with dropout in the trainable stages, 2 loader workers (TrivialAugment runs there)
        return FinetuneConfig(
            data=str(data),
            arch=TINY_ARCH,
            strategy="partial",
            trainable_stages=3,
            weights="none",
            epochs=3,
            batch_size=6,
            workers=2,
            val_split=0.25,
            cache="ram",
            augment="strong",
            mixup=0.2,
            balance="sampler",
            out=str(out),
        )

    reference = finetune(config(tmp_path / "reference"), progress=False)
    save_epoch = loop_module._save_epoch

    def interrupt_after_the_first_epoch(run_dir, payload, is_best, history):
        save_epoch(run_dir, payload, is_best, history)
        raise KeyboardInterrupt  # as if killed once epoch 1 is saved

    monkeypatch.setattr(loop_module, "_save_epoch", interrupt_after_the_first_epoch)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        finetune(config(interrupted), progress=False)
    monkeypatch.undo()
    torch.manual_seed(12345)  # the global RNG as another process would leave it
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 0
    resumed = resume(interrupted, progress=False)
    assert [[row[k] for k in METRICS] for row in resumed.history] == [
        [row[k] for k in METRICS] for row in reference.history
    ]
    assert all(0.0 <= row["train_top1"] <= 1.0 for row in resumed.history)  # soft targets count by their argmax
    final_ref, final_resumed = load_run(reference.run_dir, "last.pt")[0], load_run(interrupted, "last.pt")[0]
    for key, value in final_ref.state_dict().items():
        assert torch.equal(value, final_resumed.state_dict()[key]), key

    saved = json.loads((interrupted / "config.json").read_text())
    assert (saved["augment"], saved["mixup"], saved["cutmix"], saved["balance"]) == ("strong", 0.2, 0.0, "sampler")
    assert load_checkpoint(interrupted / "last.pt")["config"]["augment"] == "strong"  # what export and resume read
    deploy = PreprocessSpec.load(interrupted / "preprocess.json")
    assert deploy == preprocess_spec(get_backbone(TINY_ARCH))  # augmentation never reaches eval/deploy input


@pytest.mark.parametrize(
    "options",
    [
        dict(strategy="full", cache="ram", augment="strong", mixup=0.2, cutmix=1.0, balance="loss"),
        dict(strategy="feature-extractor", cache="features", feature_views=2, augment="strong", balance="sampler"),
    ],
    ids=["ram", "features"],
)
def test_augmentation_and_balance_follow_cudas_placement_rules(make_image_folder, tmp_path: Path, options) -> None:
    """The device crop + TrivialAugment, erasing and mixing on the device, weights of the loss on the device."""
    from placement import cuda_rules

    data = make_image_folder({"a": 4, "b": 4}, size=40)
    config = FinetuneConfig(
        data=str(data), arch=TINY_ARCH, weights="none", epochs=1, batch_size=4, workers=0, val_split=0.25,
        out=str(tmp_path / "run"), **options,
    )  # fmt: skip
    with cuda_rules() as checked:
        result = finetune(config, progress=False, setup=checked)
    assert result.summary["device"] == "cuda:0" and result.summary["cache"] == options["cache"]


def test_strong_augmentation_on_the_eval_view_feature_cache_says_it_does_nothing(make_image_folder, caplog) -> None:
    from edgetl.core.device import DeviceSetup
    from edgetl.train.inputs import build_pipeline
    from edgetl.train.model import HeadConfig, build_model

    split = load_dataset(make_image_folder({"a": 2, "b": 2}, size=32, split=True))
    model = build_model(get_backbone(TINY_ARCH), 2, HeadConfig(), "feature-extractor", 2, None)
    spec = PreprocessSpec(input_size=32, resize_size=36)
    config = FinetuneConfig(arch=TINY_ARCH, cache="features", augment="strong", workers=0)
    with caplog.at_level("WARNING", logger="edgetl"):
        build_pipeline(config, split, spec, model, DeviceSetup.create("cpu"))
    assert any("add --feature-views N" in r.getMessage() for r in caplog.records)
