"""The textbook size x similarity rule, as data: what "small" and "similar" mean, the four
quadrants and the plan (strategy, trainable stages, epochs, augmentation) each one gets, and the
exact ``edgetl finetune`` command for a plan. Pure: ``advise`` measures, this module decides.

Every plan trains at ``edgetl finetune``'s own step sizes (``--lr``/``--head-lr-mult``/``--weight-decay``
auto, ``edgetl.train.config.OPTIMIZER_DEFAULTS``): those are the ones measured to keep the training loss
under chance on the real benchmarks; the plans' former fixed rates (head 0.05, full 0.01) diverged there."""

from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from edgetl.analysis.significance import Z_CLEAR, binomial_se
from edgetl.contracts.backbones import BackboneSpec

SMALL_PER_CLASS = 1000  # small: median training images per class below this
PROBE_SIMILAR = 0.80  # similar: chance-adjusted linear-probe accuracy at least this ...
KNN_SIMILAR = 0.60  # ... and chance-adjusted k-NN accuracy at least this
BORDERLINE_MARGIN = 0.10  # a probe score this close to PROBE_SIMILAR is called borderline
# Small + similar data: between PROBE_SIMILAR and this probe score the probe alone cannot tell whether trained
# stages would beat a frozen base; advise keeps the feature extractor (measured best or tied on the real
# datasets of benchmarks/results/realdata.md) and asks for --pilot.
PROBE_SUFFICES = 0.97
CONFIDENCE_IMAGENET_LIKE = 0.50  # mean top softmax of the ImageNet classifier: content looks like ImageNet
IMBALANCED_BELOW = 0.5  # class balance (min/max images per class) below this is flagged


@dataclass(frozen=True)
class SizeStats:
    """Training images per class (the split that finetune trains on)."""

    classes: Tuple[str, ...]
    counts: Tuple[int, ...]
    val_total: int

    @property
    def minimum(self) -> int:
        return min(self.counts)

    @property
    def median(self) -> float:
        return float(statistics.median(self.counts))

    @property
    def maximum(self) -> int:
        return max(self.counts)

    @property
    def balance(self) -> float:
        """Smallest over largest class: 1.0 is perfectly balanced."""
        return self.minimum / self.maximum

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class SimilarityEvidence:
    """Cross-validated accuracies (mean over classes) of frozen pretrained features, and ImageNet confidence."""

    probe_accuracy: float
    knn_accuracy: float
    chance: float  # 1 / number of classes
    confidence: float  # mean top-1 softmax of the pretrained ImageNet classifier
    images: int  # images the evidence was measured on
    folds: int
    imagenet_labels: Tuple[Tuple[str, int], ...] = ()  # most frequent ImageNet predictions (label, count)

    def score(self, accuracy: float) -> float:
        """Chance-adjusted accuracy: 0 at chance, 1 when perfect."""
        return (accuracy - self.chance) / (1.0 - self.chance)

    @property
    def probe_score(self) -> float:
        return self.score(self.probe_accuracy)

    @property
    def knn_score(self) -> float:
        return self.score(self.knn_accuracy)


@dataclass(frozen=True)
class Plan:
    """What to run: a strategy with its trainable stages, epochs and augmentation (step sizes: finetune's)."""

    quadrant: int
    strategy: str
    trainable_stages: int  # 0 for the feature extractor, all stages for full
    epochs: Optional[int]  # None: finetune's auto (the feature extractor's linear head solved to convergence)
    augment_harder: bool  # --augment strong
    why: str


QUADRANT_NAMES = {1: "large + different", 2: "large + similar", 3: "small + different", 4: "small + similar"}
# quadrant -> (strategy, fraction of the stages that train, epochs, augment harder, why). Quadrants 3 and 4 are
# measured by benchmarks/bench_realdata.py (advise's own command on each dataset); 1 and 2 need thousands of
# images per class: not measured here.
PLAN_TABLE: Dict[int, Tuple[str, float, Optional[int], bool, str]] = {
    1: (
        "full",
        1.0,
        10,
        False,
        "plenty of data and features that do not fit yet: retrain every layer, starting from the pretrained weights",
    ),
    2: (
        "partial",
        1 / 3,
        10,
        False,
        "the pretrained features fit; plenty of data lets the top third of the stages specialise",
    ),
    3: (
        "partial",
        1 / 2,
        20,
        True,
        "features must adapt but data is scarce: train the top half of the stages, keep the generic early "
        "filters frozen, and regularise hard",
    ),
    4: (
        "feature-extractor",
        0.0,
        None,
        False,
        "the frozen features already separate the classes; training more layers on little data would only overfit",
    ),
}


