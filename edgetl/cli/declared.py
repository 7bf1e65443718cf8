"""Commands whose options are generated from config dataclasses (``edgetl.core.options``): one declaration per
option, help in sections by group, ``--config FILE``, shortcut flags, and errors that name flags.

Precedence: the command line, then the ``--config`` file, then the fields' defaults. A shortcut flag
(``--int8``) given on the command line sets its field over the file's value.
"""

from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
from click.core import ParameterSource

from edgetl.cli.options import AutoNumber, DeviceName, FiniteFloatRange, WorkersParam, checked_out_path
from edgetl.core.options import AUTO, OptionSpec, Shortcut, declared, flag_of, flags_of, read_config_file
from edgetl.errors import ConfigError

FLAGS_KEY = "edgetl.flags"  # ctx.meta: field -> flag of the running command, for error messages
_SHORTCUTS = "edgetl.shortcuts"
OTHER = "Other options"
CONFIG_HELP = (
    "Options from a JSON file (YAML with PyYAML installed) of field names and values, e.g. a run's config.json "
    "or a bundle's export_report.json 'config'; options on the command line override it."
)


class AutoChoice(click.Choice):
    """A choice, or ``auto`` (None: the config's rule decides)."""

    def __init__(self, choices: Sequence[str]) -> None:
        super().__init__((AUTO,) + tuple(choices))

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value is None:
            return None
        chosen = super().convert(value, param, ctx)
        return None if chosen == AUTO else chosen


class IntList(click.ParamType):
    """Whole numbers >= 1, comma-separated (``1,8``), or a list of them (from a config file)."""

    name = "N,N,..."

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        try:
            numbers = tuple(int(v) for v in items if str(v).strip())
        except ValueError:
            self.fail("a comma-separated list of whole numbers, e.g. 1,8", param, ctx)
        if not numbers or min(numbers) < 1:
            self.fail("numbers must be >= 1", param, ctx)
        return numbers


