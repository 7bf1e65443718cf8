"""One optimisation epoch and what it needs: the optimizer, the warmup + cosine schedule, the step loop over
device-resident batches (each rank's share of the loss in a distributed run), and restoring that state
for ``--resume``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.core.progress import progress as reported
from edgetl.train.checkpoint import set_rng_state
from edgetl.train.config import FinetuneConfig
from edgetl.train.distributed import ShardedLoss
from edgetl.train.model import parameter_groups
from edgetl.train.objective import hard_labels

torch = require("torch")


def cosine_with_warmup(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    """Linear warmup then cosine decay to 0, stepped per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(config: FinetuneConfig, groups: List[Dict[str, Any]]) -> Any:
    """``config.optimizer`` over ``groups`` (each with its own lr), weight decay from ``config.step_sizes()``."""
    lr, _, decay = config.step_sizes()
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=decay)


def optimizer_for(config: FinetuneConfig, model: Any) -> Any:
    """The run's optimizer over ``model``'s trainable base (at lr) and head (at the head lr)."""
    lr, head_lr, _ = config.step_sizes()
    return make_optimizer(config, parameter_groups(model, lr, head_lr / lr))


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
    """What one optimisation step needs: the module the batches feed, loss, optimizer, schedule, AMP; in a
    distributed run, ``shares`` weighs each rank's part of the global batch and sums the epoch's totals."""

    module: Any
    criterion: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    setup: DeviceSetup
    shares: Optional[ShardedLoss] = None


def train_one_epoch(step: TrainStep, batches: Any, *, progress: bool, label: str) -> tuple:
    """One pass over device-resident (inputs, labels) batches; returns (mean loss, top-1) (over all ranks)."""
    step.module.train()
    # Summed on the device and read once per epoch: a .item() per step would stall the GPU every batch.
    # float64 sums of float32 losses times batch sizes: the same numbers as summing Python floats.
    total_loss = torch.zeros((), dtype=torch.float64, device=step.setup.device)
    correct = torch.zeros((), dtype=torch.int64, device=step.setup.device)
    seen = 0
    # a bar on a terminal; in a log, a line a minute during a long epoch
    for index, (images, labels) in enumerate(reported(batches, label, enabled=progress)):
        with torch.autocast(step.setup.device.type, dtype=torch.float16, enabled=step.setup.use_amp):
            logits = step.module(images)
            if step.shares is None:
                loss = step.criterion(logits, labels)
            else:
                loss, loss_sum, right, count = step.shares(index, logits, labels)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()
        if step.shares is None:
            loss_sum, right, count = (
                loss.detach().double() * len(labels),
                (logits.argmax(1) == hard_labels(labels)).sum(),
                len(labels),
            )
        total_loss += loss_sum
        correct += right
        seen += count
    if step.shares is not None:
        return step.shares.totals(total_loss, correct, seen)
    return total_loss.item() / seen, correct.item() / seen
