"""The fault corpus's one assertion for bad inputs (issue 12, classes 3-6, 8, 9): run an ``edgetl`` command
in-process through click's ``CliRunner`` and check that it is refused the way a user should see it —

- the expected exit status (1: a user error, 2: click's usage error, 3: a failed gate);
- one error line (``Error: ...``) holding the expected text, and no traceback;
- no file that existed before changed (sha256 of every file under the watched folders, before and after),
  and, when ``no_new_files``, nothing new written: the check came before any work.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import TINY_ARCH, write_patterns

from edgetl.cli import main


def file_digests(roots: Iterable[Path]) -> Dict[str, str]:
    """sha256 of every regular file under ``roots`` (links not followed), keyed by path."""
    digests = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in paths:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_cli(args: Sequence[str]) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_refused(
    args: Sequence[object],
    message: str,
    watch: Iterable[Path],
    exit_code: int = 1,
    no_new_files: bool = True,
) -> Result:
    """Run ``edgetl ARGS`` and assert it was refused with ``message`` (see the module docstring)."""
    roots = list(watch)
    before = file_digests(roots)
    result = run_cli([str(a) for a in args])
    output = result.output
    assert result.exit_code == exit_code, "exit {} (want {}): {}".format(result.exit_code, exit_code, output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output
    assert message in errors[0], "{!r} not in {!r}".format(message, errors[0])
    if exit_code != 2:  # our own errors are the only line; click's usage errors add its usage lines
        lines = [line for line in output.splitlines() if line.strip() and not line.startswith("Warning")]
        assert lines == errors, output
    after = file_digests(roots)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not changed, "changed or removed: {}".format(changed)
    if no_new_files:
        assert sorted(set(after) - set(before)) == [], "written before the check: {}".format(output)
    return result


def copy_tree(source: Path, target: Path, skip: Optional[Sequence[str]] = None) -> Path:
    """A copy of a run or bundle folder that a test may damage (``skip``: file names left out)."""
    shutil.copytree(str(source), str(target), ignore=shutil.ignore_patterns(*(skip or ())))
    return target


# The test modules import the fixtures below, and pytest then sets up a "session" fixture once per importing
# module: the folders are built once per session here instead (no conftest.py in this folder: it would shadow
# tests/conftest.py for `from conftest import`).
_BUILT: Dict[str, Path] = {}


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run of a randomly initialised frozen base with a linear head on cached features: the
    cheapest real run folder (best.pt, last.pt, split.json, preprocess.json, labels.txt, metrics.csv)."""
    if "run" not in _BUILT:
        _BUILT["run"] = _quick_run(tmp_path_factory)
    return _BUILT["run"]


def _quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.train.config import FinetuneConfig
    from edgetl.train.loop import finetune

    root = tmp_path_factory.mktemp("quick")
    parts = {part: dict.fromkeys(("alpha", "beta"), count) for part, count in (("train", 6), ("val", 2))}
    write_patterns(root / "data", parts, 32, np.random.default_rng(3))
    config = FinetuneConfig(
        data=str(root / "data"),
        arch=TINY_ARCH,
        weights="none",
        epochs=1,
        batch_size=4,
        workers=0,
        out=str(root / "run"),
    )
    return finetune(config, progress=False).run_dir


@pytest.fixture(scope="session")
def quick_bundle(quick_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``quick_run`` exported with the defaults (fp32 ONNX) into its own folder; tests copy it to damage it."""
    from edgetl.export.job import ExportConfig, export_run

    if "bundle" not in _BUILT:
        out = tmp_path_factory.mktemp("quick_bundle") / "bundle"
        calibration = str(out.parent / "calibration")
        export_run(ExportConfig(run=str(quick_run), out=str(out), calib_dir=calibration, val_images=4))
        _BUILT["bundle"] = out
    return _BUILT["bundle"]
