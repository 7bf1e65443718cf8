"""Distributed fine-tuning for real: 2 processes on gloo (CPU), started as users start them: ``edgetl finetune
--nproc-per-node 2`` (which runs torch.distributed.run), ``torchrun --nnodes 2 ... -m edgetl finetune`` and
``torchrun --no-python edgetl finetune``. With no BatchNorm training (feature extractor), the same global batch
and seed give one process's per-epoch metrics and final weights, to float tolerance; so does a resume after one
rank is killed mid-epoch, with 2 processes or with 1. With BatchNorm training, a resumed 2-process run repeats
itself exactly. Bad distributed options are one line before any process starts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH
from PIL import Image

from edgetl.cli import main
from edgetl.train.checkpoint import load_checkpoint, load_run
from edgetl.train.config import FinetuneConfig
from edgetl.train.loop import finetune, resume

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr_base", "lr_head")
# 25 train and 25 val images, global batch 8: the last batch of each holds 1 image, so rank 1 trains on a
# padding sample there and evaluates nothing; the val set (4 + 4 per batch, then 1 + 0) divides by nothing.
OPTIONS = dict(
    arch=TINY_ARCH,
    strategy="feature-extractor",  # no BatchNorm trains: exact equivalence is required
    cache="ram",
    weights="none",
    epochs=3,
    batch_size=8,
    lr=0.05,
    workers=0,
)


def _cli_options(data: Path, out: Path, **overrides: object) -> List[str]:
    """``edgetl finetune`` options of ``OPTIONS`` (with ``overrides``) for ``data`` into ``out``."""
    options: List[str] = [str(data), "--out", str(out)]
    for name, value in dict(OPTIONS, **overrides).items():
        options += ["--" + name.replace("_", "-"), str(value)]
    return options


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, str], Path]:
    """(data, environment for the processes, the one-process reference run)."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(3)
    for part in ("train", "val"):
        for label, (name, count) in enumerate({"a": 9, "b": 8, "c": 8}.items()):
            folder = root / "data" / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                y, x = np.mgrid[0:48, 0:48]
                wave = ((x if label != 1 else y) // (3 + 2 * label)) % 2
                pixels = wave[..., None] * [230, 60 + 80 * label, 30] + rng.normal(0, 10, (48, 48, 3)) + 15
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "{}.jpg".format(i))
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGETL_HOME=str(root / "home"), OMP_NUM_THREADS="1")
    with _home(env["EDGETL_HOME"]):
        reference = finetune(FinetuneConfig(data=str(root / "data"), out=str(root / "reference"), **OPTIONS), False)
    return root / "data", env, reference.run_dir


@contextmanager
def _home(path: str) -> Iterator[None]:
    """$EDGETL_HOME for what runs in this process (the caches the processes of the job use too)."""
    previous = os.environ.get("EDGETL_HOME")
    os.environ["EDGETL_HOME"] = path
    try:
        yield
    finally:
        os.environ.pop("EDGETL_HOME") if previous is None else os.environ.update(EDGETL_HOME=previous)


def _history(run: Path) -> np.ndarray:
    return np.array([[float(row[k]) for k in METRICS] for row in csv.DictReader((run / "metrics.csv").open())])


