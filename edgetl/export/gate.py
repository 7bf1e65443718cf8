"""The one accuracy gate for reduced-precision models (INT8 now; the deploy targets later).

A labelled val top-1 drop on a few hundred images cannot resolve a 1-point gate (one image is
0.25-1.25 points), so the gate judges what needs no labels: how often the reduced model's top-1
differs from fp32's, on every val image plus the training images that calibration did not see.
It passes only when the one-sided 95% Clopper-Pearson upper bound of that disagreement rate is
within ``max_points``. A sample too small to show that bound even with zero disagreements is
"unresolvable" and fails: the gate never passes by default. Standard library only (no scipy).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)
CONFIDENCE = 0.95
VERDICTS = ("passed", "failed", "unresolvable")


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space so large n does not underflow."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(
        1.0,
        sum(
            math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
            for i in range(min(k, n) + 1)
        ),
    )


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``k`` times in ``n``: the p where
    P(X <= k) = 1 - confidence (the beta quantile, found by bisection on the binomial CDF)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError("need 0 <= k <= n and n >= 1, got k={} n={}".format(k, n))
    if k == n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(100):  # the CDF falls monotonically in p
        mid = (low + high) / 2
        low, high = (mid, high) if binomial_cdf(k, n, mid) > 1 - confidence else (low, mid)
    return high


def images_needed(max_rate: float, confidence: float = CONFIDENCE) -> Optional[int]:
    """The fewest images whose bound with zero disagreements is within ``max_rate`` (None: no sample can)."""
    if max_rate <= 0:
        return None
    if max_rate >= 1:
        return 1
    n = max(1, math.ceil(math.log(1 - confidence) / math.log1p(-max_rate)) - 1)
    while upper_bound(0, n, confidence) > max_rate:
        n += 1
    return n


@dataclass
class GateResult:
    """What the gate judged and why; ``to_dict`` is the report entry."""

    images: int
    val_images: int
    heldout_train_images: int
    disagreements: int
    upper_bound_points: float  # one-sided 95% bound of the disagreement rate, in points
    max_points: float
    verdict: str  # one of VERDICTS
    images_needed: Optional[int]  # the fewest images that could pass (None: no sample can)
    fp32_val_top1: float
    reduced_val_top1: float
    val_drop_points: float
    simulation: str  # how the reduced model was run
    inputs: Optional[Dict[str, int]] = None  # judged inputs by source (edgetl.export.gate_inputs), when known

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), confidence=CONFIDENCE)

    def failures(self, name: str = "INT8", option: str = "--max-int8-drop") -> List[str]:
        """One line per failure, with the numbers (empty: passed)."""
        sample = "{} images ({} val + {} held-out train)".format(
            self.images, self.val_images, self.heldout_train_images
        )
        if self.inputs:
            parts = " + ".join(f"{count} {name.replace('_', ' ')}" for name, count in self.inputs.items() if count)
            sample = f"{self.images} inputs ({parts})"
        if self.verdict == "unresolvable":
            need = (
                "needs >= {} images".format(self.images_needed)
                if self.images_needed
                else "no sample can show a bound of 0 points"
            )
            return [
                "{} gate unresolvable: {} cannot show a {:.0%} bound <= {:g} points of top-1 disagreement "
                "with fp32 even with none; it {}".format(name, sample, CONFIDENCE, self.max_points, need)
            ]
        if self.verdict == "failed":
            return [
                "{} top-1 disagrees with fp32 on {} of {}: {:.0%} upper bound {:.2f} points > {} {:g} "
                "(val top-1 {:.2%} vs fp32 {:.2%})".format(
                    name,
                    self.disagreements,
                    sample,
                    CONFIDENCE,
                    self.upper_bound_points,
                    option,
                    self.max_points,
                    self.reduced_val_top1,
                    self.fp32_val_top1,
                )
            ]
        return []


def judge(
    reference: np.ndarray,
    candidate: np.ndarray,
    val_labels: np.ndarray,
    max_points: float,
    simulation: str,
    inputs: Optional[Dict[str, int]] = None,
) -> GateResult:
    """Judge ``candidate`` outputs against fp32 ``reference`` outputs (rows: the val images, labelled
    by ``val_labels``, then the other judged inputs: ``inputs`` counts them by source when given)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    n, n_val = len(reference), len(val_labels)
    disagreements = int((reference.argmax(1) != candidate.argmax(1)).sum())
    bound = upper_bound(disagreements, n) * 100.0
    needed = images_needed(max_points / 100.0)
    if needed is None or n < needed:
        verdict = "unresolvable"
    else:
        verdict = "passed" if bound <= max_points + 1e-9 else "failed"
    fp32_top1 = float((reference[:n_val].argmax(1) == val_labels).mean())
    reduced_top1 = float((candidate[:n_val].argmax(1) == val_labels).mean())
    return GateResult(
        n,
        n_val,
        inputs.get("heldout_train", 0) if inputs else n - n_val,
        disagreements,
        bound,
        max_points,
        verdict,
        needed,
        fp32_top1,
        reduced_top1,
        (fp32_top1 - reduced_top1) * 100.0,
        simulation,
        inputs,
    )


def sample_warnings(calibrated: int, requested: int, judged: int, max_points: float) -> List[str]:
    """What the user should know before INT8 calibration runs, logged and returned for the report: fewer
    calibration images than ``--calib-size`` asked for, and a gate sample of ``judged`` images too small to
    resolve ``max_points`` (the gate will then say "unresolvable")."""
    warnings = []
    if calibrated < requested:
        warnings.append(
            "INT8 calibration uses {} of the {} requested images (--calib-size): all there are".format(
                calibrated, requested
            )
        )
    needed = images_needed(max_points / 100.0)
    if needed is None or judged < needed:
        warnings.append(
            "the INT8 gate judges only {} images, and needs {} to show a bound of {:g} points "
            "(--max-int8-drop); add val images, --gate-images or --gate-data".format(
                judged, ">= {}".format(needed) if needed else "more than any sample", max_points
            )
        )
    for warning in warnings:
        log.warning(warning)
    return warnings
