"""A deployable bundle: the files ``edgetl export`` writes and how the device side reads them.

A bundle is a folder (the run folder itself, or ``export --out``) holding ``bundle.json``, which
lists every artifact that passed its gate, plus ``labels.txt`` and ``preprocess.json``. A run
folder that was never exported is readable too (torch backend only). Torch-free, Python 3.8
syntax: this module is part of the device runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetl import __version__
from edgetl.contracts.formats import ONNX_FILES as ONNX_FILES  # re-exported: bundle readers name the files
from edgetl.contracts.formats import PRECISIONS as PRECISIONS
from edgetl.contracts.lineage import LINEAGE, LINEAGE_SCHEMA
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.contracts.schema import dict_of, is_int, is_str, list_of, one_of, optional, read_json, record
from edgetl.core.fileio import atomic_write_text
from edgetl.core.hashcache import cached_sha256
from edgetl.errors import CheckpointError

BUNDLE_FORMAT = "edgetl-bundle-v2"  # v2: the lineage section (edgetl.contracts.lineage)
OLDER_FORMATS = ("edgetl-bundle-v1",)  # still read; a v1 bundle.json stays v1 when an engine is added
MANIFEST = "bundle.json"
LABELS = "labels.txt"
PREPROCESS = "preprocess.json"
REPORT = "export_report.json"
BUILD_SCRIPT = "build_engine.sh"
CHECKPOINT = "best.pt"
VERIFY_SAMPLE = "verify_sample.npz"  # crops + reference outputs (contracts.verify_sample); sha256 in the manifest
VERIFY_DATA_LOADER = "verify_data.py"  # the same crops for Polygraphy's --data-loader-script
REJECTED_SUFFIX = ".rejected"  # an engine that failed verification is renamed <engine>.rejected (never served)


def engine_file(precision: str, dla_core: Optional[int] = None) -> str:
    """File name of the TensorRT engine of a precision: ``model_<precision>.engine``, or
    ``model_<precision>_dla<N>.engine`` for DLA core N."""
    return "model_{}{}.engine".format(precision, "" if dla_core is None else "_dla{}".format(dla_core))


def sidecar_file(engine: str) -> str:
    """The JSON sidecar that describes an engine: ``<engine>.json``."""
    return engine + ".json"


@dataclass(frozen=True)
class ModelInfo:
    """One ONNX model of a bundle and how to feed it."""

    file: str
    kind: str  # a key of ONNX_FILES
    input_name: str
    output_name: str
    input_layout: str  # "NCHW" (normalised float32) or "NHWC" (uint8 pixels, baked preprocessing)
    output_kind: str  # "logits" or "probabilities"
    batch: Optional[int]  # None: dynamic batch axis
    sha256: str
    int8_form: Optional[str] = None  # "trt" or "cpu" for INT8 models (edgetl.contracts.formats.INT8_FORMS)
    int8_cpu_isa: Optional[str] = None  # the CPU the cpu form was built for (edgetl.contracts.formats.INT8_CPU_FORMS)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelInfo":
        data = dict(data)
        if "int8_target" in data:  # the key of bundles written by edgetl 0.1.0
            data.setdefault("int8_form", data.pop("int8_target"))
        known = {f.name for f in fields(cls)}  # a newer edgetl's extra keys are not an error (MANIFEST_SCHEMA)
        return cls(**{k: v for k, v in data.items() if k in known})


class Bundle:
    """A bundle folder: labels, preprocessing, the ONNX models and engines listed in ``bundle.json``."""

    def __init__(self, root: Path, manifest: Dict[str, Any], labels: List[str], preprocess: PreprocessSpec) -> None:
        self.root = root
        self.manifest = manifest
        self.labels = labels
        self.preprocess = preprocess

    @classmethod
    def load(cls, path: Path) -> "Bundle":
        """Read a bundle (a folder with ``bundle.json``) or a plain run folder (``best.pt``)."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if manifest_path.is_file():
            manifest = read_json(manifest_path, MANIFEST_SCHEMA)
        elif (root / CHECKPOINT).is_file():
            manifest = {"format": BUNDLE_FORMAT, "models": {}, "engines": {}}
        else:
            raise CheckpointError(
                "{} is neither an exported bundle ({}) nor a run folder ({}); run 'edgetl export RUN' first".format(
                    root, MANIFEST, CHECKPOINT
                )
            )
        for name in (LABELS, PREPROCESS):
            if not (root / name).is_file():
                raise CheckpointError("{} has no {}".format(root, name))
        labels = [line.strip() for line in (root / LABELS).read_text().splitlines() if line.strip()]
        if len(labels) < 2:
            raise CheckpointError(
                "{} is malformed: {} class name(s), a classifier needs 2 or more".format(root / LABELS, len(labels))
            )
        bundle = cls(root, manifest, labels, PreprocessSpec.load(root / PREPROCESS))
        bundle.check_consistent()
        return bundle

    def reexport_hint(self) -> str:
        """The command that rebuilds this bundle from its run."""
        run = self.manifest.get("run")
        if run is None or Path(run).resolve() == self.root.resolve():
            return "re-export it with 'edgetl export {}'".format(run or self.root)
        return "re-export it with 'edgetl export {} --out {}'".format(run, self.root)

    def check_consistent(self) -> None:
        """Refuse a bundle whose parts do not belong together: labels.txt that is not the manifest's classes,
        a listed model file that is missing, or (a bundle that is its own run folder) a best.pt retrained since
        the export, whose ONNX would otherwise be served as if it were current."""
        classes = self.manifest.get("class_names")
        if classes is not None and list(classes) != self.labels:
            raise CheckpointError(
                "{} has {} labels in {} but was exported for {} classes ({}); {}".format(
                    self.root, len(self.labels), LABELS, len(classes), ", ".join(classes[:4]), self.reexport_hint()
                )
            )
        for data in self.manifest.get("models", {}).values():
            if not (self.root / data["file"]).is_file():
                raise CheckpointError("{} lists {} but the file is missing; {}".format(
                    self.root / MANIFEST, data["file"], self.reexport_hint()))  # fmt: skip
        recorded = self.manifest.get("checkpoint_sha256")
        checkpoint = self.root / CHECKPOINT
        if recorded and checkpoint.is_file() and cached_sha256(checkpoint) != recorded:
            raise CheckpointError(
                "{} changed since this bundle was exported (retrained?): its models are stale; {}".format(
                    checkpoint, self.reexport_hint()
                )
            )

    def verified(self, info: ModelInfo) -> ModelInfo:
        """``info`` once its file matches the sha256 recorded in ``bundle.json`` (a damaged, edited or foreign
        file is refused, never served)."""
        if cached_sha256(self.root / info.file) != info.sha256:
            raise CheckpointError(
                "{} does not match the sha256 in {} (damaged or replaced since export); {}".format(
                    self.root / info.file, MANIFEST, self.reexport_hint()
                )
            )
        return info

    def checkpoint_dir(self) -> Optional[Path]:
        """The run folder holding the ``best.pt`` this bundle was exported from: the bundle itself, or its run
        (only while that checkpoint is unchanged: a retrained run's classes and weights are not the bundle's)."""
        recorded = self.manifest.get("checkpoint_sha256")
        for folder in (self.root, Path(self.manifest.get("run", self.root))):
            checkpoint = folder / CHECKPOINT
            if checkpoint.is_file() and (recorded is None or cached_sha256(checkpoint) == recorded):
                return folder
        return None

    def model(self, kind: str) -> Optional[ModelInfo]:
        """The ONNX model of a kind (fp32, baked, int8, fp16) if the bundle has one on disk."""
        data = self.manifest.get("models", {}).get(kind)
        if data is None or not (self.root / data["file"]).is_file():
            return None
        return ModelInfo.from_dict(data)

    def engines(self) -> List[str]:
        """Engine files listed in the manifest that exist on disk."""
        return [name for name in self.manifest.get("engines", {}) if (self.root / name).is_file()]

    def engine_plan(self, engine: str) -> Optional[Dict[str, Any]]:
        return self.manifest.get("engines", {}).get(engine)

    def verification(self) -> Optional[Dict[str, Any]]:
        """The manifest's record of the verification sample (``file``, ``sha256``, ``images``, ...), if any."""
        return self.manifest.get("verification")