def _assert_same_training(
    run: Path, reference: Path, rtol: float = 1e-5, atol: float = 1e-6, weights_atol: float = 1e-6
) -> Tuple[float, float]:
    """Per-epoch metrics and final weights of ``run`` match ``reference`` (float reduction order: a sum of 2 parts
    vs one mean); returns the largest differences."""
    got, expected = _history(run), _history(reference)
    assert got.shape == expected.shape == (3, len(METRICS))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    state, reference_state = load_checkpoint(run / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert list(state) == list(reference_state)  # no DDP "module." prefix
    weights = max(float((state[k].double() - v.double()).abs().max()) for k, v in reference_state.items())
    assert weights <= weights_atol, weights
    return float(np.abs(got - expected).max()), weights


def _descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _descendants(launcher):
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "RANK={}".format(rank).encode() in environ and b"TORCHELASTIC_RUN_ID" in b"".join(environ):
            return pid
    raise AssertionError("rank {} not found below pid {}".format(rank, launcher))


def test_two_nodes_train_what_one_process_trains(job, tmp_path: Path) -> None:
    """The README's two-node command (two torchrun launches here, one process each, sharing $EDGETL_HOME), the head
    on the feature cache: one process's metrics and weights; one node builds the cache while the other waits on
    its lock; rank 0 alone writes and reports."""
    data, env, _ = job
    with _home(env["EDGETL_HOME"]):
        config = FinetuneConfig(data=str(data), out=str(tmp_path / "one"), **dict(OPTIONS, cache="features"))
        one = finetune(config, progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run, started = tmp_path / "two-nodes", time.monotonic()
    nodes = [
        subprocess.Popen(
            [str(BIN / "torchrun"), "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1"]
            + ["--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "edgetl", "finetune"]
            + _cli_options(data, run, cache="features"),
            env=dict(env, EDGETL_HOME=str(tmp_path / "home")),  # caches not built yet
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    (out0, err0), (out1, err1) = (node.communicate(timeout=300) for node in nodes)
    assert [node.returncode for node in nodes] == [0, 0], err0 + err1
    print(
        "2 vs 1 process: metrics within {:.2g}, weights within {:.2g}, {:.1f} s".format(
            *_assert_same_training(run, one.run_dir), time.monotonic() - started
        )
    )
    assert "joined a job of 2 processes (gloo), 1 on this node" in err0
    assert out0.count("best val top-1") == 1 and out1 == "" and err1 == ""  # rank 1 is quiet
    assert len(list((tmp_path / "home" / "train-features").glob("*.pt"))) == 1  # built once
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one.run_dir.iterdir())
    assert json.loads((run / "summary.json").read_text())["processes"] == 2 and one.summary["processes"] == 1
    model, payload = load_run(run)  # loads like any run
    assert payload["config"]["batch_size"] == 8 and model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_strong_augmentation_and_balance_train_on_two_processes_what_one_trains(
    job, tmp_path: Path, balance: str
) -> None:
    """TrivialAugment, RandomErasing and the balanced order are drawn at each sample's global position, and the
    class-weighted loss is summed over the global batch: 2 processes train the one-process run (the head,
    through the frozen base on augmented images; MixUp is left out, as its partners are per process)."""
    data, env, _ = job
    overrides = dict(augment="strong", balance=balance)
    with _home(env["EDGETL_HOME"]):
        one = finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "one"), **dict(OPTIONS, **overrides)), False)
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "edgetl", "finetune", *_cli_options(data, two, nproc_per_node=2, **overrides)]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    print(
        "2 vs 1 process: metrics within {:.2g}, weights within {:.2g}".format(*_assert_same_training(two, one.run_dir))
    )


