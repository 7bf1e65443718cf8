"""Runtime fixtures: the tiny run exported once (fp32 ONNX, verification sample, build_engine.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` exported with the defaults into its own folder (seconds). Tests copy it before changing it."""
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), calib_dir=str(out.parent / "calibration")))
    return out
