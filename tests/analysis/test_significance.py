"""The noise model behind the pilot's and the benchmarks' verdicts: a tie inside the noise is never a winner."""

from __future__ import annotations

import math

import pytest

from edgetl.analysis.significance import Z_CLEAR, binomial_se, compare, two_proportion_z


def test_binomial_se_is_sqrt_p_q_over_n() -> None:
    assert binomial_se(0.9, 100) == pytest.approx(0.03)
    assert binomial_se(0.5, 400) == pytest.approx(0.025)
    assert binomial_se(1.0, 50) == 0.0
    with pytest.raises(ValueError):
        binomial_se(0.5, 0)


def test_two_proportion_z_uses_the_pooled_proportion() -> None:
    pooled = 0.85  # (0.9 + 0.8) / 2
    expected = 0.1 / math.sqrt(pooled * (1 - pooled) * 2 / 200)
    assert two_proportion_z(0.9, 0.8, 200) == pytest.approx(expected)
    assert two_proportion_z(0.8, 0.9, 200) == pytest.approx(-expected)
    assert two_proportion_z(1.0, 1.0, 30) == 0.0  # no spread: a tie


def test_a_difference_inside_the_noise_is_a_tie_not_a_winner() -> None:
    # 43% vs 51.5% on 200 val images: z = 1.70, inside the noise
    verdict = compare([("feature-extractor", 0.43), ("partial", 0.515), ("full", 0.12)], 200)
    assert verdict.best == "partial" and verdict.tied == ("feature-extractor",) and verdict.winner == ""
    assert "tie within noise" in verdict.describe() and "partial, feature-extractor" in verdict.describe()
    assert verdict.z["full"] >= Z_CLEAR  # full is clearly behind, so it is not among the tied


def test_the_same_difference_on_enough_images_is_a_winner() -> None:
    verdict = compare([("feature-extractor", 0.43), ("partial", 0.515)], 1000)  # z = 3.8
    assert verdict.winner == "partial" and verdict.tied == ()
    assert verdict.describe().startswith("partial wins")


@pytest.mark.parametrize("images", [20, 100, 300, 1000, 5000])
def test_one_image_of_difference_is_never_a_winner(images: int) -> None:
    accuracies = [("a", 0.9), ("b", 0.9 - 1.0 / images)]
    assert compare(accuracies, images).winner == ""


def test_equal_accuracies_tie_and_name_the_first() -> None:
    verdict = compare([("a", 0.7), ("b", 0.7)], 100)
    assert verdict.best == "a" and verdict.tied == ("b",) and verdict.winner == ""
