"""CLI conventions: choices from the formats table, the same shared options everywhere, exit codes (0 ok,
1 user error, 2 usage error, 3 failed gate), deprecated aliases."""

from __future__ import annotations

import dataclasses
import json
from typing import Iterator, Tuple

import click
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.cli.options import WorkersParam
from edgetl.contracts.bundle import ModelInfo
from edgetl.contracts.formats import (
    BACKENDS,
    CALIB_METHODS,
    CONSUMER_NAMES,
    GEOMETRIES,
    INT8_FORMS,
    PRECISIONS,
    TRAIN_GEOMETRIES,
)


def _commands(group: click.Group = main, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), command


COMMANDS = dict(_commands())


def _command(path: str) -> click.Command:
    return COMMANDS[path]


def test_choices_come_from_the_formats_table() -> None:
    def choices(path: str, name: str) -> Tuple[str, ...]:
        param = next(p for p in _command(path).params if p.name == name)
        return tuple(param.type.choices)

    assert choices("export", "targets") == CONSUMER_NAMES
    assert choices("export", "int8_form") == ("auto",) + INT8_FORMS
    assert choices("export", "calib_method") == ("auto",) + CALIB_METHODS
    assert choices("export", "precision") == PRECISIONS
    assert choices("predict", "backend") == BACKENDS == choices("bench latency", "backends")
    assert choices("build-engine", "precision") == PRECISIONS
    assert choices("finetune", "eval_geometry") == GEOMETRIES
    assert choices("finetune", "train_geometry") == TRAIN_GEOMETRIES


def test_shared_options_are_the_same_on_every_command() -> None:
    seen = set()
    for path, command in COMMANDS.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            flag = param.opts[0]
            seen.add(flag)
            if flag == "--json":
                assert param.name == "as_json" and param.is_flag and "as JSON to stdout" in param.help, path
            elif flag == "--workers":
                assert isinstance(param.type, WorkersParam), path
            elif flag == "--batch-size":
                assert isinstance(param.type, click.IntRange) and param.type.min == 1, path
            elif flag == "--out":
                assert isinstance(param.type, click.Path), path
            elif flag == "--device":
                assert param.show_default and param.help, path
    assert {"--json", "--workers", "--batch-size", "--out", "--device"} <= seen


def test_top_level_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Exit codes:" in result.output and "3  a failed gate or regression" in result.output


def test_user_error_is_1_and_usage_error_is_2(tmp_path) -> None:
    runner = CliRunner()
    user = runner.invoke(main, ["export", str(tmp_path)])
    assert user.exit_code == 1 and "is not a run folder" in user.output
    usage = runner.invoke(main, ["export", str(tmp_path), "--no-such-option"])
    assert usage.exit_code == 2 and "No such option" in usage.output
    bad_choice = runner.invoke(main, ["export", str(tmp_path), "--for", "caffe"])
    assert bad_choice.exit_code == 2


@pytest.fixture
def captured_export(monkeypatch):
    """Runs ``edgetl export`` up to ExportConfig and records it instead of exporting."""
    import edgetl.export.job as job

    seen = {}

    def fake_export_run(config, on_report=None):
        seen["config"] = config
        return {}

    monkeypatch.setattr(job, "export_run", fake_export_run)
    return seen


@pytest.mark.parametrize(
    "old, new, field, value",
    [
        (["--target-trt", "8.5"], ["--trt-version", "8.5"], "trt_version", "8.5"),
        (["--int8-target", "trt", "--int8"], ["--int8-form", "trt", "--int8"], "int8_form", "trt"),
        (["--io-names", "jetson"], ["--for", "jetson-inference"], "targets", ("jetson-inference",)),
        (["--io-names", "default"], ["--for", "bundle"], "targets", ("bundle",)),
    ],
)
def test_deprecated_aliases_still_work_and_warn(captured_export, tmp_path, old, new, field, value) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path), *old])
    assert result.exit_code == 0, result.output
    assert getattr(captured_export["config"], field) == value
    warning = "Warning: {} is deprecated and will be removed in the next release; use {}".format(old[0], new[0])
    assert result.stderr.strip() == warning and warning not in result.stdout
    assert old[0] not in runner.invoke(main, ["export", "--help"]).output  # hidden
    current = runner.invoke(main, ["export", str(tmp_path), *new])
    assert current.exit_code == 0 and current.stderr == "" and getattr(captured_export["config"], field) == value
    same = runner.invoke(main, ["export", str(tmp_path), *old, *new])
    assert same.exit_code == 0


