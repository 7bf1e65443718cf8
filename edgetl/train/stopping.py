"""When a run is best, when it stops, and when it is diverging, decided from its per-epoch history alone, so a
resumed run decides as the uninterrupted one did.

- The best epoch: highest val top-1, ties broken by the lower val loss (then the earlier epoch).
- ``--patience N``: stop once N epochs have passed without a new best epoch.
- The chance guard: a train loss above ``ln(classes)`` (what a uniform guess scores, with or without label
  smoothing) after the warm-up means the steps are too large; it warns once per run.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

SELECTION_NOTE = (
    "best.pt (under --eval-geometry), --patience, the head's L2 strength (on folds of the training split) and "
    "edgetl advise are chosen on the validation split, so val top-1 is an optimistic estimate; --test-split "
    "holds out images that only the final report touches"
)


def rank_key(row: Dict[str, float]) -> tuple:
    """Sort key of an epoch: higher val top-1, then lower val loss, then earlier."""
    loss = row["val_loss"] if row["val_loss"] == row["val_loss"] else math.inf  # NaN sorts last
    return (row["val_top1"], -loss, -row["epoch"])


def best_row(history: Sequence[Dict[str, float]]) -> Dict[str, float]:
    return max(history, key=rank_key)


def is_new_best(history: Sequence[Dict[str, float]]) -> bool:
    """Whether the last epoch of ``history`` is its best one (it then becomes best.pt)."""
    return best_row(history) is history[-1]


def early_stop(history: Sequence[Dict[str, float]], patience: Optional[int]) -> Optional[str]:
    """Why training stops after the last epoch of ``history`` under ``--patience``, or None to go on."""
    if patience is None or not history:
        return None
    best = int(best_row(history)["epoch"])
    waited = int(history[-1]["epoch"]) - best
    if waited < patience:
        return None
    return "early stop after epoch {}: val top-1 did not improve for {} epochs (--patience {}); best epoch {}".format(
        int(history[-1]["epoch"]), waited, patience, best
    )


def chance_loss(classes: int) -> float:
    """Cross-entropy of a uniform guess over ``classes``."""
    return math.log(classes)


class ChanceGuard:
    """Warns once when an epoch after the first and after the warm-up ends with its train loss above chance (the
    first epoch's mean includes the random head's first batches)."""

    def __init__(self, classes: int, warmup_epochs: int, advice: str) -> None:
        self.chance, self.warmup_epochs, self.advice = chance_loss(classes), warmup_epochs, advice
        self.warned = False

    def check(self, history: List[Dict[str, float]]) -> Optional[str]:
        """The warning for the last epoch of ``history`` (logged), or None."""
        row = history[-1]
        if self.warned or row["epoch"] <= max(1, self.warmup_epochs) or row["train_loss"] <= self.chance:
            return None  # (a NaN loss is not <= chance: it warns too)
        self.warned = True
        message = (
            "train loss {:.3f} after epoch {} is above chance (ln {} = {:.3f}) although the warm-up is over: the "
            "steps are too large and training is diverging; {}".format(
                row["train_loss"], int(row["epoch"]), round(math.exp(self.chance)), self.chance, self.advice
            )
        )
        log.warning(message)
        return message


def step_advice(optimizer: str, lr: float, head_lr: float, warmup_epochs: int) -> str:
    """What to change when the chance guard fires."""
    return "lower --lr ({:g}) or --head-lr-mult (head lr {:g}){}, or raise --warmup-epochs ({})".format(
        lr, head_lr, ", or use --optimizer adamw" if optimizer == "sgd" else "", warmup_epochs
    )
