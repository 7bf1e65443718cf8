"""End to end with the real pretrained MobileNetV2: the README's first command on the demo data."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.spec.backbones import get_backbone
from edgetl.train.checkpoint import load_run
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.weights import load_state_dict


def test_demo_feature_extractor_reaches_90_percent(tmp_path: Path, pretrained_mobilenet_v2: Path) -> None:
    out = tmp_path / "demo-run"
    result = CliRunner().invoke(main, ["-q", "finetune", "--out", str(out)])  # defaults: mobilenet_v2, demo data
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    print("demo run:", {k: summary[k] for k in ("best_val_top1", "best_epoch", "run_time_s", "params_trainable")})
    assert summary["arch"] == "mobilenet_v2" and summary["strategy"] == "feature-extractor"
    assert summary["best_val_top1"] >= 0.90

    model, payload = load_run(out)
    pretrained = load_state_dict(pretrained_mobilenet_v2)
    for key, value in model.base.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, pretrained[key]), key
    torch.manual_seed(payload["config"]["seed"])
    initial = build_model(get_backbone("mobilenet_v2"), 4, HeadConfig(), "feature-extractor", 1, None)
    assert not torch.equal(initial.head.weight, model.head.weight)
