"""``edgetl bench data`` and the finetune --cache/--workers options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.bench.data import EXTRACTION, HEAD_ONLY, format_bench_data, verdicts
from edgetl.cli import main
from edgetl.train.config import STRATEGIES


@pytest.fixture(autouse=True)
def edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_bench_data_cli_reports_pipelines_model_and_verdicts(make_image_folder) -> None:
    data = make_image_folder(counts={"a": 4, "b": 4}, size=40, split=True)
    args = [
        "bench",
        "data",
        str(data),
        "--arch",
        "mobilenet_v3_small",
        "--batch-size",
        "2",
        "--batches",
        "2",
        "--steps",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert [row["name"] for row in report["pipelines"]] == ["none", "ram"]
    assert all(row["images_per_s"] > 0 for row in report["pipelines"] + report["model"])
    assert [row["name"] for row in report["model"]] == ["feature-extractor", HEAD_ONLY, EXTRACTION, "partial", "full"]
    assert [v["strategy"] for v in report["verdicts"]] == list(STRATEGIES)
    assert report["verdicts"][0]["recommended"] == "--cache features"
    text = format_bench_data(report)
    for verdict in report["verdicts"]:
        assert verdict["verdict"] in text and verdict["verdict"].split(":")[0] in ("input-bound", "compute-bound")


def test_verdict_says_input_bound_with_the_figures() -> None:
    pipelines = [{"name": "none", "images_per_s": 80.0}, {"name": "ram", "images_per_s": 300.0}]
    model = [
        {"name": "feature-extractor", "images_per_s": 900.0},
        {"name": HEAD_ONLY, "images_per_s": 50000.0},
        {"name": EXTRACTION, "images_per_s": 1000.0},
        {"name": "partial", "images_per_s": 500.0},
        {"name": "full", "images_per_s": 200.0},
    ]
    by_strategy = {v["strategy"]: v for v in verdicts(pipelines, model, train_images=600)}
    assert by_strategy["partial"]["verdict"].startswith(
        "input-bound: loader gives 300 img/s (--cache ram), model takes 500"
    )
    assert by_strategy["partial"]["recommended"] == "--cache ram"
    assert by_strategy["full"]["bound"] == "compute"
    frozen = by_strategy["feature-extractor"]
    assert frozen["bound"] == "input" and frozen["recommended"] == "--cache features"
    assert "50000 img/s" in frozen["verdict"] and "~2 s feature extraction" in frozen["verdict"]  # 600 / 300 img/s


def test_finetune_cache_and_workers_options_are_validated() -> None:
    runner = CliRunner()
    bad_workers = runner.invoke(main, ["finetune", "--workers", "many"])
    assert bad_workers.exit_code == 2 and "neither 'auto' nor a whole number" in bad_workers.output
    conflict = runner.invoke(main, ["finetune", "--strategy", "full", "--cache", "features", "--workers", "auto"])
    assert conflict.exit_code == 1
    assert (
        conflict.output.strip()
        .splitlines()[-1]
        .startswith("Error: --cache features needs --strategy feature-extractor")
    )
