"""`lifelong sweep`: grids over methods, hyper-parameters and seeds, locally and on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lifelong.cli import main
from lifelong.errors import ConfigError
from lifelong.runs import grid
from lifelong.runs.grid import Variant, parse_grid, plan_grid

FAST = ["--benchmark", "split-digits", "--iterations", "8", "--batch-size", "32",
        "--hidden", "16", "--device", "cpu", "--quiet", "--no-report"]


def test_parse_grid_splits_on_commas_or_semicolons_and_refuses_bad_entries() -> None:
    assert parse_grid(["lr=0.01,0.1", "hidden=100,100;400,400"]) == {
        "lr": ["0.01", "0.1"], "hidden": ["100,100", "400,400"]}
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["lr"])
    with pytest.raises(ConfigError, match="names lr twice"):
        parse_grid(["lr=1", "lr=2"])
    with pytest.raises(ConfigError, match="empty value"):
        parse_grid(["lr=0.1,"])


def test_grid_points_concern_only_the_methods_that_have_the_setting() -> None:
    grid = {"ewc.lambda": ["10", "1000"], "lr": ["0.01", "0.1"], "c": ["1", "2"]}
    plan = plan_grid({"benchmark": "split-digits"}, ["naive", "ewc", "si"], [0, 1], [], grid)
    variants = list(dict.fromkeys(v for v, _, _ in plan))
    # naive: lr only; ewc: lambda x lr; si: lr x c (bare `c` is SI's setting only)
    assert [v.label for v in variants] == [
        "naive[lr=0.01]", "naive[lr=0.1]",
        "ewc[ewc.lambda=10, lr=0.01]", "ewc[ewc.lambda=10, lr=0.1]",
        "ewc[ewc.lambda=1000, lr=0.01]", "ewc[ewc.lambda=1000, lr=0.1]",
        "si[lr=0.01, c=1]", "si[lr=0.01, c=2]", "si[lr=0.1, c=1]", "si[lr=0.1, c=2]"]
    assert len(plan) == 2 * len(variants)
    configs = {(v.label, s): c for v, s, c in plan}
    chosen = configs[("ewc[ewc.lambda=1000, lr=0.1]", 1)]
    assert chosen["lr"] == 0.1 and chosen["method_params"]["ewc"]["lambda"] == 1000.0
    assert chosen["seed"] == 1
    assert configs[("si[lr=0.01, c=2]", 0)]["method_params"]["si"]["c"] == 2.0
    assert Variant("ewc", (("ewc.lambda", "10"), ("lr", "0.1"))).folder == Path(
        "ewc", "ewc.lambda=10,lr=0.1")


def test_sweep_writes_the_layout_and_a_rerun_skips_finished_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["sweep", *FAST, "--methods", "naive,ewc", "--seeds", "0,1",
            "--grid", "ewc.lambda=1,100", "--out", str(tmp_path)]
    assert main(args) == 0
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert list(comparison["methods"]) == ["naive", "ewc[ewc.lambda=1]", "ewc[ewc.lambda=100]"]
    assert comparison["grid"]["ewc[ewc.lambda=100]"] == {
        "method": "ewc", "settings": {"ewc.lambda": "100"}}
    run = tmp_path / "ewc" / "ewc.lambda=100" / "seed1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method_params"]["ewc"]["lambda"] == 100.0 and config["seed"] == 1
    summary = json.loads((run / "summary.json").read_text())
    stats = comparison["methods"]["ewc[ewc.lambda=100]"]["acc"]
    assert summary["acc"] in stats["values"]

    calls = []
    monkeypatch.setattr(grid, "_run_one", lambda *a: calls.append(a))
    assert main(args) == 0
    assert calls == []  # every run was finished: nothing ran again
    again = json.loads((tmp_path / "comparison.json").read_text())
    assert again["methods"] == comparison["methods"]


def test_the_report_of_a_moved_sweep_finds_every_run_folder(tmp_path: Path) -> None:
    from lifelong.report.data import load_report

    args = ["sweep", *FAST, "--methods", "naive,ewc", "--grid", "ewc.lambda=1,100",
            "--out", str(tmp_path / "sweep")]
    assert main(args) == 0
    moved = (tmp_path / "sweep").rename(tmp_path / "moved")  # comparison.json's dirs are stale
    report = load_report(moved)
    assert [run.folder for run in report.runs] == [
        moved / "naive" / "seed0", moved / "ewc" / "ewc.lambda=1" / "seed0",
        moved / "ewc" / "ewc.lambda=100" / "seed0"]
    assert all(run.config_text for run in report.runs)


def test_an_unknown_backend_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    code = main(["sweep", *FAST, "--methods", "naive", "--backend", "slurm",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "--backend must be local or ray, got 'slurm'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_ray_backend_gives_the_local_backends_results(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the Ray workers, so the float sums are the same
    try:
        grid = ["--methods", "naive,ewc", "--seeds", "0,1", "--grid", "ewc.lambda=1,100"]
        assert main(["sweep", *FAST, *grid, "--out", str(tmp_path / "local")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["sweep", *FAST, *grid, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    local = json.loads((tmp_path / "local" / "comparison.json").read_text())
    remote = json.loads((tmp_path / "ray" / "comparison.json").read_text())
    for label, stats in local["methods"].items():  # everything but the seconds
        for key in ("acc", "bwt", "fwt", "forgetting"):
            assert remote["methods"][label][key] == stats[key]
    for a, b in zip(local["runs"], remote["runs"]):
        assert b["accuracy_matrix"] == a["accuracy_matrix"]
        assert b["dir"] == a["dir"].replace(str(tmp_path / "local"), str(tmp_path / "ray"))
        for name in ("config.yaml", "summary.json", "metrics.jsonl"):
            assert (Path(b["dir"]) / name).is_file()
