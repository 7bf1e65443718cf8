"""The budget of ``edgetl advise --pilot`` (``PilotConfig``). Torch-free and Python 3.8: the CLI imports
this module for its defaults at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgetl.errors import ConfigError


@dataclass(frozen=True)
class PilotConfig:
    """Budget of the pilot runs."""

    epochs: int = 2
    train_per_class: int = 30
    val_per_class: int = 20
    batch_size: int = 16
    workers: Optional[int] = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.train_per_class < 1 or self.val_per_class < 1 or self.batch_size < 1:
            raise ConfigError("--pilot-epochs, --pilot-images-per-class and the batch size must be >= 1")
