"""``edgetl clean``: what a killed process or a deleted dataset left behind, removed only where edgetl knows it
wrote it, since a user's files may carry names like edgetl's.

- In a folder edgetl owns (one holding a readable ``.edgetl-owner.json``, ``edgetl.core.ownership``) and in the
  folders of the files its manifest lists: temporary files (``.<name>.<pid>@<host>.*.tmp``,
  ``edgetl.core.fileio``) whose writer is dead on this host, and an export's staging folder (``.export-tmp``)
  when no process holds the folder's lock. Other folders are only searched for owned ones.
- In ``$EDGETL_HOME``, only its cache folders (``CACHE_FOLDERS``): dead writers' temporary files, decoded-image
  caches of a dataset folder that no longer exists, feature caches whose decoded cache is gone, (``older_than``)
  caches not used for that long, and hash-cache entries of files that are gone or changed
  (``edgetl.core.hashcache``).

Anything else seen that looks like edgetl's (a hidden ``*.tmp``, an ``.export-tmp`` folder or a temporary file's
name outside an owned folder, a file in a cache folder that is no cache of edgetl's, an unreadable ownership
manifest) is reported as left alone. Lock files are never removed: another process may hold one. Torch-free,
Python 3.8.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Set

from edgetl.core.fileio import TMP_SUFFIX, edgetl_home, temporary_writer, writer_alive
from edgetl.core.hashcache import HASHES, entry_is_stale
from edgetl.core.ownership import LOCK_FILE, OWNER_FILE, Ownership

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

DECODED_DIR = "decoded"  # $EDGETL_HOME/decoded/<dataset>-<key>.npy + .json (edgetl.data.decoded_cache)
FEATURES_DIR = "train-features"  # $EDGETL_HOME/train-features/<decoded stem>-<key>.pt (edgetl.data.feature_cache)
CACHE_FOLDERS = (DECODED_DIR, FEATURES_DIR, HASHES)  # the only folders of $EDGETL_HOME that clean touches
STAGE_DIR = ".export-tmp"  # an export's staging folder inside its bundle (edgetl.export.bundle_folder)
# cache file names as edgetl.data.decoded_cache and edgetl.data.feature_cache write them
_DECODED_STEM = re.compile(r"^[0-9a-f]{12}-([0-9a-f]{20})$")
_FEATURES_NAME = re.compile(r"^([0-9a-f]{12}-[0-9a-f]{20})-[0-9a-f]{16}\.pt$")
NOT_OWNED = "in a folder edgetl does not own"
NOT_CACHE = "not a cache file edgetl wrote"


@dataclass(frozen=True)
class Leftover:
    path: Path
    reason: str
    size: int = 0


@dataclass
class Survey:
    """What ``edgetl clean`` removes (``leftovers``), and what it saw that looks like edgetl's but is not
    (``left_alone``: never touched)."""

    leftovers: List[Leftover] = field(default_factory=list)
    left_alone: List[Leftover] = field(default_factory=list)

    def remove(self, path: Path, reason: str) -> None:
        self.leftovers.append(Leftover(path, reason, _size(path)))

    def leave(self, path: Path, reason: str) -> None:
        self.left_alone.append(Leftover(path, reason))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.exists() else 0


def _last_used(path: Path) -> float:
    stat = path.stat()
    return max(stat.st_mtime, stat.st_atime)


def _locked(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (edgetl.core.ownership); a lock that cannot be tested
    counts as held."""
    lock = folder / LOCK_FILE
    if fcntl is None or not lock.exists():
        return False
    try:
        fd = os.open(str(lock), os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _hidden_tmp(path: Path, owned: bool, found: Survey) -> None:
    """A hidden ``*.tmp``: removed when it is an edgetl temporary file of a writer dead on this host, in a folder
    edgetl owns; kept quietly while its writer may still run; otherwise reported as not edgetl's."""
    writer = temporary_writer(path) if path.is_file() and not path.is_symlink() else None
    if writer is None:
        found.leave(path, "no edgetl process in its name")
    elif not owned:
        found.leave(path, NOT_OWNED)
    elif not writer_alive(*writer):
        found.remove(path, f"temporary file of a dead process (pid {writer[0]})")


def _is_hidden_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _owner(folder: Path, filenames: List[str], found: Survey) -> Optional[Ownership]:
    if OWNER_FILE not in filenames:
        return None
    owner = Ownership.read(folder)
    if owner is None:
        found.leave(folder / OWNER_FILE, "an ownership manifest edgetl cannot read: the folder is not edgetl's")
    return owner


def _owned_dirs(owner: Ownership) -> Set[Path]:
    """The owned folder and the folders of the files its manifest lists (an export's target folders)."""
    names = [Path(name) for name in owner.files]
    return {owner.folder} | {owner.folder / name.parent for name in names if ".." not in name.parts}


def _survey_tree(root: Path, skip: Set[Path], found: Survey) -> None:
    """Search ``root`` for owned folders and clean only those; ``skip``: resolved folders surveyed elsewhere
    ($EDGETL_HOME's caches). Links to folders are not followed."""
    if root.resolve() in skip:
        return
    owned_dirs: Set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(str(root)):
        folder = Path(dirpath)
        owner = _owner(folder, filenames, found)
        if owner is not None:
            owned_dirs |= _owned_dirs(owner)
        owned = folder in owned_dirs
        descend = []
        for name in sorted(dirnames):
            path = folder / name
            if name == STAGE_DIR:
                if owner is None or path.is_symlink():
                    found.leave(path, NOT_OWNED if owner is None else "a link, not a folder edgetl made")
                elif not _locked(folder):
                    found.remove(path, "staging folder of an export that did not finish")
            elif _is_hidden_tmp(name):
                _hidden_tmp(path, owned, found)
            elif not (name in CACHE_FOLDERS and path.resolve() in skip):
                descend.append(name)
        dirnames[:] = descend
        for name in sorted(filenames):
            if _is_hidden_tmp(name):
                _hidden_tmp(folder / name, owned, found)


def _decoded_root(meta: Path) -> Optional[str]:
    """The dataset folder a decoded-image cache's description names, when ``meta`` is one edgetl wrote: named
    after its key, with the key and the folder inside."""
    match = _DECODED_STEM.match(meta.stem)
    if match is None or meta.suffix != ".json" or meta.is_symlink():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("root"), str) or not isinstance(data.get("key"), str):
        return None
    own = data["key"][:20] == match.group(1) and os.path.isabs(data["root"])
    return data["root"] if own else None


