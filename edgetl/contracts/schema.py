"""A small schema check for the metadata files edgetl reads back (``bundle.json``, ``split.json``,
``preprocess.json``, ...): hand-edited or half-written files fail on load with one line naming the file and
the key, instead of a KeyError or a silently defaulted value later.

A schema is a ``Check``: a function from a value to the problem with it (None when it is fine). The builders
below compose them; ``read_json`` reads a file and applies one. Torch-free, standard library only, Python 3.8:
part of the device runtime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Type

from edgetl.errors import CheckpointError, EdgetlError

Check = Callable[[Any], Optional[str]]


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _at(key: Any, problem: str) -> str:
    """``[key]`` before a problem found inside that entry: ``["val"][0][1] must be an integer``."""
    return "[{}]{}{}".format(key, "" if problem.startswith("[") else " ", problem)


def is_str(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else "must be a string, got " + _shown(value)


def is_int(value: Any) -> Optional[str]:
    return (
        None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer, got " + _shown(value)
    )


def is_number(value: Any) -> Optional[str]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "must be a finite number, got " + _shown(value)


def is_bool(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false, got " + _shown(value)


def anything(value: Any) -> Optional[str]:
    return None


def optional(check: Check) -> Check:
    """``check``, or JSON null."""
    return lambda value: None if value is None else check(value)


def one_of(*choices: Any) -> Check:
    return lambda value: (
        None
        if value in choices
        else "must be one of {}, got {}".format(", ".join(_shown(c) for c in choices), _shown(value))
    )


def list_of(item: Check, length: Optional[int] = None, min_length: int = 0) -> Check:
    """A JSON array of items that pass ``item``: exactly ``length`` of them when given, else at least
    ``min_length``."""

    def check(value: Any) -> Optional[str]:
        if not isinstance(value, list):
            return "must be a list, got " + _shown(value)
        if length is not None and len(value) != length:
            return "must have {} items, got {}".format(length, len(value))
        if len(value) < min_length:
            return "must have at least {} item(s), got {}".format(min_length, len(value))
        for index, entry in enumerate(value):
            problem = item(entry)
            if problem:
                return _at(index, problem)
        return None

    return check


def fixed(*items: Check) -> Check:
    """A JSON array of exactly ``len(items)`` entries, the i-th passing ``items[i]`` (a tuple)."""

    def check(value: Any) -> Optional[str]:
        if not isinstance(value, list) or len(value) != len(items):
            return "must be a list of {} items, got {}".format(len(items), _shown(value))
        for index, (entry, item) in enumerate(zip(value, items)):
            problem = item(entry)
            if problem:
                return _at(index, problem)
        return None

    return check


def dict_of(value_check: Check) -> Check:
    """A JSON object with any keys, each value passing ``value_check``."""

    def check(value: Any) -> Optional[str]:
        if not isinstance(value, dict):
            return "must be an object, got " + _shown(value)
        for key, entry in value.items():
            problem = value_check(entry)
            if problem:
                return _at(json.dumps(key), problem)
        return None

    return check


def record(required: Dict[str, Check], optional_keys: Optional[Dict[str, Check]] = None) -> Check:
    """A JSON object with every key of ``required`` and any of ``optional_keys`` (other keys are allowed:
    newer versions may add some)."""

    def check(value: Any) -> Optional[str]:
        if not isinstance(value, dict):
            return "must be an object, got " + _shown(value)
        missing = [key for key in required if key not in value]
        if missing:
            return "lacks {}".format(", ".join(repr(key) for key in missing))
        for key, key_check in list(required.items()) + list((optional_keys or {}).items()):
            if key in value:
                problem = key_check(value[key])
                if problem:
                    return _at(json.dumps(key), problem)
        return None

    return check


def validate(data: Any, schema: Check, source: Path, error: Type[EdgetlError] = CheckpointError) -> Any:
    """``data`` if it passes ``schema``, else ``error`` with one line naming ``source`` and the key."""
    problem = schema(data)
    if problem:
        raise error("{} is malformed: {}".format(source, problem))
    return data


def read_json(path: Path, schema: Check, error: Type[EdgetlError] = CheckpointError) -> Any:
    """The JSON content of ``path`` checked against ``schema``; one-line ``error`` naming the file when it is
    missing, not JSON, or does not fit."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error("{} is missing".format(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error("cannot read {}: {}".format(path, exc)) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise error("{} is not valid JSON: {}".format(path, exc)) from None
    return validate(data, schema, path, error)
