"""A bundle's lineage: the fp32 checkpoint (``best.pt``) its artifacts come from, and how each was derived.
An export writes one lineage into ``bundle.json``, so a model of another checkpoint is never served beside it::

    "lineage": {"checkpoint_sha256": "<sha256 of best.pt>", "artifacts": {
        "model.onnx": {"checkpoint_sha256": "...", "precision": "fp32", "from": null, "step": "onnx export",
                       "derived_weights_sha256": null},
        "model_int8.onnx": {..., "precision": "int8", "from": "model.onnx", "step": "int8 quantization (trt form)"},
        "deepstream": {..., "precision": "fp16", "from": null, "step": "--for deepstream"}}}

Keys of ``artifacts`` are paths relative to the bundle (a ``--for`` folder by its name). ``from``: the bundle
artifact it was made from (null: the checkpoint itself). ``derived_weights_sha256``: the weights actually
exported when a step derives new ones from the checkpoint (an INT8 accuracy-recovery step), null while they are
the checkpoint's own. Bundles written before lineage (``edgetl-bundle-v1``) name only their checkpoint: the
models, calibration cache and ``--for`` folders they list are taken to come from it.

Every ONNX model edgetl writes also names its checkpoint in its metadata (``source_checkpoint_sha256``), so
``foreign_artifacts`` finds a bundle's stray models even where ``bundle.json`` does not list them. Torch-free,
Python 3.8: ``edgetl verify`` and ``edgetl doctor`` read it on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from edgetl.contracts.formats import CALIBRATION_CACHE, CONSUMERS, ONNX_FILES
from edgetl.contracts.schema import dict_of, is_str, optional, record

LINEAGE = "lineage"
ONNX_CHECKPOINT_KEY = "source_checkpoint_sha256"  # the ONNX metadata prop (edgetl.export.torch_to_onnx)
TARGET_FOLDERS = tuple(t.folder for t in CONSUMERS.values() if t.folder)  # the --for folders holding ONNX models
_PRECISION_OF_KIND = {"fp32": "fp32", "baked": "fp32", "fp16": "fp16", "int8": "int8"}

LINEAGE_SCHEMA = record(
    {
        "checkpoint_sha256": is_str,
        "artifacts": dict_of(
            record(
                {"checkpoint_sha256": is_str},
                {
                    "precision": optional(is_str),
                    "from": optional(is_str),
                    "step": optional(is_str),
                    "derived_weights_sha256": optional(is_str),
                },
            )
        ),
    }
)


def new_lineage(checkpoint_sha256: str) -> Dict[str, Any]:
    """The lineage section of a bundle exported from the checkpoint of this sha256 (no artifact yet)."""
    return {"checkpoint_sha256": checkpoint_sha256, "artifacts": {}}


def artifact(
    checkpoint_sha256: str,
    precision: Optional[str],
    step: str,
    source: Optional[str] = None,
    derived_weights_sha256: Optional[str] = None,
) -> Dict[str, Any]:
    """One artifact's entry: its checkpoint, precision, the step that made it and the artifact it came from."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "precision": precision,
        "from": source,
        "step": step,
        "derived_weights_sha256": derived_weights_sha256,
    }


def derive(manifest: Dict[str, Any], name: str, source: str, precision: Optional[str], step: str) -> None:
    """Record ``name`` as made from the bundle artifact ``source`` (same checkpoint and derived weights).
    Nothing is recorded in a bundle without lineage, or when ``source`` has no entry."""
    artifacts = (manifest.get(LINEAGE) or {}).get("artifacts")
    if artifacts is None or source not in artifacts:
        return
    origin = artifacts[source]
    artifacts[name] = artifact(
        origin["checkpoint_sha256"], precision, step, source, origin.get("derived_weights_sha256")
    )


