"""The one seeded per-class sampler. Every subset edgetl draws (the val split, calibration images,
advise's probe and pilot subsets) shuffles each class with ``Random("<seed>:<label>")`` after
sorting it by path, so a subset depends on the files and the seed alone, never on listing order."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Sequence, Tuple

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
