"""Typed configs: coercion from strings, ranges, choices, unknown keys, round-trips."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from lifelong.core.config import Config, option
from lifelong.errors import ConfigError
from lifelong.methods.ewc import EWCConfig


@dataclasses.dataclass
class Example(Config):
    _owner = "example"
    lambda_: float = option(1.0, "strength", low=0)
    rate: float = option(0.5, "in (0, 1]", low=0, high=1, low_open=True)
    count: int | None = option(None, "how many", low=1)
    mode: Literal["a", "b"] = option("a", "which")
    flag: bool = option(False, "on or off")
    decay: float = option(0.5, "in [0, 1)", low=0, high=1, high_open=True)
    removed = {"fused": "the compiled kernels are gone; drop the key"}
    sizes: tuple[int, ...] = option((1, 2), "widths", low=1)


def test_strings_from_the_command_line_are_coerced() -> None:
    cfg = Example.from_dict({"lambda": "1e4", "count": "3", "mode": "b", "flag": "true",
                             "sizes": "400,400"})
    assert cfg.lambda_ == 10000.0 and cfg.count == 3 and cfg.mode == "b" and cfg.flag is True
    assert cfg.sizes == (400, 400)
    assert Example.from_dict({"count": "none"}).count is None


@pytest.mark.parametrize("values,message", [
    ({"lambda": -1}, r"example.lambda: -1.0 is out of range; accepted: >= 0"),
    ({"rate": 0}, r"example.rate: 0.0 is out of range; accepted: > 0 and <= 1"),
    ({"count": 0}, r"out of range; accepted: >= 1"),
    ({"count": "2.5"}, r"example.count: expected an integer, got .2.5."),
    ({"mode": "c"}, r"'c' is not accepted; choose one of a, b"),
    ({"flag": "maybe"}, r"expected true or false"),
    ({"lambda": "big"}, r"expected a number"),
    ({"sizes": "4,0"}, r"out of range"),
    ({"decay": 1}, r"example.decay: 1.0 is out of range; accepted: >= 0 and < 1"),
    ({"fused": True}, r"^example.fused was removed: the compiled kernels are gone; drop the key$"),
    ({"lamda": 1}, r"unknown key 'lamda' for example; accepted keys: lambda, rate, count"),
])
def test_bad_values_name_the_key_and_what_is_accepted(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Example.from_dict(values)


def test_an_open_upper_bound_accepts_values_below_it() -> None:
    assert Example.from_dict({"decay": 0.999}).decay == 0.999


def test_round_trip_and_describe() -> None:
    cfg = Example.from_dict({"lambda": 3, "sizes": [5]})
    assert Example.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["lambda"] == 3.0  # public key without the trailing underscore
    rows = {key: (kind, default, text) for key, kind, default, text in Example.describe()}
    assert rows["mode"] == ("a|b", "a", "which")


def test_method_configs_validate_too() -> None:
    with pytest.raises(ConfigError, match="ewc.gamma"):
        EWCConfig.from_dict({"gamma": 2})
    with pytest.raises(ConfigError, match="ewc.fisher"):
        EWCConfig.from_dict({"fisher": "diagonal"})
