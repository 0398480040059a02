"""Typed, validated hyper-parameter configs.

Every method's hyper-parameters live in a dataclass derived from `Config`. Each field is declared
with `option(default, help, ...)`, which records its help text and its accepted range or choices;
`Config.__post_init__` checks them all, so a bad value fails at construction with a message naming
the key, the value and what is accepted. Configs round-trip through plain dicts (YAML/JSON) and
accept string values from the command line (`--set ewc.lambda=100`).

Field names that clash with Python keywords end in `_` (`lambda_`); their public key drops it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from ..errors import ConfigError

C = TypeVar("C", bound="Config")


_HINTS: dict[type, dict[str, Any]] = {}  # Config class -> its resolved type hints


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[Any] | None = None,
    allow_inf: bool = False,
) -> Any:
    """Declare a config field with help text and an accepted range.

    `low`/`high` bound numbers (inclusive; `low_open=True` / `high_open=True` make a bound
    exclusive); `choices` restricts to a set of values (a `Literal[...]` type does the same).
    A float is refused when it is NaN or infinite (training on it only yields NaN), unless
    `allow_inf=True` declares ±inf a meaningful value (NaN never is).
    """
    metadata = {"help": help, "low": low, "high": high, "low_open": low_open,
                "high_open": high_open, "choices": choices, "allow_inf": allow_inf}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def public_key(field_name: str) -> str:
    """`lambda_` -> `lambda`: the key users type."""
    return field_name[:-1] if field_name.endswith("_") else field_name


@dataclasses.dataclass
class Config:
    """Base class of all configs: validation, dict round-trip, string parsing, help."""

    _owner: ClassVar[str] = "config"  # shown in messages, e.g. "ewc"
    # keys of options that no longer exist -> what replaced them (a config naming one is refused)
    removed: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = self._hints()
        for field in dataclasses.fields(self):
            hint = hints[field.name]
            value = _coerce(self._owner, field, getattr(self, field.name), hint)
            setattr(self, field.name, value)
            _check_bounds(self._owner, field, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override and raise `ConfigError`."""

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        """The resolved type hints of the class's fields, worked out once per class (resolving
        them evaluates every annotation string)."""
        hints = _HINTS.get(cls)
        if hints is None:
            hints = _HINTS[cls] = typing.get_type_hints(cls)
        return hints

    @classmethod
    def keys(cls) -> list[str]:
        return [public_key(f.name) for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None) -> C:
        """Build from public keys (`lambda`) or field names (`lambda_`); refuse unknown keys."""
        by_key = {public_key(f.name): f.name for f in dataclasses.fields(cls)}
        by_key.update({f.name: f.name for f in dataclasses.fields(cls)})
        kwargs = {}
        for key, value in (values or {}).items():
            if key in cls.removed:
                raise ConfigError(f"{cls._owner}.{key} was removed: {cls.removed[key]}")
            if key not in by_key:
                accepted = ", ".join(cls.keys()) or "(none)"
                raise ConfigError(
                    f"unknown key '{key}' for {cls._owner}; accepted keys: {accepted}")
            kwargs[by_key[key]] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {public_key(f.name): _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(key, type, default, help) for every field, for `lifelong list --verbose` and docs."""
        rows = []
        hints = cls._hints()
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((public_key(f.name), _type_name(hints[f.name]), default,
                         f.metadata["help"]))
        return rows


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _coerce(owner: str, field: dataclasses.Field, value: Any, tp: Any) -> Any:
    """Convert `value` (possibly a string from the command line) to the field's declared type."""
    name = f"{owner}.{public_key(field.name)}"
    if _is_union(tp):
        members = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in members:
                return None
        others = [m for m in members if m is not type(None)]
        if len(others) == 1:  # Optional[X]: X's own message says what is accepted
            return _coerce(owner, field, value, others[0])
        for member in others:
            try:
                return _coerce(owner, field, value, member)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: cannot use {value!r}; expected {_type_name(tp)}")
    if get_origin(tp) is Literal:
        allowed = get_args(tp)
        for candidate in allowed:
            if value == candidate or (isinstance(value, str) and str(candidate) == value):
                return candidate
        raise ConfigError(
            f"{name}: {value!r} is not accepted; choose one of {', '.join(map(str, allowed))}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if get_origin(tp) in (tuple, list):
        (item_type, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a comma-separated list, got {value!r}")
        items = [value_ if item_type is Any else _coerce(owner, field, value_, item_type)
                 for value_ in value]
        return tuple(items) if get_origin(tp) is tuple else items
    if tp is dict or get_origin(tp) is dict:  # e.g. a config file's `method_params: 3`
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping (KEY: VALUE), got {value!r}")
        (_, item_type) = get_args(tp) or (Any, Any)
        if item_type is dict:  # a mapping of mappings: {ewc: {lambda: 100}}
            for key, item in value.items():
                if not isinstance(item, Mapping):
                    raise ConfigError(f"{name}.{key}: expected a mapping (KEY: VALUE), got "
                                      f"{item!r}")
    return value


def _check_bounds(owner: str, field: dataclasses.Field, value: Any) -> None:
    meta = field.metadata
    name = f"{owner}.{public_key(field.name)}"
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not accepted; choose one of "
                          f"{', '.join(map(str, choices))}")
    low, high = meta.get("low"), meta.get("high")
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if isinstance(item, float) and not math.isfinite(item) and (
                math.isnan(item) or not meta.get("allow_inf")):
            raise ConfigError(f"{name}: {item!r} is not accepted; give a finite number")
        too_low = low is not None and (item <= low if meta.get("low_open") else item < low)
        too_high = high is not None and (item >= high if meta.get("high_open") else item > high)
        if too_low or too_high:
            lower = "" if low is None else (f"> {low}" if meta.get("low_open") else f">= {low}")
            upper = "" if high is None else (f"< {high}" if meta.get("high_open") else f"<= {high}")
            accepted = " and ".join(part for part in (lower, upper) if part)
            raise ConfigError(f"{name}: {item!r} is out of range; accepted: {accepted}")
