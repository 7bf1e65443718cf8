"""The feature extractor's linear head as the convex problem it is: multinomial logistic regression on
fixed features, solved to convergence by full-batch L-BFGS (strong-Wolfe line search), with the L2
strength picked by k-fold cross-validation on the training split.

Objective (``solve``): mean cross-entropy + ``l2 / 2 * ||W||^2`` (bias not penalised): scikit-learn's
``LogisticRegression`` objective divided by ``n``, so ``C = 1 / (l2 * n)``. ``fit_linear_head`` solves it on
features centred and scaled to unit mean squared norm (one scale for all dimensions), which leaves the
model and the penalty's shape unchanged (raw ``l2`` = ``l2 * scale^2``) but makes L-BFGS converge in tens
of iterations instead of hundreds, and makes one ``L2_GRID`` fit every backbone's feature scale. The
cross-validation fits run in float32 at scikit-learn's default tolerance; the final fit in float64.
With augmented views (features ``(views, N, D)``) every view is a row and the folds split images, never
views, so no view of a held-out image is ever fitted. With ``class_weight`` (``--balance``) the mean is
weighted, ``sum w_y l / sum w_y``; with weights ``N / (C n_c)`` that sum is ``N`` and the objective is
scikit-learn's ``class_weight="balanced"``, again divided by ``n``; the folds then score held-out top-1
with the same weights (mean per-class recall on stratified folds) and weighted loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from edgetl.core.deps import require, torch_threads

torch = require("torch")
F = torch.nn.functional

# L2 strengths on normalised features, strong to weak; on MobileNetV2's digits features (scale 7.4, 1438
# images) they span scikit-learn C = 1.3e-3 .. 1.3e3
L2_GRID = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
FOLDS = 5
MAX_ITER = 1000
GRAD_TOL = 1e-5  # the final fit: on the largest gradient entry of the mean objective
CV_TOL = 1e-4  # the cross-validation fits (scikit-learn's default tol)
CV_MAX_ITER = 100  # scikit-learn's default max_iter
FALLBACK_L2 = 1e-4  # when a class has too few images for cross-validation


@dataclass
class LinearFit:
    """A solved head and how it was reached."""

    weight: Any  # (classes, D) on the raw features, float64, CPU
    bias: Any  # (classes,)
    l2: float  # on the normalised features
    scale: float  # the features' RMS distance to their mean: raw l2 = l2 * scale ** 2
    iterations: int
    stop: str  # why L-BFGS stopped
    cv: List[Tuple[float, float, float]] = field(default_factory=list)  # (l2, held-out top-1, held-out loss)
    folds: int = 0
    seconds: float = 0.0


def _rows(features: Any, labels: Any, dtype: Any = torch.float64) -> Tuple[Any, Any]:
    """(views, N, D) or (N, D) features as rows of ``dtype`` with their labels (views repeat the labels)."""
    if features.dim() == 2:
        return features.to(dtype), labels
    views = features.shape[0]
    return features.reshape(-1, features.shape[-1]).to(dtype), labels.repeat(views)


def normaliser(features: Any) -> Tuple[Any, float]:
    """Mean row and RMS distance to it of (N, D) or (views, N, D) features (float64)."""
    rows = features.reshape(-1, features.shape[-1]).double()
    mean = rows.mean(0)
    return mean, max(float((rows - mean).pow(2).sum(1).mean().sqrt()), 1e-12)


def solve(
    x: Any,
    y: Any,
    num_classes: int,
    l2: float,
    *,
    label_smoothing: float = 0.0,
    init: Optional[Tuple[Any, Any]] = None,
    max_iter: int = MAX_ITER,
    tol: float = GRAD_TOL,
    class_weight: Optional[Any] = None,
) -> Tuple[Any, Any, int, str]:
    """Minimise mean CE (weighted by ``class_weight``) + l2/2 ||W||^2 over float64 rows ``x``; returns (W, b,
    iterations, stop reason)."""
    if class_weight is not None:
        class_weight = class_weight.to(x)
    dim = x.shape[1]
    weight = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    if init is not None:
        weight, bias = init[0].clone(), init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Any:
        optimizer.zero_grad()
        logits = torch.addmm(bias, x, weight.t())
        loss = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=label_smoothing)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    objective()
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    if gradient <= tol:
        stop = "converged: largest gradient entry {:.1e} <= {:.0e}".format(gradient, tol)
    elif iterations >= max_iter:
        stop = "iteration limit {} reached (largest gradient entry {:.1e})".format(max_iter, gradient)
    else:
        stop = "converged: no further decrease (largest gradient entry {:.1e})".format(gradient)
    return weight.detach(), bias.detach(), iterations, stop


def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> List[int]:
    """A fold number per image: each class shuffled (seeded) and dealt round-robin over the folds."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = [0] * len(labels)
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        for position, pick in enumerate(torch.randperm(len(members), generator=generator).tolist()):
            fold_of[members[pick]] = position % folds
    return fold_of


