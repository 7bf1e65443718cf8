"""Click options shared by several commands, and the hidden, deprecated aliases of renamed options.

The same option means the same thing on every command: ``--device`` (the torch device, or on
``predict``/``bench latency`` the ONNX Runtime execution provider), ``--workers auto|N``,
``--batch-size``, ``--json`` (print the JSON report to stdout instead of text) and ``--out`` (where the
command writes). Each command passes its default, taken from its config dataclass.
"""

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import click
from click.core import ParameterSource

from edgetl.core.device import check_device_name
from edgetl.core.fileio import check_out_path
from edgetl.errors import ConfigError

F = Callable[..., Any]
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
RUNTIME_DEVICES = ("cpu", "cuda")  # ONNX Runtime execution providers of --device on predict / bench latency


class DeviceName(click.ParamType):
    """A torch ``--device`` (auto, cpu, cuda or cuda:N), checked on parsing: a bad one is a usage error (exit 2)."""

    name = "DEVICE"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        try:
            check_device_name(value)
        except ConfigError as exc:
            self.fail(exc.naming(lambda name: "--" + name.replace("_", "-")), param, ctx)
        return value


class WorkersParam(click.ParamType):
    """``auto`` (None: from the usable cores) or a worker count >= 0."""

    name = "auto|N"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Optional[int]:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            count = int(value)
        except ValueError:
            self.fail("{!r} is neither 'auto' nor a whole number".format(value), param, ctx)
        if count < 0:
            self.fail("needs 0 or more workers, got {}".format(count), param, ctx)
        return count


class AutoNumber(click.ParamType):
    """``auto`` (None: the config's default rule) or a number (an int unless ``kind`` is float), at least
    ``minimum`` if given (else the config dataclass checks it, with its own message)."""

    def __init__(self, minimum: Optional[float] = None, kind: type = int) -> None:
        self.minimum, self.kind = minimum, kind
        self.name = "auto|N" if kind is int else "auto|X"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            number = self.kind(value)
        except ValueError:
            what = "whole number" if self.kind is int else "number"
            self.fail("{!r} is neither 'auto' nor a {}".format(value, what), param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail("must be >= {:g}, got {}".format(self.minimum, number), param, ctx)
        return number


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses inf (its range checks already refuse nan): a usage error on
    parsing, not a failure after minutes of work."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


workers_option = click.option(
    "--workers",
    type=WorkersParam(),
    default="auto",  # None in the config dataclasses
    show_default=True,
    help="DataLoader worker processes: 'auto' (the usable cores, at most 8; in a distributed run, each process's "
    "share) or a number (0: load in the main process).",
)


def device_option(default: str, help: str = "Torch device: " + DEVICE_HELP) -> Callable[[F], F]:
    """``--device`` of the commands that run torch (training, features): auto, cpu, cuda or cuda:N, checked on
    parsing (before any work)."""

    return click.option("--device", type=DeviceName(), default=default, show_default=True, help=help)


def runtime_device_option(default: str) -> Callable[[F], F]:
    """``--device`` of the commands that run an exported model: the ONNX Runtime execution provider."""
    return click.option(
        "--device",
        type=click.Choice(RUNTIME_DEVICES),
        default=default,
        show_default=True,
        help="ONNX Runtime execution provider.",
    )


def batch_size_option(default: int, help: Optional[str] = None) -> Callable[[F], F]:
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def json_option(what: str = "the report") -> Callable[[F], F]:
    """``--json``: print ``what`` as JSON to stdout instead of text (passed to the command as ``as_json``)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print {} as JSON to stdout instead of text.".format(what)
    )


def checked_out_path(folder: bool) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that checks an output path while the command line is parsed, before any work: a
    regular file in its place or among its parents is a one-line error (``ConfigError``, exit code 1)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            check_out_path(Path(value), (param.opts or ["--out"])[0], folder)
        return value

    return check


def out_option(help: str, required: bool = False, **path_options: Any) -> Callable[[F], F]:
    """``--out``: where the command writes (a folder, or a file with ``dir_okay=False``), checked on parsing by
    ``check_out_path`` (not by click's ``file_okay``/``dir_okay``, whose usage errors take several lines)."""
    folder = path_options.pop("dir_okay", True)
    path_options.pop("file_okay", None)
    return click.option(
        "--out",
        type=click.Path(path_type=Path, **path_options),
        default=None,
        required=required,
        callback=checked_out_path(folder),
        help=help,
    )


def _warn(message: str) -> None:
    click.echo("Warning: " + message, err=True)


def deprecated_alias(
    old: str, new: str, dest: str, values: Optional[Dict[str, Any]] = None, **option: Any
) -> Callable[[F], F]:
    """A hidden option ``old`` that still works for one release: it warns on stderr and sets ``dest`` (the
    parameter of ``new``), its value translated through ``values`` if given. Needs ``cls=AliasedCommand``."""

    def record(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if ctx.get_parameter_source(param.name or "") == ParameterSource.COMMANDLINE:
            _warn("{} is deprecated and will be removed in the next release; use {}".format(old, new))
            value = values.get(value, value) if values else value
            ctx.meta.setdefault(_ALIASES, []).append((old, new, dest, value))
        return value

    return click.option(old, hidden=True, expose_value=False, callback=record, **option)


def no_effect_flag(flag: str, why: str) -> Callable[[F], F]:
    """A hidden flag that does nothing any more: it warns on stderr, for one release, then goes."""

    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            _warn("{} has no effect and will be removed ({})".format(flag, why))
        return value

    return click.option(flag, is_flag=True, hidden=True, callback=warn)


_ALIASES = "edgetl.deprecated_aliases"


class AliasedCommand(click.Command):
    """A command with ``deprecated_alias`` options: after parsing, an alias sets its new option's value
    (a usage error when both are given with different values)."""

    def parse_args(self, ctx: click.Context, args: Sequence[str]) -> Any:
        rest = super().parse_args(ctx, list(args))
        aliases: Sequence[Tuple[str, str, str, Any]] = ctx.meta.pop(_ALIASES, [])
        for old, new, dest, value in aliases:
            given = ctx.get_parameter_source(dest) == ParameterSource.COMMANDLINE
            if given and ctx.params[dest] != value:
                raise click.UsageError("{} (deprecated) and {} disagree; give only {}".format(old, new, new), ctx)
            ctx.params[dest] = value
        return rest