def is_small(stats: SizeStats) -> bool:
    return stats.median < SMALL_PER_CLASS


def is_similar(evidence: SimilarityEvidence) -> bool:
    return evidence.probe_score >= PROBE_SIMILAR and evidence.knn_score >= KNN_SIMILAR


def is_borderline(evidence: SimilarityEvidence) -> bool:
    return abs(evidence.probe_score - PROBE_SIMILAR) < BORDERLINE_MARGIN


def features_suffice(evidence: SimilarityEvidence) -> bool:
    """A linear head on the frozen features leaves little for trained stages to gain: a probe score of at least
    PROBE_SUFFICES, or a probe whose shortfall from 100% is inside the binomial noise of the images it was
    measured on (a couple of errors on a small sample are no evidence that trained stages would do better)."""
    shortfall = 1.0 - evidence.probe_accuracy
    within_noise = shortfall < Z_CLEAR * binomial_se(evidence.probe_accuracy, evidence.images)
    return is_similar(evidence) and (evidence.probe_score >= PROBE_SUFFICES or within_noise)


@dataclass(frozen=True)
class Decision:
    """The quadrant whose plan advise recommends, and whether the measurements alone cannot tell."""

    quadrant: int
    pilot_advised: bool
    why: str  # "" when the measurements decide


def decide(stats: SizeStats, evidence: SimilarityEvidence) -> Decision:
    """The size x similarity rule on measured evidence. Small + similar data whose features may not suffice keeps
    the feature extractor's plan, and the pilot is advised."""
    small, similar = is_small(stats), is_similar(evidence)
    if small and similar and not features_suffice(evidence):
        return Decision(
            quadrant_of(True, True),
            True,
            "the probe alone cannot tell: its score {:.2f} is between {:.2f} (similar) and {:.2f} (the frozen "
            "features suffice), where trained top stages may still win; --pilot measures both".format(
                evidence.probe_score, PROBE_SIMILAR, PROBE_SUFFICES
            ),
        )
    if is_borderline(evidence):
        return Decision(
            quadrant_of(small, similar),
            True,
            "borderline: the probe score {:.2f} is within {:.2f} of its threshold {:.2f}; --pilot measures the "
            "candidates".format(evidence.probe_score, BORDERLINE_MARGIN, PROBE_SIMILAR),
        )
    return Decision(quadrant_of(small, similar), False, "")


def quadrant_of(small: bool, similar: bool) -> int:
    """1 large+different, 2 large+similar, 3 small+different, 4 small+similar."""
    return (3 if small else 1) + (1 if similar else 0)


def plan_for(quadrant: int, spec: BackboneSpec) -> Plan:
    """The rule's plan for a quadrant on an architecture (stage counts depend on the architecture)."""
    strategy, fraction, epochs, augment, why = PLAN_TABLE[quadrant]
    stages = len(spec.stage_names)
    trainable = {"full": stages, "feature-extractor": 0}.get(strategy, max(1, int(stages * fraction + 0.5)))
    return Plan(quadrant, strategy, trainable, epochs, augment, why)


def candidate_plans(small: bool, spec: BackboneSpec) -> List[Plan]:
    """What ``--pilot`` compares: the feature extractor, the partial plan for this size, full fine-tuning."""
    return [plan_for(4, spec), plan_for(3 if small else 2, spec), plan_for(1, spec)]


def finetune_command(data: Optional[Path], arch: str, plan: Plan, val_split: Optional[float]) -> str:
    """The exact ``edgetl finetune`` command line for a plan."""
    words = ["edgetl", "finetune"] + ([str(data)] if data is not None else [])
    words += ["--arch", arch, "--strategy", plan.strategy]
    if plan.strategy == "partial":
        words += ["--trainable-stages", str(plan.trainable_stages)]
    if plan.epochs is not None:
        words += ["--epochs", str(plan.epochs)]
    if plan.augment_harder:
        words += ["--augment", "strong"]
    if val_split is not None:
        words += ["--val-split", "{:g}".format(val_split)]
    return " ".join(shlex.quote(w) for w in words)
