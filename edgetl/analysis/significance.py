"""Is one val top-1 really higher than another? The binomial standard error of a val accuracy and a
two-proportion z test, so that the pilot and the benchmarks never name a winner inside the noise.

Unpaired and pooled: the strategies are scored on the same val images, whose errors are positively
correlated, so this z is conservative (a paired McNemar test would call some of its ties). Pure: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

Z_CLEAR = 1.96  # |z| at least this: the difference is outside the noise (two-sided 5%)


def binomial_se(accuracy: float, images: int) -> float:
    """Standard error of an accuracy measured on ``images`` independent images."""
    if images < 1:
        raise ValueError("an accuracy needs at least one image")
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / images)


def two_proportion_z(first: float, second: float, images: int) -> float:
    """z of ``first - second``, both measured on ``images`` val images, with the pooled proportion's SE.

    Two perfect (or two zero) scores have no spread: z is 0, a tie."""
    pooled = (first + second) / 2.0
    se = math.sqrt(max(pooled * (1.0 - pooled), 0.0) * 2.0 / images)
    return 0.0 if se == 0.0 else (first - second) / se


@dataclass(frozen=True)
class Verdict:
    """The highest val top-1 and who is within the noise of it."""

    best: str
    tied: Tuple[str, ...]  # the others whose difference to ``best`` is inside the noise
    z: Dict[str, float]  # z of best minus each other one
    images: int

    @property
    def winner(self) -> str:
        """``best`` when it clearly beats every other one, else ``""`` (a tie within noise)."""
        return "" if self.tied else self.best

    def describe(self) -> str:
        if self.winner:
            return "{} wins (z >= {:g} against every other)".format(self.best, Z_CLEAR)
        return "tie within noise: {} (|z| < {:g} on {} val images)".format(
            ", ".join((self.best,) + self.tied), Z_CLEAR, self.images
        )


def compare(accuracies: Sequence[Tuple[str, float]], images: int, z_clear: float = Z_CLEAR) -> Verdict:
    """The verdict on named val top-1s measured on the same ``images`` val images (ties: the first named)."""
    if not accuracies:
        raise ValueError("nothing to compare")
    best_name, best = max(accuracies, key=lambda item: item[1])
    z = {name: two_proportion_z(best, value, images) for name, value in accuracies if name != best_name}
    tied = tuple(name for name, value in z.items() if value < z_clear)
    return Verdict(best_name, tied, z, images)
