"""Error hierarchy: the CLI catches ``EdgetlError`` once and prints one line (exit code 1; a
``GateError`` exits 3)."""

import re
from typing import Any, Callable, Dict, List, Optional


class EdgetlError(Exception):
    """A user-facing error: its message is a complete one-line explanation."""


class DataError(EdgetlError):
    """The dataset is missing, malformed or inconsistent."""


class WeightsError(EdgetlError):
    """Pretrained weights cannot be found, fetched or verified."""


class CheckpointError(EdgetlError):
    """A checkpoint or run folder is missing, corrupt or of the wrong kind."""


class ConfigError(EdgetlError):
    """Options that conflict or are out of range.

    Made with :meth:`about`, its message names options by field (``{epochs}``): ``str()`` gives the field names,
    as a Python caller wrote them; the CLI prints :meth:`naming` with each field's flag (``--epochs``)."""

    def __init__(self, message: str, *, template: str = "", values: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.template, self.values = template, dict(values or {})

    @classmethod
    def about(cls, template: str, **values: Any) -> "ConfigError":
        """``template``'s ``{name}`` placeholders: ``values`` where given (e.g. a path), else option fields."""
        shown = {key: str(value) for key, value in values.items()}
        return cls(_render(template, shown, lambda name: name), template=template, values=shown)

    @property
    def fields(self) -> List[str]:
        """The option fields the message names, in order."""
        return [name for name in _PLACEHOLDER.findall(self.template) if name not in self.values]

    def naming(self, name_of: Callable[[str], str]) -> str:
        """The message with each field named by ``name_of(field)`` (the CLI: its flag)."""
        return _render(self.template, self.values, name_of) if self.template else str(self)


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _render(template: str, values: Dict[str, str], name_of: Callable[[str], str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else name_of(m.group(1)), template)


class TrainingError(EdgetlError):
    """Training cannot go on: the loss became non-finite (the weights diverged)."""


class ExportError(EdgetlError):
    """An export failed."""


class GateError(EdgetlError):
    """A check of the results failed: an export's parity/accuracy gate, a latency regression."""


class DistributedError(EdgetlError):
    """A process of a distributed run failed, or lost the others."""


class DependencyError(EdgetlError):
    """An optional dependency is not installed."""
