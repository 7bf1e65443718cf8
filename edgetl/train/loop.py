"""edgetl finetune: train a new head (and optionally top stages) on a pretrained backbone.

Deterministic on CPU: every epoch reseeds torch and the data order from ``seed + epoch``, so a
run resumed from ``last.pt`` (even after a kill mid-epoch) reproduces an uninterrupted run.
Started by torchrun, the same functions train in every process (``edgetl.train.distributed``): the
data order stays that of ``(seed, epoch)``, so a run may also resume with another number of processes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import text_table
from edgetl.core.world import ProcessRole
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.errors import ConfigError, DataError, DistributedError, TrainingError
from edgetl.train.checkpoint import load_checkpoint, rng_state, save_checkpoints
from edgetl.train.config import FinetuneConfig
from edgetl.train.distributed import (
    World,
    evaluate_on_ranks,
    peer_lost,
    rank_seed,
    sharded_loss,
    start_world,
    use_sync_batch_norm,
)
from edgetl.train.head_fit import fit_head, stop_reason, test_report
from edgetl.train.inputs import build_pipeline, resolve_config
from edgetl.train.model import HeadConfig, build_model, count_parameters
from edgetl.train.objective import training_loss
from edgetl.train.run_folder import check_new_run, claim_new_run, claim_resumed_run, record
from edgetl.train.step import TrainStep, cosine_with_warmup, optimizer_for, restore_training_state, train_one_epoch
from edgetl.train.stopping import SELECTION_NOTE, ChanceGuard, best_row, early_stop, is_new_best, step_advice
from edgetl.train.weights import resolve_weights

torch = require("torch")
log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr_base",
    "lr_head",
    "epoch_time_s",
    "images_per_s",
)


@dataclass
class RunResult:
    run_dir: Path
    summary: Dict[str, Any]
    history: List[Dict[str, float]]


def default_run_dir(config: FinetuneConfig) -> Path:
    if config.out:
        return Path(config.out)
    return Path("models") / "{}-{}-{}".format(config.arch, config.strategy, time.strftime("%Y%m%d-%H%M%S"))


def finetune(config: FinetuneConfig, progress: bool = True, *, setup: Optional[DeviceSetup] = None) -> RunResult:
    """Start a new run in ``config.out`` (or ``models/<arch>-<strategy>-<time>``) and train it.

    ``setup``: the training device; by default ``DeviceSetup.create(config.device, config.amp)``.
    Tests pass one that applies CUDA's placement rules on the CPU (``tests/placement.py``).
    Started by torchrun, each process trains its part (``edgetl.train.distributed``); rank 0 scans the
    dataset and alone writes the run folder."""
    config.check_inputs()
    setup, world = _join(config, setup)
    held = ExitStack()  # rank 0's lock on the run folder, held until the run ends

    def start_run() -> Tuple[Path, DatasetSplit, FinetuneConfig]:
        run_dir = default_run_dir(config)
        check_new_run(run_dir)  # before the dataset scan: a refused folder costs nothing
        if config.data is None:
            root = ensure_demo_dataset()
            log.info("no DATA given: using the built-in demo dataset at %s", root)
        else:
            root = Path(config.data)
        split = load_dataset(root, config.val_split, config.seed, config.test_split)
        if split.skipped:
            log.warning("skipped %d unreadable file(s); listed in %s", len(split.skipped), run_dir / "skipped.txt")
        resolved = resolve_config(config, split, run_dir)  # before any write: a refused config leaves nothing
        claim_new_run(held, run_dir)
        split.save(run_dir)
        atomic_write_text(run_dir / "config.json", json.dumps(asdict(resolved), indent=2) + "\n")
        record(run_dir, ("split.json", "skipped.txt", "config.json"))
        return run_dir, split, resolved

    with held, _ending(world):
        run_dir, split, resolved = world.run_on_main(start_run, "scanning the dataset")
        return _train(resolved, run_dir, split, None, progress, setup, world)


def resume(
    run_dir: Path, epochs: Optional[int] = None, progress: bool = True, *, setup: Optional[DeviceSetup] = None
) -> RunResult:
    """Continue a run from its ``last.pt`` with its saved options (optionally more epochs); ``setup`` as
    for :func:`finetune`. Any number of processes may continue it (each reads the run folder)."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    config = resumed_config(state, epochs)
    setup, world = _join(config, setup)
    with ExitStack() as held, _ending(world):
        if world.is_main:
            claim_resumed_run(held, run_dir)
        return _train(config, run_dir, DatasetSplit.load(run_dir), state, progress, setup, world)


