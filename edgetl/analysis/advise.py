"""edgetl advise: pick a transfer strategy from measured dataset size x similarity to the pretraining data.

The textbook 2x2 rule (size: small = median under ~1000 training images per class; similarity: do the
pretrained features already fit the task?) gives four quadrants:

    1 large + different -> full fine-tune        2 large + similar -> partial, the top stages
    3 small + different -> partial, more stages  4 small + similar -> feature extractor (frozen base)

"Similar" is measured, not guessed: cross-validated linear-probe and k-NN accuracy of the frozen
pretrained backbone's pooled features on the training split, plus the ImageNet classifier's confidence.
"""

from __future__ import annotations

import logging
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgetl.analysis.embeddings import compute_features, imagenet_probabilities, pretrained_model
from edgetl.analysis.pilot import PilotConfig, format_pilot, run_pilot
from edgetl.analysis.rule import (
    BORDERLINE_MARGIN,
    CONFIDENCE_IMAGENET_LIKE,
    IMBALANCED_BELOW,
    KNN_SIMILAR,
    PROBE_SIMILAR,
    PROBE_SUFFICES,
    QUADRANT_NAMES,
    SMALL_PER_CLASS,
    SimilarityEvidence,
    SizeStats,
    candidate_plans,
    decide,
    features_suffice,
    finetune_command,
    is_borderline,
    is_similar,
    is_small,
    plan_for,
)
from edgetl.contracts.backbones import get_backbone
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.data.sampling import sample_per_class
from edgetl.errors import DataError
from edgetl.train.config import FinetuneConfig

log = logging.getLogger(__name__)

KNN_K = 5
CV_FOLDS = 5
RIDGE_PENALTY = 0.1  # ridge penalty per feature dimension (features are standardised)


def size_stats(split: DatasetSplit) -> SizeStats:
    counts = [0] * len(split.classes)
    for sample in split.train:
        counts[sample.label] += 1
    return SizeStats(tuple(split.classes), tuple(counts), len(split.val))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each sample: every class is dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % folds
    return fold


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int) -> np.ndarray:
    """Predicted classes of a linear probe: ridge least squares on standardised features, solved in closed form."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = ((train_x - mean) / std).astype(np.float64)
    b = ((test_x - mean) / std).astype(np.float64)
    targets = -np.ones((len(a), classes))
    targets[np.arange(len(a)), train_y] = 1.0
    offset = targets.mean(0)
    weights = ridge_weights(a, targets - offset, RIDGE_PENALTY * a.shape[1])
    return np.argmax(b @ weights + offset, axis=1)


def ridge_weights(x: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    """argmin_W |x W - targets|^2 + penalty |W|^2, via the smaller of the n x n and d x d systems."""
    if len(x) <= x.shape[1]:  # fewer samples than dimensions: the dual system
        return x.T @ np.linalg.solve(x @ x.T + penalty * np.eye(len(x)), targets)
    return np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]), x.T @ targets)


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int) -> np.ndarray:
    """Predicted classes by the k nearest training images (cosine similarity), votes weighted by similarity."""

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(test_x) @ unit(train_x).T
    k = min(KNN_K, len(train_x))
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(test_x), classes))
    rows = np.arange(len(test_x))
    for j in range(k):
        np.add.at(votes, (rows, train_y[nearest[:, j]]), similarity[rows, nearest[:, j]])
    return np.argmax(votes, axis=1)


def cross_validated_accuracy(
    features: np.ndarray, labels: np.ndarray, classes: int, classify: Any, folds: int, seed: int
) -> float:
    """Mean over classes of the accuracy of ``classify`` with every image held out once."""
    fold = stratified_folds(labels, folds, seed)
    predicted = np.empty_like(labels)
    for index in range(folds):
        held = fold == index
        predicted[held] = classify(features[~held], labels[~held], features[held], classes)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in range(classes)]))


def similarity_evidence(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    probabilities: np.ndarray,
    categories: Sequence[str],
    seed: int = 0,
) -> SimilarityEvidence:
    """Probe and k-NN accuracy (stratified cross-validation) and the ImageNet classifier's mean confidence."""
    smallest = int(np.bincount(labels, minlength=classes).min())
    if smallest < 2:
        raise DataError("advise needs at least 2 training images per class to cross-validate")
    folds = min(CV_FOLDS, smallest)
    probe = cross_validated_accuracy(features, labels, classes, ridge_probe, folds, seed)
    knn = cross_validated_accuracy(features, labels, classes, knn_classify, folds, seed)
    top = np.bincount(probabilities.argmax(1), minlength=len(categories))
    common = tuple((categories[i], int(top[i])) for i in np.argsort(-top, kind="stable")[:3] if top[i] > 0)
    return SimilarityEvidence(probe, knn, 1.0 / classes, float(probabilities.max(1).mean()), len(labels), folds, common)


