"""Progress of long loops: a tqdm bar on a terminal; in a log file (CI, nohup), where a bar prints nothing,
at most one line every ``every_s`` seconds (and, with ``announce``, one when the phase starts), through
``logging``, whose handlers flush each line: a log always shows where a run is. The loops' own summary
lines (one per epoch, one per built cache) come on top.
"""

import logging
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm  # a core dependency

T = TypeVar("T")
log = logging.getLogger("edgetl.progress")

LINE_EVERY_S = 60.0


def on_terminal() -> bool:
    """Whether stderr (where bars and log lines go) is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(
    items: Iterable[T],
    label: str,
    *,
    enabled: bool = True,
    total: Optional[int] = None,
    every_s: float = LINE_EVERY_S,
    announce: bool = False,
    terminal: Optional[bool] = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """``items``, reported as they pass: a bar on a terminal, else timed lines (``terminal`` overrides the check)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not enabled:
        yield from items
        return
    if on_terminal() if terminal is None else terminal:
        yield from tqdm(items, desc=label, total=total, leave=False)
        return
    started = clock()
    last = started
    if announce:
        log.info("%s: started%s", label, "" if total is None else " ({} steps)".format(total))
    done = 0
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every_s:
            last = now
            log.info("%s: %s after %.0f s", label, _count(done, total), now - started)


def _count(done: int, total: Optional[int]) -> str:
    return "{} steps".format(done) if not total else "{}/{} steps ({:.0%})".format(done, total, done / total)
