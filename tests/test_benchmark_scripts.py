"""Benchmark scripts import the installed package like any user code, and every committed result names
the command that reproduces it from a fresh clone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