def advise(
    data: Optional[Path] = None,
    arch: str = "mobilenet_v2",
    val_split: Optional[float] = None,
    seed: int = 0,
    max_per_class: int = 100,
    device: str = "auto",
    workers: Optional[int] = None,
    cache_dir: Optional[Path] = None,
    pilot: Optional[PilotConfig] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Measure size and similarity of DATA (default: the demo dataset) and return the advice as a dict;
    with ``pilot``, also train the candidate strategies briefly and compare (``report["pilot"]``)."""
    started = time.perf_counter()
    if data is None:
        root = ensure_demo_dataset()
    else:
        root = Path(data)
    spec = get_backbone(arch)
    split = load_dataset(root, val_split, seed)
    stats = size_stats(split)
    chosen = sample_per_class(split.train, max_per_class, seed)
    model = pretrained_model(arch)
    features = compute_features(
        model, [s.path for s in chosen], workers=workers, device=device, cache_dir=cache_dir, progress=progress
    )
    labels = np.array([s.label for s in chosen], dtype=np.int64)
    evidence = similarity_evidence(
        features, labels, len(split.classes), imagenet_probabilities(model, features), model.imagenet_categories, seed
    )
    decision = decide(stats, evidence)
    plan = plan_for(decision.quadrant, spec)
    report = {
        "data": str(root),
        "arch": arch,
        "layout": split.layout,
        "skipped_files": len(split.skipped),
        "size": dict(
            classes=list(stats.classes),
            counts=list(stats.counts),
            min=stats.minimum,
            median=stats.median,
            max=stats.maximum,
            balance=stats.balance,
            train_total=stats.total,
            val_total=stats.val_total,
            small=is_small(stats),
        ),
        "similarity": dict(
            asdict(evidence),
            imagenet_labels=[list(p) for p in evidence.imagenet_labels],
            probe_score=evidence.probe_score,
            knn_score=evidence.knn_score,
            similar=is_similar(evidence),
            borderline=is_borderline(evidence),
            suffices=features_suffice(evidence),
        ),
        "pilot_advised": decision.pilot_advised,
        "undecided_why": decision.why,
        "quadrant": plan.quadrant,
        "quadrant_name": QUADRANT_NAMES[plan.quadrant],
        "plan": asdict(plan),
        "command": finetune_command(None if data is None else root, arch, plan, val_split),
        "thresholds": dict(
            small_per_class=SMALL_PER_CLASS,
            probe_similar=PROBE_SIMILAR,
            knn_similar=KNN_SIMILAR,
            borderline_margin=BORDERLINE_MARGIN,
            probe_suffices=PROBE_SUFFICES,
            confidence_imagenet_like=CONFIDENCE_IMAGENET_LIKE,
            imbalanced_below=IMBALANCED_BELOW,
            knn_k=KNN_K,
            cv_folds=CV_FOLDS,
        ),
    }
    if pilot is not None:
        report["pilot"] = run_pilot(split, arch, candidate_plans(is_small(stats), spec), plan.quadrant, pilot, progress)
    report["time_s"] = time.perf_counter() - started
    return report


WIDTH = 100  # wrap prose in the text report at this many columns


def _wrap(text: str, indent: str = "  ", hang: str = "    ") -> List[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=hang) or [""]


def _measure(name: str, value: str, verdict: str, meaning: str) -> List[str]:
    """One measurement: its value and threshold verdict, then what it means (indented, wrapped)."""
    return ["  {:<13} {:>6}  {}".format(name, value, verdict)] + _wrap(meaning, " " * 16, " " * 16)


def _percent(value: float) -> str:
    return "{:.1%}".format(value)


def _compare(value: float, threshold: float) -> str:
    return "{:.2f} {} {:.2f}".format(value, ">=" if value >= threshold else "<", threshold)


def format_advice(report: Dict[str, Any]) -> str:
    """The advice as text: the measurements with what they mean and their thresholds, then the plan."""
    size, sim, plan = report["size"], report["similarity"], report["plan"]
    lines = ["edgetl advise: {} ({}, {} classes)".format(report["data"], report["arch"], len(size["classes"])), ""]
    lines += ["Size (training split)"] + _wrap(
        "images per class: min {}, median {:g}, max {}; balance (min/max) {:.2f}; total {} train + {} val".format(
            size["min"], size["median"], size["max"], size["balance"], size["train_total"], size["val_total"]
        )
    )
    lines += _wrap(
        "-> {}: median {:g} {} {} images per class".format(
            "small" if size["small"] else "large", size["median"], "<" if size["small"] else ">=", SMALL_PER_CLASS
        )
    )
    if size["balance"] < IMBALANCED_BELOW:
        lines += _wrap(
            "! imbalanced (balance < {:g}): accuracy is dominated by the big classes; collect more images "
            "of the small ones and check per-class accuracy with edgetl evaluate".format(IMBALANCED_BELOW)
        )
    lines += [""] + _wrap(
        "Similarity to the pretraining data: the frozen pretrained {} on {} training images, "
        "{}-fold cross-validation. Accuracies are means over classes; chance is {}; score = "
        "(accuracy - chance) / (1 - chance).".format(
            report["arch"], sim["images"], sim["folds"], _percent(sim["chance"])
        ),
        "",
        "",
    )
    probe_ok, knn_ok = sim["probe_score"] >= PROBE_SIMILAR, sim["knn_score"] >= KNN_SIMILAR
    lines += _measure(
        "linear probe",
        _percent(sim["probe_accuracy"]),
        "score " + _compare(sim["probe_score"], PROBE_SIMILAR),
        "a linear (ridge) classifier on the frozen features {} your classes".format(
            "separates" if probe_ok else "does NOT separate"
        ),
    )
    lines += _measure(
        "k-NN (k={})".format(KNN_K),
        _percent(sim["knn_accuracy"]),
        "score " + _compare(sim["knn_score"], KNN_SIMILAR),
        "images of a class are each other's nearest neighbours in feature space"
        if knn_ok
        else "nearest neighbours in feature space are often of ANOTHER class",
    )
    imagenet_like = sim["confidence"] >= CONFIDENCE_IMAGENET_LIKE
    labels = ", ".join("{} ({})".format(label, count) for label, count in sim["imagenet_labels"])
    lines += _measure(
        "confidence",
        "{:.2f}".format(sim["confidence"]),
        "{} {:.2f}".format(">=" if imagenet_like else "<", CONFIDENCE_IMAGENET_LIKE),
        "mean top-1 softmax of the pretrained ImageNet classifier: the content {} like ImageNet's "
        "(most often predicted: {}); reported, not part of the verdict".format(
            "looks" if imagenet_like else "does not look", labels
        ),
    )
    lines += _wrap(
        "-> {} (similar = probe score >= {:.2f} and k-NN score >= {:.2f})".format(
            "similar" if sim["similar"] else "different", PROBE_SIMILAR, KNN_SIMILAR
        )
    )
    if report["pilot_advised"]:
        lines += _wrap("! " + report["undecided_why"], "     ", "     ")
    if sim["similar"] and not imagenet_like and not report["pilot_advised"]:
        lines += _wrap("not ImageNet-like content, yet the pretrained features already fit this task", "     ", "     ")
    undecided = size["small"] and sim["similar"] and not sim["suffices"]
    lines += [
        "",
        "Quadrant {}: {}".format(report["quadrant"], report["quadrant_name"])
        + (
            " (the probe cannot tell whether a frozen base suffices: the cheapest plan, to check with --pilot)"
            if undecided
            else ""
        ),
    ]
    lines += _wrap(
        "Recommendation: {}{}: {}".format(
            plan["strategy"],
            " with the top {} stages trainable".format(plan["trainable_stages"])
            if plan["strategy"] == "partial"
            else "",
            plan["why"],
        ),
        "",
        "  ",
    )
    if plan["strategy"] == "feature-extractor":
        lines += _wrap(
            "training: the new linear head is solved to convergence on cached features (the pretrained base is frozen)"
        )
    else:
        base_lr, head_lr, _ = FinetuneConfig().step_sizes()
        lines += _wrap(
            "training: {} epochs at finetune's step sizes (batch {}: trainable pretrained layers {:g}, new head "
            "{:g})".format(plan["epochs"], FinetuneConfig.batch_size, base_lr, head_lr)
        )
    lines += _wrap(
        "augment harder: "
        + (
            "yes: little data and features that must change overfit fast; the command adds --augment strong "
            "(TrivialAugmentWide + RandomErasing; more images if you can); "
            "finetune's label smoothing {:g} also regularises".format(FinetuneConfig.label_smoothing)
            if plan["augment_harder"]
            else "no: finetune's RandomResizedCrop + flip is enough here"
        )
    )
    lines += ["", "  " + report["command"]]  # never wrapped: it is copied as it is
    if report["pilot_advised"] and "pilot" not in report:
        lines += ["", "  The measurements alone cannot tell: run edgetl advise again with --pilot (about 5 min)."]
    if "pilot" in report:
        lines += ["", format_pilot(report["pilot"])]
    lines += ["", "advised in {:.0f} s".format(report["time_s"])]
    return "\n".join(lines)