def _decoded(path: Path, now: float, older_than: Optional[float], found: Survey) -> None:
    if path.suffix == ".npy" and _DECODED_STEM.match(path.stem):
        return  # judged with its .json; without one, a build that is still writing it (or was killed doing so)
    root = _decoded_root(path)
    if root is None:
        found.leave(path, NOT_CACHE)
        pixels = path.with_suffix(".npy")
        if path.suffix == ".json" and _DECODED_STEM.match(path.stem) and pixels.exists():
            found.leave(pixels, "beside a description (.json) edgetl did not write")
        return
    if not Path(root).is_dir():
        reason = f"decoded-image cache of a dataset that is gone ({root})"
    elif older_than is not None and now - _last_used(path.with_suffix(".npy")) > older_than:
        reason = f"decoded-image cache not used for {describe_age(older_than)}"
    else:
        return
    for item in (path, path.with_suffix(".npy")):
        if item.is_file() and not item.is_symlink():
            found.remove(item, reason)


def _features(home: Path, path: Path, now: float, older_than: Optional[float], found: Survey) -> None:
    match = _FEATURES_NAME.match(path.name)
    if match is None or path.is_symlink():
        found.leave(path, NOT_CACHE)
    elif not (home / DECODED_DIR / (match.group(1) + ".npy")).is_file():
        found.remove(path, "feature cache whose decoded-image cache is gone")
    elif older_than is not None and now - _last_used(path) > older_than:
        found.remove(path, f"feature cache not used for {describe_age(older_than)}")


def _survey_home(home: Path, older_than: Optional[float], found: Survey) -> None:
    """$EDGETL_HOME's cache folders, and nothing else there: the home may be a user's folder."""
    now = time.time()
    for name in CACHE_FOLDERS:
        folder = home / name
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if _is_hidden_tmp(path.name):
                _hidden_tmp(path, True, found)
            elif path.suffix == ".lock":
                continue  # another process may hold it
            elif not path.is_file():
                found.leave(path, NOT_CACHE)
            elif name == DECODED_DIR:
                _decoded(path, now, older_than, found)
            elif name == FEATURES_DIR:
                _features(home, path, now, older_than, found)
            else:
                stale = entry_is_stale(path)
                if stale is None:
                    found.leave(path, NOT_CACHE)
                elif stale:
                    found.remove(path, "hash of a file that is gone or changed")


def survey(folders: Iterable[Path], older_than: Optional[float] = None) -> Survey:
    """What ``edgetl clean`` removes from ``$EDGETL_HOME``'s caches and from the owned folders (runs, bundles)
    in and under each of ``folders``, and what it leaves alone there."""
    home = edgetl_home()
    found = Survey()
    _survey_home(home, older_than, found)
    skip = {(home / name).resolve() for name in CACHE_FOLDERS}
    for folder in folders:
        _survey_tree(Path(folder), skip, found)
    removed = {item.path: item for item in found.leftovers}
    kept = {item.path: item for item in found.left_alone if item.path not in removed}
    return Survey([removed[p] for p in sorted(removed)], [kept[p] for p in sorted(kept)])


def remove(leftovers: Iterable[Leftover]) -> None:
    for item in leftovers:
        if item.path.is_symlink():
            continue  # never listed; a link made since is not followed
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
            return f"{seconds / AGE_UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"