def resumed_config(state: Dict[str, Any], epochs: Optional[int] = None) -> FinetuneConfig:
    """The options a run continues with: those saved in its checkpoint ``state``, with ``epochs`` if given."""
    config = FinetuneConfig.from_dict(state["config"])
    if epochs is None:
        return config
    if config.head_fit == "solve" or state.get("head_fit"):  # an earlier version saved head_fit auto
        raise ConfigError.about(
            "this run solved its linear head to convergence ({head_fit} solve): there is nothing to continue; "
            "start a new run with {epochs} N to train by epochs"
        )
    done = int(state["epoch"]) + 1
    if epochs < done:
        raise ConfigError.about(f"{{epochs}} {epochs} is fewer than the {done} epochs this run has done")
    return replace(config, epochs=epochs)


def _join(config: FinetuneConfig, setup: Optional[DeviceSetup]) -> Tuple[DeviceSetup, World]:
    """The device of this process and the job it belongs to (checked before any work or write)."""
    role = ProcessRole.from_env()
    setup = setup or DeviceSetup.create(config.device, config.amp, role)
    return setup, start_world(config, setup, role)


@contextmanager
def _ending(world: World) -> Iterator[None]:
    """Leave the process group at the end. A collective that fails because another rank died becomes one line
    (that rank prints its own error, and the launcher names it); the broken group is left to the exit."""
    try:
        yield
    except RuntimeError as exc:
        if world.size > 1 and peer_lost(exc):
            raise DistributedError(
                "stopped: another process of the job ended ({})".format(_first_sentence(exc))
            ) from None
        world.close()
        raise
    except BaseException:
        world.close()
        raise
    world.close()