def test_a_killed_rank_leaves_a_run_that_resumes_with_two_processes_or_one(job) -> None:
    data, env, reference = job
    killed = reference.parent / "killed"
    command = [sys.executable, "-m", "edgetl", "finetune", *_cli_options(data, killed), "--nproc-per-node", "2"]
    stderr, victim = _kill_rank_after_first_epoch(command, env, killed)  # rank 1 dies in epoch 2
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: the job stopped: ") and "rank 0 (pid " in last_line, stderr
    assert "rank 1 (pid {}) was killed by SIGKILL".format(victim) in last_line, stderr
    assert "continue with: edgetl finetune --out {} --resume --nproc-per-node 2".format(killed) in last_line
    assert "Traceback" not in stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] < 2, "the run finished before a rank could be killed"

    with_one = reference.parent / "killed-resumed-by-one"
    shutil.copytree(killed, with_one)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(BIN / "edgetl")]
    resumed = subprocess.run(
        torchrun + ["finetune", "--out", str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    print(
        "resumed by 2: metrics within {:.2g}, weights within {:.2g}".format(*_assert_same_training(killed, reference))
    )

    with _home(env["EDGETL_HOME"]):
        resume(with_one, progress=False)  # this process alone
    print(
        "resumed by 1: metrics within {:.2g}, weights within {:.2g}".format(*_assert_same_training(with_one, reference))
    )


def _kill_rank_after_first_epoch(command: List[str], env: Dict[str, str], run: Path) -> Tuple[str, int]:
    """Start ``command`` (a 2-process launch) and SIGKILL rank 1 once epoch 1 is saved; the launcher's stderr
    and the killed pid."""
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run / "last.pt").exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _rank_pid(launcher.pid, 1)
    os.kill(victim, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, stderr
    return stderr, victim


def test_with_trainable_batchnorm_and_dropout_a_resumed_two_process_run_repeats_itself(job) -> None:
    """BatchNorm trains (each rank normalises its own part) and dropout draws per rank: no longer the one-process
    result, but still a function of (seed, epoch, rank), so a killed run resumed by 2 processes is exact."""
    data, env, reference = job
    overrides = dict(strategy="partial", trainable_stages=2, epochs=2, nproc_per_node=2)
    whole, killed = reference.parent / "bn-whole", reference.parent / "bn-killed"
    launch = [sys.executable, "-m", "edgetl", "finetune"]
    result = subprocess.run(
        launch + _cli_options(data, whole, **overrides), env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    _kill_rank_after_first_epoch(launch + _cli_options(data, killed, **overrides), env, killed)
    assert load_checkpoint(killed / "last.pt")["epoch"] == 0, "the run finished before a rank could be killed"
    resume_by_two = launch + ["--out", str(killed), "--resume", "--nproc-per-node", "2"]
    resumed = subprocess.run(resume_by_two, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (_history(killed) == _history(whole)).all()
    expected, got = load_checkpoint(whole / "last.pt")["model"], load_checkpoint(killed / "last.pt")["model"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    frozen = load_checkpoint(reference / "last.pt")["model"]  # same init, BatchNorm frozen
    assert any(not torch.equal(expected[k], frozen[k]) for k in expected if k.endswith("running_mean"))


def test_bad_distributed_options_are_one_line_before_any_process_starts(tmp_path: Path, make_image_folder) -> None:
    data, out = make_image_folder(), tmp_path / "run"
    runner = CliRunner()
    common = ["finetune", str(data), "--out", str(out), "--nproc-per-node", "2"]
    cases = [
        (["--batch-size", "7"], "--batch-size 7 is the global batch and must divide by the 2 processes; use 6 or 8"),
        (["--strategy", "full", "--sync-bn", "--device", "cpu"], "--sync-bn needs CUDA"),
        (["--sync-bn"], "--sync-bn has nothing to synchronise"),
    ]
    for extra, message in cases:
        result = runner.invoke(main, common + extra)
        assert result.exit_code == 1 and result.output.strip() == "Error: " + message or message in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
        assert not out.exists()  # nothing written, no process started
    out.mkdir()
    (out / "last.pt").write_bytes(b"another run")
    taken = runner.invoke(main, common)
    assert taken.exit_code == 1 and "already holds a run; continue it with --resume" in taken.output
    assert (out / "last.pt").read_bytes() == b"another run"


def test_under_torchrun_the_processes_check_the_same_before_any_write(
    tmp_path: Path, make_image_folder, monkeypatch
) -> None:
    for name, value in dict(
        RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", TORCHELASTIC_RUN_ID="t"
    ).items():
        monkeypatch.setenv(name, value)  # rank 0 of a 2-process torchrun job: both checks come before joining it
    data, out = make_image_folder(), tmp_path / "run"
    runner = CliRunner()
    odd = runner.invoke(main, ["finetune", str(data), "--out", str(out), "--batch-size", "5"])
    assert odd.exit_code == 1 and "[rank 0] --batch-size 5 is the global batch and must divide by the 2" in odd.output
    mismatch = runner.invoke(main, ["finetune", str(data), "--out", str(out), "--nproc-per-node", "4"])
    assert mismatch.exit_code == 1 and "--nproc-per-node 4 but the launcher started 2 processes" in mismatch.output
    assert not out.exists()


def test_finetune_help_documents_the_distributed_options() -> None:
    text = CliRunner().invoke(main, ["finetune", "--help"]).output
    for expected in ("--nproc-per-node", "--sync-bn", "--batch-size is the global batch", "torchrun --nnodes 2"):
        assert expected in text, expected


@pytest.mark.gpu
def test_two_gpus_with_nccl_and_sync_bn(job) -> None:
    """On a node with 2 GPUs: NCCL, no AMP; the feature extractor equals one GPU's (to cudnn's rounding: each
    process autotunes its own convolution algorithms); --sync-bn trains a partial run."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs: this node has {}".format(torch.cuda.device_count()))
    data, env, reference = job
    gpu = dict(device="cuda", no_amp="")

    def run(out: Path, **overrides: object) -> None:
        options = [o for o in _cli_options(data, out, **gpu, **overrides) if o]  # --no-amp is a flag
        result = subprocess.run(
            [sys.executable, "-m", "edgetl", "finetune", *options], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr

    one, two, synced = (reference.parent / name for name in ("gpu-one", "gpu-two", "gpu-sync-bn"))
    run(one, nproc_per_node=1)
    run(two, nproc_per_node=2)
    _assert_same_training(two, one, rtol=1e-4, atol=1e-5, weights_atol=1e-5)
    run(synced, nproc_per_node=2, strategy="partial", trainable_stages=2, sync_bn="")
    assert load_checkpoint(synced / "last.pt")["config"]["sync_bn"] is True and load_run(synced)[0] is not None
