"""Where an export may write, and how its files reach the bundle. ``export --out`` takes a new or empty folder,
its own run folder, or a bundle exported from the same run; anything else (another run or bundle, a user's
folder) is refused before any work. The export holds the folder's lock, builds every file in ``OUT/.export-tmp/``,
and only at the end renames them into place, ``bundle.json`` last: a failed or killed export leaves the previous
bundle as it was (or, killed while renaming, files that no longer match ``bundle.json``, which the runtime
refuses). Each file replaced must be one edgetl wrote and nobody changed since (``edgetl.core.ownership``).

A bundle holds one lineage (``edgetl.contracts.lineage``): a re-export removes every model, calibration cache and
``--for`` folder that ``bundle.json`` does not vouch for as made from the checkpoint now exported (a retrained
``best.pt`` leaves the old ones behind otherwise), and refuses, before any work, when a file in one of them
was changed by the user."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from edgetl.contracts.bundle import (
    BUILD_SCRIPT,
    LABELS,
    MANIFEST,
    ONNX_FILES,
    PREPROCESS,
    REPORT,
    VERIFY_DATA_LOADER,
    VERIFY_SAMPLE,
    read_manifest,
)
from edgetl.contracts.formats import CALIBRATION_CACHE, CONSUMERS
from edgetl.contracts.lineage import recorded_lineage
from edgetl.core.cleanup import STAGE_DIR
from edgetl.core.ownership import FolderBusy, Ownership, folder_is_empty, folder_lock
from edgetl.errors import ConfigError, EdgetlError
from edgetl.export.targets import EXTRA_FOLDERS

STAGE = STAGE_DIR
BUNDLE = "bundle"
BUNDLE_FILES = tuple(ONNX_FILES.values()) + (
    VERIFY_SAMPLE, VERIFY_DATA_LOADER, BUILD_SCRIPT, LABELS, PREPROCESS, REPORT, MANIFEST,
)  # fmt: skip


# the folders of OUT that --for targets write (replaced whole on a re-export)
TARGET_FOLDERS = tuple(t.folder for t in CONSUMERS.values() if t.folder) + tuple(
    f for extra in EXTRA_FOLDERS.values() for f in extra
)
# what an export derives from the checkpoint and may leave in OUT when a later export does not write it again
LINEAGE_ARTIFACTS = tuple(ONNX_FILES.values()) + (CALIBRATION_CACHE,) + TARGET_FOLDERS


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_out(out: Path, run: Path, checkpoint_sha256: str) -> None:
    """Refuse an ``--out`` the export of ``run`` (its checkpoint of this sha256) must not write into (read-only:
    nothing is created)."""
    if folder_is_empty(out):
        return
    if not out.is_dir():
        raise ConfigError("--out {} is a file, not a folder".format(out))
    owner = Ownership.read(out)
    if _same(out, run):
        if owner is None:
            return  # a run from before ownership manifests: adopted by claim_out
    elif owner is None:
        raise ConfigError("{} is not empty and edgetl did not create it: export into a new or empty --out".format(out))
    elif owner.kind != BUNDLE:
        raise ConfigError("{} is another edgetl {}: export into a new or empty --out".format(out, owner.kind))
    elif owner.source is not None and not _same(Path(owner.source), run):
        raise ConfigError(
            "{} is the bundle of another run ({}): export into a new or empty --out".format(out, owner.source)
        )
    for name in lineage_plan(out, checkpoint_sha256)[0]:
        problem = owner.first_change(_files(out, name))
        if problem:
            raise ConfigError(
                f"{out / name} is from another checkpoint than {run / 'best.pt'} and a re-export removes it, but "
                f"{problem}: move your change out of it, or export into a new --out"
            )
    names = [name for name in BUNDLE_FILES if name in owner.files or (out / name).exists()]
    problem = owner.first_change(names + [f for folder in TARGET_FOLDERS for f in _files(out, folder)])
    if problem:
        raise ConfigError("not replacing it: {}".format(problem))


def claim_out(stack: ExitStack, out: Path, run: Path, checkpoint_sha256: str) -> Ownership:
    """Lock ``out`` for the export, check it again under the lock, and clear a killed export's staging folder.
    A run folder from before ownership manifests is adopted as it is."""
    check_out(out, run, checkpoint_sha256)
    try:
        stack.enter_context(folder_lock(out))
    except FolderBusy as busy:
        raise ConfigError(
            "{} is in use by another edgetl process ({}): wait for it or choose another --out".format(out, busy.holder)
        ) from None
    check_out(out, run, checkpoint_sha256)
    shutil.rmtree(str(out / STAGE), ignore_errors=True)  # under the lock: a dead export's leftovers
    owner = Ownership.read(out)
    if owner is None and _same(out, run):
        owner = Ownership.claim(out, "run")
        owner.record(p.name for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith("."))
    return owner or Ownership.claim(out, BUNDLE, str(run.resolve()))


def lineage_plan(out: Path, checkpoint_sha256: str) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    """What an export of this checkpoint finds in ``out`` (``LINEAGE_ARTIFACTS``): the artifacts to remove, which
    ``bundle.json`` does not list as made from it (another checkpoint's, or unaccounted for), and the lineage
    entries of those it keeps (made from it by an earlier export)."""
    try:
        recorded = recorded_lineage(read_manifest(out))
    except EdgetlError:  # an unreadable bundle.json vouches for nothing
        recorded = {}
    for target, extras in EXTRA_FOLDERS.items():  # bundles from before lineage list only the target's own folder
        folder = CONSUMERS[target].folder
        for extra in extras:
            if folder in recorded:
                recorded.setdefault(extra, recorded[folder])
    stale: List[str] = []
    kept: Dict[str, Dict[str, Any]] = {}
    for name in LINEAGE_ARTIFACTS:
        if not (out / name).exists():
            continue
        entry = recorded.get(name)
        if entry is not None and entry["checkpoint_sha256"] == checkpoint_sha256:
            kept[name] = entry
        else:
            stale.append(name)
    return stale, kept


def _files(root: Path, name: str) -> List[str]:
    """``name`` if it is a file in ``root``; the paths of the files under it if it is a folder (a ``--for``
    target's); nothing if it is missing."""
    path = root / name
    if path.is_dir():
        return sorted(str(p.relative_to(root)) for p in path.rglob("*") if p.is_file())
    return [name] if path.exists() else []


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(str(path))
    else:
        path.unlink(missing_ok=True)


def publish(owner: Ownership, stage: Path, removed: Iterable[str], manifest_ready: bool) -> None:
    """Rename the staged files and target folders into the bundle (the report, then ``bundle.json``, last),
    delete ``removed`` (artifacts that failed their gate: an older file or folder of that name would look
    valid), and record every file. Each file replaced or deleted, inside a folder too, must be one edgetl wrote
    and nobody changed since. Without ``manifest_ready`` (fp32 failed) the bundle loses its ``bundle.json``: it
    has no valid model."""
    out = owner.folder
    staged = sorted(p.name for p in stage.iterdir()) if stage.is_dir() else []
    order = [n for n in staged if n not in (REPORT, MANIFEST)] + [n for n in (REPORT, MANIFEST) if n in staged]
    gone: List[str] = list(removed) + ([] if manifest_ready else [MANIFEST])
    replaced = [f for name in order + gone for f in _files(out, name)]
    problem: Optional[str] = owner.first_change(replaced)
    if problem:
        raise ConfigError("not replacing it: {}".format(problem))
    for name in gone:
        _remove(out / name)
    for name in order:
        if (stage / name).is_dir():
            _remove(out / name)  # a target folder is replaced whole
        (stage / name).replace(out / name)
    stage.rmdir()
    owner.record(dict.fromkeys(replaced + [f for name in order for f in _files(out, name)]))  # each file hashed once
