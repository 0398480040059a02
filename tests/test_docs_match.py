"""What the command line says matches what it does: `lifelong list -v` shows every setting
`--set` takes (the methods' and the benchmarks'), and a run of a method in a scenario it is known
not to protect starts with one warning line."""

from __future__ import annotations

import pytest

from lifelong.cli import main
from lifelong.runs import setup
from lifelong.runs.config import RunConfig
from lifelong.runs.setup import prepare
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


FAST = ["-b", "split-digits", "--epochs", "1", "--hidden", "16", "--quiet", "--no-report"]


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are said once per process: forget those said by earlier tests."""
    monkeypatch.setattr(setup.WARNINGS, "said", set())
    monkeypatch.setattr(setup.WARNINGS, "silent", False)


def test_spg_in_class_il_starts_with_one_warning_line(tmp_path, capsys, fresh_warnings) -> None:
    assert main(["run", *FAST, "-m", "spg", "--scenario", "class",
                 "--out", str(tmp_path / "class")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: spg does not protect class-incremental learning: its output "
                          "layer is shared")
    assert err.count("\n") == 1 and "replay+spg" in err  # one line, with the remedy
    assert main(["run", *FAST, "-m", "spg", "--scenario", "task",
                 "--out", str(tmp_path / "task")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ewc", "si", "mas", "l2", "lwf", "spg", "spg+ewc",
                                    "cbp+ewc"])
def test_methods_known_not_to_protect_class_il_say_so(method, capsys, fresh_warnings) -> None:
    prepare(RunConfig(benchmark="split-digits", scenario="class", method=method))
    lines = capsys.readouterr().err.splitlines()
    named = [name for name in method.split("+") if name != "cbp"]  # cbp: not a claim either way
    assert [line.split(":")[0] for line in lines] == ["warning"] * len(named)
    for line, name in zip(lines, named):
        assert line.startswith(f"warning: {name} does not protect class-incremental learning: ")


@pytest.mark.parametrize("method, scenario", [
    ("ewc", "task"), ("ewc", "domain"), ("lwf", "domain"), ("replay", "class"),
    ("replay+spg", "class"), ("ewc+replay", "class"), ("agem+lwf", "class"), ("naive", "class")])
def test_no_warning_where_the_method_protects(method, scenario, capsys, fresh_warnings) -> None:
    prepare(RunConfig(benchmark="split-digits", scenario=scenario, method=method))
    assert capsys.readouterr().err == ""


def test_a_grid_says_each_warning_once(tmp_path, capsys, fresh_warnings) -> None:
    assert main(["compare", *FAST, "--scenario", "class", "--methods", "spg,replay",
                 "--seeds", "0,1", "--out", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: spg does not protect")


@pytest.mark.slow
def test_a_grid_in_worker_processes_says_each_warning_once(tmp_path, capfd,
                                                           fresh_warnings) -> None:
    assert main(["compare", *FAST, "--scenario", "class", "--methods", "spg,naive",
                 "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path)]) == 0
    # capfd: the workers write to the process's stderr, which capsys does not see
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: spg does not protect")
