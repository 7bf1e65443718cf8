"""The one seeded per-class sampler. Every subset edgetl draws (the val split, calibration images,
advise's probe and pilot subsets) shuffles each class with ``Random("<seed>:<label>")`` after
sorting it by path, so a subset depends on the files and the seed alone, never on listing order."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetl.errors import DataError

Sample = Any  # edgetl.data.folders.Sample (or anything with .path and .label); folders imports this module


def shuffled_by_class(samples: Sequence[Sample], seed: int) -> Dict[int, List[Sample]]:
    """Each class's samples, sorted by path then shuffled with the class's seeded RNG."""
    by_class: Dict[int, List[Sample]] = {}
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_class.setdefault(sample.label, []).append(sample)
    for label, items in by_class.items():
        random.Random("{}:{}".format(seed, label)).shuffle(items)
    return dict(sorted(by_class.items()))


def sample_per_class(samples: Sequence[Sample], limit: int, seed: int) -> List[Sample]:
    """At most ``limit`` samples of each class; ordered by class, then path."""
    chosen: List[Sample] = []
    for items in shuffled_by_class(samples, seed).values():
        chosen.extend(sorted(items[:limit], key=lambda s: str(s.path)))
    return chosen


def select_balanced(samples: Sequence[Sample], size: int, seed: int) -> List[Sample]:
    """Up to ``size`` samples dealt round-robin over the classes (a small class gives all it has)."""
    by_class = shuffled_by_class(samples, seed)
    chosen: List[Sample] = []
    depth = 0
    while len(chosen) < size and any(depth < len(items) for items in by_class.values()):
        for items in by_class.values():
            if depth < len(items) and len(chosen) < size:
                chosen.append(items[depth])
        depth += 1
    return chosen


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> Tuple[List[Sample], List[Sample]]:
    """Per class: shuffle (seeded, ``edgetl.data.sampling``) and move ``round(fraction * n)`` (at least 1)
    samples to val."""
    train, val = [], []
    for label, items in shuffled_by_class(samples, seed).items():
        if len(items) < 2:
            raise DataError("class {} has {} image; a val split needs at least 2 per class".format(label, len(items)))
        n_val = min(len(items) - 1, max(1, int(round(fraction * len(items)))))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def class_counts(labels: Sequence[int], num_classes: int) -> List[int]:
    """Samples per class label ``0 .. num_classes - 1``."""
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts


def balanced_sample_weights(labels: Sequence[int], num_classes: int) -> List[float]:
    """``--balance sampler``: each sample's draw weight, 1 / (its class's size), so every class is drawn
    equally often (the epoch's order is then drawn with replacement from the epoch seed)."""
    counts = class_counts(labels, num_classes)
    return [1.0 / counts[label] for label in labels]


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> List[float]:
    """``--balance loss``: class c weighs ``N / (C * n_c)``: each class adds equally to an epoch's loss, and the
    weights average 1 over the samples, so the loss keeps the scale (and the lr its meaning) of the unweighted one."""
    counts = class_counts(labels, num_classes)
    return [len(labels) / (num_classes * n) if n else 0.0 for n in counts]


IMBALANCE_RATIO = 0.5  # warn when the smallest class has fewer than this fraction of the largest's samples


def imbalance_warning(labels: Sequence[int], classes: Sequence[str], balance: str) -> Optional[str]:
    """One line when the smallest training class is under half the largest, else None."""
    counts = class_counts(labels, len(classes))
    small, large = min(range(len(counts)), key=counts.__getitem__), max(range(len(counts)), key=counts.__getitem__)
    if counts[small] >= IMBALANCE_RATIO * counts[large]:
        return None
    advice = "--balance {} compensates".format(balance) if balance != "none" else "consider --balance sampler or loss"
    return "class imbalance: {!r} has {} training images, under half of {!r}'s {}; {}".format(
        classes[small], counts[small], classes[large], counts[large], advice
    )
