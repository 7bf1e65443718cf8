"""Deployment targets of an export (``edgetl export --for NAME``): each writes OUT/<name>/, a folder its
consumer loads as it is, from the bundle's checked files or from its own ONNX export, checked the same way.
A target folder appears whole or not at all (it is assembled in a temporary folder)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from edgetl.contracts.formats import CONSUMERS
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import atomic_dir
from edgetl.errors import ConfigError
from edgetl.export.config import DEEPSTREAM, JETSON_INFERENCE, TRITON, ExportConfig
from edgetl.export.targets import deepstream, jetson_inference, triton
from edgetl.export.targets.common import TargetFailed, TargetInputs

WRITERS: Dict[str, Callable[[TargetInputs, Path], Dict[str, Any]]] = {
    JETSON_INFERENCE: jetson_inference.write,
    DEEPSTREAM: deepstream.write,
    TRITON: triton.write,
}

EXTRA_FOLDERS = {TRITON: (triton.PLAN_REPOSITORY,)}  # other folders of OUT a target writes

__all__ = ["TargetInputs", "engine_copies", "preflight", "write_targets"]


def preflight(config: ExportConfig) -> None:
    """One-line refusals, before any work or write, of targets that cannot take this run: ConfigError
    or DependencyError. Reads the run's preprocess.json and labels.txt (the export checks the checkpoint's
    own copy again)."""
    run = Path(config.run)
    labels = (run / "labels.txt").read_text().splitlines() if (run / "labels.txt").is_file() else []
    if JETSON_INFERENCE in config.targets and (run / "preprocess.json").is_file():
        problem = jetson_inference.refusal(PreprocessSpec.load(run / "preprocess.json"), labels)
        if problem:
            raise ConfigError(problem)
    if DEEPSTREAM in config.targets and any(";" in name for name in labels):
        raise ConfigError("--for deepstream: nvinfer reads labels separated by ';', which a class name here contains")
    if TRITON in config.targets:
        triton.model_config_pb2()


def engine_copies(config: ExportConfig) -> Tuple[str, ...]:
    """Paths (relative to the bundle) a GPU engine of this export is also written to: Triton's plan model."""
    return (triton.plan_path(config),) if TRITON in config.targets else ()


def write_targets(inputs: TargetInputs) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """Write every requested target's folder into the staged bundle; returns (report section per target,
    failures, folders of failed targets that an older export left in the bundle and must go)."""
    sections: Dict[str, Any] = {}
    failures: List[str] = []
    stale: List[str] = []
    for name in inputs.config.targets:
        folder = CONSUMERS[name].folder
        if folder is None:  # the bundle itself
            continue
        try:
            with atomic_dir(inputs.out / folder) as tmp:
                sections[name] = dict(WRITERS[name](inputs, tmp), folder=str(inputs.bundle / folder), status="passed")
        except TargetFailed as exc:
            shutil.rmtree(str(inputs.out / folder), ignore_errors=True)
            stale += [folder] + list(EXTRA_FOLDERS.get(name, ()))  # an older folder would now look valid
            sections[name] = {"folder": str(inputs.bundle / folder), "status": "failed", "failures": exc.failures}
            failures += exc.failures
    return sections, failures, stale
