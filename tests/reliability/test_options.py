"""Issue 12, class 3: every option is checked before any work or write, with a one-line error; a run whose loss
turns non-finite stops instead of saving inf weights and reporting success."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH
from reliability import inputs_corpus
from reliability.inputs_corpus import assert_refused, copy_tree

from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.train.config import FinetuneConfig


@pytest.fixture
def data(make_image_folder) -> Path:
    return make_image_folder(counts={"a": 4, "b": 4}, size=32)


quick_run = inputs_corpus.quick_run  # the corpus's shared fixture
TINY = ["--arch", TINY_ARCH, "--weights", "none", "--workers", "0", "--epochs", "1", "--batch-size", "4"]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--lr", "inf"], "--lr, --head-lr-mult, --weight-decay and --label-smoothing must be finite"),
        (["--lr", "nan"], "must be finite"),
        (["--head-lr-mult", "inf"], "must be finite"),
        (["--weight-decay", "nan"], "must be finite"),
        (["--lr", "2e38"], "--lr x --head-lr-mult must fit in float32"),
        (["--strategy", "feature-extractor", "--trainable-stages", "3"], "--trainable-stages applies to --strategy"),
        (["--strategy", "full", "--trainable-stages", "1"], "--trainable-stages applies to --strategy partial only"),
        (["--weights", "missing.pth"], "--weights file not found: missing.pth"),
    ],
)
def test_finetune_options_are_refused_before_any_write(
    data: Path, tmp_path: Path, monkeypatch, option, message
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(["finetune", data, *TINY, "--out", tmp_path / "run", *option], message, [tmp_path])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--batch-size", "0"], "'--batch-size': 0 is not in the range"),
        (["--workers", "-1"], "needs 0 or more"),
        (["--mixup", "nan"], "'--mixup': nan is not a finite number"),
        (["--mixup", "inf"], "'--mixup': inf is not a finite number"),
        (["--cutmix", "inf"], "'--cutmix': inf is not a finite number"),
        (["--device", "cdua"], "--device must be auto, cpu, cuda or cuda:N, got 'cdua'"),
        (["--device", "banana"], "--device must be auto, cpu, cuda or cuda:N, got 'banana'"),
        (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_out_of_range_values_are_usage_errors(data: Path, tmp_path: Path, monkeypatch, option, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(["finetune", data, *TINY, *option], message, [tmp_path], exit_code=2)


@pytest.mark.parametrize("command", [["evaluate", "run"], ["bench", "data", "data"]])
def test_every_torch_device_option_is_checked_on_parsing(tmp_path: Path, monkeypatch, command) -> None:
    monkeypatch.chdir(tmp_path)
    message = "--device must be auto, cpu, cuda or cuda:N"  # a bad value: exit 2, as --help says
    assert_refused([*command, "--device", "gpu0"], message, [tmp_path], exit_code=2)


def test_the_config_dataclasses_refuse_what_the_cli_refuses() -> None:
    for options in ({"lr": float("inf")}, {"device": "cdua"}, {"batch_size": 0}, {"workers": -1}, {"mixup": math.inf}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**options)
    for options in (
        {"workspace_mib": -1},
        {"precision": "int8", "calib_data": "/definitely/missing"},
        {"int8_form": "trt"},
    ):
        with pytest.raises(ConfigError):
            ExportConfig(run="r", **options)


def test_resume_with_fewer_epochs_than_done_is_refused(quick_run: Path, tmp_path: Path) -> None:
    run = copy_tree(quick_run, tmp_path / "run")
    state = torch.load(str(run / "last.pt"), weights_only=True)
    torch.save(dict(state, epoch=2), str(run / "last.pt"))  # as if 3 epochs were done
    assert_refused(
        ["finetune", "--out", run, "--resume", "--epochs", "2"], "--epochs 2 is fewer than the 3 epochs", [run]
    )


@pytest.mark.parametrize(
    "option, message",
    [
        (["--int8", "--calib-data", "missing/"], "--calib-data not found: missing/"),
        (["--trt", "--workspace", "-5"], "--workspace must be >= 1 MiB, got -5"),
        (["--int8-form", "trt"], "--int8-form only applies with --precision int8"),
    ],
)
def test_export_options_are_refused_before_any_work(quick_run: Path, tmp_path: Path, monkeypatch, option, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bundle"
    assert_refused(["export", quick_run, "--out", out, *option], message, [tmp_path, quick_run])
    assert not out.exists()


def test_a_diverging_run_stops_with_one_line_and_keeps_no_result(data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # the frozen base's features are computed once; the head's rate (x --head-lr-mult) overflows float32 at once
    args = ["finetune", data, *TINY, "--lr", "1e37", "--warmup-epochs", "0"]
    assert_refused([*args, "--out", tmp_path / "run"], "training diverged: the", [data], no_new_files=False)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
