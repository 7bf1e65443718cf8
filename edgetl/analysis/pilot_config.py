"""The budget of ``edgetl advise --pilot`` (``PilotConfig``) and its time estimate. Torch-free and Python 3.8:
the CLI imports this module for its defaults at import time.

The pilot must measure each strategy near its plateau, not its first epochs: the feature extractor's linear
head is solved to convergence on cached features (``finetune --epochs auto``); partial and full get ``epochs``
epochs and keep their best epoch on the subset's val (early stopping after the fact). All of it
must fit ``time_budget_s``: the estimate is printed before anything trains, a subset too large for the budget
is shrunk (fewer training images per class), and one that cannot fit is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

from edgetl.errors import ConfigError

# Images per second on 2 CPU cores for MobileNetV2 at 224 px, from benchmarks/results/variants.json (frozen
# forward, partial and full training steps) and advise_speed.md; other backbones, busy machines and GPUs differ.
EVAL_IMAGES_PER_S = 40.0  # decode + forward (val images, and the feature cache's one pass)
TRAIN_IMAGES_PER_S: Dict[str, float] = {"partial": 25.0, "full": 15.0}
RUN_OVERHEAD_S = 5.0  # model build, first batch, checkpoints
MIN_TRAIN_PER_CLASS = 10  # below this a pilot measures little: refuse instead of shrinking further


@dataclass(frozen=True)
class PilotConfig:
    """Budget of the pilot runs."""

    epochs: int = 6  # partial and full; the best epoch on the subset's val counts
    train_per_class: int = 30
    val_per_class: int = 20
    batch_size: int = 16
    time_budget_s: float = 300.0  # the whole pilot, estimated before it starts
    workers: Optional[int] = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.epochs, self.train_per_class, self.val_per_class, self.batch_size) < 1:
            raise ConfigError("--pilot-epochs, --pilot-images-per-class and the batch size must be >= 1")
        if self.time_budget_s <= 0:
            raise ConfigError("--pilot-budget must be > 0 seconds")


def estimate_seconds(config: PilotConfig, train_images: int, val_images: int, strategies: Sequence[str]) -> float:
    """Seconds the pilot's runs take on 2 CPU cores (see ``TRAIN_IMAGES_PER_S``)."""
    total = 0.0
    for strategy in strategies:
        if strategy == "feature-extractor":  # one pass builds the feature cache; the head's solve costs seconds
            total += (train_images + val_images) / EVAL_IMAGES_PER_S
        else:
            epoch = train_images / TRAIN_IMAGES_PER_S[strategy] + val_images / EVAL_IMAGES_PER_S
            total += config.epochs * epoch
        total += RUN_OVERHEAD_S
    return total


def fit_budget(
    config: PilotConfig, train_counts: Sequence[int], val_counts: Sequence[int], strategies: Sequence[str]
) -> Tuple[PilotConfig, float, str]:
    """The config that fits ``time_budget_s`` (fewer training images per class if needed), its estimate, and a
    note when it was shrunk. Raises ConfigError when even ``MIN_TRAIN_PER_CLASS`` does not fit."""

    def estimate(per_class: int) -> float:
        train = sum(min(n, per_class) for n in train_counts)
        val = sum(min(n, config.val_per_class) for n in val_counts)
        return estimate_seconds(config, train, val, strategies)

    per_class = config.train_per_class
    while estimate(per_class) > config.time_budget_s and per_class > MIN_TRAIN_PER_CLASS:
        per_class = max(MIN_TRAIN_PER_CLASS, per_class * 3 // 4)
    seconds = estimate(per_class)
    if seconds > config.time_budget_s:
        raise ConfigError(
            "the pilot would take about {:.0f} s, over its {:.0f} s budget even with {} training images per class: "
            "raise --pilot-budget or lower --pilot-epochs".format(seconds, config.time_budget_s, per_class)
        )
    note = ""
    if per_class < config.train_per_class:
        note = "shrunk to {} training images per class (from {}) to fit the {:.0f} s budget".format(
            per_class, config.train_per_class, config.time_budget_s
        )
    return replace(config, train_per_class=per_class), seconds, note
