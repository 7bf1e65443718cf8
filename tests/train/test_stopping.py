"""Early stopping, the best epoch, the divergence guard, the test split, and resuming with them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List

import pytest

import edgetl.train.loop as loop
from edgetl.train.checkpoint import load_checkpoint
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_run
from edgetl.train.loop import finetune, resume
from edgetl.train.stopping import ChanceGuard, best_row, early_stop

TIMES = ("epoch_time_s", "images_per_s")


def _row(epoch: int, top1: float, loss: float, train_loss: float = 0.5) -> Dict[str, float]:
    return {"epoch": epoch, "val_top1": top1, "val_loss": loss, "train_loss": train_loss}


def test_best_epoch_breaks_top1_ties_by_val_loss_and_patience_counts_from_it() -> None:
    history = [_row(1, 0.5, 1.0), _row(2, 0.7, 0.9), _row(3, 0.7, 0.8), _row(4, 0.7, 0.85), _row(5, 0.6, 0.5)]
    assert best_row(history)["epoch"] == 3  # same top-1 as epoch 2, lower loss
    assert early_stop(history[:4], 2) is None
    assert "did not improve for 2 epochs" in early_stop(history, 2) and "best epoch 3" in early_stop(history, 2)
    assert early_stop(history, None) is None


def test_chance_guard_warns_once_after_the_warmup(caplog: pytest.LogCaptureFixture) -> None:
    guard = ChanceGuard(classes=10, warmup_epochs=1, advice="lower --lr")
    history: List[Dict[str, float]] = [_row(1, 0.1, 3.0, train_loss=4.0)]
    assert guard.check(history) is None  # the warm-up epoch may be anywhere
    history.append(_row(2, 0.1, 3.0, train_loss=math.log(10) + 0.01))
    assert "above chance (ln 10 = 2.303)" in guard.check(history)
    history.append(_row(3, 0.1, 3.0, train_loss=float("nan")))
    assert guard.check(history) is None  # once per run
    unwarmed = ChanceGuard(10, 0, "")
    first = [_row(1, 0.1, 3.0, train_loss=4.0)]
    assert unwarmed.check(first) is None  # epoch 1's mean includes the random head's first batches
    assert unwarmed.check(first + [_row(2, 0.1, 3.0, train_loss=float("nan"))]) is not None  # NaN too


def test_warmup_auto_is_zero_for_the_frozen_base_and_one_otherwise() -> None:
    assert FinetuneConfig().warmup == 0  # the feature extractor: no pretrained layer to protect
    assert FinetuneConfig(strategy="partial").warmup == 1 and FinetuneConfig(strategy="full").warmup == 1
    assert FinetuneConfig(strategy="full", warmup_epochs=2).warmup == 2
    assert FinetuneConfig(warmup_epochs=1).warmup == 1


def _config(data: Path, out: Path, **options) -> FinetuneConfig:
    base = dict(
        data=str(data),
        arch="mobilenet_v3_small",
        strategy="full",
        weights="none",
        batch_size=6,
        workers=0,
        val_split=0.25,
        out=str(out),
    )
    return FinetuneConfig(**dict(base, **options))


def test_a_hot_learning_rate_triggers_the_divergence_warning(
    make_image_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_image_folder({"a": 6, "b": 6, "c": 6}, size=32)
    with caplog.at_level(logging.WARNING, logger="edgetl.train.stopping"):
        # hot enough to leave chance behind, not so hot that the loss turns non-finite (which stops the run)
        result = finetune(_config(data, tmp_path / "hot", epochs=3, warmup_epochs=0, lr=1.0), progress=False)
    warnings = [r.message for r in caplog.records if "above chance" in r.message]
    assert len(warnings) == 1 and "lower --lr (1)" in warnings[0], [r.message for r in caplog.records]
    assert not result.history[0]["train_loss"] <= math.log(3)


def test_patience_stops_and_best_pt_stays_the_best_epoch(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 6, "b": 6}, size=32)
    # a step too small to change anything: every epoch ties, so the first stays best
    result = finetune(_config(data, tmp_path / "run", epochs=6, lr=1e-12, patience=2), progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.summary["stopped"].startswith("early stop after epoch 3") and result.summary["best_epoch"] == 1
    assert load_checkpoint(result.run_dir / "best.pt")["epoch"] == 0
    assert "chosen on the validation split" in result.summary["selection"]


def test_resume_with_patience_and_a_test_split_matches_an_uninterrupted_run(
    make_image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder({"a": 8, "b": 8, "c": 8}, size=32)
    options = dict(epochs=6, lr=1e-12, patience=2, test_split=0.25)
    reference = finetune(_config(data, tmp_path / "reference", **options), progress=False)

    save = loop._save_epoch

    def save_then_die(run_dir, payload, is_best, history):
        save(run_dir, payload, is_best, history)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(loop, "_save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(data, tmp_path / "killed", **options), progress=False)
    monkeypatch.setattr(loop, "_save_epoch", save)
    resumed = resume(tmp_path / "killed", progress=False)

    def strip(history):
        return [{k: v for k, v in row.items() if k not in TIMES} for row in history]

    assert strip(resumed.history) == strip(reference.history) and len(reference.history) == 3
    assert resumed.summary["stopped"] == reference.summary["stopped"]
    assert resumed.summary["test_top1"] == reference.summary["test_top1"]
    split = json.loads((tmp_path / "killed" / "split.json").read_text())
    paths = [{p for p, _ in split[part]} for part in ("train", "val", "test")]
    assert len(paths[2]) == 6 and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    report = evaluate_run(tmp_path / "killed", split="test", device="cpu")
    assert report["count"] == 6 and report["top1"] == pytest.approx(reference.summary["test_top1"])