def cross_validate(
    features: Any,
    labels: Any,
    num_classes: int,
    grid: Sequence[float],
    folds: int,
    seed: int,
    label_smoothing: float = 0.0,
    class_weight: Optional[Any] = None,
) -> List[Tuple[float, float, float]]:
    """(l2, mean held-out top-1, mean held-out CE) per grid value, both weighted by ``class_weight`` if given;
    folds split images (all views of an image are on one side). Each fold walks the grid strong to weak,
    warm-starting from the last solution."""
    weights = None if class_weight is None else class_weight.to(device=labels.device, dtype=torch.float32)
    stacked = features if features.dim() == 3 else features.unsqueeze(0)
    fold_of = torch.tensor(stratified_folds(labels.tolist(), folds, seed), device=labels.device)
    sums = [[0.0, 0.0] for _ in grid]
    for fold in range(folds):
        held = fold_of == fold
        x, y = _rows(stacked[:, ~held], labels[~held], torch.float32)
        x_val, y_val = _rows(stacked[:, held], labels[held], torch.float32)
        init = None
        for index, l2 in enumerate(grid):
            weight, bias, _, _ = solve(
                x,
                y,
                num_classes,
                l2,
                label_smoothing=label_smoothing,
                init=init,
                max_iter=CV_MAX_ITER,
                tol=CV_TOL,
                class_weight=weights,
            )
            init = (weight, bias)
            logits = torch.addmm(bias, x_val, weight.t())
            row_weight = torch.ones_like(y_val, dtype=torch.float32) if weights is None else weights[y_val]
            correct = (logits.argmax(1) == y_val).float()
            sums[index][0] += float((correct * row_weight).sum() / row_weight.sum()) / folds
            sums[index][1] += float(F.cross_entropy(logits, y_val, weight=weights)) / folds
    return [(l2, top1, loss) for l2, (top1, loss) in zip(grid, sums)]


def pick_l2(scores: Sequence[Tuple[float, float, float]]) -> float:
    """The best held-out top-1, ties broken by held-out loss, then by the stronger L2."""
    return max(scores, key=lambda s: (round(s[1], 12), -s[2], s[0]))[0]


def cv_folds(labels: Any, num_classes: int, folds: int = FOLDS) -> int:
    """The folds the L2 cross-validation uses: ``folds``, at most the smallest class's image count; 0 (no
    cross-validation, the L2 is ``FALLBACK_L2``) when a class has fewer than 2 images."""
    usable = min(folds, int(torch.bincount(labels, minlength=num_classes).min()))
    return usable if usable >= 2 else 0


def fit_linear_head(
    features: Any,
    labels: Any,
    num_classes: int,
    *,
    grid: Sequence[float] = L2_GRID,
    folds: int = FOLDS,
    seed: int = 0,
    label_smoothing: float = 0.0,
    class_weight: Optional[Any] = None,
) -> LinearFit:
    """Cross-validate the L2 strength on ``features`` ((N, D) or (views, N, D)), normalised, then solve on all
    of them; the head returned acts on the raw features. On CPU with one intra-op thread: these matrices are
    too small to split (as for the head's epochs, ``edgetl.data.feature_cache.HeadBatches``)."""
    started = time.perf_counter()
    with torch_threads(1 if features.device.type == "cpu" else None):
        mean, scale = normaliser(features)
        features = ((features.double() - mean) / scale).float()  # the folds share these statistics (no labels)
        folds = cv_folds(labels, num_classes, folds)
        scores: List[Tuple[float, float, float]] = []
        if folds and len(grid) > 1:
            scores = cross_validate(features, labels, num_classes, grid, folds, seed, label_smoothing, class_weight)
            l2 = pick_l2(scores)
        else:
            folds, l2 = 0, grid[0] if len(grid) == 1 else FALLBACK_L2
        x, y = _rows(features, labels)
        weight, bias, iterations, stop = solve(
            x, y, num_classes, l2, label_smoothing=label_smoothing, class_weight=class_weight
        )
    weight = weight / scale  # back to raw features: W x + b = W' (x - mean) / scale + b'
    bias = bias - weight @ mean
    seconds = time.perf_counter() - started
    return LinearFit(weight.cpu(), bias.cpu(), l2, scale, iterations, stop, scores, folds, seconds)


def sklearn_c(l2: float, scale: float, rows: int) -> float:
    """scikit-learn's ``C`` on the raw features for ``l2`` on the normalised ones, with ``rows`` training rows."""
    return math.inf if l2 == 0 else 1.0 / (l2 * scale**2 * rows)
