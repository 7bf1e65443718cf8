"""Options declared once: the click options, the grouped help and ``--config`` come from the config dataclasses'
field metadata; precedence command line > file > defaults; errors name fields from Python and flags from the CLI."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import MISSING, asdict, replace
from pathlib import Path
from typing import Any, Dict, List

import click
import pytest
from click.testing import CliRunner

from edgetl.bench.variants_config import VariantsConfig
from edgetl.cli import main
from edgetl.core.options import declared, flag_of
from edgetl.errors import ConfigError
from edgetl.export.config import EXPORT_GROUPS, ExportConfig
from edgetl.train.config import FINETUNE_GROUPS, FinetuneConfig, LaunchConfig

COMMANDS = {"finetune": (FinetuneConfig, LaunchConfig), "export": (ExportConfig,), "bench variants": (VariantsConfig,)}


def _command(path: str) -> click.Command:
    command = main
    for part in path.split():
        command = command.commands[part]
    return command


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_declared_field_has_exactly_one_option_with_its_default(name: str) -> None:
    command = _command(name)
    defaults = command.make_context(name, ["RUN"] if name == "export" else [], resilient_parsing=True).params
    for cls in COMMANDS[name]:
        for f, spec in declared(cls):
            params = [p for p in command.params if p.name == f.name]
            assert len(params) == 1, f.name
            param = params[0]
            if spec.argument:
                assert isinstance(param, click.Argument)
                continue
            assert isinstance(param, click.Option) and param.opts[0] == flag_of(f.name, spec), f.name
            expected = None if f.default is MISSING else f.default
            assert defaults[f.name] == (tuple(expected) if spec.multiple else expected), f.name
            assert (param.help or "") == spec.help, f.name


def _sections(text: str) -> List[str]:
    return [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]


def test_finetune_help_lists_its_options_in_groups() -> None:
    result = CliRunner().invoke(main, ["finetune", "--help"])
    assert result.exit_code == 0
    assert _sections(result.output)[: len(FINETUNE_GROUPS)] == list(FINETUNE_GROUPS)
    optimisation = result.output.split("Optimisation:")[1].split("Data:")[0]
    assert "--epochs" in optimisation and "--head-fit [auto|solve|epochs]" in optimisation
    assert "auto: 0.0001 (AdamW) or 0.005 (SGD) at batch 32" in " ".join(optimisation.split())
    assert "[default: auto]" in optimisation
    assert "--nproc-per-node" in result.output.split("Distributed:")[1].split("Output and run:")[0]
    assert "--config FILE" in result.output


def test_export_help_lists_its_options_in_groups() -> None:
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert _sections(result.output)[: len(EXPORT_GROUPS)] == list(EXPORT_GROUPS)
    precision = result.output.split("Precision:")[1].split("INT8:")[0]
    assert "--precision [fp32|fp16|int8]" in precision and "--int8" in precision and "--fp16" in precision
    assert "--workspace" in result.output.split("TensorRT:")[1].split("Targets:")[0]


@pytest.fixture
def captured(monkeypatch) -> Dict[str, Any]:
    """Runs ``edgetl export`` / ``edgetl finetune`` up to their config and records it instead of running."""
    import edgetl.export.job as job
    import edgetl.train.loop as loop

    seen: Dict[str, Any] = {}

    def record(config: Any, **_: Any) -> None:
        seen["config"] = config
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(job, "export_run", record)
    monkeypatch.setattr(loop, "finetune", record)
    return seen


def _write(path: Path, data: Dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_command_line_overrides_the_file_which_overrides_the_defaults(captured, tmp_path) -> None:
    config = _write(tmp_path / "options.json", {"opset": 15, "seed": 3, "precision": "int8", "targets": ["triton"]})
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path), "--config", str(config), "--opset", "16"])
    assert result.exit_code == 0, result.output
    seen = captured["config"]
    assert (seen.opset, seen.seed, seen.precision, seen.targets) == (16, 3, "int8", ("triton",))
    assert seen.calib_size == ExportConfig(run="x").calib_size  # neither given: the default
    shortcut = runner.invoke(main, ["export", str(tmp_path), "--config", str(config), "--fp16"])
    assert shortcut.exit_code == 0 and captured["config"].precision == "fp16"  # a shortcut flag beats the file


def test_finetune_config_file_precedence(captured, tmp_path) -> None:
    config = _write(tmp_path / "run.json", {"strategy": "partial", "epochs": 7, "lr": "auto", "batch_size": 16})
    result = CliRunner().invoke(main, ["finetune", "--config", str(config), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    seen = captured["config"]
    assert (seen.strategy, seen.epochs, seen.lr, seen.batch_size, seen.head) == ("partial", 3, None, 16, "linear")


def test_a_saved_export_config_round_trips_through_config(captured, tmp_path) -> None:
    resolved = ExportConfig(run=str(tmp_path), precision="int8", targets=("deepstream",), workspace_mib=512).resolved()
    report = _write(tmp_path / "export_report.json", asdict(resolved))  # what export_report.json's config holds
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--config", str(report)])
    assert result.exit_code == 0, result.output
    assert captured["config"] == resolved and captured["config"].resolved() == resolved


def test_a_runs_saved_config_passed_back_reproduces_the_run(tiny_run: Path, tmp_path: Path) -> None:
    saved = json.loads((tiny_run / "config.json").read_text())
    assert saved["head_fit"] == "epochs" and saved["lr"] is not None and saved["cache"] != "auto"  # resolved
    again = tmp_path / "again"
    result = CliRunner().invoke(
        main, ["-q", "finetune", "--config", str(tiny_run / "config.json"), "--out", str(again)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((again / "config.json").read_text()) == dict(saved, out=str(again))

    def metrics(run: Path) -> List[Dict[str, str]]:
        with (run / "metrics.csv").open() as rows:
            return [
                {k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s")}
                for row in csv.DictReader(rows)
            ]

    assert metrics(again) == metrics(tiny_run)


def test_resolving_makes_the_hidden_meanings_explicit() -> None:
    solved = FinetuneConfig().resolved("features", "models/x")
    assert (solved.head_fit, solved.epochs, solved.cache, solved.warmup_epochs) == ("solve", None, "features", 0)
    assert (solved.lr, solved.head_lr_mult, solved.weight_decay) == (0.005, 2.0, 1e-3)
    assert solved.resolved("features", "models/x") == solved
    trained = FinetuneConfig(strategy="partial").resolved("ram", "models/y")
    assert (trained.head_fit, trained.epochs, trained.warmup_epochs) == ("epochs", 5, 1)
    assert FinetuneConfig(epochs=3).resolved("features", "m").head_fit == "epochs"  # --epochs N trains N epochs
    with pytest.raises(ConfigError, match="^head_fit solve needs the feature cache"):
        FinetuneConfig(head_fit="solve").resolved("none", "m")


def test_a_run_saved_by_the_previous_version_still_resumes() -> None:
    from edgetl.train.loop import resumed_config

    old = {k: v for k, v in asdict(FinetuneConfig(strategy="partial", epochs=5)).items() if k != "head_fit"}
    config = resumed_config({"config": old, "epoch": 4, "head_fit": {}}, epochs=8)
    assert (config.head_fit, config.epochs) == ("auto", 8)
    solved = dict(old, strategy="feature-extractor", epochs=None)
    with pytest.raises(ConfigError, match="solved its linear head"):
        resumed_config({"config": solved, "epoch": 0, "head_fit": {"l2": 1.0}}, epochs=3)


@pytest.mark.parametrize(
    "make, python, cli_args, cli",
    [
        (
            lambda: FinetuneConfig(epochs=2, warmup_epochs=3),
            "warmup_epochs must be between 0 and epochs",
            ["finetune", "--epochs", "2", "--warmup-epochs", "3"],
            "--warmup-epochs must be between 0 and --epochs",
        ),
        (
            lambda: ExportConfig(run="x", workspace_mib=0),
            "workspace_mib must be >= 1 MiB",
            ["export", "x", "--workspace", "0"],
            "--workspace must be >= 1 MiB",
        ),
        (
            lambda: ExportConfig(run="x", targets=("triton",), batch=1),
            "targets triton serves a dynamic batch",
            ["export", "x", "--for", "triton", "--batch", "1"],
            "--for triton serves a dynamic batch",
        ),
    ],
)
def test_errors_name_the_field_in_python_and_the_flag_on_the_command_line(make, python, cli_args, cli) -> None:
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value).startswith(python)
    result = CliRunner().invoke(main, cli_args)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {cli}")


@pytest.mark.parametrize(
    "content, message",
    [
        ({"opsett": 3}, "'opsett' is not an option of edgetl export"),
        ({"opset": "x"}, "opset: 'x' is not a valid integer"),
        ({"precision": "int4"}, "precision: 'int4' is not one of"),
        ({"opset": None}, "opset cannot be null"),
        ({"trt": "yes"}, "trt must be true or false"),
        ([1, 2], "must hold a mapping of option names to values"),
    ],
)
def test_bad_config_files_are_one_line_errors_naming_the_key(captured, tmp_path, content, message) -> None:
    path = tmp_path / "options.json"
    path.write_text(json.dumps(content))
    result = CliRunner().invoke(main, ["export", "x", "--config", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert message in result.output and "config" not in captured


def test_yaml_without_pyyaml_names_the_package(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if not installed
    path = tmp_path / "options.yaml"
    path.write_text("opset: 15\n")
    result = CliRunner().invoke(main, ["export", "x", "--config", str(path)])
    assert result.exit_code == 1 and "needs PyYAML: pip install pyyaml" in result.output


def test_yaml_config_when_pyyaml_is_installed(captured, tmp_path) -> None:
    pytest.importorskip("yaml", reason="PyYAML is optional: JSON config files need nothing")
    path = tmp_path / "options.yaml"
    path.write_text("opset: 15\ntargets: [triton]\n")
    assert CliRunner().invoke(main, ["export", "x", "--config", str(path)]).exit_code == 0
    assert (captured["config"].opset, captured["config"].targets) == (15, ("triton",))


def test_resume_takes_no_config_file(tmp_path) -> None:
    path = _write(tmp_path / "options.json", {"seed": 1})
    result = CliRunner().invoke(main, ["finetune", "--out", str(tmp_path), "--resume", "--config", str(path)])
    assert result.exit_code == 1 and "--resume continues with the run's saved options" in result.output
    assert "--config" in result.output


def test_shortcuts_conflict_with_each_other_and_with_the_field() -> None:
    runner = CliRunner()
    both = runner.invoke(main, ["export", "x", "--int8", "--fp16"])
    assert both.exit_code == 1 and "choose one of --int8 and --fp16" in both.output
    clash = runner.invoke(main, ["export", "x", "--int8", "--precision", "fp16"])
    assert clash.exit_code == 1 and "--int8 and --precision fp16 disagree" in clash.output


def test_python_and_cli_share_the_saved_field_names() -> None:
    run = replace(FinetuneConfig(), out="models/x")
    assert set(asdict(run)) == {f.name for f, _ in declared(FinetuneConfig)}
