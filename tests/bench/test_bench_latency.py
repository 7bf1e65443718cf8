"""edgetl bench latency: timing rows, the reference-relative regression gate, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgetl.bench.latency import (
    LatencyConfig,
    RegressionError,
    bench_latency,
    compare_to_baseline,
    fail_on_regressions,
    reference_onnx,
)
from edgetl.cli import main
from edgetl.errors import ConfigError

QUICK = ["--warmup", "1", "--iters", "4", "--rounds", "2", "--threads", "1"]


def test_reference_workload_is_deterministic(tmp_path: Path) -> None:
    first = reference_onnx(tmp_path / "a.onnx").read_bytes()
    assert first == reference_onnx(tmp_path / "b.onnx").read_bytes()


def _report(*relatives: float) -> dict:
    return {
        "rows": [
            {"model": "m.onnx", "backend": "onnx", "batch": b, "relative": r} for b, r in zip((1, 8, 16), relatives)
        ]
    }


def test_gate_compares_reference_relative_times() -> None:
    baseline = _report(2.0, 10.0)
    verdicts = compare_to_baseline(_report(2.2, 12.0, 30.0), baseline, max_regression_pct=15)
    assert [(v["key"], v["ok"]) for v in verdicts] == [
        ("m.onnx [onnx] batch 1", True),
        ("m.onnx [onnx] batch 8", False),
        ("m.onnx [onnx] batch 16", True),
    ]
    assert verdicts[0]["change_pct"] == pytest.approx(10.0) and verdicts[2]["change_pct"] is None
    with pytest.raises(
        RegressionError, match=r"slower than the baseline by more than 15%: m.onnx \[onnx\] batch 8 \(\+20.0%\)"
    ):
        fail_on_regressions(verdicts, 15)
    fail_on_regressions(compare_to_baseline(_report(1.0, 5.0), baseline, 15), 15)  # faster: passes


def test_bench_latency_rows_for_files_and_runs(tmp_path: Path, tiny_run: Path) -> None:
    threads_before = torch.get_num_threads()
    model = reference_onnx(tmp_path / "tiny.onnx")
    report = bench_latency(
        LatencyConfig(
            models=[str(model), str(tiny_run)],
            backends=["torch"],
            batches=[1, 2],
            warmup=1,
            iters=4,
            rounds=2,
            threads=1,
        )
    )
    keys = [(Path(r["model"]).name, r["backend"], r["batch"]) for r in report["rows"]]
    assert keys == [("tiny.onnx", "onnx", 1), ("tiny.onnx", "onnx", 2), ("run", "torch", 1), ("run", "torch", 2)]
    for row in report["rows"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["relative"] > 0 and row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["mean_ms"])
    assert report["machine"]["cpu_count"] >= 1 and "onnxruntime" in json.dumps(report["machine"])
    assert torch.get_num_threads() == threads_before  # --threads does not leak into the caller


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="at least one MODEL"):
        LatencyConfig(models=[])
    with pytest.raises(ConfigError, match="unknown backend"):
        LatencyConfig(models=["m.onnx"], backends=["tflite"])


def test_cli_gate_exit_codes(tmp_path: Path) -> None:
    model = str(reference_onnx(tmp_path / "tiny.onnx"))
    baseline = tmp_path / "baseline.json"
    runner = CliRunner()
    first = runner.invoke(main, ["bench", "latency", model, "--batch", "1", "--json-out", str(baseline)] + QUICK)
    assert first.exit_code == 0, first.output
    assert "tiny.onnx" in first.output and baseline.is_file()
    relaxed = runner.invoke(
        main,
        ["bench", "latency", model, "--batch", "1", "--baseline", str(baseline), "--max-regression", "1000"] + QUICK,
    )
    assert relaxed.exit_code == 0 and "ok" in relaxed.output
    data = json.loads(baseline.read_text())
    data["rows"][0]["relative"] /= 100.0  # pretend it used to be 100x faster
    baseline.write_text(json.dumps(data))
    failed = runner.invoke(main, ["bench", "latency", model, "--batch", "1", "--baseline", str(baseline)] + QUICK)
    assert failed.exit_code == 3 and "REGRESSED" in failed.output
    assert "Error: a model got slower than the baseline by more than 15%" in failed.output
    bad = runner.invoke(main, ["bench", "latency", model, "--batch", "0"])
    assert bad.exit_code == 2 and "batch sizes must be >= 1" in bad.output
