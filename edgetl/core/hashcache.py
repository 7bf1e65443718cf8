"""sha256 of model files, cached so that verifying a bundle on every load stays cheap: the cache lives in
``$EDGETL_HOME/hashes/`` (never in the bundle, which may be read-only), one small JSON per file, keyed by its
absolute path and valid while its size, mtime, ctime and inode are unchanged. ctime cannot be set back by
hand, so bytes flipped in place are hashed again. Torch-free, Python 3.8.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

from edgetl.core.fileio import atomic_write_text, edgetl_home, sha256_file

HASHES = "hashes"


def cache_dir() -> Path:
    return edgetl_home() / HASHES


def _stamp(path: Path) -> List[Any]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _entry_path(path: Path) -> Path:
    return cache_dir() / (hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:24] + ".json")


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


def orphaned_entries() -> List[Path]:
    """Cache entries whose file is gone or changed (``edgetl clean`` removes them)."""
    found = []
    for entry_path in sorted(cache_dir().glob("*.json")) if cache_dir().is_dir() else []:
        try:
            entry = json.loads(entry_path.read_text())
            current = _stamp(Path(entry["path"]))
        except (OSError, ValueError, KeyError, TypeError):
            found.append(entry_path)
            continue
        if current != entry.get("stamp"):
            found.append(entry_path)
    return found
