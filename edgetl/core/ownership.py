"""Which folders and files edgetl may write: a run or bundle folder is edgetl's when it holds the ownership
manifest ``.edgetl-owner.json``, written before any other file, which lists every file edgetl wrote there with
its size and sha256. edgetl replaces only a file listed there whose content is unchanged, so it never overwrites
a user's file, another run's checkpoint, or a file changed since. One process at a time writes a folder: it holds
an exclusive ``flock`` on ``.edgetl.lock`` (released by the kernel when the process dies, so a kill never leaves
the folder locked). Torch-free, Python 3.8: the device side reads it too.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Set

from edgetl.core.fileio import atomic_write_text, sha256_file, stale_temporary_files, writer_alive

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked between processes
    fcntl = None  # type: ignore[assignment]

OWNER_FILE = ".edgetl-owner.json"
LOCK_FILE = ".edgetl.lock"
OWNER_FORMAT = "edgetl-owner-v1"
BOOKKEEPING = frozenset({OWNER_FILE, LOCK_FILE})
DEAD_HOLDER_WAIT_S = 30.0


class FolderRefused(Exception):
    """Internal: the folder is not edgetl's to write; the caller words the one-line error for its command."""


class FolderBusy(Exception):
    """Internal: another process holds the folder's lock; ``holder`` is its ``pid@host``."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.edgetl.lock`` exclusively for the block, or raise FolderBusy at once (a second writer of
    the same run or bundle is refused, never queued: its output would replace the first one's)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            _lock_or_busy(fd, path)
        _HELD.add(fd)
        os.ftruncate(fd, 0)
        os.write(fd, "{}@{}\n".format(os.getpid(), socket.gethostname()).encode("utf-8"))
        for stale in stale_temporary_files(folder):  # under the lock, any temporary file is a dead writer's
            stale.unlink()
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock descriptors, so that the lock ends with
    the process that took it, not with the last of its workers."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


_HELD: Set[int] = set()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _lock_or_busy(fd: int, path: Path) -> None:
    """Take the lock, or raise FolderBusy naming its holder. A holder that is dead (this host) may still hold it
    through a child forked outside Python's fork hooks, which ends soon after: wait for it, up to
    ``DEAD_HOLDER_WAIT_S``."""
    deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = path.read_text(errors="replace").strip() or "another process"
        pid, _, host = holder.partition("@")
        if not pid.isdigit() or writer_alive(int(pid), host.split(".")[0]) or time.monotonic() > deadline:
            raise FolderBusy(holder)
        time.sleep(0.1)


def folder_is_empty(folder: Path) -> bool:
    """Missing, or holding nothing but edgetl's lock file."""
    return not folder.exists() or all(p.name == LOCK_FILE for p in folder.iterdir())


class Ownership:
    """The ownership manifest of one folder: ``kind`` (run or bundle), ``source`` (a bundle's run) and the
    files edgetl wrote there (name -> size, sha256)."""

    def __init__(self, folder: Path, data: Dict[str, Any]) -> None:
        self.folder, self.data = Path(folder), data

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def source(self) -> Optional[str]:
        return self.data.get("source")

    @property
    def files(self) -> Dict[str, Dict[str, Any]]:
        return self.data.setdefault("files", {})

    @classmethod
    def read(cls, folder: Path) -> Optional["Ownership"]:
        """The folder's manifest, or None when edgetl never claimed it (or the manifest is unreadable)."""
        try:
            data = json.loads((Path(folder) / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(folder, data) if isinstance(data, dict) and data.get("format") == OWNER_FORMAT else None

    @classmethod
    def claim(cls, folder: Path, kind: str, source: Optional[str] = None) -> "Ownership":
        """Start the manifest of a new (empty) folder, before any other file is written there."""
        owner = cls(folder, {"format": OWNER_FORMAT, "kind": kind, "source": source, "files": {}})
        owner.save()
        return owner

    def save(self) -> None:
        atomic_write_text(self.folder / OWNER_FILE, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def changed(self, name: str) -> Optional[str]:
        """Why edgetl must not replace ``name``: it exists and is not listed, or differs from what edgetl wrote
        (size, then sha256). None when it is missing or unchanged."""
        path = self.folder / name
        if not path.exists():
            return None
        entry = self.files.get(name)
        if entry is None:
            return "{} was not written by edgetl".format(path)
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            return "{} changed since edgetl wrote it".format(path)
        return None

    def first_change(self, names: Optional[Iterable[str]] = None) -> Optional[str]:
        """The first file of ``names`` (default: every listed file) that edgetl must not replace."""
        for name in self.files if names is None else names:
            problem = self.changed(name)
            if problem is not None:
                return problem
        return None

    def foreign_files(self) -> Iterator[str]:
        """Files in the folder that edgetl did not write (hidden temporaries of its own aside)."""
        folders = {name.split("/")[0] for name in self.files if "/" in name}  # e.g. an export's --for folders
        for path in sorted(self.folder.iterdir()):
            if path.name not in BOOKKEEPING and path.name not in self.files and path.name not in folders:
                yield path.name

    def record(self, names: Iterable[str]) -> None:
        """List ``names`` (written by edgetl just now) with their size and sha256; drop those now missing."""
        for name in names:
            path = self.folder / name
            if path.is_file():
                self.files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            else:
                self.files.pop(name, None)
        self.save()
