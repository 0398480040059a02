"""Split MNIST in the three scenarios of van de Ven, Tuytelaars & Tolias (2022), every method.

Protocol (METHODS.md; `lifelong list` shows it as the split-mnist defaults): 5 tasks of 2 digits,
MLP 784-400-400, Adam lr 1e-3, 2000 iterations of batch 128 per task, 100 stored samples per class,
the authors' EWC λ and SI c per scenario. Real MNIST from $LIFELONG_DATA (../shared/data/mnist).

    python benchmarks/split_mnist_three_scenarios.py --out runs/three-scenarios --jobs 2

writes, under --out: SCENARIO/METHOD/seedN/ (one run each; finished runs are kept on a restart),
SCENARIO/comparison.json, results.json, table.md (accuracy next to the published figure,
forgetting, and seconds relative to naive in the same grid) and accuracy_over_tasks.png (the
average accuracy over the tasks seen so far after each task, one panel per scenario).

Timings: the grid's runs share the machine (--jobs 2: two runs of one thread each), and what a
run shares the cores with (a matrix-heavy NCL run or a light one) moves its time by tens of
percent, so the grid's seconds are not used. After the grid, one seed of every method runs again
alone, one at a time with one thread, in the --timing-scenarios (default task); the table's
"time ÷ naive" is that run's wall-clock seconds over naive's (training, consolidation and
evaluation included). Those runs are kept under timing/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.runs.grid import run_grid
from lifelong.training.rundir import atomic_write_text, write_json

SCENARIOS = ("task", "domain", "class")
METHODS = ("naive", "joint", "ewc", "si", "lwf", "replay", "agem", "derpp", "spg", "gem", "ncl")
ONLY = {"spg": ("task",)}  # SPG is a task-incremental method (multi-head)
# Rough cost relative to naive, only to start the longest runs first.
EXPECTED_COST = {"ncl": 4.0, "gem": 3.0, "agem": 2.2, "derpp": 2.0, "replay": 1.6, "lwf": 1.5,
                 "si": 1.2, "ewc": 1.2, "spg": 1.1, "joint": 1.1, "naive": 1.0}

# Final average accuracy over the 5 tasks, read from van de Ven et al. (2022), as METHODS.md
# lists them (approximate).
PUBLISHED: dict[str, dict[str, float]] = {
    "task": {"naive": 0.84, "ewc": 0.99, "si": 0.99, "replay": 0.99, "joint": 0.99},
    "domain": {"naive": 0.60, "ewc": 0.62, "si": 0.68, "lwf": 0.72, "replay": 0.94,
               "joint": 0.98},
    "class": {"naive": 0.20, "ewc": 0.21, "si": 0.21, "lwf": 0.22, "replay": 0.90,
              "joint": 0.98},
}


def ordered(names: Iterable[str]) -> list[str]:
    """Unique names in METHODS order (others last)."""
    unique = list(dict.fromkeys(names))
    return sorted(unique, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))


def average_accuracy_curve(matrix: list[list[float]]) -> list[float]:
    """After task i: mean accuracy over tasks 0..i."""
    return [float(np.mean(row[: i + 1])) for i, row in enumerate(matrix)]


def collect(comparison: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: ACC and forgetting (mean, std), the curve, seconds relative to naive."""
    runs = comparison["runs"]
    naive_seconds = {r["seed"]: r["seconds"] for r in runs if r["method"] == "naive"}
    out: dict[str, dict[str, Any]] = {}
    for method, stats in comparison["methods"].items():
        mine = [r for r in runs if r["method"] == method]
        curves = np.array([average_accuracy_curve(r["accuracy_matrix"]) for r in mine])
        ratios = [r["seconds"] / naive_seconds[r["seed"]] for r in mine
                  if r["seed"] in naive_seconds]
        out[method] = {
            "acc": stats["acc"]["mean"], "acc_std": stats["acc"]["std"],
            "forgetting": stats["forgetting"]["mean"], "forgetting_std": stats["forgetting"]["std"],
            "curve": curves.mean(0).tolist(), "curve_std": curves.std(0).tolist(),
            "seconds": stats["seconds"]["mean"],
            "relative_seconds": float(np.mean(ratios)) if ratios else None,
            "seeds": len(mine),
        }
    return out


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    scenarios = [s for s in SCENARIOS if s in results]
    methods = ordered(m for s in scenarios for m in results[s])
    timed = [s for s in scenarios
             if any(r["relative_seconds"] is not None for r in results[s].values())]
    header = ([f"{s}-IL ACC (published)" for s in scenarios]
              + [f"{s}-IL forgetting" for s in scenarios]
              + [f"{s}-IL time ÷ naive" for s in timed])
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for method in methods:
        acc, forgetting, time = [], [], []
        for s in scenarios:
            r = results[s].get(method)
            if r is None:
                acc.append("-")
                forgetting.append("-")
                if s in timed:
                    time.append("-")
                continue
            published = PUBLISHED[s].get(method)
            ref = f" ({published:.2f})" if published is not None else ""
            acc.append(f"{r['acc']:.3f} ± {r['acc_std']:.3f}{ref}")
            forgetting.append(f"{r['forgetting']:.3f} ± {r['forgetting_std']:.3f}")
            if s in timed:
                seconds = r["relative_seconds"]
                time.append("-" if seconds is None else f"{seconds:.2f}")
        lines.append(f"| {method} | " + " | ".join(acc + forgetting + time) + " |")
    return "\n".join(lines) + "\n"


