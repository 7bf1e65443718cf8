"""edgetl finetune: train a new head (and optionally top stages) on a pretrained backbone.

Deterministic on CPU: every epoch reseeds torch and the data order from ``seed + epoch``, so a
run resumed from ``last.pt`` (even after a kill mid-epoch) reproduces an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm import tqdm

from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import text_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.errors import ConfigError
from edgetl.spec.backbones import get_backbone, preprocess_spec
from edgetl.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_model
from edgetl.train.inputs import build_pipeline
from edgetl.train.model import HeadConfig, build_model, count_parameters, parameter_groups
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


def cosine_with_warmup(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    """Linear warmup then cosine decay to 0, stepped per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(config: FinetuneConfig, groups: List[Dict[str, Any]]) -> Any:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def default_run_dir(config: FinetuneConfig) -> Path:
    if config.out:
        return Path(config.out)
    return Path("models") / "{}-{}-{}".format(config.arch, config.strategy, time.strftime("%Y%m%d-%H%M%S"))


def finetune(config: FinetuneConfig, progress: bool = True, *, setup: Optional[DeviceSetup] = None) -> RunResult:
    """Start a new run in ``config.out`` (or ``models/<arch>-<strategy>-<time>``) and train it.

    ``setup``: the training device; by default ``DeviceSetup.create(config.device, config.amp)``.
    Tests pass one that applies CUDA's placement rules on the CPU (``tests/placement.py``)."""
    run_dir = default_run_dir(config)
    if (run_dir / "last.pt").exists():
        raise ConfigError("{} already holds a run; continue it with --resume or choose another --out".format(run_dir))
    if config.data is None:
        root = ensure_demo_dataset()
        log.info("no DATA given: using the built-in demo dataset at %s", root)
    else:
        root = Path(config.data)
    split = load_dataset(root, config.val_split, config.seed)
    if split.skipped:
        log.warning("skipped %d unreadable file(s); listed in %s", len(split.skipped), run_dir / "skipped.txt")
    run_dir.mkdir(parents=True, exist_ok=True)
    split.save(run_dir)
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(config), indent=2) + "\n")
    return _train(config, run_dir, split, None, progress, setup)


def resume(
    run_dir: Path, epochs: Optional[int] = None, progress: bool = True, *, setup: Optional[DeviceSetup] = None
) -> RunResult:
    """Continue a run from its ``last.pt`` with its saved options (optionally more epochs); ``setup`` as
    for :func:`finetune`."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    config = FinetuneConfig.from_dict(state["config"])
    if epochs is not None:
        config = replace(config, epochs=epochs)
    return _train(config, run_dir, DatasetSplit.load(run_dir), state, progress, setup)


def _train(
    config: FinetuneConfig,
    run_dir: Path,
    split: DatasetSplit,
    state: Optional[Dict[str, Any]],
    progress: bool,
    setup: Optional[DeviceSetup] = None,
) -> RunResult:
    setup = setup or DeviceSetup.create(config.device, config.amp)
    log.info(setup.describe())
    spec = get_backbone(config.arch, config.cut_at)
    preprocess = replace(preprocess_spec(spec), geometry=config.eval_geometry)
    weights = resolve_weights(spec, config.weights) if state is None else None
    torch.manual_seed(config.seed)
    model = setup.module_to_device(
        build_model(
            spec, len(split.classes), HeadConfig(config.head), config.strategy, config.trainable_stages, weights
        )
    )
    optimizer = make_optimizer(config, parameter_groups(model, config.lr, config.head_lr_mult))
    steps_per_epoch = math.ceil(len(split.train) / config.batch_size)
    scheduler = cosine_with_warmup(optimizer, config.warmup_epochs * steps_per_epoch, config.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.use_amp)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: List[Dict[str, float]] = []
    best_top1, start_epoch, started = -1.0, 0, time.perf_counter()
    if state is not None:
        restore_training_state(state, model, optimizer, scheduler, scaler)
        history, best_top1, start_epoch = list(state["history"]), float(state["best_top1"]), int(state["epoch"]) + 1
        log.info("resuming %s at epoch %d of %d", run_dir, start_epoch + 1, config.epochs)
    else:
        atomic_write_text(run_dir / "labels.txt", "".join(c + "\n" for c in split.classes))
        preprocess.save(run_dir / "preprocess.json")

    pipeline = build_pipeline(config, split, preprocess, model, setup)
    config = replace(config, cache=pipeline.name)  # checkpoints record the pipeline auto chose
    trained = pipeline.module(model)  # the whole model, or only its head on cached features
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout etc.: a function of (seed, epoch) alone
        batches = pipeline.train_batches(config.seed * 1000 + epoch)
        tick = time.perf_counter()
        step = TrainStep(trained, criterion, optimizer, scheduler, scaler, setup)
        train_loss, train_top1 = train_one_epoch(
            step, batches, progress=progress, label="epoch {}/{}".format(epoch + 1, config.epochs)
        )
        seconds = time.perf_counter() - tick
        val = evaluate_model(trained, pipeline.val_batches(), setup.device, len(split.classes), criterion)
        lrs = {g.get("name", "base"): g["lr"] for g in optimizer.param_groups}
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_top1": train_top1,
                "val_loss": val.loss,
                "val_top1": val.top1,
                "val_top5": val.top5,
                "lr_base": lrs.get("base", 0.0),
                "lr_head": lrs["head"],
                "epoch_time_s": seconds,
                "images_per_s": len(split.train) / seconds,
            }
        )
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "rng": rng_state(),
            "history": history,
            "best_top1": max(best_top1, val.top1),
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
        if val.top1 > best_top1:
            best_top1 = val.top1
            save_checkpoint(run_dir / "best.pt", payload)
        save_checkpoint(run_dir / "last.pt", payload)
        _write_metrics(run_dir / "metrics.csv", history)
    summary = _summary(config, run_dir, split, model, setup, history, time.perf_counter() - started)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, summary, history)


def restore_training_state(state: Dict[str, Any], model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> None:
    """Load a checkpoint's model, optimizer, scheduler, AMP scaler and RNG states for ``--resume``."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when AMP was off at save time (a run started on CPU, resumed on CUDA)
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


@dataclass
class TrainStep:
    """What one optimisation step needs: the module the batches feed, loss, optimizer, schedule, AMP."""

    module: Any
    criterion: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    setup: DeviceSetup


def train_one_epoch(step: TrainStep, batches: Any, *, progress: bool, label: str) -> tuple:
    """One pass over device-resident (inputs, labels) batches; returns (mean loss, top-1)."""
    step.module.train()
    # Summed on the device and read once per epoch: a .item() per step would stall the GPU every batch.
    # float64 sums of float32 losses times batch sizes: the same numbers as summing Python floats.
    total_loss = torch.zeros((), dtype=torch.float64, device=step.setup.device)
    correct = torch.zeros((), dtype=torch.int64, device=step.setup.device)
    seen = 0
    # disable=None: bars only on a terminal, not in logs
    for images, labels in tqdm(batches, desc=label, leave=False, disable=None if progress else True):
        with torch.autocast(step.setup.device.type, dtype=torch.float16, enabled=step.setup.use_amp):
            logits = step.module(images)
            loss = step.criterion(logits, labels)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()
        total_loss += loss.detach().double() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    return total_loss.item() / seen, correct.item() / seen


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
    best = max(history, key=lambda row: row["val_top1"])
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
        "epochs": config.epochs,
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
