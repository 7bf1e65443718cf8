"""How a distributed run splits its batches between processes (pure Python, one rule for every pipeline).

The global batch order is drawn from the epoch seed alone (``edgetl.data.pipelines``), exactly as in
one process. Each global batch of ``--batch-size`` samples is then cut into ``world_size`` contiguous
parts, one per rank, so the samples a step trains on, and their augmentation, do not depend on how
many processes share the work: a run resumed with another number of processes continues the same
sequence. When a batch divides evenly (every full batch, since the global batch must divide by the
world size) each rank gets ``batch_size / world_size`` samples; a last, partial batch gives the first
ranks one sample more, and a rank whose part is empty trains on a padding sample with weight 0
(every rank must take part in each step's gradient reduction). Evaluation uses the same parts and
skips empty ones, so every val image is counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple


@dataclass(frozen=True)
class Shard:
    """This process's part of every batch; ``Shard()`` is the whole batch (one process)."""

    rank: int = 0
    world_size: int = 1

    def part(self, start: int, stop: int) -> Tuple[int, int]:
        """This rank's ``[lo, hi)`` of the samples ``[start, stop)``: contiguous, sizes differing by at most 1."""
        size, extra = divmod(stop - start, self.world_size)
        lo = start + self.rank * size + min(self.rank, extra)
        return lo, lo + size + (1 if self.rank < extra else 0)

    def batch_parts(self, count: int, batch_size: int, pad: bool) -> Iterator[Tuple[int, int]]:
        """``[lo, hi)`` per global batch of ``count`` samples. An empty part is skipped, or with ``pad``
        replaced by the batch's first sample (a padding sample: :meth:`steps` gives it weight 0)."""
        for start in range(0, count, batch_size):
            lo, hi = self.part(start, min(start + batch_size, count))
            if lo < hi:
                yield lo, hi
            elif pad:
                yield start, start + 1

    def steps(self, count: int, batch_size: int) -> List[Tuple[int, int]]:
        """Per training step: (samples of this rank that count, samples of the whole global batch)."""
        steps = []
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            lo, hi = self.part(start, stop)
            steps.append((hi - lo, stop - start))
        return steps
