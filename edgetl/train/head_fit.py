"""How a run with ``--head-fit solve`` fits its head, and what its run folder says afterwards.

``--head-fit`` auto (the default) resolves to solve for a linear head on cached features (the feature
extractor's default pipeline) when ``--epochs`` is auto: the head is a convex problem, solved to
convergence once (``edgetl.train.linear_head``) instead of stepped through epochs. That solve is
recorded as epoch 1 of 1: ``metrics.csv`` holds one row (train loss and top-1 of the solved head on the
training features, val metrics, lr columns 0: L-BFGS has no step size, its time as ``epoch_time_s``);
``best.pt`` and ``last.pt`` both hold the solution; the fit's facts (L2 strength, cross-validation
scores, iterations, why it stopped) are in ``summary.json`` and the checkpoints. ``--resume`` of a
finished fit changes nothing; a fit killed before it ends left no ``last.pt`` and simply runs again.
Every other case (partial, full, an MLP head, ``--cache none``) resolves to ``--head-fit epochs`` and
trains ``AUTO_EPOCHS`` epochs; a given ``--epochs N`` trains N epochs. ``--balance`` (sampler or loss)
makes the fit class-weighted, ``N / (C n_c)``: drawing each class equally often is, in expectation,
that weighting, and a full-batch fit has no draws.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.data.folders import DatasetSplit
from edgetl.data.sampling import balanced_class_weights
from edgetl.train.checkpoint import load_run, preprocess_of
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_samples
from edgetl.train.linear_head import FALLBACK_L2, L2_GRID, cv_folds, fit_linear_head, sklearn_c

torch = require("torch")
log = logging.getLogger(__name__)
_NOT_CROSS_VALIDATED = "fixed, not cross-validated: a class has fewer than 2 training images, too few to hold one out"


def fit_head(pipeline: Any, model: Any, classes: int, config: FinetuneConfig) -> Tuple[Tuple[float, float], dict]:
    """Solve ``model.head`` on the pipeline's training features; ((train loss, train top-1), the fit's facts)."""
    features, labels = pipeline.train, pipeline.train_labels
    views, count = features.shape[0], features.shape[1]
    folds = cv_folds(labels, classes)
    how = (
        f"L2 from {folds}-fold cross-validation over {len(L2_GRID)} values"
        if folds
        else f"L2 {FALLBACK_L2:g} {_NOT_CROSS_VALIDATED}"
    )
    log.info("fitting the linear head: L-BFGS on %d images x %d view(s), %s", count, views, how)
    class_weight = None
    if config.balance != "none":
        class_weight = torch.tensor(balanced_class_weights(labels.tolist(), classes), dtype=torch.float64)
        log.info("--balance %s: the linear head's fit weighs class c by N / (C n_c)", config.balance)
    fit = fit_linear_head(
        features,
        labels,
        classes,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        class_weight=class_weight,
    )
    head = model.head
    with torch.no_grad():
        head.weight.copy_(fit.weight.to(head.weight))  # float64 solution, cast to the head's dtype
        head.bias.copy_(fit.bias.to(head.bias))
        logits = head(features.reshape(-1, features.shape[-1]))
        rows = labels.repeat(views)
        loss = float(torch.nn.functional.cross_entropy(logits.float(), rows))
        top1 = float((logits.argmax(1) == rows).float().mean())
    facts = {
        "solver": "L-BFGS (strong Wolfe), full batch, float64",
        "class_weighted": class_weight is not None,
        "l2": fit.l2,
        "feature_scale": fit.scale,
        "sklearn_C": sklearn_c(fit.l2, fit.scale, count * views),
        "cv_folds": fit.folds,
        "cv": [{"l2": l2, "top1": acc, "loss": cv_loss} for l2, acc, cv_loss in fit.cv],
        "iterations": fit.iterations,
        "stop": fit.stop,
        "seconds": fit.seconds,
    }
    log.info(
        "linear head: L2 %g (C %.3g) in %.1f s, %d iterations; %s",
        fit.l2,
        facts["sklearn_C"],
        fit.seconds,
        fit.iterations,
        fit.stop,
    )
    return (loss, top1), facts


def epochs_trained(summary: Dict[str, Any]) -> Union[str, int]:
    """What a finished run's ``summary.json`` says it trained: ``"solved"`` for a convex head fit, else the
    epochs run (reports print it beside each run)."""
    return "solved" if summary.get("head_fit") else summary["epochs_run"]


def stop_reason(
    config: FinetuneConfig, history: List[Dict[str, float]], early: Optional[str], head_fit: Dict[str, Any]
) -> str:
    """The summary's one line on why training ended."""
    if head_fit:
        folds = head_fit["cv_folds"]
        how = f"chosen by {folds}-fold cross-validation on the train split" if folds else _NOT_CROSS_VALIDATED
        return f"linear head solved (convex): {head_fit['stop']}; L2 {head_fit['l2']:g} {how}"
    if early:
        return early
    return "ran all {} epochs".format(config.epochs)


def test_report(run_dir: Path, split: DatasetSplit, setup: DeviceSetup, batch_size: int, workers: Any) -> dict:
    """best.pt on the held-out test images (``--test-split``): the one number no selection has seen."""
    model, payload = load_run(run_dir)
    result = evaluate_samples(model, split.test, preprocess_of(payload), setup, len(split.classes), batch_size, workers)
    log.info("test split (%d images, untouched by selection): top-1 %.2f%%", result.count, 100 * result.top1)
    return {"num_test": result.count, "test_top1": result.top1, "test_top5": result.top5, "test_loss": result.loss}
