"""The training loss: cross-entropy with label smoothing, over hard labels or the soft targets of MixUp/CutMix
(``edgetl.data.batch_augment``), optionally class-weighted (``--balance loss``); and what train accuracy counts.

With class weights the loss is ``sum_i sum_c w_c q_ic (-log p_ic) / N`` (``q``: the smoothed one-hot or soft
target), the same normalisation for hard and soft targets and for a process's share of a global batch
(``edgetl.train.distributed.ShardedLoss`` divides the sum by the global batch size). torch's own
hard-label weighted mean divides by the batch's summed weights instead, which would differ between the
two kinds of target and between one process and several.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from edgetl.core.deps import require
from edgetl.data.sampling import balanced_class_weights

torch = require("torch")
F = torch.nn.functional


def hard_labels(targets: Any) -> Any:
    """The class each target counts for in train accuracy: the label, or a soft target's largest share."""
    return targets if targets.dim() == 1 else targets.argmax(1)


class TrainingLoss:
    """Cross-entropy of a training step (``reduction`` ``mean``, or ``sum`` for a process's share)."""

    def __init__(self, label_smoothing: float = 0.0, weight: Optional[Any] = None, reduction: str = "mean") -> None:
        self.label_smoothing, self.weight, self.reduction = label_smoothing, weight, reduction

    def summed(self) -> "TrainingLoss":
        """The same loss, summed over the samples."""
        return TrainingLoss(self.label_smoothing, self.weight, "sum")

    def __call__(self, logits: Any, targets: Any) -> Any:
        if self.weight is not None and targets.dim() == 1:
            targets = F.one_hot(targets, logits.shape[1]).to(torch.float32)  # weighted: normalise by N (module doc)
        return F.cross_entropy(
            logits, targets, weight=self.weight, label_smoothing=self.label_smoothing, reduction=self.reduction
        )


def training_loss(label_smoothing: float, balance: str, labels: Sequence[int], num_classes: int, device: Any) -> Any:
    """The training loss of a run; with ``balance == "loss"``, class c weighs ``N / (C n_c)``
    (``edgetl.data.sampling.balanced_class_weights``), on ``device``."""
    weight = None
    if balance == "loss":
        weight = torch.tensor(balanced_class_weights(labels, num_classes), dtype=torch.float32, device=device)
    return TrainingLoss(label_smoothing, weight)
