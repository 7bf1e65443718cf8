"""The paired labelled gate: Tango's score bound against independent computations, verdicts, failure lines."""

import math

import numpy as np
import pytest
from scipy import optimize, stats

from edgetl.export.paired_gate import judge_paired, paired_upper_bound, pairs_needed, tango_z

Z95 = stats.norm.ppf(0.95)  # 1.6448536...


def _independent_bound(b, c, n):
    """Tango's upper bound without his closed-form MLE: the nuisance p(fp32 wrong, INT8 right) = q is found by
    maximising the multinomial likelihood b log(q + d) + c log q + (n - b - c) log(1 - 2q - d) numerically
    (scipy), and the bound is scipy's root of Z(d) = -z(0.95)."""

    def z_of(d):
        low, high = max(0.0, -d) + 1e-12, (1 - d) / 2 - 1e-12

        def negative_loglik(q):
            terms = [(b, q + d), (c, q), (n - b - c, 1 - 2 * q - d)]
            return -sum(k * math.log(p) for k, p in terms if k)

        q = optimize.minimize_scalar(negative_loglik, bounds=(low, high), method="bounded",
                                     options={"xatol": 1e-13}).x  # fmt: skip
        return (b - c - n * d) / math.sqrt(n * (2 * q + d * (1 - d)))

    return optimize.brentq(lambda d: z_of(d) + Z95, (b - c) / n + 1e-9, 1 - 1e-9, xtol=1e-12)


@pytest.mark.parametrize("b, c, n", [(1, 0, 50), (3, 1, 100), (5, 5, 200), (12, 2, 300), (0, 4, 80), (20, 0, 25)])
def test_bound_matches_an_independent_likelihood_computation(b, c, n):
    assert paired_upper_bound(b, c, n) == pytest.approx(_independent_bound(b, c, n), abs=2e-6)


@pytest.mark.parametrize("n", [1, 10, 100, 268, 1000])
def test_no_discordance_has_the_closed_form_bound(n):
    # Z(d) = -n d / sqrt(n d (1 - d)) = -z  <=>  d = z^2 / (n + z^2); n = 100: 2.70554 / 102.70554 = 0.026343
    assert paired_upper_bound(0, 0, n) == pytest.approx(Z95**2 / (n + Z95**2), rel=1e-9)
    assert paired_upper_bound(0, 0, 100) == pytest.approx(0.026343, abs=1e-6)


def test_at_zero_difference_the_statistic_is_mcnemars():
    assert tango_z(7, 2, 120, 0.0) == pytest.approx(5 / math.sqrt(9))
    assert tango_z(3, 1, 100, paired_upper_bound(3, 1, 100)) == pytest.approx(-Z95, abs=1e-6)


def test_bound_grows_with_the_drop_and_a_better_int8_lowers_it():
    assert paired_upper_bound(0, 0, 300) < paired_upper_bound(1, 0, 300) < paired_upper_bound(2, 0, 300)
    assert paired_upper_bound(2, 6, 300) < paired_upper_bound(2, 0, 300)
    assert paired_upper_bound(300, 0, 300) == 1.0


def test_pairs_needed_is_the_fewest_that_can_pass():
    assert pairs_needed(0.01) == 268  # 2.70554 * 0.99 / 0.01 = 267.85
    assert paired_upper_bound(0, 0, 267) > 0.01 >= paired_upper_bound(0, 0, 268)
    assert pairs_needed(1.0) == 1 and pairs_needed(0.0) is None
    with pytest.raises(ValueError):
        paired_upper_bound(3, 3, 5)


def _outputs(right):
    """One-hot outputs that are right (class 0, the label) where ``right`` is true, else class 1."""
    out = np.zeros((len(right), 2))
    out[np.arange(len(right)), np.where(right, 0, 1)] = 1.0
    return out


def test_verdicts_and_failure_lines():
    n = 400
    fp32 = np.ones(n, bool)
    fp32[:20] = False  # fp32 wrong on 20
    labels = np.zeros(n, np.int64)
    same = judge_paired(_outputs(fp32), _outputs(fp32), labels, 1.0, "test")
    assert same.verdict == "passed" and same.failures() == [] and same.drop_points == 0
    assert same.to_dict()["confidence"] == 0.95 and "Tango" in same.to_dict()["criterion"]
    better = fp32.copy()
    better[:20] = True  # INT8 right everywhere fp32 was wrong
    assert judge_paired(_outputs(fp32), _outputs(better), labels, 1.0, "test").upper_bound_points < 0
    worse = fp32.copy()
    worse[100:110] = False
    failed = judge_paired(_outputs(fp32), _outputs(worse), labels, 1.0, "test")
    assert (failed.verdict, failed.fp32_right_int8_wrong, failed.fp32_wrong_int8_right) == ("failed", 10, 0)
    (line,) = failed.failures()
    assert line.startswith("INT8 accuracy drop on 400 held-out labelled images: fp32 right and INT8 wrong on 10")
    small = judge_paired(_outputs(fp32[:100]), _outputs(fp32[:100]), labels[:100], 1.0, "test")
    assert small.verdict == "unresolvable" and small.images_needed == 268
    assert small.failures()[0].endswith("it needs >= 268")
