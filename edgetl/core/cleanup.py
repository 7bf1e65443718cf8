"""``edgetl clean``: what a killed process or a deleted dataset leaves behind, found without guessing.

- temporary files (``.<name>.<pid>@<host>.*.tmp``, ``edgetl.core.fileio``) whose writer is dead on this host;
  one without a writer in its name once older than an hour;
- an export's staging folder (``.export-tmp``) when no process holds its bundle's lock;
- decoded-image caches of a dataset folder that no longer exists, feature caches whose decoded cache is gone,
  and (``older_than``) caches not used for that long;
- hash-cache entries of files that are gone or changed (``edgetl.core.hashcache``).

Lock files are never removed: another process may hold one. Torch-free, Python 3.8.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from edgetl.core.fileio import TMP_SUFFIX, edgetl_home, temporary_writer, writer_alive
from edgetl.core.hashcache import orphaned_entries
from edgetl.core.ownership import LOCK_FILE

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

DECODED_DIR = "decoded"  # $EDGETL_HOME/decoded/<dataset>-<key>.npy + .json (edgetl.data.decoded_cache)
FEATURES_DIR = "train-features"  # $EDGETL_HOME/train-features/<decoded stem>-<key>.pt (edgetl.data.feature_cache)
STAGE_DIR = ".export-tmp"  # an export's staging folder inside its bundle (edgetl.export.bundle_folder)
UNKNOWN_WRITER_AGE_S = 3600.0


@dataclass(frozen=True)
class Leftover:
    path: Path
    reason: str
    size: int


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _last_used(path: Path) -> float:
    stat = path.stat()
    return max(stat.st_mtime, stat.st_atime)


def _locked(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (edgetl.core.ownership)."""
    lock = folder / LOCK_FILE
    if fcntl is None or not lock.exists():
        return False
    fd = os.open(str(lock), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _temporaries(root: Path, now: float) -> Iterator[Leftover]:
    for path in root.rglob(".*" + TMP_SUFFIX):
        if not path.is_file():
            continue
        writer = temporary_writer(path)
        if writer is not None and not writer_alive(*writer):
            yield Leftover(path, "temporary file of a dead process (pid {})".format(writer[0]), _size(path))
        elif writer is None and now - path.stat().st_mtime > UNKNOWN_WRITER_AGE_S:
            yield Leftover(path, "temporary file older than an hour", _size(path))


def _stages(root: Path) -> Iterator[Leftover]:
    for stage in root.rglob(STAGE_DIR):
        if stage.is_dir() and not _locked(stage.parent):
            yield Leftover(stage, "staging folder of an export that did not finish", _size(stage))


def _caches(home: Path, now: float, older_than: Optional[float]) -> Iterator[Leftover]:
    decoded = home / DECODED_DIR
    for meta in sorted(decoded.glob("*.json")) if decoded.is_dir() else []:
        try:
            root = json.loads(meta.read_text()).get("root", "")
        except (OSError, ValueError, AttributeError):
            root = ""
        if not Path(root).is_dir():
            reason = "decoded-image cache of a dataset that is gone ({})".format(root or "unknown")
        elif older_than is not None and now - _last_used(meta.with_suffix(".npy")) > older_than:
            reason = "decoded-image cache not used for {}".format(describe_age(older_than))
        else:
            continue
        for path in (meta, meta.with_suffix(".npy")):
            if path.exists():
                yield Leftover(path, reason, _size(path))
    features = home / FEATURES_DIR
    for path in sorted(features.glob("*.pt")) if features.is_dir() else []:
        if not (decoded / (path.stem.rsplit("-", 1)[0] + ".npy")).is_file():
            yield Leftover(path, "feature cache whose decoded-image cache is gone", _size(path))
        elif older_than is not None and now - _last_used(path) > older_than:
            yield Leftover(path, "feature cache not used for {}".format(describe_age(older_than)), _size(path))


def find_leftovers(folders: Iterable[Path], older_than: Optional[float] = None) -> List[Leftover]:
    """Everything ``edgetl clean`` would remove: under ``$EDGETL_HOME`` and under each of ``folders``
    (runs, bundles, or folders holding them)."""
    now = time.time()
    home = edgetl_home()
    found: List[Leftover] = []
    for root in [home] + [Path(f) for f in folders]:
        if root.is_dir():
            found += list(_temporaries(root, now)) + list(_stages(root))
    if home.is_dir():
        found += list(_caches(home, now, older_than))
        found += [Leftover(p, "hash of a file that is gone or changed", _size(p)) for p in orphaned_entries()]
    unique = {item.path: item for item in found}
    return [unique[path] for path in sorted(unique)]


def remove(leftovers: Iterable[Leftover]) -> None:
    for item in leftovers:
        if item.path.is_dir():
            shutil.rmtree(str(item.path), ignore_errors=True)
        elif item.path.exists():
            item.path.unlink()


AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``45m`` or ``90s`` in seconds; ValueError for anything else."""
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in AGE_UNITS:
        raise ValueError(text)
    value = float(text[:-1])
    if value < 0:
        raise ValueError(text)
    return value * AGE_UNITS[text[-1]]


def describe_age(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= AGE_UNITS[unit]:
            return "{:g}{}".format(seconds / AGE_UNITS[unit], unit)
    return "{:g}s".format(seconds)