def off_by_more_than(results: dict[str, dict[str, dict[str, Any]]], points: float) -> list[str]:
    notes = []
    for s, methods in results.items():
        for method, r in methods.items():
            published = PUBLISHED[s].get(method)
            if published is not None and abs(r["acc"] - published) > points:
                notes.append(f"{s}-IL {method}: {r['acc']:.3f} ± {r['acc_std']:.3f} "
                             f"vs published {published:.2f}")
    return notes


def figure(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if s in results]
    # task-IL curves all sit near 1: each panel gets its own scale
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.5))
    axes = np.atleast_1d(axes)
    colours = plt.get_cmap("tab20")
    methods = ordered(m for s in scenarios for m in results[s])
    for ax, s in zip(axes, scenarios):
        for index, method in enumerate(methods):
            r = results[s].get(method)
            if r is None:
                continue
            x = np.arange(1, len(r["curve"]) + 1)
            mean, std = np.array(r["curve"]), np.array(r["curve_std"])
            colour = colours((2 * index) % 20 + (2 * index) // 20)  # dark shades first
            ax.plot(x, mean, marker="o", label=method, color=colour)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour)
        ax.set_title(f"{s}-incremental")
        ax.set_xlabel("tasks trained")
        ax.set_xticks(range(1, 6))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("average accuracy over tasks seen")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("Split MNIST (van de Ven et al. 2022 protocol), mean ± std over seeds")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/three-scenarios")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--timing-scenarios", default="task",
                        help="scenarios timed one run at a time after the grid ('' for none)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    scenarios = args.scenarios.split(",")
    # Seed by seed (every scenario and method for seed 0, then seed 1, ...), so that a run cut
    # short still has complete seeds; finished runs are kept, and the report is rewritten after
    # each seed.
    for done in range(1, len(seeds) + 1):
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for scenario in scenarios:
            chosen = methods_for(methods, scenario)
            if "naive" not in chosen:
                chosen.append("naive")  # the timing reference
            # longest first, so that two workers finish together (the table keeps this order)
            chosen.sort(key=lambda m: -EXPECTED_COST.get(m, 1.0))
            comparison = run_grid({"benchmark": "split-mnist", "scenario": scenario,
                                   "data_dir": args.data_dir}, chosen, seeds[:done], [],
                                  out / scenario, jobs=args.jobs, resume=True)
            results[scenario] = collect(comparison)
            print(f"{scenario}-IL, seeds {seeds[:done]}: done", file=sys.stderr)
        report(results, out, seeds[:done])
    timed = [s for s in args.timing_scenarios.split(",") if s]
    if timed:
        import torch

        torch.set_num_threads(1)
        # the first run in a process pays one-time costs (allocator, kernel set-up): a short
        # untimed run first, so that naive, timed first, does not carry them
        from lifelong.runs.config import RunConfig
        from lifelong.runs.experiment import run_experiment

        run_experiment(RunConfig.from_dict({"benchmark": "split-mnist", "iterations": 50,
                                            "data_dir": args.data_dir}), progress=False)
        for scenario in timed:
            chosen = ordered([*methods_for(methods, scenario), "naive"])
            comparison = run_grid({"benchmark": "split-mnist", "scenario": scenario,
                                   "data_dir": args.data_dir}, chosen, seeds[:1], [],
                                  out / "timing" / scenario, jobs=1, resume=True)
            for method, timing in collect(comparison).items():
                results[scenario][method]["relative_seconds"] = timing["relative_seconds"]
            print(f"{scenario}-IL timed", file=sys.stderr)
        for scenario in results:
            if scenario not in timed:
                for entry in results[scenario].values():
                    entry["relative_seconds"] = None
        report(results, out, seeds)


def methods_for(methods: list[str], scenario: str) -> list[str]:
    return [m for m in methods if scenario in ONLY.get(m, SCENARIOS)]


def report(results: dict[str, dict[str, dict[str, Any]]], out: Path, seeds: list[int]) -> None:
    write_json(out / "results.json", {"seeds": seeds, "results": results})
    text = f"Seeds: {', '.join(map(str, seeds))}\n\n" + table(results)
    notes = off_by_more_than(results, 0.03)
    text += "\nOff by more than 3 points from the published figure:\n" + (
        "\n".join(f"- {n}" for n in notes) if notes else "- none") + "\n"
    atomic_write_text(out / "table.md", text)
    figure(results, out / "accuracy_over_tasks.png")
    print(text)
    print(json.dumps({"table": str(out / "table.md"),
                      "figure": str(out / "accuracy_over_tasks.png")}))


if __name__ == "__main__":
    main()