def test_an_alias_that_disagrees_with_its_new_name_is_a_usage_error(captured_export, tmp_path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--int8-target", "cpu", "--int8-form", "trt"])
    assert result.exit_code == 2 and "--int8-target (deprecated) and --int8-form disagree" in result.output


def test_dynamic_batch_has_no_effect_and_warns(captured_export, tmp_path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--dynamic-batch"])
    assert result.exit_code == 0
    assert captured_export["config"].batch is None
    assert result.stderr.strip().startswith("Warning: --dynamic-batch has no effect and will be removed")
    assert "--dynamic-batch" not in CliRunner().invoke(main, ["export", "--help"]).output


def test_for_is_repeatable_and_the_bundle_is_the_default(captured_export, tmp_path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", str(tmp_path)]).exit_code == 0
    assert captured_export["config"].targets == ("bundle",)
    result = runner.invoke(main, ["export", str(tmp_path), "--for", "jetson-inference", "--for", "triton"])
    assert result.exit_code == 0 and captured_export["config"].targets == ("jetson-inference", "triton")
    assert captured_export["config"].tensor_names == ("input", "logits")  # the bundle's; each target has its own


def test_export_for_jetson_inference_end_to_end(tiny_run, tmp_path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--for", "jetson-inference", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "jetson-inference" / "model.onnx"))
    assert (model.graph.input[0].name, model.graph.output[0].name) == ("input_0", "output_0")
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert model.graph.node[-1].op_type == "Softmax"
    manifest = json.loads((tmp_path / "bundle.json").read_text())  # the bundle itself is edgetl's, as without --for
    assert manifest["models"]["fp32"]["batch"] is None and manifest["models"]["fp32"]["output_kind"] == "logits"
    assert manifest["targets"] == {"jetson-inference": str(tmp_path / "jetson-inference")}
    assert "--saveEngine=model_fp32.engine" in (tmp_path / "build_engine.sh").read_text()


def test_a_failed_gate_exits_3(tiny_run, tmp_path) -> None:
    options = ["--int8", "--max-int8-drop", "0", "--calib-dir", str(tmp_path / "calibration")]
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path), *options])
    assert result.exit_code == 3, result.output
    assert "FAILED model_int8.onnx" in result.output and "Traceback" not in result.output
    assert json.loads((tmp_path / "export_report.json").read_text())["status"] == "failed"
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "model_int8.onnx").exists()


def test_bundles_written_before_the_rename_still_load() -> None:
    old = {
        "file": "model_int8.onnx",
        "kind": "int8",
        "input_name": "input",
        "output_name": "logits",
        "input_layout": "NCHW",
        "output_kind": "logits",
        "batch": None,
        "sha256": "0" * 64,
        "int8_target": "cpu",
        "int8_cpu_isa": "avx2",
    }
    info = ModelInfo.from_dict(old)
    assert info.int8_form == "cpu" and info.int8_cpu_isa == "avx2"
    assert ModelInfo.from_dict(dataclasses.asdict(info)) == info


def test_format_report_reads_old_reports() -> None:
    from edgetl.export.report import format_report

    gate = {
        "verdict": "passed",
        "disagreements": 0,
        "images": 100,
        "confidence": 0.95,
        "upper_bound_points": 0.5,
        "max_points": 1.0,
        "reduced_val_top1": 0.9,
        "fp32_val_top1": 0.9,
    }
    entry = {"file": "model_int8.onnx", "status": "passed", "accuracy_gate": gate}
    for key in ("int8_form", "int8_target"):
        text = format_report({"artifacts": [dict(entry, **{key: "cpu"})], "failures": []})
        assert "INT8 (cpu): passed gate" in text


def test_the_quantizer_maps_every_calibration_method_of_the_table() -> None:
    from edgetl.export.quantize import ORT_CALIBRATION_METHODS

    assert tuple(ORT_CALIBRATION_METHODS) == CALIB_METHODS
