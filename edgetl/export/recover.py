"""The INT8 recovery ladder: when plain post-training quantization misses the gate, try the steps of
``--int8-recover`` (``edgetl.export.recover_options``) cheapest first, stopping at the first that passes.

Each step is judged by the criterion that fits what it changed. A step that keeps the fp32 model's weights
(``fallback``) is judged by disagreement with fp32 (``edgetl.export.gate``). A step that derives new weights
(``head``) can be right where fp32 is wrong, so it is judged by the paired labelled accuracy drop
(``edgetl.export.paired_gate``) on a labelled hold-out that was fixed before the ladder started and that no
step fits on; its disagreement with fp32 is reported beside it.

Budget (``--int8-recover-budget``, default ``DEFAULT_RECOVER_BUDGET_S``): a step starts only while the budget
lasts, and the fallback's search stops between attempts once it is spent; a running quantization or fit is
not interrupted. When the budget runs out, or every step was tried, without a pass, the best attempt (the
lowest upper bound) is reported and the INT8 artifact fails its gate: export exits 3. Every attempt is
logged as one progress line and recorded in the report; none of it goes into the saved config.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgetl.export.recover_options import SKIPPED

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    """One step tried (or skipped): its verdict, the criterion that gave it, and what it cost."""

    step: str
    verdict: str  # passed, failed, unresolvable, not applicable: <why>, or SKIPPED
    criterion: str = ""  # "disagreement with fp32" or "paired labelled accuracy drop"
    int8_val_top1: Optional[float] = None
    upper_bound_points: Optional[float] = None
    seconds: float = 0.0
    details: Dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The progress line of this attempt."""
        if self.upper_bound_points is None:
            return f"INT8 recovery: {self.step}: {self.verdict}"
        top1 = "" if self.int8_val_top1 is None else f"; INT8 val top-1 {self.int8_val_top1:.2%}"
        return (
            f"INT8 recovery: {self.step}: {self.verdict} ({self.criterion}: 95% bound "
            f"{self.upper_bound_points:.2f} points{top1}) in {self.seconds:.1f} s"
        )


# a step: (deadline on time.monotonic()) -> (its attempt, the passing model's file or None)
Step = Callable[[float], Tuple[Attempt, Optional[Path]]]


@dataclass
class LadderResult:
    steps: Tuple[str, ...]
    budget_s: float
    attempts: List[Attempt]
    passed: Optional[Attempt]
    passing_file: Optional[Path]
    seconds: float

    def best(self) -> Optional[Attempt]:
        """The passing attempt, else the one with the lowest upper bound (None: no step judged a model)."""
        if self.passed is not None:
            return self.passed
        judged = [a for a in self.attempts if a.upper_bound_points is not None]
        return min(judged, key=lambda a: a.upper_bound_points) if judged else None

    def to_dict(self) -> Dict[str, Any]:
        best = self.best()
        return {
            "status": "passed" if self.passed else "failed",
            "steps": list(self.steps),
            "passed_step": self.passed.step if self.passed else None,
            "best_step": best.step if best else None,
            "budget_s": self.budget_s,
            "budget_spent": any(a.verdict == SKIPPED for a in self.attempts),
            "seconds": self.seconds,
            "attempts": [asdict(a) for a in self.attempts],
            "rule": "steps tried cheapest first, stopping at the first that passes; a step starts only while the "
            "budget lasts; without a pass the best attempt is reported and the export exits 3",
        }


def run_ladder(
    steps: Sequence[str],
    available: Dict[str, Step],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> LadderResult:
    """Try ``steps`` in order (each found in ``available``) until one passes or the budget is spent."""
    started = clock()
    deadline = started + budget_s if math.isfinite(budget_s) else math.inf
    attempts: List[Attempt] = []
    passed: Optional[Attempt] = None
    passing: Optional[Path] = None
    for name in steps:
        if passed is not None:
            break
        if clock() >= deadline:
            attempt, file = Attempt(name, SKIPPED), None
        else:
            began = clock()
            attempt, file = available[name](deadline)
            attempt.seconds = clock() - began
        attempts.append(attempt)
        log.info(attempt.line())
        if attempt.verdict == "passed":
            passed, passing = attempt, file
    result = LadderResult(tuple(steps), budget_s, attempts, passed, passing, clock() - started)
    if passed is None and attempts:
        best = result.best()
        log.info("INT8 recovery: no step passed; best: %s", best.line() if best else "none judged a model")
    return result


def recovery_lines(section: Dict[str, Any]) -> List[str]:
    """The report's lines on the ladder (nothing when it did not run)."""
    recovery = section.get("recovery") or {}
    if "attempts" not in recovery:
        return []
    lines = [Attempt(**attempt).line() for attempt in recovery["attempts"]]
    if recovery["status"] == "passed":
        lines.append(f"INT8 recovered by step {recovery['passed_step']} in {recovery['seconds']:.1f} s")
    else:
        spent = " (budget spent)" if recovery["budget_spent"] else ""
        lines.append(f"INT8 recovery failed{spent}; best step: {recovery['best_step']}")
    return lines
