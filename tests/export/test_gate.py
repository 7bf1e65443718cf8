"""The reduced-precision accuracy gate: Clopper-Pearson bound, verdicts, one-line failures."""

import numpy as np
import pytest

from edgetl.export.gate import images_needed, judge, upper_bound


@pytest.mark.parametrize("n", [1, 10, 299, 1000])
def test_bound_of_zero_disagreements_is_the_closed_form(n):
    assert upper_bound(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)


@pytest.mark.parametrize("k, n, expected", [(1, 10, 0.39416), (2, 20, 0.28262), (1, 100, 0.04656), (5, 1000, 0.01048)])
def test_bound_matches_tabulated_clopper_pearson(k, n, expected):
    assert upper_bound(k, n) == pytest.approx(expected, abs=2e-5)  # scipy.stats.beta.ppf(0.95, k + 1, n - k)


def test_images_needed_is_the_fewest_that_can_pass():
    assert images_needed(0.01) == 299  # 1 point at 95%: 1 - 0.05 ** (1 / 299) <= 0.01 < 1 - 0.05 ** (1 / 298)
    assert upper_bound(0, 298) > 0.01 >= upper_bound(0, 299)
    assert images_needed(1.0) == 1 and images_needed(0.0) is None


def _logits(n, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 5
    return logits, labels


def test_identical_outputs_on_enough_images_pass():
    fp32, labels = _logits(400)
    result = judge(fp32, fp32.copy(), labels[:100], 1.0, "test")
    assert result.verdict == "passed" and result.failures() == []
    assert (result.images, result.val_images, result.heldout_train_images, result.disagreements) == (400, 100, 300, 0)
    assert result.upper_bound_points == pytest.approx(100 * (1 - 0.05 ** (1 / 400)))
    assert result.val_drop_points == 0 and result.to_dict()["confidence"] == 0.95


def test_degraded_outputs_fail_with_the_numbers():
    fp32, labels = _logits(400)
    degraded = fp32.copy()
    degraded[:20] = np.roll(degraded[:20], 1, axis=1)  # 20 of 400 top-1s change: 5%
    result = judge(fp32, degraded, labels[:100], 1.0, "test")
    assert result.verdict == "failed" and result.disagreements == 20 and result.val_drop_points == pytest.approx(20.0)
    (line,) = result.failures()
    assert line.startswith(
        "INT8 top-1 disagrees with fp32 on 20 of 400 images (100 val + 300 held-out train): "
        "95% upper bound 7.18 points > --max-int8-drop 1 (val top-1 80.00% vs fp32 100.00%)"
    )
    assert "\n" not in line


def test_tiny_sample_is_unresolvable_and_says_how_many_images_it_needs():
    fp32, labels = _logits(120)
    result = judge(fp32, fp32.copy(), labels[:80], 1.0, "test")
    assert result.verdict == "unresolvable" and result.disagreements == 0 and result.images_needed == 299
    (line,) = result.failures()
    assert line == (
        "INT8 gate unresolvable: 120 images (80 val + 40 held-out train) cannot show a 95% bound <= 1 "
        "points of top-1 disagreement with fp32 even with none; it needs >= 299 images"
    )
    assert judge(fp32, fp32, labels, 0.0, "test").failures()[0].endswith("no sample can show a bound of 0 points")
