"""Which folder a run may use, and its lock: ``finetune --out DIR`` writes only into a new or empty folder, or
into an unfinished run of its own that never saved a checkpoint. Everything else (a user's folder, a bundle, a
run with checkpoints) is refused with one line before any work or write. The process that writes the run (rank
0 under torchrun) holds the folder's lock for the whole run (``edgetl.core.ownership``)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterable

from edgetl.core.ownership import FolderBusy, Ownership, folder_is_empty, folder_lock
from edgetl.errors import CheckpointError, ConfigError

RUN = "run"
CHECKPOINTS = ("best.pt", "last.pt")


def check_new_run(run_dir: Path) -> None:
    """Refuse a folder a new run must not write into (read-only: nothing is created)."""
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists():
        raise ConfigError("{} already holds a run; continue it with --resume or choose another --out".format(run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("--out {} is a file, not a folder".format(run_dir))
    if folder_is_empty(run_dir):
        return
    owner = Ownership.read(run_dir)
    if owner is None:
        raise ConfigError(
            "{} is not empty and edgetl did not create it: a new run needs a new or empty --out".format(run_dir)
        )
    if owner.kind != RUN:
        raise ConfigError("{} is an edgetl {}, not a run: choose another --out".format(run_dir, owner.kind))
    if (run_dir / "best.pt").exists():
        raise ConfigError(
            "{} holds a run that stopped before saving last.pt (its best.pt would be replaced): remove the folder "
            "or choose another --out".format(run_dir)
        )
    foreign = list(owner.foreign_files())
    problem = owner.first_change()
    if foreign or problem:
        raise ConfigError(
            "{}: not restarting the unfinished run there: {}".format(
                run_dir, problem or "{} was not written by edgetl".format(run_dir / foreign[0])
            )
        )


def lock_run(stack: ExitStack, run_dir: Path) -> None:
    """Take the run folder's lock for as long as ``stack`` lives (a second writer gets one line at once)."""
    try:
        stack.enter_context(folder_lock(Path(run_dir)))
    except FolderBusy as busy:
        raise ConfigError(
            "{} is in use by another edgetl process ({}): wait for it or choose another --out".format(
                run_dir, busy.holder
            )
        ) from None


def claim_new_run(stack: ExitStack, run_dir: Path) -> Ownership:
    """Lock the folder, check it again under the lock (another process may have started there meanwhile)
    and write its ownership manifest before anything else."""
    check_new_run(run_dir)
    lock_run(stack, run_dir)
    check_new_run(run_dir)
    return Ownership.read(run_dir) or Ownership.claim(run_dir, RUN)


def claim_resumed_run(stack: ExitStack, run_dir: Path) -> None:
    """Lock a run to continue it; refuse when a file edgetl wrote there was changed since (a run from before
    ownership manifests is adopted as it is)."""
    lock_run(stack, run_dir)
    owner = Ownership.read(run_dir)
    if owner is None:
        adopted = Ownership.claim(run_dir, RUN)
        adopted.record(p.name for p in sorted(run_dir.iterdir()) if p.is_file() and not p.name.startswith("."))
        return
    if owner.kind != RUN:
        raise ConfigError("{} is an edgetl {}, not a run".format(run_dir, owner.kind))
    problem = owner.first_change(name for name in CHECKPOINTS if name in owner.files)
    if problem:
        raise CheckpointError("not resuming: {}; the run can no longer continue exactly".format(problem))


def check_checkpoint(run_dir: Path, name: str = "best.pt") -> None:
    """Refuse a checkpoint this run's training did not write, or that changed since (copied in from another run,
    edited): its size and sha256 must be those the run's ownership manifest lists. A run from before ownership
    manifests is taken as it is."""
    owner = Ownership.read(Path(run_dir))
    if owner is None or owner.kind != RUN:
        return
    problem = owner.changed(name)
    if problem:
        raise CheckpointError(
            f"{problem}: it is not the checkpoint this run trained (copied from another run?); use the run "
            "folder that trained it, or retrain"
        )


def record(run_dir: Path, names: Iterable[str]) -> None:
    """List files just written into the run in its ownership manifest."""
    owner = Ownership.read(Path(run_dir))
    if owner is not None:
        owner.record(names)