def _first_sentence(exc: BaseException) -> str:
    """``Read error ...: Connection reset by peer`` of gloo's ``[.../pair.cc:545] Read error ...: Connection reset
    by peer. This is typically caused by ...``."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0]


def _train(
    config: FinetuneConfig,
    run_dir: Path,
    split: DatasetSplit,
    state: Optional[Dict[str, Any]],
    progress: bool,
    setup: DeviceSetup,
    world: World,
) -> RunResult:
    log.info(setup.describe())
    started = time.perf_counter()
    spec = get_backbone(config.arch, config.cut_at)
    preprocess = replace(preprocess_spec(spec), geometry=config.eval_geometry)
    config = resolve_config(config, split, run_dir)  # resolved already, unless an earlier version saved it
    model, optimizer, scheduler, scaler = _build(config, split, setup, world, state)
    val_loss = torch.nn.CrossEntropyLoss()  # plain, as `evaluate` reports it: smoothing and weights train only
    history: List[Dict[str, float]] = []
    solving = config.head_fit == "solve"  # the convex fit, recorded as epoch 1 of 1
    start_epoch, total = 0, config.epochs or 1
    head_fit: Dict[str, Any] = {} if state is None else dict(state.get("head_fit") or {})
    if state is not None:
        restore_training_state(state, model, optimizer, scheduler, scaler)
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
        if start_epoch < total:
            log.info("resuming %s at epoch %d of %d", run_dir, start_epoch + 1, total)
        else:
            log.info("%s is complete (%d of %d epochs): nothing to train", run_dir, start_epoch, total)
    elif world.is_main:
        atomic_write_text(run_dir / "labels.txt", "".join(c + "\n" for c in split.classes))
        preprocess.save(run_dir / "preprocess.json")
        record(run_dir, ("labels.txt", "preprocess.json"))

    pipeline = build_pipeline(config, split, preprocess, model, setup, world)
    world.wait_for_all("building the input pipeline")  # a node's cache build may outlast a collective's timeout
    trained = pipeline.module(model)  # the whole model, or only its head on cached features
    labels = [s.label for s in split.train]
    loss = training_loss(config.label_smoothing, config.balance, labels, len(split.classes), setup.device)
    shares = sharded_loss(world, loss, len(split.train), config.batch_size)
    step = TrainStep(world.wrap(trained), loss, optimizer, scheduler, scaler, setup, shares)
    lr, head_lr, _ = config.step_sizes()
    advice = step_advice(config.optimizer, lr, head_lr, config.warmup)
    guard = ChanceGuard(len(split.classes), config.warmup, advice)
    stopped = early_stop(history, config.patience)
    for epoch in range(start_epoch, total):
        if stopped:
            break
        torch.manual_seed(rank_seed(config.seed, epoch, world.rank))  # dropout etc.: a function of (seed, epoch, rank)
        tick = time.perf_counter()
        with _images_vanished(run_dir, epoch):
            if solving:
                (train_loss, train_top1), head_fit = fit_head(pipeline, model, len(split.classes), config)
                lrs = {"base": 0.0, "head": 0.0}  # no step size: L-BFGS with a line search
            else:
                batches = pipeline.train_batches(config.seed * 1000 + epoch)
                lrs = {g.get("name", "base"): g["lr"] for g in optimizer.param_groups}  # the epoch's first step's
                label = "epoch {}/{}".format(epoch + 1, total)
                train_loss, train_top1 = train_one_epoch(
                    step, batches, progress=progress and world.is_main, label=label
                )
            seconds = time.perf_counter() - tick
            world.sync_buffers(trained)
            val = evaluate_on_ranks(trained, pipeline.val_batches(), setup, len(split.classes), val_loss, world)
        check_finite_loss(epoch, train=train_loss, val=val.loss)  # before anything of this epoch is saved
        history.append(_epoch_row(epoch, train_loss, train_top1, val, lrs, seconds, len(split.train)))
        is_best = world.from_main(is_new_best(history))  # the decision of rank 0, which saves
        stopped = early_stop(history, config.patience)
        if world.is_main:
            log.info(_epoch_line(history[-1], total))
            if not solving:
                guard.check(history)
            training = (optimizer, scheduler, scaler)
            payload = _payload(config, split, model, preprocess, training, epoch, history, head_fit)
            _save_epoch(run_dir, payload, is_best, history)
    summary = _summary(config, run_dir, split, model, setup, history, time.perf_counter() - started)
    summary.update(stopped=stop_reason(config, history, stopped, head_fit), selection=SELECTION_NOTE, head_fit=head_fit)
    summary["processes"] = world.size  # this session's; a run may resume with another count
    if world.is_main:
        if split.test:
            summary.update(test_report(run_dir, split, setup, config.batch_size, config.workers))
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        record(run_dir, ("summary.json",))
    return RunResult(run_dir, summary, history)


def check_finite_loss(epoch: int, **losses: float) -> None:
    """A non-finite mean loss (train or val) means the weights diverged: stop rather than save and report them
    (every rank sees the same summed losses, so all stop together)."""
    for name, loss in losses.items():
        if not math.isfinite(loss):
            raise TrainingError(
                "training diverged: the {} loss of epoch {} is {}; lower --lr (earlier epochs' files are kept)".format(
                    name, epoch + 1, loss
                )
            )


@contextmanager
def _images_vanished(run_dir: Path, epoch: int) -> Iterator[None]:
    """An image that became unreadable after the scan (deleted, replaced) stops the run with one line that says
    how to continue, not a DataLoader worker's traceback; last.pt holds the epoch before."""
    try:
        yield
    except DataError as exc:
        resumable = (run_dir / "last.pt").is_file()
        raise DataError(
            "{}: stopped in epoch {}; restore the file, then {}".format(
                worker_message(exc),
                epoch + 1,
                "continue with 'edgetl finetune --out {} --resume'".format(run_dir)
                if resumable
                else "start the run again in a new --out",
            )
        ) from None


