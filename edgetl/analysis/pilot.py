"""``edgetl advise --pilot``: train the candidate strategies briefly and compare with the rule's choice.

Each candidate (feature extractor, partial, full: the plans of the quadrants for this dataset size) is
trained by ``edgetl.train.loop.finetune`` for a few epochs on a class-balanced subset of the data, side by
side under the same budget, in a temporary folder. A short budget favours strategies that converge
fast, so the comparison says where the measurement disagrees with the rule rather than overruling it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

from edgetl.analysis.pilot_config import PilotConfig
from edgetl.analysis.rule import Plan
from edgetl.core.tables import text_table
from edgetl.data.folders import DatasetSplit, Sample
from edgetl.data.sampling import sample_per_class
from edgetl.train.config import FinetuneConfig
from edgetl.train.loop import finetune

log = logging.getLogger(__name__)

PILOT_MIN_MARGIN = 0.02  # a candidate must beat the rule's plan by more than this val top-1 ...
PILOT_MARGIN_IMAGES = 2  # ... and by more than this many val images to count as a disagreement


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
    """Train each candidate plan for ``config.epochs`` epochs; val top-1, time, and the verdict versus the rule."""
    train = sample_per_class(split.train, config.train_per_class, config.seed)
    val = sample_per_class(split.val, config.val_per_class, config.seed)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-pilot-") as tmp:
        data = Path(tmp) / "data"
        _link_subset(train, split.classes, data / "train")
        _link_subset(val, split.classes, data / "val")
        for plan in candidates:
            log.info(
                "pilot: %s (%d trainable stages), %d epochs on %d train / %d val images",
                plan.strategy,
                plan.trainable_stages,
                config.epochs,
                len(train),
                len(val),
            )
            stages = plan.trainable_stages if plan.strategy == "partial" else FinetuneConfig.trainable_stages
            run_config = FinetuneConfig(
                data=str(data),
                arch=arch,
                strategy=plan.strategy,
                trainable_stages=stages,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=plan.lr,
                head_lr_mult=plan.head_lr_mult,
                label_smoothing=plan.label_smoothing,
                warmup_epochs=0,
                device=config.device,
                seed=config.seed,
                workers=config.workers,
                out=str(Path(tmp) / "runs" / "q{}".format(plan.quadrant)),
            )
            summary = finetune(run_config, progress=progress).summary
            rows.append(
                {
                    "quadrant": plan.quadrant,
                    "strategy": plan.strategy,
                    "trainable_stages": plan.trainable_stages,
                    "lr": plan.lr,
                    "head_lr_mult": plan.head_lr_mult,
                    "val_top1": summary["best_val_top1"],
                    "time_s": summary["run_time_s"],
                    "params_trainable": summary["params_trainable"],
                    "rule": plan.quadrant == rule_quadrant,
                }
            )
    return _verdict(rows, len(val), config, len(train))


def _verdict(rows: List[Dict[str, Any]], val_images: int, config: PilotConfig, train_images: int) -> Dict[str, Any]:
    margin = max(PILOT_MIN_MARGIN, PILOT_MARGIN_IMAGES / val_images)
    rule = next(row for row in rows if row["rule"])
    best = max(rows, key=lambda row: (row["val_top1"], -row["time_s"]))  # ties: the faster one
    for row in rows:
        row["beats_rule"] = row["val_top1"] - rule["val_top1"] > margin
    return {
        "rows": rows,
        "epochs": config.epochs,
        "train_images": train_images,
        "val_images": val_images,
        "margin": margin,
        "agrees": not any(row["beats_rule"] for row in rows),
        "best": best["strategy"],
    }


def format_pilot(pilot: Dict[str, Any]) -> str:
    """The pilot table and a one-line verdict."""
    rows = [
        [
            row["strategy"],
            row["trainable_stages"],
            "-" if row["strategy"] == "feature-extractor" else "{:g}".format(row["lr"]),
            "{:g}".format(row["lr"] * row["head_lr_mult"]),
            "{:.1%}".format(row["val_top1"]),
            "{:.0f}".format(row["time_s"]),
            "rule" if row["rule"] else ("beats rule" if row["beats_rule"] else ""),
        ]
        for row in pilot["rows"]
    ]
    lines = [
        "Pilot: {} epoch(s) each on {} train / {} val images (same budget, side by side)".format(
            pilot["epochs"], pilot["train_images"], pilot["val_images"]
        ),
        text_table(["strategy", "stages", "base lr", "head lr", "val top-1", "time s", ""], rows),
    ]
    rule = next(row for row in pilot["rows"] if row["rule"])
    if pilot["agrees"]:
        lines.append(
            "  -> the measurement agrees with the rule: nothing beats {} by more than {:.1%}".format(
                rule["strategy"], pilot["margin"]
            )
        )
    else:
        winner = next(row for row in pilot["rows"] if row["strategy"] == pilot["best"])
        lines.append(
            "  -> the measurement DISAGREES with the rule: {} reached {:.1%} vs {:.1%} for {} "
            "(margin {:.1%}); a short budget favours fast learners, so confirm with a full run".format(
                winner["strategy"], winner["val_top1"], rule["val_top1"], rule["strategy"], pilot["margin"]
            )
        )
    return "\n".join(lines)
