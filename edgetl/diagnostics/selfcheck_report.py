"""The GPU self-check's bookkeeping, torch-free: what a check returns (:class:`Outcome`, or :class:`Skip`
with the reason it cannot run here), running a list of checks so that any exception becomes a
``failed`` result instead of a crash, and the Markdown + JSON report, written atomically."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class CheckResult:
    name: str
    status: str  # passed | failed | skipped
    reason: str
    figures: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a check function returns: its measurements and the targets it missed (empty: passed)."""

    figures: Dict[str, Any]
    problems: List[str] = field(default_factory=list)

    def expect(self, ok: bool, target: str) -> None:
        if not ok:
            self.problems.append("target not met: " + target)


def run_checks(checks: Sequence[Tuple[str, Callable[[Any], Outcome]]], ctx: Any) -> List[CheckResult]:
    """Run each check; Skip -> skipped with its reason, any exception -> failed with its message."""
    results = []
    for name, check in checks:
        try:
            outcome = check(ctx)
        except Skip as skip:
            results.append(CheckResult(name, SKIPPED, str(skip)))
            continue
        except Exception as exc:  # a broken CUDA path is a finding, not a crash of the report
            results.append(CheckResult(name, FAILED, "error: {}: {}".format(type(exc).__name__, exc)))
            continue
        if outcome.problems:
            results.append(CheckResult(name, FAILED, "; ".join(outcome.problems), outcome.figures))
        else:
            results.append(CheckResult(name, PASSED, "all targets met", outcome.figures))
    return results


@dataclass
class Report:
    results: List[CheckResult]
    machine: Dict[str, Any]
    command: str
    markdown_path: Path
    json_path: Path
    demo_counts: Dict[str, int]

    @property
    def failed(self) -> bool:
        return any(r.status == FAILED for r in self.results)

    def counts(self) -> Dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in (PASSED, FAILED, SKIPPED)}

    def summary(self) -> str:
        lines = ["{:<8} {}: {}".format(r.status, r.name, r.reason) for r in self.results]
        return "\n".join(lines + ["{passed} passed, {failed} failed, {skipped} skipped".format(**self.counts())])


def _figures_text(figures: Dict[str, Any]) -> str:
    return json.dumps(figures, sort_keys=True, default=str)[:400] if figures else "-"


def render_markdown(report: Report) -> str:
    counts = report.counts()
    machine = report.machine
    gpu = machine.get("gpu") or "no CUDA device"
    lines = [
        "# GPU self-check",
        "",
        "Reproduce: `python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train]' && "
        ".venv/bin/{}`".format(report.command),
        "",
        "`{}` on {} ({} CPUs, Python {}, torch {}; GPU: {}), {}.".format(
            report.command,
            machine.get("platform"),
            machine.get("cpu_count"),
            machine.get("python"),
            machine.get("packages", {}).get("torch", "-"),
            gpu,
            time.strftime("%Y-%m-%d"),
        ),
        "",
        "{passed} passed, {failed} failed, {skipped} skipped. A skipped check was not run: its reason says "
        "why; no figure below was estimated.".format(**counts),
        "",
        markdown_table(
            ["check", "status", "reason", "figures"],
            [[r.name, r.status, r.reason, _figures_text(r.figures)] for r in report.results],
        ),
        "",
        "Each CUDA path is compared with its CPU twin on the built-in demo dataset ({train_per_class} train / "
        "{val_per_class} val images per class); figures and per-check details are in the JSON.".format(
            **report.demo_counts
        ),
    ]
    return "\n".join(lines) + "\n"


def write_report(report: Report) -> None:
    """JSON and Markdown, each written atomically."""
    data = {
        "command": report.command,
        "machine": report.machine,
        "counts": report.counts(),
        "results": [asdict(r) for r in report.results],
    }
    atomic_write_text(report.json_path, json.dumps(data, indent=2, default=str) + "\n")
    atomic_write_text(report.markdown_path, render_markdown(report))
