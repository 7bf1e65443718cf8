"""sha256 of model files, cached so that verifying a bundle on every load stays cheap: the cache lives in
``$EDGETL_HOME/hashes/`` (never in the bundle, which may be read-only), one small JSON per file, keyed by its
absolute path and valid while its size, mtime, ctime and inode are unchanged. ctime cannot be set back by
hand, so bytes flipped in place are hashed again. Torch-free, Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetl.core.fileio import atomic_write_text, edgetl_home, sha256_file

HASHES = "hashes"


def cache_dir() -> Path:
    return edgetl_home() / HASHES


def _stamp(path: Path) -> List[Any]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _entry_name(path_text: str) -> str:
    return hashlib.sha256(path_text.encode("utf-8")).hexdigest()[:24] + ".json"


def _entry_path(path: Path) -> Path:
    return cache_dir() / _entry_name(str(path))


def cached_sha256(path: Path) -> str:
    """The file's sha256, from the cache when the file is unchanged since it was hashed. A cache that cannot
    be written (a read-only home) only costs the hashing."""
    path = Path(path).resolve()
    stamp, entry_path = _stamp(path), _entry_path(path)
    try:
        entry: Dict[str, Any] = json.loads(entry_path.read_text())
        if entry.get("path") == str(path) and entry.get("stamp") == stamp:
            return str(entry["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    if _stamp(path) == stamp:  # not changed while it was read
        try:
            atomic_write_text(entry_path, json.dumps({"path": str(path), "stamp": stamp, "sha256": digest}) + "\n")
        except OSError:
            pass
    return digest


def _own_entry(entry_path: Path) -> Optional[Dict[str, Any]]:
    """The entry, when ``entry_path`` is one this module wrote: a JSON object with a path, a stamp and a sha256,
    named after its path. Writes are atomic, so anything else (unreadable, another shape, another name) is
    not an entry."""
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("stamp"), list)):
        return None
    if not isinstance(entry.get("sha256"), str) or entry_path.name != _entry_name(entry["path"]):
        return None
    return entry


def entry_is_stale(entry_path: Path) -> Optional[bool]:
    """Whether the file of the cache entry at ``entry_path`` is gone or changed (``edgetl clean`` removes such
    entries); None when ``entry_path`` is not an entry of this cache (never touched)."""
    entry = None if entry_path.is_symlink() else _own_entry(entry_path)
    if entry is None:
        return None
    try:
        return _stamp(Path(entry["path"])) != entry["stamp"]
    except OSError:
        return True
