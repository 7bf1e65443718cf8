"""The names of ``--int8-recover`` (torch-free, Python 3.8: the CLI and ``ExportConfig`` read them).

A missed INT8 gate is recovered by steps tried cheapest first, stopping at the first that passes
(``edgetl.export.recover``): ``head`` re-solves a feature extractor's linear head on the quantized base's
features (seconds), ``fallback`` keeps the most quantization-sensitive layers in fp32 (a search of
re-quantizations). Listed steps are still tried in this order.
"""

from __future__ import annotations

from typing import Tuple

from edgetl.errors import ConfigError

RECOVERY_STEPS = ("head", "fallback")  # cheapest first
DEFAULT_RECOVER_BUDGET_S = 900.0
SKIPPED = "skipped: recovery budget spent"  # the verdict of a step (or fallback attempt) the budget did not reach


def recovery_steps(value: str, fallback: str = "auto") -> Tuple[str, ...]:
    """The steps ``--int8-recover VALUE`` tries, in order of cost: auto (all), none, or a comma list.
    ``fallback`` is ``--int8-fallback``: none takes the fallback step out."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if names == ["auto"]:
        names = list(RECOVERY_STEPS)
    elif names == ["none"]:
        names = []
    unknown = [name for name in names if name not in RECOVERY_STEPS]
    if unknown or not names and value.strip() != "none":
        raise ConfigError.about(
            f"{{int8_recover}} must be auto, none or a comma list of {', '.join(RECOVERY_STEPS)}; got {value!r}"
        )
    return tuple(s for s in RECOVERY_STEPS if s in names and not (s == "fallback" and fallback == "none"))
