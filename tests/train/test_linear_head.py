"""The convex head fit: optimality, agreement with a reference solver, folds by image, and what a run folder
holds after it (metrics.csv, best.pt/last.pt, --resume)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.errors import ConfigError
from edgetl.train.checkpoint import load_checkpoint
from edgetl.train.config import FinetuneConfig
from edgetl.train.linear_head import FALLBACK_L2, cross_validate, fit_linear_head, pick_l2, solve, stratified_folds
from edgetl.train.loop import finetune, resume


def _blobs(n: int = 150, dim: int = 6, classes: int = 3, seed: int = 0):
    """Overlapping Gaussian classes: a problem whose optimum is finite and unique."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 1.0, (classes, dim))
    features = centres[labels] + rng.normal(0, 1.5, (n, dim))
    return torch.tensor(features), torch.tensor(labels)


def test_solution_meets_the_optimality_conditions() -> None:
    """At the minimum of mean CE + l2/2 |W|^2 the gradient is zero: X^T (P - Y) / n + l2 W = 0, sum(P - Y) = 0."""
    x, y = _blobs()
    l2 = 0.05
    weight, bias, iterations, stop = solve(x.double(), y, 3, l2)
    assert stop.startswith("converged") and iterations > 0
    residual = torch.softmax(x.double() @ weight.t() + bias, 1) - torch.nn.functional.one_hot(y, 3).double()
    assert torch.allclose(residual.t() @ x.double() / len(y) + l2 * weight, torch.zeros_like(weight), atol=1e-5)
    assert torch.allclose(residual.sum(0) / len(y), torch.zeros(3, dtype=torch.float64), atol=1e-5)


def test_solution_matches_scikit_learn_logistic_regression() -> None:
    """Same objective as LogisticRegression(C = 1 / (l2 n)): same probabilities and weights."""
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the reference solver (test extra)")
    x, y = _blobs()
    l2 = 0.02
    weight, bias, _, _ = solve(x.double(), y, 3, l2, tol=1e-9)
    reference = sklearn.LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    ours = torch.softmax(x.double() @ weight.t() + bias, 1).numpy()
    assert np.abs(ours - reference.predict_proba(x.numpy())).max() < 1e-5
    assert np.abs(weight.numpy() - reference.coef_).max() < 1e-4


def test_folds_split_images_never_views() -> None:
    """Three identical views of every image must score exactly as one view: were views of a held-out image
    fitted, the weakest L2 would memorise them and win."""
    x, y = _blobs(n=90, dim=8)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]  # labels unrelated to features
    grid = (1.0, 1e-4)
    one = cross_validate(x.float(), y, 3, grid, folds=3, seed=0)
    three = cross_validate(x.float().unsqueeze(0).repeat(3, 1, 1), y, 3, grid, folds=3, seed=0)
    assert [s[1] for s in one] == pytest.approx([s[1] for s in three], abs=1e-9)
    assert max(s[1] for s in three) < 0.6  # chance is 1/3: nothing leaked
    folds = stratified_folds(y.tolist(), 3, seed=0)
    for label in range(3):
        assert sorted(f for f, value in zip(folds, y.tolist()) if value == label) == [0] * 10 + [1] * 10 + [2] * 10


def test_l2_choice_breaks_accuracy_ties_by_held_out_loss_then_strength() -> None:
    assert pick_l2([(1e-2, 0.90, 0.40), (1e-3, 0.95, 0.30), (1e-4, 0.95, 0.20), (1e-5, 0.94, 0.10)]) == 1e-4
    assert pick_l2([(1e-2, 0.95, 0.30), (1e-3, 0.95, 0.30)]) == 1e-2
    x, y = _blobs(n=60)
    fit = fit_linear_head(x.float(), y, 3, grid=(1e-1, 1e-3), folds=3)
    assert fit.folds == 3 and fit.l2 == pick_l2(fit.cv) and fit.stop.startswith("converged")


def _config(data: Path, out: Path, **options) -> FinetuneConfig:
    return FinetuneConfig(
        data=str(data),
        arch="mobilenet_v3_small",
        cut_at="stage2",  # a tiny base: features of 24 channels
        weights="none",
        batch_size=8,
        workers=0,
        val_split=0.25,
        out=str(out),
        **options,
    )


def test_default_feature_extractor_solves_its_head_and_resume_keeps_it(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 8, "b": 8, "c": 8}, size=40)
    result = finetune(_config(data, tmp_path / "run"), progress=False)
    summary = result.summary
    assert summary["cache"] == "features" and summary["epochs"] is None  # solved: no epochs
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert (saved["head_fit"], saved["epochs"], saved["cache"]) == ("solve", None, "features")  # resolved
    assert summary["stopped"].startswith("linear head solved (convex): converged")
    assert summary["head_fit"]["cv_folds"] == 5 and summary["head_fit"]["l2"] > 0
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["lr_head"]) == 0.0
    best, last = load_checkpoint(result.run_dir / "best.pt"), load_checkpoint(result.run_dir / "last.pt")
    for key, value in last["model"].items():
        assert torch.equal(value, best["model"][key]), key
    assert best["head_fit"]["stop"] == summary["head_fit"]["stop"]

    again = resume(result.run_dir, progress=False)  # a finished fit: nothing to do, nothing changes
    assert again.history == result.history and again.summary["stopped"] == summary["stopped"]
    after = load_checkpoint(result.run_dir / "last.pt")["model"]
    assert torch.equal(after["head.weight"], last["model"]["head.weight"])
    with pytest.raises(ConfigError, match="nothing to continue"):
        resume(result.run_dir, epochs=3, progress=False)
    assert json.loads((result.run_dir / "summary.json").read_text())["head_fit"]["iterations"] >= 0


