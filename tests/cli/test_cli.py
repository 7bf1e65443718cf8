"""The command line: version, help with examples, one-line errors, finetune/evaluate end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl import __version__
from edgetl.cli import main


def _command_paths(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if hasattr(command, "commands"):
            yield from _command_paths(command, prefix + (name,))


def test_version_and_help_examples() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.strip() == "edgetl, version " + __version__
    for path in _command_paths(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "edgetl " + " ".join(path) in result.output, path


def test_cli_import_does_not_import_torch() -> None:
    code = (
        "import sys, edgetl.cli; print(sorted(m for m in ('torch', 'torchvision', 'onnxruntime') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "/definitely/missing"], "Error: dataset folder not found: /definitely/missing"),
        (
            ["finetune", "--strategy", "partial", "--trainable-stages", "0"],
            "Error: --trainable-stages must be between 1",
        ),
        (["finetune", "--resume"], "Error: --resume needs --out"),
        (["finetune", "--epochs", "0"], "Error: --epochs must be >= 1"),
        (["evaluate", "/definitely/missing"], "Error: checkpoint not found"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_finetune_and_evaluate_from_the_cli(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"x": 6, "y": 6})
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "-q",
            "finetune",
            str(data),
            "--arch",
            "mobilenet_v3_small",
            "--weights",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--val-split",
            "0.34",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best val top-1" in result.output and str(out) in result.output
    resumed = runner.invoke(main, ["finetune", "--out", str(out), "--resume", "--lr", "0.1"])
    assert resumed.exit_code == 1 and "only --epochs may be given (got: --lr)" in resumed.output

    report = runner.invoke(main, ["evaluate", str(out), "--json"])
    assert report.exit_code == 0, report.output
    parsed = json.loads(report.output)
    assert parsed["count"] == 4 and len(parsed["confusion"]) == 2 and parsed["k"] == 2
    assert (out / "evaluation.json").is_file() and "confusion matrix" in (out / "evaluation.txt").read_text()

    other = make_image_folder({"x": 2, "z": 2}, name="other")
    mismatch = runner.invoke(main, ["evaluate", str(out), str(other)])
    assert mismatch.exit_code == 1 and "differ from the run's" in mismatch.output


def test_missing_training_extra_names_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"  # make torch unimportable, as on a Jetson without the extra
    blocker.write_text("import sys\nsys.modules['torch'] = None\n")
    env = {**os.environ, "PYTHONPATH": "{}:{}".format(tmp_path, Path.cwd())}
    code = "from edgetl.cli import main; main(['finetune', '--epochs', '1'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "Error: this needs the 'torch' package" in result.stderr
    assert "pip install 'edgetl[train]'" in result.stderr and "Traceback" not in result.stderr
