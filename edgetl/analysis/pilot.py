"""``edgetl advise --pilot``: train the candidate strategies on a subset and say how sure the comparison is.

Each candidate (feature extractor, partial, full: the plans of the quadrants for this dataset size) is
trained by ``edgetl.train.loop.finetune`` on a class-balanced subset, side by side, each to its plateau as far
as the budget allows (``PilotConfig``: many cheap epochs for the feature extractor's head on cached features,
best epoch on the subset's val for partial and full). A pilot of a few epochs measures early-training noise,
so the budget is estimated and printed before anything trains, and the verdict weighs every difference
against the binomial noise of the val subset (``edgetl.analysis.significance``): a difference inside the noise
is a tie, never a winner.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

from edgetl.analysis.pilot_config import PilotConfig, fit_budget
from edgetl.analysis.rule import Plan
from edgetl.analysis.significance import Z_CLEAR, binomial_se, compare, two_proportion_z
from edgetl.core.tables import text_table
from edgetl.data.folders import DatasetSplit, Sample
from edgetl.data.sampling import sample_per_class
from edgetl.train.config import WARMUP_EPOCHS, FinetuneConfig
from edgetl.train.loop import finetune

log = logging.getLogger(__name__)


def _counts(samples: Sequence[Sample], classes: int) -> List[int]:
    counts = [0] * classes
    for sample in samples:
        counts[sample.label] += 1
    return counts


def _link_subset(samples: Sequence[Sample], classes: Sequence[str], folder: Path) -> None:
    """``folder/<class>/<n>_<name>`` links (copies where links are not allowed) to each sample."""
    for index, sample in enumerate(samples):
        target = folder / classes[sample.label] / "{:05d}_{}".format(index, sample.path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(str(Path(sample.path).resolve()), str(target))
        except OSError:
            shutil.copyfile(str(sample.path), str(target))


def run_pilot(
    split: DatasetSplit,
    arch: str,
    candidates: Sequence[Plan],
    rule_quadrant: int,
    config: PilotConfig,
    progress: bool = False,
) -> Dict[str, Any]:
    """Train each candidate plan on the subset within ``config.time_budget_s``; val top-1, time, the verdict."""
    classes = len(split.classes)
    config, estimate, note = fit_budget(
        config, _counts(split.train, classes), _counts(split.val, classes), [p.strategy for p in candidates]
    )
    train = sample_per_class(split.train, config.train_per_class, config.seed)
    val = sample_per_class(split.val, config.val_per_class, config.seed)
    log.info(
        "pilot: about %.0f s on 2 CPU cores (budget %.0f s) for %d strategies on %d train / %d val images%s",
        estimate,
        config.time_budget_s,
        len(candidates),
        len(train),
        len(val),
        "; " + note if note else "",
    )
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-pilot-") as tmp:
        data = Path(tmp) / "data"
        _link_subset(train, split.classes, data / "train")
        _link_subset(val, split.classes, data / "val")
        for plan in candidates:
            solved = plan.strategy == "feature-extractor"  # its linear head is solved to convergence
            epochs = None if solved else config.epochs
            log.info(
                "pilot: %s (%d trainable stages), %s",
                plan.strategy,
                plan.trainable_stages,
                "linear head solved" if solved else "{} epochs".format(epochs),
            )
            stages = plan.trainable_stages if plan.strategy == "partial" else FinetuneConfig.trainable_stages
            run_config = FinetuneConfig(
                data=str(data),
                arch=arch,
                strategy=plan.strategy,
                trainable_stages=stages,
                epochs=epochs,
                batch_size=config.batch_size,  # step sizes: finetune's auto, scaled by this batch
                warmup_epochs=None if epochs is None else min(WARMUP_EPOCHS, epochs - 1),
                device=config.device,
                seed=config.seed,
                workers=config.workers,
                out=str(Path(tmp) / "runs" / "q{}".format(plan.quadrant)),
            )
            summary = finetune(run_config, progress=progress).summary
            lr, head_lr, _ = run_config.step_sizes()
            rows.append(
                {
                    "quadrant": plan.quadrant,
                    "strategy": plan.strategy,
                    "trainable_stages": plan.trainable_stages,
                    "lr": lr,
                    "head_lr": head_lr,
                    "epochs": "solved" if epochs is None else epochs,
                    "best_epoch": summary["best_epoch"],
                    "val_top1": summary["best_val_top1"],
                    "time_s": summary["run_time_s"],
                    "params_trainable": summary["params_trainable"],
                    "rule": plan.quadrant == rule_quadrant,
                }
            )
    return dict(_verdict(rows, len(val)), train_images=len(train), estimate_s=estimate, budget_note=note)


def _verdict(rows: List[Dict[str, Any]], val_images: int) -> Dict[str, Any]:
    """Each row's standard error and z against the rule's plan; the best, and who ties with it within noise."""
    rule = next(row for row in rows if row["rule"])
    for row in rows:
        row["se"] = binomial_se(row["val_top1"], val_images)
        row["z_vs_rule"] = two_proportion_z(row["val_top1"], rule["val_top1"], val_images)
        row["beats_rule"] = row["z_vs_rule"] >= Z_CLEAR
    verdict = compare([(row["strategy"], row["val_top1"]) for row in rows], val_images)
    return {
        "rows": rows,
        "val_images": val_images,
        "best": verdict.best,
        "tied": list(verdict.tied),
        "winner": verdict.winner,  # "" for a tie within noise
        "agrees": not any(row["beats_rule"] for row in rows),
        "summary": verdict.describe(),
    }


def format_pilot(pilot: Dict[str, Any]) -> str:
    """The pilot table, how noisy its val top-1s are, and a verdict that never names a winner inside the noise."""
    rows = [
        [
            row["strategy"],
            row["trainable_stages"],
            "{} (best {})".format(row["epochs"], row["best_epoch"]),
            "-" if row["strategy"] == "feature-extractor" else "{:g}".format(row["lr"]),
            "-" if row["epochs"] == "solved" else "{:g}".format(row["head_lr"]),
            "{:.1%} +- {:.1%}".format(row["val_top1"], row["se"]),
            "{:.0f}".format(row["time_s"]),
            "rule" if row["rule"] else ("beats rule" if row["beats_rule"] else ""),
        ]
        for row in pilot["rows"]
    ]
    lines = [
        "Pilot: {} train / {} val images, estimated {:.0f} s{}".format(
            pilot["train_images"],
            pilot["val_images"],
            pilot["estimate_s"],
            " ({})".format(pilot["budget_note"]) if pilot["budget_note"] else "",
        ),
        text_table(["strategy", "stages", "epochs", "base lr", "head lr", "val top-1 +- SE", "time s", ""], rows),
        "  +- is the binomial standard error on {} val images; a difference counts when z >= {:g} "
        "(two-proportion test)".format(pilot["val_images"], Z_CLEAR),
    ]
    rule = next(row for row in pilot["rows"] if row["rule"])
    if not pilot["winner"]:
        lines.append(
            "  -> {}: the pilot cannot tell them apart; {} (the rule's choice){}".format(
                pilot["summary"],
                rule["strategy"],
                " is among them" if pilot["agrees"] else " is clearly behind",
            )
        )
    elif pilot["agrees"]:
        lines.append("  -> {}: the measurement agrees with the rule".format(pilot["summary"]))
    else:
        winner = next(row for row in pilot["rows"] if row["strategy"] == pilot["winner"])
        lines.append(
            "  -> {}: {:.1%} vs {:.1%} for the rule's {} (z = {:.1f}); the measurement DISAGREES with the rule, "
            "prefer {}".format(
                pilot["summary"],
                winner["val_top1"],
                rule["val_top1"],
                rule["strategy"],
                winner["z_vs_rule"],
                winner["strategy"],
            )
        )
    return "\n".join(lines)