def bundle_checkpoint(manifest: Dict[str, Any]) -> Optional[str]:
    """The sha256 of the checkpoint the bundle was exported from (None: not recorded)."""
    lineage = manifest.get(LINEAGE)
    if isinstance(lineage, dict) and lineage.get("checkpoint_sha256"):
        return str(lineage["checkpoint_sha256"])
    recorded = manifest.get("checkpoint_sha256")
    return str(recorded) if recorded else None


def recorded_lineage(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The entry of every artifact ``bundle.json`` accounts for; a bundle from before lineage: its listed
    models, calibration cache and ``--for`` folders, each from the checkpoint it names."""
    lineage = manifest.get(LINEAGE)
    if isinstance(lineage, dict):
        return dict(lineage.get("artifacts") or {})
    checkpoint = manifest.get("checkpoint_sha256")
    if not checkpoint:
        return {}
    entries = {}
    for kind, model in (manifest.get("models") or {}).items():
        entries[model["file"]] = artifact(checkpoint, _PRECISION_OF_KIND.get(kind), "recorded before lineage")
    if manifest.get("calibration_cache"):
        entries[CALIBRATION_CACHE] = artifact(checkpoint, "int8", "recorded before lineage")
    for target in manifest.get("targets") or {}:
        if target in CONSUMERS and CONSUMERS[target].folder:
            entries[str(CONSUMERS[target].folder)] = artifact(checkpoint, None, "recorded before lineage")
    return entries


def onnx_checkpoint(path: Path) -> Optional[str]:
    """The checkpoint sha256 an edgetl ONNX model names in its metadata (None: unreadable or not named)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a damaged file: verify and doctor report it on their own
        return None
    return {p.key: p.value for p in model.metadata_props}.get(ONNX_CHECKPOINT_KEY)


def _onnx_models(root: Path) -> Iterator[Tuple[str, Path]]:
    """(artifact name, ONNX file) of the bundle's own models and of every model in its ``--for`` folders."""
    for name in ONNX_FILES.values():
        if (root / name).is_file():
            yield name, root / name
    for folder in TARGET_FOLDERS:
        if (root / folder).is_dir():
            for path in sorted((root / folder).rglob("*.onnx")):
                yield str(folder), path


def reference_checkpoint(root: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """The checkpoint the bundle at ``root`` belongs to: the one ``bundle.json`` records, else the one its fp32
    model names."""
    checkpoint = bundle_checkpoint(manifest)
    if checkpoint is None and (root / ONNX_FILES["fp32"]).is_file():
        checkpoint = onnx_checkpoint(root / ONNX_FILES["fp32"])
    return checkpoint


def foreign_artifacts(root: Path, manifest: Dict[str, Any]) -> Dict[str, str]:
    """Artifacts of the bundle at ``root`` that come from another checkpoint than the bundle's
    (``reference_checkpoint``), with the sha256 of theirs: by their ``bundle.json`` entry, or by what their ONNX
    models name."""
    checkpoint = reference_checkpoint(root, manifest)
    if checkpoint is None:
        return {}
    foreign = {}
    for name, entry in recorded_lineage(manifest).items():
        if entry["checkpoint_sha256"] != checkpoint and (root / name).exists():
            foreign[name] = str(entry["checkpoint_sha256"])
    for name, path in _onnx_models(root):
        named = onnx_checkpoint(path)
        if named is not None and named != checkpoint:
            foreign.setdefault(name, named)
    return foreign


def lineage_problem(root: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """One line when the bundle at ``root`` mixes checkpoints, else None."""
    foreign = foreign_artifacts(root, manifest)
    if not foreign:
        return None
    by_checkpoint: Dict[str, List[str]] = {}
    for name, sha in sorted(foreign.items()):
        by_checkpoint.setdefault(sha, []).append(name)
    others = "; ".join(f"{', '.join(names)} from checkpoint {sha[:12]}" for sha, names in sorted(by_checkpoint.items()))
    checkpoint = str(reference_checkpoint(root, manifest))[:12]
    return f"{root} mixes checkpoints: {others}, the bundle from {checkpoint}"
