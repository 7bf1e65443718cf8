"""Progress in a log: timed lines that say where a long loop is, nothing on a disabled one."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

from edgetl.core.progress import progress


def test_a_log_gets_a_start_line_and_timed_lines(caplog: pytest.LogCaptureFixture) -> None:
    ticks: Iterator[float] = iter(float(t) for t in range(0, 1000, 25))  # 25 s per item
    with caplog.at_level(logging.INFO, logger="edgetl.progress"):
        items = list(
            progress(range(8), "feature cache", terminal=False, every_s=60, announce=True, clock=lambda: next(ticks))
        )
    assert items == list(range(8))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "feature cache: started (8 steps)",
        "feature cache: 3/8 steps (38%) after 75 s",
        "feature cache: 6/8 steps (75%) after 150 s",
    ]


def test_disabled_progress_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgetl.progress"):
        assert list(progress(iter([1, 2]), "epoch 1/2", enabled=False, terminal=False, every_s=0)) == [1, 2]
    assert caplog.records == []