class DeclaredOption(click.Option):
    """An option generated from a field: it knows its field and its help section."""

    def __init__(self, *args: Any, group: str = "", field: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group, self.field = group, field


def click_type(spec: OptionSpec) -> Any:
    """The click type of a declared option, from its spec alone."""
    if spec.choices:
        return AutoChoice(spec.choices) if spec.auto else click.Choice(spec.choices)
    if spec.kind == "device":
        return DeviceName()
    if spec.kind == "workers":
        return WorkersParam()
    if spec.kind == "ints":
        return IntList()
    if spec.kind == "path":
        return click.Path()
    if spec.kind in ("int", "float"):
        number: type = int if spec.kind == "int" else float
        if spec.auto:
            return AutoNumber(spec.minimum, number)
        if number is float:  # inf and nan are refused while parsing, not after minutes of work
            return FiniteFloatRange(min=spec.minimum)
        return click.IntRange(min=int(spec.minimum)) if spec.minimum is not None else number
    return click.STRING


def _default(f: Field, spec: OptionSpec) -> Any:
    if spec.auto:
        return AUTO
    if f.default is MISSING:
        return None
    if spec.kind == "ints":
        return ",".join(str(v) for v in f.default)
    return tuple(f.default) if spec.multiple else f.default


def params_for(cls: Any) -> Tuple[List[click.Argument], List[click.Option]]:
    """(arguments, options) of the declared fields of ``cls``: one option per field, plus its shortcuts."""
    arguments: List[click.Argument] = []
    options: List[click.Option] = []
    for f, spec in declared(cls):
        if spec.argument:
            required = f.default is MISSING
            arguments.append(click.Argument([f.name], required=required, type=click_type(spec)))
            continue
        default = _default(f, spec)
        flags = list(spec.flags) or [flag_of(f.name)]
        common: Dict[str, Any] = dict(help=spec.help or None, hidden=spec.hidden, group=spec.group, field=f.name)
        if spec.kind == "flag":
            options.append(DeclaredOption(flags + [f.name], is_flag=True, default=bool(default), **common))
        elif spec.kind == "switch":
            options.append(DeclaredOption(flags + [f.name], default=default, **common))
        else:
            options.append(
                DeclaredOption(
                    flags + [f.name],
                    type=click_type(spec),
                    default=default,
                    multiple=spec.multiple,
                    show_default=default is not None and default != (),
                    metavar=spec.metavar,
                    callback=checked_out_path(folder=True) if spec.output else None,
                    **common,
                )
            )
        options += [_shortcut_option(f.name, spec, shortcut) for shortcut in spec.shortcuts]
    return arguments, options


def _shortcut_option(name: str, spec: OptionSpec, shortcut: Shortcut) -> click.Option:
    def record(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            ctx.meta.setdefault(_SHORTCUTS, []).append((shortcut.flag, name, shortcut.value))
        return value

    return DeclaredOption(
        [shortcut.flag, f"{name}_{shortcut.value}"],
        is_flag=True,
        expose_value=False,
        callback=record,
        help=shortcut.help,
        group=spec.group,
        field=name,
    )


class DeclaredCommand(click.Command):
    """A command whose options are the declared fields of ``configs`` (after its hand-written arguments, before
    its hand-written options), with ``--config FILE``; ``--help`` lists them in ``groups``' order, one section
    per group, then the hand-written options."""

    def __init__(self, *args: Any, configs: Sequence[Any] = (), groups: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configs, self.groups = tuple(configs), tuple(groups)
        self.flags = flags_of(*self.configs)
        arguments: List[click.Parameter] = []
        options: List[click.Parameter] = []
        for cls in self.configs:
            new_arguments, new_options = params_for(cls)
            arguments += new_arguments
            options += new_options
        given: List[click.Parameter] = list(kwargs.get("params") or [])
        config = click.Option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False),
            metavar="FILE",
            is_eager=True,
            expose_value=False,
            callback=self._read_config,
            help=CONFIG_HELP,
        )
        self.params = (
            [p for p in given if isinstance(p, click.Argument)]
            + arguments
            + options
            + [p for p in given if not isinstance(p, click.Argument)]
            + [config]
        )

    @property
    def fields(self) -> Dict[str, OptionSpec]:
        return {f.name: spec for cls in self.configs for f, spec in declared(cls)}

    def parse_args(self, ctx: click.Context, args: Sequence[str]) -> Any:
        ctx.meta[FLAGS_KEY] = self.flags
        rest = super().parse_args(ctx, list(args))
        self._apply_shortcuts(ctx)
        return rest

    def _read_config(self, ctx: click.Context, param: click.Parameter, value: Any) -> None:
        """Reads the ``--config`` file into ``ctx.default_map``: a value the command line does not give comes
        from it. An unknown key or a bad value is a one-line error naming the key."""
        if value is None or ctx.resilient_parsing:
            return
        path = Path(value)
        specs = self.fields
        params = {p.name: p for p in self.params if p.name in specs}
        mapped: Dict[str, Any] = {}
        for key, raw in read_config_file(path).items():
            if key not in specs:
                raise ConfigError(f"{path}: {key!r} is not an option of edgetl {ctx.info_name}")
            mapped_value = self._file_value(ctx, path, key, raw, params[key], specs[key])
            if mapped_value is not None:
                mapped[key] = mapped_value
        ctx.default_map = dict(ctx.default_map or {}, **mapped)

    @staticmethod
    def _file_value(
        ctx: click.Context, path: Path, key: str, raw: Any, param: click.Parameter, spec: OptionSpec
    ) -> Any:
        """``raw`` as the default map takes it (None: the default), checked as the command line would be."""
        if raw is None:
            if spec.auto:
                return AUTO
            if param.default is not None:
                raise ConfigError(f"{path}: {key} cannot be null")
            return None
        if param.multiple and isinstance(raw, str):
            raw = [raw]
        if spec.kind in ("flag", "switch") and not isinstance(raw, bool):
            raise ConfigError(f"{path}: {key} must be true or false, got {raw!r}")
        try:
            param.type_cast_value(ctx, raw)
        except click.BadParameter as exc:
            raise ConfigError(f"{path}: {key}: {exc.message}") from None
        return raw

    def _apply_shortcuts(self, ctx: click.Context) -> None:
        """A shortcut given sets its field; it conflicts with another shortcut or with the field's own flag
        given on the command line with another value."""
        chosen: Dict[str, List[Tuple[str, str]]] = {}
        for flag, name, value in ctx.meta.pop(_SHORTCUTS, []):
            chosen.setdefault(name, []).append((flag, value))
        for name, given in chosen.items():
            flags = " and ".join(flag for flag, _ in given)
            if len({value for _, value in given}) > 1:
                raise ConfigError(f"choose one of {flags}")
            flag, value = given[0]
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE and ctx.params[name] != value:
                raise ConfigError(f"{flag} and {self.flags[name]} {ctx.params[name]} disagree; give one of them")
            ctx.params[name] = value

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: Dict[str, List[Tuple[str, str]]] = {group: [] for group in self.groups}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):  # in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "") or OTHER, []).append(record)
        for group, rows in sections.items():
            if rows:
                with formatter.section(group):
                    formatter.write_dl(rows)


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
