"""``edgetl finetune --nproc-per-node N``: the same command run in N processes on this node by PyTorch's own
launcher, ``torch.distributed.run`` (torchrun, standalone rendezvous), as
``torchrun --standalone --nproc-per-node N -m edgetl finetune ...`` would.

Everything that can be checked before the processes start is checked here, so a bad option is one line
and no process starts. A failed process ends the job (torchrun stops the others); the error then names
each failed rank and how to resume from the last finished epoch.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, List

from edgetl.core.deps import require
from edgetl.core.device import check_process_devices, resolve_device, usable_cores
from edgetl.errors import CheckpointError, DistributedError
from edgetl.train.checkpoint import load_checkpoint
from edgetl.train.config import FinetuneConfig, check_job
from edgetl.train.run_folder import check_new_run

log = logging.getLogger(__name__)


def check_launch(config: FinetuneConfig, nproc_per_node: int, run_dir: Path, resuming: bool) -> None:
    """The one-line errors the processes would raise, raised before they start."""
    device = resolve_device(config.device)
    check_job(config, device.type, nproc_per_node)
    check_process_devices(config.device, device, nproc_per_node)
    if not resuming:
        check_new_run(run_dir)


def launch(command: List[str], nproc_per_node: int, run_dir: Path, resume_command: str, verbose: bool = False) -> None:
    """Run ``python -m edgetl <command>`` in ``nproc_per_node`` processes under torch.distributed.run and wait.

    ``resume_command`` is what the error message tells the user to run when a process fails."""
    run = require("torch.distributed.run")
    errors = require("torch.distributed.elastic.multiprocessing.errors")
    stopped = require("torch.distributed.elastic.multiprocessing.api").SignalException
    # Each process's share of the cores for its torch threads (torchrun would set 1, with a warning).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc_per_node)))
    if not verbose:  # torchrun's agent logs every start and stop; the failure is reported below in one line
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    arguments = ["--standalone", "--nproc-per-node", str(nproc_per_node), "-m", "edgetl"] + command
    log.info("starting %d processes: torchrun %s", nproc_per_node, " ".join(arguments))
    try:
        run.run(run.parse_args(arguments))
    except errors.ChildFailedError as exc:
        log.debug(exc.format_msg())
        raise DistributedError(
            "the job stopped: {}. {}".format(describe_failures(exc.failures), resumable(run_dir, resume_command))
        ) from None
    except stopped as exc:  # Ctrl-C or a kill of this launcher: torchrun has stopped the processes
        raise DistributedError(
            "the job stopped on {}. {}".format(_signal_name(exc.sigval), resumable(run_dir, resume_command))
        ) from None


def describe_failures(failures: Any) -> str:
    """Each failed rank of a ChildFailedError: 'rank 1 (pid 42) was killed by SIGKILL', first observed first
    (to the second), and last those torchrun stopped with SIGTERM because another had failed."""

    def order(item: Any) -> Any:
        rank, failure = item
        return failure.exitcode == -signal.SIGTERM, failure.timestamp, rank

    parts = []
    for rank, failure in sorted(failures.items(), key=order):
        if failure.exitcode < 0:
            how = "was killed by {}".format(_signal_name(-failure.exitcode))
        else:
            how = "exited with code {}".format(failure.exitcode)
        parts.append("rank {} (pid {}) {}".format(rank, failure.pid, how))
    return ", ".join(parts)


def resumable(run_dir: Path, resume_command: str) -> str:
    """Where the run stands: the last finished epoch and the command that continues it."""
    try:
        epoch = int(load_checkpoint(run_dir / "last.pt")["epoch"]) + 1
    except CheckpointError:
        return "No epoch finished, so there is nothing to resume in {}.".format(run_dir)
    return "{} holds epoch {}; continue with: {}".format(run_dir / "last.pt", epoch, resume_command)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal {}".format(number)