def test_one_image_per_class_is_solved_with_a_fixed_l2_and_says_so(make_image_folder, tmp_path: Path) -> None:
    """No class can give an image to a held-out fold: the L2 is the fixed fallback, and the summary says that
    rather than "chosen by 0-fold cross-validation"."""
    data = make_image_folder({"a": 1, "b": 1, "c": 1}, size=40, split=True)
    summary = finetune(replace(_config(data, tmp_path / "run"), val_split=None), progress=False).summary
    assert summary["head_fit"]["cv_folds"] == 0 and summary["head_fit"]["l2"] == FALLBACK_L2
    assert "0-fold" not in summary["stopped"] and "cross-validation on the train split" not in summary["stopped"]
    assert summary["stopped"].endswith(
        "L2 0.0001 fixed, not cross-validated: a class has fewer than 2 training images, too few to hold one out"
    )


def test_given_epochs_and_mlp_heads_train_by_epochs(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 6, "b": 6}, size=40)
    given = finetune(_config(data, tmp_path / "given", epochs=2), progress=False)
    assert given.summary["epochs"] == 2 and given.summary["head_fit"] == {} and len(given.history) == 2
    mlp = finetune(_config(data, tmp_path / "mlp", head="mlp"), progress=False)
    assert mlp.summary["epochs"] == 5 and mlp.summary["stopped"] == "ran all 5 epochs"


def test_feature_views_are_solved_too_and_the_solve_is_deterministic(make_image_folder, tmp_path: Path) -> None:
    """--feature-views N: every view is a training row of the solve. A fit leaves no last.pt until it ends, so a
    killed fit is simply run again, and it reaches the same head (the solve is deterministic)."""
    data = make_image_folder({"a": 6, "b": 6}, size=40)
    first = finetune(_config(data, tmp_path / "views", feature_views=2), progress=False)
    assert first.summary["stopped"].startswith("linear head solved")
    assert first.summary["head_fit"]["cv_folds"] == 4  # 4 train images per class: at most 4 folds
    again = finetune(_config(data, tmp_path / "again", feature_views=2), progress=False)
    one, two = (load_checkpoint(run.run_dir / "best.pt")["model"] for run in (first, again))
    assert torch.equal(one["head.weight"], two["head.weight"]) and torch.equal(one["head.bias"], two["head.bias"])


def test_class_weighted_solution_matches_scikit_learn_balanced() -> None:
    """--balance on a solved head: weights N / (C n_c) make the objective LogisticRegression(class_weight=
    "balanced", C = 1 / (l2 n)), and the cross-validation scores the minority as much as the majority."""
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the reference solver (test extra)")
    x, y = _blobs(n=200)
    keep = (y != 2) | (torch.arange(len(y)) % 5 == 0)  # class 2 cut to a fifth: 67 / 67 / 14 images
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=3).double()
    class_weight = len(y) / (3 * counts)
    l2 = 0.02
    weight, bias, _, _ = solve(x.double(), y, 3, l2, tol=1e-9, class_weight=class_weight)
    reference = sklearn.LogisticRegression(C=1.0 / (l2 * len(y)), class_weight="balanced", tol=1e-10, max_iter=10_000)
    reference.fit(x.numpy(), y.numpy())
    assert np.abs(weight.numpy() - reference.coef_).max() < 1e-4
    plain, _, _, _ = solve(x.double(), y, 3, l2, tol=1e-9)
    assert np.abs(plain.numpy() - reference.coef_).max() > 1e-2  # the weighting changed the solution

    fit = fit_linear_head(x.float(), y, 3, grid=(1e-1, 1e-3), folds=3, class_weight=class_weight)
    predicted = (x.double() @ fit.weight.t() + fit.bias).argmax(1)
    unweighted = fit_linear_head(x.float(), y, 3, grid=(1e-1, 1e-3), folds=3)
    plain_predicted = (x.double() @ unweighted.weight.t() + unweighted.bias).argmax(1)
    assert (predicted == 2).sum() > (plain_predicted == 2).sum()  # the minority is predicted more often


def test_balance_makes_the_solved_head_class_weighted(make_image_folder, tmp_path: Path) -> None:
    data = make_image_folder({"a": 12, "b": 12, "c": 4}, size=40)
    plain = finetune(_config(data, tmp_path / "plain"), progress=False).summary["head_fit"]
    weighted = finetune(_config(data, tmp_path / "loss", balance="loss"), progress=False).summary["head_fit"]
    assert plain["class_weighted"] is False and weighted["class_weighted"] is True
