"""The package tree's rules, checked by tools rather than a hand-kept list: import-linter's layer
contracts (no cycles, only downward imports), a torch-free, Python 3.8 device side (every module of
its packages, found by glob), and imports inside functions only for heavy or optional modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgetl"
# The torch-free device side, what a Jetson runs with the core install: pyproject.toml's mypy files.
DEVICE_SIDE = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
HEAVY = ("torch", "torchvision", "onnxruntime")
# Modules a function may import lazily: optional or heavy dependencies (and the CLI's stages, which pull in torch).
LAZY_OK = (
    "torch",
    "torchvision",
    "onnxruntime",
    "tensorrt",
    "cuda",
    "matplotlib",
    "onnx",
    "onnxslim",
    "polygraphy",
    "importlinter",
    "click.testing",
    "yaml",  # --config FILE.yaml, with PyYAML installed
)


def device_side_files() -> List[Path]:
    files: List[Path] = []
    for entry in DEVICE_SIDE:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_contracts_hold() -> None:
    """Layers (cli > bench > analysis > export > train > data > trt > runtime > spec > core) and no cycles."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    result = subprocess.run([lint, "--no-cache"], cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_device_side_imports_no_torch_or_onnxruntime() -> None:
    names = [module_name(p) for p in device_side_files()]
    code = (
        "import importlib, sys\nfor n in {!r}: importlib.import_module(n)\n"
        "print(sorted(m for m in {!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code.format(names, HEAVY)], cwd=str(ROOT), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
    assert "edgetl.runtime.tensorrt" in names and "edgetl.cli.export_commands" in names  # the glob found them


@pytest.mark.parametrize("path", device_side_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_device_side_parses_as_python_3_8(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_device_side_needs_nothing_newer_than_python_3_8() -> None:
    """Standard library and syntax: vermin finds the minimum Python version of each file."""
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.fail("vermin is not installed: pip install -e '.[test]'")
    files = [str(p.relative_to(ROOT)) for p in device_side_files()]
    result = subprocess.run(
        [
            vermin,
            "-t=3.8-",
            "--no-tips",
            "--violations",
            "--eval-annotations",
            "--backport",
            "dataclasses",
            "--no-parse-comments",
        ]
        + files,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_inside_functions_are_only_for_heavy_or_optional_modules() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli":
            continue  # commands import their workstation stage lazily so `edgetl --help` needs no torch
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                names = (
                    [inner.module or ""]
                    if isinstance(inner, ast.ImportFrom)
                    else [a.name for a in inner.names]
                    if isinstance(inner, ast.Import)
                    else []
                )
                offenders += [
                    "{}:{} {}".format(path.relative_to(ROOT), inner.lineno, n)
                    for n in names
                    if not n.startswith(LAZY_OK) and n not in ALLOWED_LAZY_EDGETL
                ]
    assert not offenders, "\n".join(offenders)


# The torch backend runs the workstation's checkpoint loader; it is imported only when that backend starts.
ALLOWED_LAZY_EDGETL = {"edgetl.train.checkpoint"}
