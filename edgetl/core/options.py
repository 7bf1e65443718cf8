"""Options declared once: each field of a config dataclass carries its command-line form in its metadata.

A field made with :func:`option` holds an :class:`OptionSpec` (flag, help, group, kind, choices, what
``auto`` means); ``edgetl.cli.declared`` builds the click options and the grouped help from these specs
alone, never from type hints (they are strings under ``from __future__ import annotations``, and evaluating
modern ones breaks on Python 3.8). The same specs read a ``--config`` file. Torch- and click-free.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetl.errors import ConfigError

METADATA_KEY = "edgetl.option"
# str/int/float: a value; path: a file or folder name (a str); flag: --name, off by default; switch:
# --name/--no-name, None (auto) unless given; workers: "auto" or a count of worker processes; ints: a
# comma-separated list of whole numbers >= 1 (batch sizes); device: a torch device name, checked on parsing.
KINDS = ("str", "int", "float", "path", "flag", "switch", "workers", "ints", "device")
AUTO = "auto"


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets its field to ``value`` (``--int8`` for ``--precision int8``)."""

    flag: str
    value: str
    help: str


@dataclass(frozen=True)
class OptionSpec:
    """How one field appears on the command line. ``auto``: the field's None reads and shows as ``auto``."""

    help: str = ""
    group: str = ""
    kind: str = "str"
    flags: Tuple[str, ...] = ()  # () : --<field name with dashes>
    choices: Tuple[str, ...] = ()
    auto: bool = False
    minimum: Optional[float] = None
    metavar: Optional[str] = None
    multiple: bool = False
    argument: bool = False  # a positional argument (DATA, RUN) rather than an option
    output: bool = False  # a folder the command writes: checked while the command line is parsed
    hidden: bool = False
    shortcuts: Tuple[Shortcut, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def option(default: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field with its command-line form (``OptionSpec``'s arguments)."""
    return field(default=default, metadata={METADATA_KEY: OptionSpec(**spec)})


def declared(cls: Any) -> List[Tuple[Field, OptionSpec]]:
    """The fields of dataclass ``cls`` that carry an ``OptionSpec``, in declaration order."""
    return [(f, f.metadata[METADATA_KEY]) for f in fields(cls) if METADATA_KEY in f.metadata]


def flag_of(name: str, spec: Optional[OptionSpec] = None) -> str:
    """The flag of field ``name``: its spec's first, else ``--<name with dashes>``."""
    if spec is not None and spec.flags:
        return spec.flags[0].split("/")[0]
    return "--" + name.replace("_", "-")


def flags_of(*classes: Any) -> Dict[str, str]:
    """field name -> flag for the declared fields of ``classes`` (arguments by their upper-case name)."""
    names: Dict[str, str] = {}
    for cls in classes:
        for f, spec in declared(cls):
            names[f.name] = f.name.upper() if spec.argument else flag_of(f.name, spec)
    return names


def read_config_file(path: Path) -> Dict[str, Any]:
    """The options in a JSON or YAML file (a mapping of field name to value); one-line errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError.about("{config} file not found: {path}", path=path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: JSON needs nothing
        except ImportError:
            raise ConfigError(
                f"{path} is YAML, which needs PyYAML: pip install pyyaml (or give a .json file)"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def command_args(config: Any) -> List[str]:
    """The command-line arguments that make ``config`` (a declared dataclass): each field that differs from
    its default, by its flag (arguments by position)."""
    args: List[str] = []
    for f, spec in declared(config.__class__):
        value = getattr(config, f.name)
        if spec.argument:
            args.append(str(value))
            continue
        default = f.default if f.default is not MISSING else None
        if value == default or (spec.multiple and tuple(value) == tuple(default or ())):
            continue
        flags = (spec.flags[0] if spec.flags else flag_of(f.name)).split("/")
        if spec.kind == "flag":
            args.append(flags[0])
        elif spec.kind == "switch":
            args.append(flags[0] if value else flags[-1])
        elif spec.multiple:
            for item in value:
                args += [flags[0], str(item)]
        elif spec.kind == "ints":
            args += [flags[0], ",".join(str(v) for v in value)]
        else:
            args += [flags[0], AUTO if value is None else str(value)]
    return args
