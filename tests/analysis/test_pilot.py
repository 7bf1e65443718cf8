"""edgetl advise --pilot: the time budget (estimate, shrink, refusal) and the verdict's confidence."""

from __future__ import annotations

from typing import List

import pytest

from edgetl.analysis.pilot import _verdict, format_pilot
from edgetl.analysis.pilot_config import (
    EVAL_IMAGES_PER_S,
    MIN_TRAIN_PER_CLASS,
    RUN_OVERHEAD_S,
    TRAIN_IMAGES_PER_S,
    PilotConfig,
    estimate_seconds,
    fit_budget,
)
from edgetl.errors import ConfigError

STRATEGIES = ("feature-extractor", "partial", "full")


def test_estimate_adds_the_epochs_of_partial_and_full_and_one_feature_pass() -> None:
    config = PilotConfig(epochs=4)
    seconds = estimate_seconds(config, 300, 200, STRATEGIES)
    feature = 500 / EVAL_IMAGES_PER_S
    partial = 4 * (300 / TRAIN_IMAGES_PER_S["partial"] + 200 / EVAL_IMAGES_PER_S)
    full = 4 * (300 / TRAIN_IMAGES_PER_S["full"] + 200 / EVAL_IMAGES_PER_S)
    assert seconds == pytest.approx(feature + partial + full + 3 * RUN_OVERHEAD_S)


def test_default_pilot_on_a_few_hundred_images_fits_five_minutes() -> None:
    config = PilotConfig()
    fitted, seconds, note = fit_budget(config, [200] * 10, [50] * 10, STRATEGIES)  # 300 train / 200 val images
    assert config.time_budget_s == 300 and seconds <= 300
    assert fitted == config and note == ""


def test_an_estimate_over_the_budget_shrinks_the_training_subset() -> None:
    config = PilotConfig(time_budget_s=150)
    fitted, seconds, note = fit_budget(config, [200] * 10, [50] * 10, STRATEGIES)
    assert MIN_TRAIN_PER_CLASS <= fitted.train_per_class < config.train_per_class
    assert seconds <= 150 and "shrunk to {}".format(fitted.train_per_class) in note
    assert fitted.val_per_class == config.val_per_class  # the val subset, and so the confidence, is kept


def test_a_pilot_that_cannot_fit_is_refused_with_the_estimate() -> None:
    with pytest.raises(ConfigError, match=r"about \d+ s, over its 30 s budget"):
        fit_budget(PilotConfig(time_budget_s=30), [200] * 10, [50] * 10, STRATEGIES)


def test_budget_and_epochs_are_validated() -> None:
    with pytest.raises(ConfigError):
        PilotConfig(time_budget_s=0)
    with pytest.raises(ConfigError):
        PilotConfig(train_per_class=0)


def _rows(*tops: float, rule: str = "feature-extractor") -> List[dict]:
    return [
        {
            "strategy": s,
            "trainable_stages": i,
            "epochs": 6,
            "best_epoch": 5,
            "lr": 0.005,
            "head_lr": 0.02,
            "val_top1": t,
            "time_s": 1.0,
            "rule": s == rule,
        }
        for i, (s, t) in enumerate(zip(STRATEGIES, tops))
    ]


def _pilot(rows: List[dict], val_images: int) -> dict:
    return dict(_verdict(rows, val_images), train_images=300, estimate_s=200.0, budget_note="")


def test_early_training_noise_is_a_tie_and_no_disagreement() -> None:
    # the old pilot's 43% / 51.5% / 12% on 200 val images: partial is not clearly ahead of the rule
    pilot = _pilot(_rows(0.43, 0.515, 0.12), 200)
    assert pilot["winner"] == "" and pilot["tied"] == ["feature-extractor"] and pilot["agrees"]
    assert [row["beats_rule"] for row in pilot["rows"]] == [False, False, False]
    text = format_pilot(pilot)
    assert "tie within noise" in text and "cannot tell them apart" in text and "DISAGREES" not in text


def test_a_clear_difference_against_the_rule_is_a_disagreement() -> None:
    pilot = _pilot(_rows(0.80, 0.95, 0.70), 200)  # z = 4.3
    assert pilot["winner"] == "partial" and not pilot["agrees"]
    assert [row["beats_rule"] for row in pilot["rows"]] == [False, True, False]
    assert "DISAGREES with the rule, prefer partial" in format_pilot(pilot)


def test_a_clear_win_of_the_rules_choice_agrees() -> None:
    pilot = _pilot(_rows(0.95, 0.80, 0.70), 200)
    assert pilot["winner"] == "feature-extractor" and pilot["agrees"]
    assert "agrees with the rule" in format_pilot(pilot)


def test_a_tie_that_leaves_the_rule_clearly_behind_says_so() -> None:
    pilot = _pilot(_rows(0.70, 0.95, 0.94), 200)
    assert pilot["winner"] == "" and pilot["tied"] == ["full"] and not pilot["agrees"]
    assert "is clearly behind" in format_pilot(pilot)
