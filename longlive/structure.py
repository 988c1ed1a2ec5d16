"""Strict structuring of TOML tables into frozen attrs classes, with one-line errors.

TOML values already carry types, so nothing is coerced: `3` never becomes `"3"`, a bare string
never becomes a list, a bool is not an int. Unknown keys are errors that name the nearest valid
key. Every error is a ConfigError that names the full key path (e.g. `sampler.steps`), the value
found and what is allowed.

Numbers must be finite (NaN and inf are rejected for every float field), and every numeric
field of a schema carries a range validator with an upper bound the machine can run
(tests/reliability/test_validate.py checks every config class for it).

Supported field types: str, int, float (ints accepted), bool, `tuple[T, ...]` of those, nested
attrs classes (TOML tables), and `X | None` (an absent key keeps the default).
"""
from __future__ import annotations

import difflib
import math
import re
import types
import typing
from typing import Any, Callable, Iterable, TypeVar

import attrs

from longlive.errors import ConfigError

T = TypeVar("T")


def structure(table: Any, cls: type[T], *, where: str) -> T:
    """Build `cls` from a TOML table; `where` is the key path of the table (e.g. "sampler")."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, found {_show(table)}")
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = [k for k in table if k not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{_join(where, key)}: unknown key{_nearest(key, fields)}; "
                          f"valid keys of [{where}]: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in table.items():
        kwargs[name] = _value(value, hints[name], _join(where, name))
    for name, field in fields.items():
        if name not in kwargs and field.default is attrs.NOTHING:
            raise ConfigError(f"{_join(where, name)}: missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(_prefix(str(e), where)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def unstructure(obj: Any) -> Any:
    """The inverse of `structure`: attrs objects to plain dicts/lists (TOML-writable)."""
    if attrs.has(type(obj)):
        return {f.name: unstructure(getattr(obj, f.name)) for f in attrs.fields(type(obj))
                if getattr(obj, f.name) is not None}
    if isinstance(obj, (tuple, list)):
        return [unstructure(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    return obj


def _value(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _value(value, options[0], path)
        for option in options:
            try:
                return _value(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(hint)}, found {_show(value)}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of {_type_name(args[0])}, found {_show(value)}; "
                              f"write {path.rsplit('.', 1)[-1]} = [{_show(value)}]")
        return tuple(_value(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if attrs.has(hint):
        return structure(value, hint, where=path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, found {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, found {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, found {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, found {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, found {_show(value)}")
        return value
    if hint is Any:
        return value
    raise TypeError(f"structure: unsupported field type {hint!r} at {path}")  # schema bug, not input


# ---- validators that raise ConfigError with the allowed values ----------------------------


def one_of(allowed: Iterable[str]) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: the value must be one of `allowed` (nearest name suggested)."""
    allowed = tuple(allowed)

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            raise ConfigError(f"{attribute.name}: {_show(value)} is not allowed"
                              f"{_nearest(str(value), allowed)}; allowed: {', '.join(map(str, allowed))}")

    return check


def at_least(low: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: value >= low."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value < low:
            raise ConfigError(f"{attribute.name}: {_show(value)} is out of range; it must be >= {low}")

    return check


def in_range(low: float, high: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: low <= value <= high."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{attribute.name}: {_show(value)} is out of range; "
                              f"it must be between {low} and {high}")

    return check


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def file_name() -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: a plain name (letters, digits, `_.+-`; no separators, not `.`/`..`, no leading dot)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not _NAME.fullmatch(value):
            raise ConfigError(f"{attribute.name}: {_show(value)} is not a plain name; use letters, digits and "
                              f"_ . + - (no / or \\, at most 128 characters, not starting with a dot)")

    return check


def relative_folder() -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: an absolute folder, or a relative one that does not climb out with `..`."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        parts = value.replace("\\", "/").split("/")
        if not value.strip() or ".." in parts or "\0" in value:
            raise ConfigError(f"{attribute.name}: {_show(value)} must be a folder below the working directory "
                              f"(no ..) or an absolute path")

    return check


def optional(validator: Callable[[Any, attrs.Attribute, Any], None]) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: None, or a value `validator` accepts."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return check


# ---- message helpers -----------------------------------------------------------------------


def nearest(name: str, options: Iterable[str]) -> str:
    """' (did you mean "x"?)' or '' when nothing is close."""
    return _nearest(name, options)


def _nearest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _prefix(message: str, where: str) -> str:
    """Qualify a validator message `field: ...` with its table path."""
    head, sep, rest = message.partition(": ")
    if not where or not sep or " " in head or head == where or head.startswith(where + "."):
        return message
    return f"{where}.{head}: {rest}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 80 else f'"{value[:60]}..." ({len(value)} characters)'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
