"""Benchmark scripts import the installed package like any user code, and every committed result names
the command that reproduces it from a fresh clone."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.md"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_edgetl_normally(path: Path) -> None:
    text = path.read_text()
    assert "sys.path.insert" not in text and "sys.path.append" not in text and "noqa: E402" not in text
    assert "tempfile.mkdtemp" not in text  # temporary folders are removed: tempfile.TemporaryDirectory


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_result_names_a_command_from_a_fresh_clone(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if line.startswith("Reproduce: `")]
    assert len(lines) == 1, "{} needs one 'Reproduce: `COMMAND`' line".format(path.name)
    command = re.match(r"Reproduce: `([^`]+)`", lines[0]).group(1)
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ")
    scripts = re.findall(r"benchmarks/(\w+\.py)", command)
    assert all((ROOT / "benchmarks" / s).is_file() for s in scripts), command
    assert scripts or ".venv/bin/edgetl " in command, command  # a benchmark script or an edgetl command


def _realdata() -> Any:
    """benchmarks/bench_realdata.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_realdata", ROOT / "benchmarks" / "bench_realdata.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_realdata_split_is_seeded_disjoint_and_per_class() -> None:
    bench = _realdata()
    labels = np.repeat(np.arange(3), 10)
    train, val = bench.split_indices(labels, None, 4, 3, seed=0)
    assert not set(train) & set(val)
    assert np.bincount(labels[train]).tolist() == [4, 4, 4] and np.bincount(labels[val]).tolist() == [3, 3, 3]
    assert (train, val) == bench.split_indices(labels, None, 4, 3, seed=0)
    assert (train, val) != bench.split_indices(labels, None, 4, 3, seed=1)
    official_val = np.repeat(np.arange(3), 5)  # a separate val pool (Fashion-MNIST's test file)
    train, val = bench.split_indices(labels, official_val, 10, 2, seed=0)
    assert sorted(train) == list(range(30)) and np.bincount(official_val[val]).tolist() == [2, 2, 2]


def test_realdata_reads_idx_files(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(_realdata().read_idx(path), images)


def test_realdata_smoke_writes_results_with_verdict_and_probe(tmp_path: Path) -> None:
    """Tiny random-init run on 2 train / 1 val digits per class: the script's whole path, measuring nothing."""
    bench = _realdata()
    argv = ["--smoke", "--skip-advise", "--datasets", "digits", "--train-per-class", "2", "--val-per-class", "1"]
    result = bench.main(argv + ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    (digits,) = result["datasets"]
    assert [run["strategy"] for run in digits["runs"]] == ["feature-extractor", "partial", "full"]
    assert (digits["train_images"], digits["val_images"]) == (20, 10)
    assert all(0.0 <= run["val_top1"] <= 1.0 and run["se"] >= 0.0 for run in digits["runs"])
    assert 0.0 <= digits["probe"]["val_top1"] <= 1.0 and digits["verdict"]["best"] in bench.STRATEGIES
    written = json.loads((tmp_path / "out" / "realdata.json").read_text())
    assert written["datasets"][0]["verdict"] == digits["verdict"]
    text = (tmp_path / "out" / "realdata.md").read_text()
    assert "## digits" in text and "reference probe" in text and "Reproduce: `" in text and "max loss" in text
    # one epoch: no train loss after epoch 1 to hold against chance ln 10
    assert [run["max_train_loss_after_epoch1"] for run in digits["runs"]] == [None, None, None]
    assert digits["epochs_head_run"]["epochs"] == 1 and "feature-extractor, --cache none" in text
    assert digits["runs"][0]["chance_loss"] == pytest.approx(np.log(10))
    images = sorted((tmp_path / "cache").glob("digits-*/*/*/*.png"))
    assert len(images) == 30 and Image.open(images[0]).size == (8, 8)  # real scans, at their own size


REALDATA = ROOT / "benchmarks" / "results" / "realdata.json"


@pytest.mark.skipif(not REALDATA.is_file(), reason="benchmarks/results/realdata.json not recorded")
def test_recorded_default_runs_never_go_above_chance_after_epoch_1() -> None:
    """Issue 9 item 2, on the committed real-data results: every run trained by epochs at finetune's defaults
    (and advise's own command) keeps its train loss under chance ln(classes) after the first epoch."""
    datasets = json.loads(REALDATA.read_text())["datasets"]
    checked = 0
    for data in datasets:
        runs = data["runs"] + [data["epochs_head_run"]] + ([data["advised_run"]] if "advised_run" in data else [])
        for run in runs:
            if run["epochs"] == "solved":
                continue
            assert run["max_train_loss_after_epoch1"] < run["chance_loss"], (data["dataset"], run["strategy"])
            checked += 1
    assert checked >= 3 * len(datasets)  # partial, full and the uncached feature extractor at least
