"""A registry of methods: one explicit `register_method` call per method, duplicates refused."""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import ConfigError
from .method import Method

_METHODS: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}  # a name for a composition: "lora-replay" -> "lora+replay"


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method class under `cls.name`; usable as a decorator."""
    if not cls.name or not cls.description:
        raise ValueError(f"{cls.__name__} needs a `name` and a one-line `description`")
    if cls.name in _ALIASES:
        raise ValueError(f"'{cls.name}' is already an alias of '{_ALIASES[cls.name]}'")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"a method named '{cls.name}' is already registered "
                         f"({_METHODS[cls.name].__module__}.{_METHODS[cls.name].__name__})")
    owner = vars(cls.Config).get("_owner")
    if owner is not None and owner != cls.name and owner in _METHODS:
        raise ValueError(f"{cls.__name__} shares its config class {cls.Config.__name__} with "
                         f"'{owner}'; give it a subclass of its own, so that messages name it")
    cls.Config._owner = cls.name
    _METHODS[cls.name] = cls
    return cls


def register_alias(name: str, spec: str) -> None:
    """Let `name` stand for the composition `spec` wherever a method spec is read (the papers'
    names for combinations, e.g. MIGU's "lora-replay" for `lora+replay`)."""
    if name in _METHODS or _ALIASES.get(name, spec) != spec:
        raise ValueError(f"'{name}' is already a method or an alias")
    _ALIASES[name] = spec


def expand_alias(name: str) -> list[str]:
    """The method names `name` stands for: itself, or the parts of the composition it aliases."""
    _load_builtin()
    return _ALIASES[name].split("+") if name in _ALIASES else [name]


def list_aliases() -> dict[str, str]:
    """Every alias and the composition it stands for, sorted by name."""
    _load_builtin()
    return dict(sorted(_ALIASES.items()))


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