def read_manifest(root: Path) -> Dict[str, Any]:
    """The manifest of ``root`` (checked: a malformed one is an error, never silently replaced) or a new one."""
    path = Path(root) / MANIFEST
    if path.is_file():
        return dict(read_json(path, MANIFEST_SCHEMA))
    return {"format": BUNDLE_FORMAT, "models": {}, "engines": {}}


_MODEL_SCHEMA = record(
    dict(
        {key: is_str for key in ("file", "kind", "input_name", "output_name", "input_layout", "output_kind", "sha256")},
        batch=optional(is_int),
    ),
    {"int8_form": optional(is_str), "int8_cpu_isa": optional(is_str), "int8_target": optional(is_str)},
)
MANIFEST_SCHEMA = record(
    {"format": one_of(BUNDLE_FORMAT, *OLDER_FORMATS), "models": dict_of(_MODEL_SCHEMA), "engines": dict_of(record({}))},
    {
        "run": is_str,
        "class_names": list_of(is_str),
        "checkpoint_sha256": is_str,
        "verification": record({"file": is_str, "sha256": is_str}),
        LINEAGE: LINEAGE_SCHEMA,
    },
)


def write_manifest(root: Path, manifest: Dict[str, Any]) -> None:
    """Write ``bundle.json``; one read from an older format without a lineage keeps that format."""
    older = manifest.get("format") in OLDER_FORMATS and LINEAGE not in manifest
    manifest = dict(manifest, format=manifest["format"] if older else BUNDLE_FORMAT, edgetl_version=__version__)
    atomic_write_text(Path(root) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
