"""Options of the removed compiled kernels and noise sources: an old config that names one is
refused before training with one line saying what replaced it, however it was given (a dict, a
YAML config's method_params, `--set`, the optimizer's keywords)."""

from __future__ import annotations

import pytest
import yaml
from helpers import tiny_mlp

from lifelong.cli import main
from lifelong.core import build_method
from lifelong.errors import ConfigError
from lifelong.optim import UPGD

REMOVED = [  # method, key, value an old config held, words of what replaced it
    ("cbp", "fused", True, "the statistics are PyTorch operations"),
    ("upgd", "fused", False, "the step is PyTorch operations"),
    ("upgd", "noise", "table", "always fresh N(0, σ²) per weight and step"),
    ("upgd", "noise", "counter", "always fresh N(0, σ²) per weight and step"),
    ("shrink-perturb", "noise_source", "auto", "always fresh N(0, σ²) per weight and step"),
]


@pytest.mark.parametrize("method,key,value,replacement", REMOVED)
def test_a_removed_option_in_a_dict_says_what_replaced_it(method, key, value, replacement
                                                          ) -> None:
    with pytest.raises(ConfigError, match=f"^{method}.{key} was removed: ") as error:
        build_method(method, {method: {key: value}})
    assert replacement in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("method,key,value,replacement", REMOVED[:3])
def test_a_removed_option_on_the_command_line_is_one_error_line(method, key, value, replacement,
                                                                 tmp_path, capsys) -> None:
    stream = ["stream", "--tasks", "2", "--set", "benchmark.samples_per_task=10", "-q",
              "--device", "cpu", "--method", method, "--out", str(tmp_path / "set")]
    assert main([*stream, "--set", f"{method}.{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {method}.{key} was removed: ") and err.count("\n") == 1
    assert replacement in err and not (tmp_path / "set").exists()
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({"method": method, "method_params": {method: {key: value}}}))
    run = ["run", "-b", "split-digits", "--epochs", "1", "--quiet", "--config", str(config),
           "--out", str(tmp_path / "yaml")]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {method}.{key} was removed: ") and err.count("\n") == 1
    assert not (tmp_path / "yaml").exists()


@pytest.mark.parametrize("key,value", [("fused", True), ("noise", "table")])
def test_the_optimizer_refuses_them_too(key, value) -> None:
    with pytest.raises(ConfigError, match=f"^upgd.{key} was removed: "):
        UPGD(tiny_mlp().parameters(), lr=0.1, **{key: value})
