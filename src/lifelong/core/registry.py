"""A registry of methods: one explicit `register_method` call per method, duplicates refused."""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import ConfigError
from .method import Method

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method class under `cls.name`; usable as a decorator."""
    if not cls.name or not cls.description:
        raise ValueError(f"{cls.__name__} needs a `name` and a one-line `description`")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"a method named '{cls.name}' is already registered "
                         f"({_METHODS[cls.name].__module__}.{_METHODS[cls.name].__name__})")
    cls.Config._owner = cls.name
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> dict[str, str]:
    """Every registered method's name and one-line description, sorted by name."""
    _load_builtin()
    return {name: _METHODS[name].description for name in sorted(_METHODS)}


def get_method_class(name: str) -> type[Method]:
    _load_builtin()
    if name not in _METHODS:
        raise ConfigError(unknown_name("method", name, _METHODS))
    return _METHODS[name]


def unknown_name(kind: str, name: str, accepted: Any) -> str:
    names = sorted(accepted)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind} '{name}'{hint}; accepted: {', '.join(names)}"


def _load_builtin() -> None:
    from .. import methods  # noqa: F401  (registers the built-in methods on import)
