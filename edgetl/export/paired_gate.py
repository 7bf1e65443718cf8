"""The labelled accuracy gate for an INT8 model that is no longer the fp32 model quantized (its head
re-solved, say): judging its disagreement with fp32 would punish it for being right where fp32 is wrong.

On labelled images it never trained on, each image is one pair (fp32 right?, INT8 right?). With ``b`` images
fp32 right and INT8 wrong and ``c`` the other way round, the accuracy drop is d = p(fp32 right, INT8 wrong) -
p(fp32 wrong, INT8 right). The gate passes when the one-sided 95% upper bound of d is within ``max_points``.
The bound is Tango's score interval for the difference of paired proportions:

    T. Tango, "Equivalence test and confidence interval for the difference in proportions for the
    paired-sample design", Statistics in Medicine 17 (1998) 891-908; erratum 18 (1999) 3511.

For n pairs, the score statistic of d = delta is

    Z(delta) = (b - c - n delta) / sqrt(n (2 q + delta (1 - delta)))

where q is the maximum-likelihood estimate of p(fp32 wrong, INT8 right) under d = delta:

    q = (sqrt(B^2 - 4 A C) - B) / (2 A),  A = 2n,  B = -b - c + (2n - b + c) delta,  C = -c delta (1 - delta).

Z falls as delta rises; the one-sided upper bound is the delta where Z(delta) = -z(0.95) (found by bisection).
At delta = 0 Z is McNemar's statistic (b - c) / sqrt(b + c); with no discordant pair the bound is
z^2 / (n + z^2), so a 1-point bound needs >= 268 pairs. A bound within the limit passes, whatever n; a bound
above it is "unresolvable" when even zero discordance on n pairs could not have shown the limit, else "failed".
Standard library only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Dict, List, Optional

import numpy as np

from edgetl.export.gate import CONFIDENCE

CRITERION = "paired labelled accuracy drop (Tango score bound)"


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for d = ``delta`` from ``b`` and ``c`` discordant pairs among ``n``."""
    a_, b_ = 2.0 * n, -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    q = (math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
    numerator = b - c - n * delta
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0:
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def paired_upper_bound(b: int, c: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided ``confidence`` upper bound of d = p(b-type pair) - p(c-type pair) (Tango's score interval)."""
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need b, c >= 0 and b + c <= n >= 1, got b={b} c={c} n={n}")
    z = NormalDist().inv_cdf(confidence)
    low, high = (b - c) / n, 1.0  # Z(low) = 0 > -z
    if tango_z(b, c, n, high) >= -z:
        return 1.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if tango_z(b, c, n, middle) >= -z else (low, middle)
    return high


def pairs_needed(max_rate: float, confidence: float = CONFIDENCE) -> Optional[int]:
    """The fewest pairs whose bound with no discordant pair is within ``max_rate`` (None: no sample can)."""
    if max_rate <= 0:
        return None
    if max_rate >= 1:
        return 1
    z2 = NormalDist().inv_cdf(confidence) ** 2
    n = max(1, math.ceil(z2 * (1 - max_rate) / max_rate) - 1)  # the closed form z^2 / (n + z^2), then exact
    while paired_upper_bound(0, 0, n, confidence) > max_rate:
        n += 1
    return n


@dataclass
class PairedResult:
    """What the paired gate judged and why; ``to_dict`` is the report entry."""

    images: int
    fp32_right_int8_wrong: int
    fp32_wrong_int8_right: int
    upper_bound_points: float  # one-sided 95% bound of the accuracy drop, in points
    max_points: float
    verdict: str  # one of edgetl.export.gate.VERDICTS
    images_needed: Optional[int]  # the fewest pairs that could pass with no discordance (None: none can)
    fp32_top1: float
    reduced_top1: float
    drop_points: float
    simulation: str

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), confidence=CONFIDENCE, criterion=CRITERION)

    def failures(self, name: str = "INT8", option: str = "--max-int8-drop") -> List[str]:
        """One line per failure, with the numbers (empty: passed)."""
        if self.verdict == "unresolvable":
            need = f"needs >= {self.images_needed}" if self.images_needed else "no sample can show 0 points"
            return [
                f"{name} paired gate unresolvable: {self.images} held-out labelled images cannot show a "
                f"{CONFIDENCE:.0%} bound <= {self.max_points:g} points of accuracy drop even with no discordant "
                f"image; it {need}"
            ]
        if self.verdict == "failed":
            return [
                f"{name} accuracy drop on {self.images} held-out labelled images: fp32 right and {name} wrong on "
                f"{self.fp32_right_int8_wrong}, the reverse on {self.fp32_wrong_int8_right}: {CONFIDENCE:.0%} upper "
                f"bound {self.upper_bound_points:.2f} points > {option} {self.max_points:g} (top-1 "
                f"{self.reduced_top1:.2%} vs fp32 {self.fp32_top1:.2%})"
            ]
        return []


def judge_paired(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, max_points: float, simulation: str
) -> PairedResult:
    """Judge ``candidate`` outputs against the fp32 ``reference`` outputs on images labelled ``labels``."""
    labels = np.asarray(labels)
    fp32_right = np.asarray(reference).argmax(1) == labels
    int8_right = np.asarray(candidate).argmax(1) == labels
    n = len(labels)
    b, c = int((fp32_right & ~int8_right).sum()), int((~fp32_right & int8_right).sum())
    bound = paired_upper_bound(b, c, n) * 100.0
    needed = pairs_needed(max_points / 100.0)
    if bound <= max_points + 1e-9:
        verdict = "passed"
    else:
        verdict = "unresolvable" if needed is None or n < needed else "failed"
    fp32_top1, int8_top1 = float(fp32_right.mean()), float(int8_right.mean())
    return PairedResult(
        n, b, c, bound, max_points, verdict, needed, fp32_top1, int8_top1, (fp32_top1 - int8_top1) * 100.0, simulation
    )
