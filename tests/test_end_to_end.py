"""End to end with the real pretrained MobileNetV2: the README's first command on the demo data, and the INT8
export of that run, which must pass the accuracy gate with every default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.contracts.backbones import get_backbone
from edgetl.train.checkpoint import load_run
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.weights import load_state_dict


@pytest.fixture(scope="module")
def readme_demo_run(tmp_path_factory: pytest.TempPathFactory, pretrained_mobilenet_v2: Path) -> Path:
    """The README's first command: ``edgetl finetune`` with every default (mobilenet_v2, the demo data)."""
    out = tmp_path_factory.mktemp("readme") / "demo-run"
    result = CliRunner().invoke(main, ["-q", "finetune", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_demo_feature_extractor_reaches_90_percent(readme_demo_run: Path, pretrained_mobilenet_v2: Path) -> None:
    out = readme_demo_run
    summary = json.loads((out / "summary.json").read_text())
    print("demo run:", {k: summary[k] for k in ("best_val_top1", "best_epoch", "run_time_s", "params_trainable")})
    assert summary["arch"] == "mobilenet_v2" and summary["strategy"] == "feature-extractor"
    assert (summary["num_train"], summary["num_val"]) == (1000, 240)
    assert summary["best_val_top1"] >= 0.90

    model, payload = load_run(out)
    pretrained = load_state_dict(pretrained_mobilenet_v2)
    for key, value in model.base.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(value, pretrained[key]), key
    torch.manual_seed(payload["config"]["seed"])
    initial = build_model(get_backbone("mobilenet_v2"), 4, HeadConfig(), "feature-extractor", 1, None)
    assert not torch.equal(initial.head.weight, model.head.weight)


def test_demo_int8_export_for_tensorrt_passes_the_gate_with_the_defaults(readme_demo_run: Path, tmp_path: Path) -> None:
    """``edgetl export RUN --trt --int8``: the gate judges 240 val + 744 held-out images and passes; without
    TensorRT the engine is reported as not built (exit 1) after everything else is written."""
    calibration = ["--calib-dir", str(tmp_path / "calibration")]  # manifests outside the checkout
    result = CliRunner().invoke(
        main, ["export", str(readme_demo_run), "--trt", "--int8", "--out", str(tmp_path), *calibration]
    )
    report = json.loads((tmp_path / "export_report.json").read_text())
    entry = next(a for a in report["artifacts"] if a["kind"] == "int8")
    gate = entry["accuracy_gate"]
    print("demo INT8 gate:", {k: gate[k] for k in ("disagreements", "images", "upper_bound_points", "verdict")},
          entry["fallback"].get("kept_fp32"))  # fmt: skip
    assert report["failures"] == [] and entry["status"] == "passed" and gate["verdict"] == "passed"
    assert (gate["val_images"], gate["heldout_train_images"], gate["max_points"]) == (240, 744, 1.0)
    assert entry["int8_form"] == "trt" and entry["calibration"]["method"] == "entropy"
    assert (tmp_path / "calibration.cache").is_file() and (tmp_path / "model_int8.onnx").is_file()
    if importlib.util.find_spec("tensorrt") is None:
        assert result.exit_code == 1 and report["engine"]["status"] == "not built", result.output
    else:
        assert result.exit_code == 0 and report["engine"]["status"] == "built", result.output
