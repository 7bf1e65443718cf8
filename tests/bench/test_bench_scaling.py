"""benchmarks/bench_scaling.py end to end on CPU (gloo), tiny: 1 and 2 processes, their images/s and efficiency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scaling_benchmark_runs_one_and_two_processes(tmp_path: Path) -> None:
    options = ["--arch", "mobilenet_v3_small", "--train-per-class", "2", "--batch-size", "4", "--epochs", "2"]
    options += ["--nproc-per-node", "2", "--device", "cpu", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert [run["processes"] for run in report["runs"]] == [1, 2]
    assert report["setup"]["backend"] == "gloo" and report["setup"]["train_images"] == 8
    one, two = report["runs"]
    assert one["efficiency"] == 1.0 and two["images_per_s"] > 0
    assert abs(two["efficiency"] - two["images_per_s"] / (2 * one["images_per_s"])) < 1e-12
    assert one["threads_per_process"] == two["threads_per_process"]  # the same resources per process
    assert "Reproduce: `python3 -m venv .venv" in (tmp_path / "scaling.md").read_text()
