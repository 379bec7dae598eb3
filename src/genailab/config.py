"""Typed, frozen configs: one dataclass per component, saved as JSON, overridable by dotted keys.

A component's constructor takes its config. Configs hold only plain data (numbers, strings, bools,
tuples and nested configs), validate themselves in ``__post_init__`` and round-trip through JSON.
YAML files and ``--set key=value`` overrides are parsed at the CLI edge by :func:`apply_overrides`,
which checks every key against the dataclass fields and converts values to the declared types, so an
unknown key or a badly typed value fails with a message instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from genailab.errors import InvalidInputError

__all__ = [
    "Config",
    "apply_overrides",
    "check_choice",
    "check_count",
    "check_fraction",
    "check_positive",
    "load_yaml_overrides",
    "parse_set_options",
]

C = TypeVar("C", bound="Config")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise if ``value`` is not one of ``allowed``, listing the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise InvalidInputError(f"{name}={value!r} is not allowed; expected one of {', '.join(map(repr, allowed))}.")


def check_positive(name: str, value: float, *, strict: bool = True, integer: bool = False) -> None:
    """Raise unless ``value`` is a finite positive (or non-negative) number, optionally an integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name}={value!r} must be a number.")
    if integer and not isinstance(value, int):
        raise InvalidInputError(f"{name}={value!r} must be an integer.")
    if not math.isfinite(value) or (value <= 0 if strict else value < 0):
        raise InvalidInputError(f"{name}={value!r} must be {'> 0' if strict else '>= 0'} and finite.")


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as a Python ``int``, refusing a bool, a non-integer or a value below ``minimum``.

    Parameters
    ----------
    value
        The argument to check.
    name
        Its name, for the message.
    minimum
        The smallest allowed value.

    Raises
    ------
    InvalidInputError
        If ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name}={value!r}; expected an integer >= {minimum}.")
    return int(value)


def check_fraction(name: str, value: float, *, inclusive: bool = False) -> None:
    """Raise unless ``0 <= value < 1`` (or ``<= 1`` when ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name}={value!r} must be a finite number in [0, 1).")
    upper_ok = value <= 1 if inclusive else value < 1
    if value < 0 or not upper_ok:
        raise InvalidInputError(f"{name}={value!r} must be in [0, {'1]' if inclusive else '1)'}.")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class of every genailab config (use with ``@dataclass(frozen=True)``).

    Subclasses validate in ``__post_init__`` and may add size presets as classmethods.
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (tuples become lists; nested configs become dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a plain dict, converting lists to tuples; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}.")
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInputError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}.")
        kwargs = {k: _coerce(f"{cls.__name__}.{k}", v, hints[k], from_string=False) for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _parse_scalar_string(text: str) -> Any:
    """Parse a ``--set`` value the YAML way (``8`` -> int, ``true`` -> bool, ``[a, b]`` -> list)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(name: str, value: Any, hint: Any, *, from_string: bool) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise naming ``name``."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if from_string and isinstance(value, str) and value.lower() in {"none", "null", "~"} and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, from_string=from_string)
            except InvalidInputError as err:
                errors.append(str(err))
        raise InvalidInputError(f"{name}={value!r} does not match {hint}: {'; '.join(errors)}")
    if origin is Literal:
        if from_string and isinstance(value, str):
            for arg in args:
                if str(arg) == value:
                    return arg
        if value in args:
            return value
        raise InvalidInputError(f"{name}={value!r} is not allowed; expected one of {', '.join(map(repr, args))}.")
    if origin in (tuple, Sequence) or hint is tuple:
        if from_string and isinstance(value, str):
            parsed = _parse_scalar_string(value)
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"{name}={value!r} must be a list.")
        if args and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", v, args[0], from_string=from_string) for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise InvalidInputError(f"{name}={value!r} must have {len(args)} items.")
            return tuple(
                _coerce(f"{name}[{i}]", v, a, from_string=from_string)
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value)
        raise InvalidInputError(f"{name} must be a mapping of {hint.__name__} fields, got {value!r}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise InvalidInputError(f"{name}={value!r} must be true or false.")
    if hint is int:
        if from_string and isinstance(value, str):
            value = _parse_scalar_string(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InvalidInputError(f"{name}={value!r} must be an integer.")
        return value
    if hint is float:
        if from_string and isinstance(value, str):
            value = _parse_scalar_string(value)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"{name}={value!r} must be a number.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            if from_string:
                return str(value)
            raise InvalidInputError(f"{name}={value!r} must be a string.")
        return value
    if hint is Any:
        return value
    return value


def parse_set_options(items: Sequence[str]) -> dict[str, str]:
    """Parse CLI ``--set key=value`` items into a dict of dotted keys to raw strings."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"--set {item!r} must look like key=value (e.g. --set train.max_epochs=5).")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise InvalidInputError(f"--set {item!r} has an empty key.")
        out[key] = value.strip()
    return out


def load_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML config into a flat dict of dotted keys (nested mappings are flattened)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"config={str(path)!r} does not exist or is not a file.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InvalidInputError(f"config={str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"config={str(path)!r} must hold a mapping at the top level.")
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                walk(f"{key}.", v)
            else:
                flat[key] = v

    walk("", data)
    return flat


def apply_overrides(config: C, overrides: Mapping[str, Any], *, from_string: bool = True) -> C:
    """Return ``config`` with dotted-key ``overrides`` applied and validated.

    Parameters
    ----------
    config
        A (possibly nested) config.
    overrides
        ``{"train.max_epochs": "5", "vae.n_tokens": 8}``. Keys are checked against the dataclass
        fields; values are converted to the declared types (strings parsed YAML-style).
    from_string
        Whether values may be strings to parse (CLI); False for values already typed (YAML).

    Raises
    ------
    InvalidInputError
        For an unknown key or a value that cannot be converted.
    """
    for dotted, raw in overrides.items():
        config = _apply_one(config, dotted.split("."), raw, dotted, from_string=from_string)
    return config


def _apply_one(config: C, path: list[str], raw: Any, dotted: str, *, from_string: bool) -> C:
    head, rest = path[0], path[1:]
    fields = {f.name: f for f in dataclasses.fields(config) if f.init}
    if head not in fields:
        raise InvalidInputError(
            f"unknown config key {dotted!r}: {type(config).__name__} has no field {head!r}; "
            f"valid keys are {sorted(fields)}."
        )
    hint = get_type_hints(type(config))[head]
    current = getattr(config, head)
    if rest:
        if not isinstance(current, Config):
            raise InvalidInputError(f"unknown config key {dotted!r}: {head!r} is not a nested section.")
        new_value: Any = _apply_one(current, rest, raw, dotted, from_string=from_string)
    else:
        new_value = _coerce(dotted, raw, hint, from_string=from_string)
    try:
        return dataclasses.replace(config, **{head: new_value})
    except InvalidInputError:
        raise
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{dotted}={raw!r}: {err}") from err
