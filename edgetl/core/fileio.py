"""File helpers: atomic writes (temporary file in the same folder, then rename), sha256, cache fingerprints."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, List


def edgetl_home() -> Path:
    """``$EDGETL_HOME`` if set, else ``~/.cache/edgetl``: the demo dataset and the data caches live here."""
    home = os.environ.get("EDGETL_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "edgetl"


def file_fingerprints(paths: Iterable[Path]) -> List[List[Any]]:
    """``[absolute path, size, mtime_ns]`` per file: a cache-key part that changes when a file is edited,
    added, removed or renamed. Raises OSError for a file that cannot be stat'ed."""
    rows = []
    for path in paths:
        stat = Path(path).stat()
        rows.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="." + target.name + ".", suffix=".tmp", dir=str(target.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield tmp
        os.replace(str(tmp), str(target))
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` (an older folder of
    that name is removed only once the new one is complete), on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + target.name + ".", suffix=".tmp", dir=str(target.parent)))
    os.chmod(str(tmp), 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix="." + target.name + ".", suffix=".old", dir=str(target.parent)))
            os.replace(str(target), str(old / target.name))
        os.replace(str(tmp), str(target))
        if old is not None:
            shutil.rmtree(str(old))
    finally:
        if tmp.exists():
            shutil.rmtree(str(tmp))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
