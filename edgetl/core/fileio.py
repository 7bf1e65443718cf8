"""File helpers: atomic writes (temporary file in the same folder, then rename), sha256, cache fingerprints,
and artifacts built once under a file lock (``built_once``) that other processes wait on."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, TypeVar

from edgetl.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: no flock, builds are not serialised between processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_POLL_S = 0.2
LOCK_REPORT_EVERY_S = 10.0
TMP_SUFFIX = ".tmp"
_TEMPORARY = re.compile(r"^\..+\.(\d+)@([^.]*)\.[^.]+\.tmp$")


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


def check_out_path(path: Path, option: str, folder: bool = True) -> None:
    """Raise ConfigError unless ``path`` can become the output ``option`` names: a folder (``folder``) or a
    file, with no regular file in its place or among its parents (which mkdir would only report with a
    traceback, after other work). ``option``: a flag (``--out``), or a field as ``{out}``."""
    path = Path(path).expanduser()
    if path.exists() and folder and not path.is_dir():
        raise ConfigError.about(f"{option} {{path}} is a file, not a folder", path=path)
    if path.is_dir() and not folder:
        raise ConfigError.about(f"{option} {{path}} is a folder; give a file name", path=path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError.about(
                    f"{option} {{path}}: {{parent}} is a file, not a folder", path=path, parent=parent
                )
            return


def temporary_prefix(name: str) -> str:
    """``.<name>.<pid>@<host>.``: a temporary file names its writer, so ``edgetl clean`` can tell a dead
    process's leftovers from a live write."""
    return ".{}.{}@{}.".format(name, os.getpid(), _short_host())


def _short_host() -> str:
    return socket.gethostname().split(".")[0]


def temporary_writer(path: Path) -> Optional[Tuple[int, str]]:
    """``(pid, host)`` of the process that made an edgetl temporary file, or None for any other name."""
    match = _TEMPORARY.match(Path(path).name)
    return (int(match.group(1)), match.group(2)) if match else None


def writer_alive(pid: int, host: str) -> bool:
    """Whether the writer may still be running: another host's process is assumed alive."""
    if host != _short_host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_temporary_files(folder: Path) -> List[Path]:
    """edgetl temporary files directly in ``folder`` whose writer is dead (this host's processes only)."""
    found = []
    for path in Path(folder).glob(".*" + TMP_SUFFIX):
        writer = temporary_writer(path)
        if writer is not None and not writer_alive(*writer):
            found.append(path)
    return found


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(target.name), suffix=TMP_SUFFIX, dir=str(target.parent))
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


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; it stays, as lock files do). While
    another process holds it, log who (pid@host, which the holder writes into the file) and for how
    long: once at once, then every ``LOCK_REPORT_EVERY_S``. No timeout: a build may take hours."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            _acquire(fd, path, what)
        os.ftruncate(fd, 0)
        os.write(fd, "{}@{}\n".format(os.getpid(), socket.gethostname()).encode("utf-8"))
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, path: Path, what: str) -> None:
    started = time.monotonic()
    next_report = started
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= next_report:
            holder = path.read_text(errors="replace").strip() or "another process"
            log.info("waiting for %s: %s holds %s (%.0f s)", what, holder, path, time.monotonic() - started)
            next_report += LOCK_REPORT_EVERY_S
        time.sleep(LOCK_POLL_S)


def built_once(lock_path: Path, what: str, read: Callable[[], Optional[T]], build: Optional[Callable[[], T]]) -> T:
    """The artifact ``read`` finds, else the one ``build`` makes, under an exclusive lock on ``lock_path``:
    of any number of processes (ranks of one job, or separate jobs), one builds and the others wait on the
    lock, then read what it built. ``build=None``: this process never builds; it waits, with progress,
    until a builder has made the artifact (a node's ranks other than local rank 0)."""
    started = time.monotonic()
    next_report = started + LOCK_REPORT_EVERY_S
    while True:
        with exclusive_lock(lock_path, what):
            found = read()
            if found is not None:
                return found
            if build is not None:
                return build()
        if time.monotonic() >= next_report:
            log.info("waiting for another process to build %s (%.0f s)", what, time.monotonic() - started)
            next_report += LOCK_REPORT_EVERY_S
        time.sleep(LOCK_POLL_S)