def worker_message(exc: BaseException) -> str:
    """The original one-line message of an error a DataLoader worker raised (torch re-raises it with the
    worker's traceback appended: ``Caught DataError in DataLoader worker process 0. ... DataError: MESSAGE``)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        prefix = "{}.{}: ".format(type(exc).__module__, type(exc).__name__)
        return lines[-1][len(prefix) :] if lines[-1].startswith(prefix) else lines[-1]
    return lines[0] if lines else type(exc).__name__


def _build(
    config: FinetuneConfig, split: DatasetSplit, setup: DeviceSetup, world: World, state: Optional[Dict[str, Any]]
) -> Tuple[Any, Any, Any, Any]:
    """Model (pretrained weights unless resuming; SyncBatchNorm with --sync-bn), optimizer, schedule, AMP scaler."""
    spec = get_backbone(config.arch, config.cut_at)
    weights = resolve_weights(spec, config.weights) if state is None else None
    torch.manual_seed(config.seed)
    model = setup.module_to_device(
        build_model(
            spec, len(split.classes), HeadConfig(config.head), config.strategy, config.trainable_stages, weights
        )
    )
    model = use_sync_batch_norm(model, config, world)
    optimizer = optimizer_for(config, model)
    steps_per_epoch = math.ceil(len(split.train) / config.batch_size)  # global batches: the schedule of one process
    epochs = config.epochs or 1
    scheduler = cosine_with_warmup(optimizer, config.warmup * steps_per_epoch, epochs * steps_per_epoch)
    return model, optimizer, scheduler, torch.amp.GradScaler(setup.device.type, enabled=setup.use_amp)


def _save_epoch(run_dir: Path, payload: Dict[str, Any], is_best: bool, history: List[Dict[str, float]]) -> None:
    """best.pt (when best) and last.pt written together: a full disk or a kill never leaves a best.pt newer than
    last.pt, so a resume reproduces the run."""
    names = ("last.pt", "best.pt") if is_best else ("last.pt",)
    save_checkpoints([run_dir / name for name in names], payload)
    _write_metrics(run_dir / "metrics.csv", history)
    record(run_dir, names + ("metrics.csv",))


def _epoch_row(
    epoch: int, train_loss: float, train_top1: float, val: Any, lrs: Dict[str, float], seconds: float, images: int
) -> Dict[str, float]:
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_top1": train_top1,
        "val_loss": val.loss,
        "val_top1": val.top1,
        "val_top5": val.top5,
        "lr_base": lrs.get("base", 0.0),
        "lr_head": lrs["head"],
        "epoch_time_s": seconds,
        "images_per_s": images / seconds,
    }


def _epoch_line(row: Dict[str, float], epochs: int) -> str:
    """One progress line per epoch (logs have no progress bar)."""
    return "epoch {}/{}: train loss {:.4f}, top-1 {:.1%}; val loss {:.4f}, top-1 {:.1%}; {:.1f} s, {:.0f} img/s".format(
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_top1"],
        row["val_loss"],
        row["val_top1"],
        row["epoch_time_s"],
        row["images_per_s"],
    )


def _payload(
    config: FinetuneConfig,
    split: DatasetSplit,
    model: Any,
    preprocess: Any,
    training: Tuple[Any, Any, Any],
    epoch: int,
    history: List[Dict[str, float]],
    head_fit: Dict[str, Any],
) -> Dict[str, Any]:
    """A checkpoint: the plain model's state (never DDP's ``module.`` names), the optimizer, scheduler and
    AMP scaler states, and the run's facts."""
    optimizer, scheduler, scaler = training
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "rng": rng_state(),
        "history": history,
        "best_top1": best_row(history)["val_top1"],
        "head_fit": head_fit,  # the convex fit's facts; empty when trained by epochs
        "class_names": split.classes,
        "arch": config.arch,
        "strategy": config.strategy,
        "trainable_stages": config.trainable_stages,
        "cut_at": config.cut_at,
        "frozen_stages": model.frozen_stages,
        "head": asdict(HeadConfig(config.head)),
        "preprocess": preprocess.to_dict(),
        "config": asdict(config),
    }


def _write_metrics(path: Path, history: List[Dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def _summary(
    config: FinetuneConfig,
    run_dir: Path,
    split: DatasetSplit,
    model: Any,
    setup: DeviceSetup,
    history: List[Dict[str, float]],
    seconds: float,
) -> Dict[str, Any]:
    best = best_row(history)
    return {
        "run": str(run_dir),
        "arch": config.arch,
        "strategy": config.strategy,
        "cut_at": config.cut_at,
        "trainable_stages": [s for s in model.spec.stage_names if s not in model.frozen_stages],
        "classes": split.classes,
        "num_train": len(split.train),
        "num_val": len(split.val),
        "skipped_files": len(split.skipped),
        "dataset": str(split.root),
        "layout": split.layout,
        "pretrained": config.weights != "none",
        "device": str(setup.device),
        "amp": setup.use_amp,
        "cache": config.cache,
        "params_total": count_parameters(model),
        "params_trainable": count_parameters(model, trainable_only=True),
        "epochs": config.epochs,  # None: the head was solved (its facts: "head_fit")
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"],
        "best_val_top5": best["val_top5"],
        "final_val_top1": history[-1]["val_top1"],
        "run_time_s": seconds,
    }


def history_table(history: List[Dict[str, float]]) -> str:
    """The per-epoch metrics as a terminal table."""
    columns = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "epoch_time_s", "images_per_s")
    return text_table(columns, [[row[c] for c in columns] for row in history])
