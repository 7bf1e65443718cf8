"""Error hierarchy: the CLI catches ``EdgetlError`` once and prints one line (exit code 1; a
``GateError`` exits 3)."""


class EdgetlError(Exception):
    """A user-facing error: its message is a complete one-line explanation."""


class DataError(EdgetlError):
    """The dataset is missing, malformed or inconsistent."""


class WeightsError(EdgetlError):
    """Pretrained weights cannot be found, fetched or verified."""


class CheckpointError(EdgetlError):
    """A checkpoint or run folder is missing, corrupt or of the wrong kind."""


class ConfigError(EdgetlError):
    """Options that conflict or are out of range."""


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
