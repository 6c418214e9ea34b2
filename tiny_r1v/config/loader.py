"""Typed, frozen dataclass configs: dataclass defaults <- YAML file <- `a.b.c=value` overrides.

A schema is a tree of frozen dataclasses. Values are type-checked against the type hints before
the top-level class's `validate()` runs, so its rules can rely on the types; `validate()`
returns the validated instance, resolved (through `dataclasses.replace`) where a field's
default depends on other fields.

Structural problems (unknown keys, wrong types, non-finite floats, missing required keys) are all
reported in one `ConfigError`; rule violations from `validate()` stop at the first.

A ConfigError's messages are relative to the config file: dotted keys, or a line and column for
a problem with the file itself. Callers name the file once, as the launchers do
(``<config>: <error>``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

# A bool is an int in Python; a config that says `n: true` is a mistake, so match exact types.
_SCALARS: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


class ConfigError(ValueError):
    """A configuration that does not fit its schema; `errors` holds (dotted key, rule) pairs.

    The key is empty for a problem of the file as a whole (missing, unreadable, not YAML).
    """

    def __init__(self, *errors: tuple[str, str]) -> None:
        self.errors = errors
        super().__init__("\n".join(f"{key}: {rule}" if key else rule for key, rule in errors))


def require(ok: bool, key: str, rule: str) -> None:
    """Raise a ConfigError for `key` (relative to the section being validated) unless `ok`."""
    if not ok:
        raise ConfigError((key, rule))


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Re-raise ConfigErrors with `label` (e.g. the run a config is made for) before each key:
    ``<label>: <key>``, or the label alone for a problem of the whole file."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(*((f"{label}: {key}" if key else label, rule) for key, rule in err.errors)) from None


@contextlib.contextmanager
def section(prefix: str) -> Iterator[None]:
    """Re-raise ConfigErrors from a sub-section's `validate()` with their keys under `prefix`."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(*((f"{prefix}.{key}", rule) for key, rule in err.errors)) from None


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`, plus YAML 1.2 floats like `1e-6` that YAML 1.1 reads as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, the YAML file at `path` and `key.sub=value` overrides.

    Override values are parsed as YAML (`x=3`, `x=0.5`, `x=true`, `x=[a,b]`, `x=null`); an
    override replaces whatever the file had at its key. Returns `cls.validate()`'s result.
    """
    raw = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        _apply_override(raw, override)
    errors: list[tuple[str, str]] = []
    cfg = _build(cls, raw, "", errors)
    if errors:
        raise ConfigError(*errors)
    return cfg.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), ready for YAML/JSON; loads back equal."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(("", "config file not found"))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(("", f"cannot read: {err}")) from None
    except yaml.YAMLError as err:
        raise ConfigError(("", f"invalid YAML: {_yaml_problem(err)}")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(("", f"top level must be a mapping, got {_describe(data)}"))
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line with 1-based positions.

    Its own text names the parsed stream ("<unicode string>" for text read beforehand) and
    spreads over several lines.
    """
    if isinstance(err, yaml.reader.ReaderError):
        return f"character {err.position + 1}: unacceptable character #x{err.character:04x} ({err.reason})"
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    problem = f"{_position(err.problem_mark)}: {err.problem}"
    if err.context and err.context_mark is not None and err.context_mark != err.problem_mark:
        problem += f" ({err.context} at {_position(err.context_mark)})"
    return problem


def _position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError((f"override {override!r}", "malformed, expected key.sub=value"))
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError((key, f"cannot parse override value {text!r}: {_yaml_problem(err)}")) from None
    node = raw
    for depth, part in enumerate(parts[:-1], start=1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError((".".join(parts[:depth]), f"expected a mapping, got {_describe(node)}"))
    node[parts[-1]] = value


def _build(cls: type, data: Any, key: str, errors: list[tuple[str, str]]) -> Any:
    """Instance of dataclass `cls` from mapping `data`; problems go to `errors` (then None)."""
    if not isinstance(data, dict):
        errors.append((key, f"expected a mapping, got {_describe(data)}"))
        return None
    n_errors = len(errors)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in fields:
            errors.append((_join(key, name), _unknown_key(str(name), list(fields))))
    kwargs = {}
    for name, field in fields.items():
        sub_key, tp = _join(key, name), hints[name]
        if name in data:
            kwargs[name] = _coerce(data[name], tp, sub_key, errors)
        elif dataclasses.is_dataclass(tp):
            # Build absent sections from their fields, so a missing required key is named.
            kwargs[name] = _build(tp, {}, sub_key, errors)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append((sub_key, "required, not set"))
    return cls(**kwargs) if len(errors) == n_errors else None


def _coerce(value: Any, tp: Any, key: str, errors: list[tuple[str, str]]) -> Any:
    """`value` checked against type hint `tp` (ints widened to float, lists to tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, errors)
    if origin in (typing.Union, types.UnionType):
        if len(args) != 2 or type(None) not in args:
            raise TypeError(f"{key}: unsupported annotation {tp} (only `X | None`)")
        inner = args[0] if args[1] is type(None) else args[1]
        return None if value is None else _coerce(value, inner, key, errors)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        errors.append((key, f"must be one of {list(args)}, got {value!r}"))
    elif origin in (list, tuple):
        variadic = origin is list or args[-1] is Ellipsis
        if not isinstance(value, list):
            errors.append((key, f"expected {_type_name(tp)}, got {_describe(value)}"))
        elif not variadic and len(value) != len(args):
            errors.append((key, f"expected {len(args)} items, got {len(value)}"))
        else:
            item_types = [args[0]] * len(value) if variadic else args
            return origin(
                _coerce(item, item_tp, f"{key}[{i}]", errors)
                for i, (item, item_tp) in enumerate(zip(value, item_types, strict=True))
            )
    elif tp in _SCALARS:
        if type(value) not in _SCALARS[tp]:
            errors.append((key, f"expected {tp.__name__}, got {_describe(value)}"))
        elif tp is float and not _finite(value):
            # A rule such as `lr > 0` holds for inf, and every comparison with nan is False.
            errors.append((key, f"must be a finite number, got {value}"))
        else:
            return tp(value)
    else:
        raise TypeError(f"{key}: unsupported annotation {tp}")
    return None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _unknown_key(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (known: {', '.join(known)})"


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    return repr(tp).replace("typing.", "")
