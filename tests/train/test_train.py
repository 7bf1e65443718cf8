"""Training runs: run folder contents, resume equivalence (also after a kill), run protection."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from edgetl.errors import CheckpointError, ConfigError
from edgetl.train.checkpoint import load_checkpoint, load_run
from edgetl.train.config import FinetuneConfig
from edgetl.train.loop import finetune, resume

METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr_base", "lr_head")


def test_run_folder_contents(tiny_run: Path) -> None:
    payload = load_checkpoint(tiny_run / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "rng",
        "class_names",
        "arch",
        "strategy",
        "preprocess",
        "config",
        "history",
    ):
        assert key in payload, key
    assert payload["class_names"] == ["alpha", "beta", "gamma"]
    assert (tiny_run / "labels.txt").read_text().split() == ["alpha", "beta", "gamma"]
    assert json.loads((tiny_run / "preprocess.json").read_text())["input_size"] == 224
    rows = list(csv.DictReader((tiny_run / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["images_per_s"]) > 0
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["num_train"] == 24 and summary["num_val"] == 12 and summary["pretrained"] is False
    model, _ = load_run(tiny_run)
    assert not model.training and model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)


def test_existing_run_is_never_overwritten(tiny_run: Path) -> None:
    config = FinetuneConfig.from_dict(json.loads((tiny_run / "config.json").read_text()))
    before = (tiny_run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        finetune(config, progress=False)
    assert (tiny_run / "last.pt").read_bytes() == before


def test_wrong_checkpoint_is_one_clear_error(tmp_path: Path, pretrained_mobilenet_v2: Path) -> None:
    with pytest.raises(CheckpointError, match="not an edgetl checkpoint"):
        load_run(pretrained_mobilenet_v2)
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_run(tmp_path / "nowhere")


def _config(data: Path, out: Path) -> FinetuneConfig:
    # partial with dropout in the trainable pre-logit stage, 2 loader workers: every RNG path is exercised
    return FinetuneConfig(
        data=str(data),
        arch="mobilenet_v3_small",
        strategy="partial",
        trainable_stages=3,
        weights="none",
        epochs=3,
        batch_size=6,
        workers=2,
        val_split=0.25,
        out=str(out),
    )


def _metrics(history):
    return [[row[k] for k in METRICS] for row in history]


def test_resume_after_kill_matches_uninterrupted_run(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 8, "b": 8, "c": 8}, size=48)
    reference = finetune(_config(data, tmp_path / "reference"), progress=False)

    killed_dir = tmp_path / "killed"
    code = (
        "import json, sys, torch; from edgetl.train.config import FinetuneConfig; "
        "from edgetl.train.loop import finetune; "
        "torch.set_num_threads({}); finetune(FinetuneConfig(**json.loads(sys.argv[1])), progress=False)".format(
            torch.get_num_threads()
        )
    )  # same thread count as this process: same float results
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(_config(data, killed_dir)))])
    deadline = time.monotonic() + 120
    while not (killed_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL while epoch 2 is under way
    proc.wait()
    interrupted_at = load_checkpoint(killed_dir / "last.pt")["epoch"]
    assert interrupted_at < 2, "the run finished before it could be killed"

    resumed = resume(killed_dir, progress=False)
    assert _metrics(resumed.history) == _metrics(reference.history)
    final_ref, final_resumed = load_run(reference.run_dir, "last.pt")[0], load_run(killed_dir, "last.pt")[0]
    for key, value in final_ref.state_dict().items():
        assert torch.equal(value, final_resumed.state_dict()[key]), key
    assert len(list(csv.DictReader((killed_dir / "metrics.csv").open()))) == 3


def test_resume_can_extend_epochs(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "extended"
    shutil.copytree(tiny_run, run)
    result = resume(run, epochs=2, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_cut_run_round_trips_through_its_checkpoint(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 4, "b": 4})
    config = FinetuneConfig(
        data=str(data),
        arch="mobilenet_v3_small",
        cut_at="stage3",
        weights="none",
        epochs=1,
        batch_size=4,
        workers=0,
        val_split=0.25,
        out=str(tmp_path / "cut"),
    )
    result = finetune(config, progress=False)
    assert result.summary["cut_at"] == "stage3"
    model, payload = load_run(result.run_dir)
    assert payload["cut_at"] == "stage3" and model.feature_dim == 40


def test_evaluation_accepts_labels_already_on_the_device() -> None:
    """Pipelines hand labels over on the training device; on CUDA, mixing them with CPU logits crashed
    every fine-tune at the end of epoch 1 (``placement.OnDevice`` applies CUDA's rule on the CPU)."""
    from placement import DEVICE, PlacementError, on_device

    from edgetl.train.evaluate import evaluate_model

    class DeviceLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = on_device(torch.randn(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    model = DeviceLinear()
    loader = [(on_device(torch.randn(5, 4)), on_device(torch.tensor([0, 1, 2, 0, 1])))]
    result = evaluate_model(model, loader, DEVICE, 3, torch.nn.CrossEntropyLoss())  # DEVICE: what OnDevice reports
    assert result.count == 5 and result.loss == result.loss  # not NaN: the criterion ran
    with pytest.raises(PlacementError):  # the checker itself catches a mix
        torch.nn.CrossEntropyLoss()(torch.randn(5, 3), loader[0][1])


def test_resume_into_an_amp_scaler_from_a_run_saved_without_amp(tiny_run: Path) -> None:
    """A run started on CPU (AMP off: empty scaler state) resumes on a CUDA host (AMP on)."""
    from edgetl.train.checkpoint import model_from_checkpoint
    from edgetl.train.step import cosine_with_warmup, optimizer_for, restore_training_state

    state = load_checkpoint(tiny_run / "last.pt")
    assert state["scaler"] == {}
    config = FinetuneConfig.from_dict(state["config"])
    model = model_from_checkpoint(state)
    optimizer = optimizer_for(config, model)
    scheduler = cosine_with_warmup(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # stands in for the CUDA scaler: same state logic
    restore_training_state(state, model, optimizer, scheduler, scaler)
    assert scaler.get_scale() == 65536.0  # a fresh scale, as on a first AMP epoch
