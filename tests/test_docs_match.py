"""What the command line says matches what it does: `lifelong list -v` shows every setting
`--set` takes (the methods' and the benchmarks'), and a run of a method in a scenario it is known
not to protect starts with one warning line."""

from __future__ import annotations

import pytest

from lifelong.cli import main
from lifelong.scenarios import BENCHMARKS, STREAM_BENCHMARKS


def test_list_verbose_shows_every_benchmark_setting(capsys) -> None:
    assert main(["list", "--verbose"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "benchmark.num_tasks" in out and "benchmark.samples_per_task" in out
    for registry in (BENCHMARKS, STREAM_BENCHMARKS):
        for name, benchmark in registry.items():
            rows = benchmark.options.describe()
            assert rows and name in out
            for key, _, default, _ in rows:
                assert f"benchmark.{key}" in out
                assert repr(default) in out
    assert "ewc.lambda" in out and "ewc.fisher_samples" in out
