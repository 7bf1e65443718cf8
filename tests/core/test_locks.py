"""Artifacts built once under a file lock: a node's local rank 0 builds the decoded-image cache while its
other ranks wait on the lock with progress, and two jobs never build the same cache."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
# Opens the decoded-image cache of a tiny dataset, reporting waits every 0.3 s instead of 10 s.
OPEN_CACHE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import edgetl.core.fileio as fileio
fileio.LOCK_REPORT_EVERY_S = 0.3
from pathlib import Path
from edgetl.data.decoded_cache import open_decoded_images
from edgetl.data.folders import load_dataset
from edgetl.contracts.preprocess import PreprocessSpec
split = load_dataset(Path(sys.argv[1]), 0.25, 0)
images = open_decoded_images(split.train, PreprocessSpec(input_size=32, resize_size=40), split.root, "train")
print("KEY", images.key, len(images))
"""


def _images(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "{}.png".format(i))
    return root


def _start(data: Path, home: Path, env: Dict[str, str]) -> subprocess.Popen:
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "EDGETL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", OPEN_CACHE, str(data)],
        env=dict(environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: List[subprocess.Popen]) -> List[str]:
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    return outputs


def test_local_rank_0_builds_while_the_other_rank_waits_on_the_lock(tmp_path: Path) -> None:
    data, home = _images(tmp_path / "data"), tmp_path / "home"
    waiting = _start(data, home, dict(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"))
    time.sleep(2.0)  # local rank 1 is there first: it must wait, not build
    assert waiting.poll() is None, waiting.communicate()[0]
    builder = _start(data, home, dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"))
    waited, built = _finish([waiting, builder])
    assert "waiting for another process to build the decoded-image cache of train" in waited
    assert "building" not in waited and "reusing" in waited
    assert "building" in built
    assert waited.splitlines()[-1] == built.splitlines()[-1]  # the same cache (key and size)
    assert len(list((home / "decoded").glob("*.npy"))) == 1


def test_two_jobs_starting_together_build_the_cache_once(tmp_path: Path) -> None:
    data, home = _images(tmp_path / "data", count=40), tmp_path / "home"
    outputs = _finish([_start(data, home, {}), _start(data, home, {})])
    assert sum("building" in output for output in outputs) == 1, outputs
    assert sum("reusing" in output for output in outputs) == 1
    assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1]
    assert sorted(p.suffix for p in (home / "decoded").iterdir()) == [".json", ".lock", ".npy"]
