"""The device side type-checks under Python 3.8 rules: mypy, configured in pyproject.toml
(``[tool.mypy]``: ``python_version = "3.8"`` and the device side's files), run as CI and the
pre-commit hook run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_device_side_type_checks() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed: pip install -c constraints.txt -e '.[test]'")
    # No cache: a cache left by another mypy version or another checkout must not decide the result.
    result = subprocess.run(
        [mypy, "--no-incremental", "--cache-dir", os.devnull], cwd=str(ROOT), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
