"""Shared helpers of the fault corpus (folders, artifacts, faults): the one assertion every refused case makes
(exit status, one line without a traceback, and no file that existed before changed: sha256 of every file
before and after), tiny runs built in seconds, and real processes that are killed at points found by polling
a marker file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from edgetl.cli import main

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ".edgetl.lock"  # its content is the holder's pid: a lock taken is not a file changed
# A random-init mobilenet_v3_small cut after its first stage: a few MFLOPs per image, a run takes a second.
TINY = "--arch mobilenet_v3_small --cut-at stage1 --strategy full --weights none --batch-size 8 --workers 0".split()
_BUILT: Dict[str, Path] = {}  # small_run and small_bundle, once per test session


def snapshot(*roots: Path) -> Dict[str, str]:
    """sha256 of every file under ``roots`` (a file root: itself), by path; lock files aside."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for path in files:
            if path.name != LOCK_FILE:
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def tree_digest(*roots: Path) -> str:
    """One sha256 of everything under ``roots``: each file's, folder's and link's path, mode and mtime, each
    file's bytes (lock files too) and each link's target. Equal before and after only when nothing was added,
    removed, renamed or written."""
    digest = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(str(root)):
            dirnames.sort()
            for path in [Path(dirpath)] + [Path(dirpath) / name for name in sorted(filenames)]:
                stat = path.lstat()
                digest.update(f"{path}\0{stat.st_mode}\0{stat.st_mtime_ns}\0".encode())
                if path.is_symlink():
                    digest.update(os.readlink(str(path)).encode())
                elif path.is_file():
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
            for name in dirnames:
                if (Path(dirpath) / name).is_symlink():  # os.walk lists a link to a folder but does not enter it
                    digest.update(f"{Path(dirpath) / name}\0{os.readlink(str(Path(dirpath) / name))}\0".encode())
    return digest.hexdigest()


def cli(args: Sequence[str], env: Optional[Dict[str, str]] = None) -> Result:
    return CliRunner().invoke(main, ["-q"] + [str(a) for a in args], env=env)


def succeeds(args: Sequence[str]) -> Result:
    result = cli(args)
    assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result: Result, code: int = 1, match: str = "") -> str:
    """Exit ``code`` through click (no other exception), exactly one ``Error:`` line and no traceback; returns it."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "Original Traceback" not in errors[0], result.output
    assert match in errors[0], errors[0]
    return errors[0]


def assert_refused(
    args: Sequence[str], roots: Iterable[Path], match: str, code: int = 1, env: Optional[Dict[str, str]] = None
) -> str:
    """Run ``edgetl ARGS`` and check it refuses with one line and leaves every file under ``roots`` as it was
    (no file changed, none added or removed)."""
    roots = list(roots)
    before = snapshot(*roots)
    line = assert_one_line_error(cli(args, env), code, match)
    assert snapshot(*roots) == before, "files changed under {}".format(roots)
    return line


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(str(source), str(target), ignore=shutil.ignore_patterns(LOCK_FILE))
    return target


def images(root: Path, per_class: int = 6, size: int = 40, classes: Sequence[str] = ("a", "b", "c")) -> Path:
    """``root/train/<class>`` and ``root/val/<class>``: noise of a class-dependent colour, PNG."""
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if part == "train" else max(2, per_class // 2)):
                pixels = rng.integers(0, 80, (size, size, 3)) + np.array([60 * index, 40, 200 - 60 * index])
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "{}.png".format(i))
    return root


def small_run(root: Path) -> Path:
    """A trained run of ``TINY`` in ``root/run`` (images in ``root/data``), built once per test session."""
    if "run" not in _BUILT:
        data = images(root / "data", per_class=6, size=40)
        result = cli(["finetune", data, *TINY, "--epochs", "1", "--out", root / "run"])
        assert result.exit_code == 0, result.output
        _BUILT["run"] = root / "run"
    return _BUILT["run"]


def small_bundle(root: Path) -> Path:
    """``small_run`` exported into ``root/bundle`` (the default options), once per test session."""
    if "bundle" not in _BUILT:
        run = small_run(root)
        result = cli(["export", run, "--out", root / "bundle", "--calib-dir", root / "calibration"])
        assert result.exit_code == 0, result.output
        _BUILT["bundle"] = root / "bundle"
    return _BUILT["bundle"]


def flip_byte(path: Path, keep_times: bool = True) -> None:
    """Flip one byte in the middle of ``path`` (mtime kept: a copy tool or a bad sector does not touch it)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_times:
        os.utime(str(path), ns=(stat.st_atime_ns, stat.st_mtime_ns))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Process:
    """``python -m edgetl ARGS`` in a real process (this worktree first on the path), killed on demand."""

    def __init__(self, args: Sequence[str], home: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), EDGETL_HOME=str(home), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetl", "-q"] + [str(a) for a in args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, found: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        """Poll (every 5 ms) until ``found()``; fails if the process ends first or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not found():
            if self.proc.poll() is not None:
                raise AssertionError("ended before {}: {}".format(what, self.proc.communicate()[0]))
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("timed out waiting for " + what)
            time.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()

    def finish(self, timeout: float = 120.0) -> str:
        output = self.proc.communicate(timeout=timeout)[0]
        assert self.proc.returncode == 0, output
        return output


def glob_any(folder: Path, pattern: str) -> Callable[[], bool]:
    return lambda: folder.is_dir() and any(True for _ in folder.glob(pattern))


def files_named(root: Path, pattern: str) -> List[Path]:
    return sorted(root.rglob(pattern)) if root.exists() else []
