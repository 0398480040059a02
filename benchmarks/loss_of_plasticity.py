"""Loss of plasticity: backprop against CBP, UPGD, Shrink & Perturb and L2 on two streams.

1. Slowly-changing regression (Dohare et al. 2024): 20-5-1 ReLU, SGD lr 0.01, batch 1, 1M steps,
   error binned over 20k steps. Backprop's error rises over time; CBP's stays low.
2. Online permuted MNIST, small (Dohare et al.'s protocol shrunk to a CPU): 784-100-100-10 ReLU,
   5000 samples per task, 50 tasks, SGD batch 1; online accuracy per task, with dead units and
   the last hidden layer's effective rank measured on 2000 probe samples after every task.

Every run is a `lifelong stream` run in its own folder (resumable: finished runs are kept), then
the script writes `table.md` and one figure per experiment to --out. The exact command and the
results are in docs/plasticity.md.

    python benchmarks/loss_of_plasticity.py --out runs/plasticity --jobs 2
    python benchmarks/loss_of_plasticity.py --experiments mnist --seeds 0 --tasks 10  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# method label -> (method spec, method settings)
REGRESSION_METHODS = {
    "backprop": ("naive", {}),
    "cbp": ("cbp", {"cbp": {"utility": "adaptable", "replacement_rate": 1e-4,
                            "maturity_threshold": 100}}),
}
MNIST_METHODS = {
    "backprop": ("naive", {}),
    "cbp": ("cbp", {"cbp": {"replacement_rate": 1e-4, "maturity_threshold": 100}}),
    "upgd": ("upgd", {}),
    "shrink-perturb": ("shrink-perturb", {"shrink-perturb": {"weight_decay": 1e-3,
                                                             "noise_std": 1e-4}}),
    "l2": ("l2", {"l2": {"anchor": "zero", "lambda": 1e-3}}),
}


def experiments(args: argparse.Namespace) -> dict[str, dict]:
    return {
        "regression": {
            "methods": REGRESSION_METHODS,
            "config": {"benchmark": "slowly-changing-regression", "tasks": args.regression_tasks,
                       "diagnostics": True, "probe_size": 2000},
        },
        "mnist": {
            "methods": MNIST_METHODS,
            "config": {"benchmark": "online-permuted-mnist", "tasks": args.tasks,
                       "hidden": [100, 100], "lr": args.mnist_lr,
                       "benchmark_params": {"samples_per_task": 5000},
                       "diagnostics": True, "probe_size": 2000, "data_dir": args.data_dir},
        },
    }


def run_one(job: tuple[str, dict, str]) -> str:
    import torch

    from lifelong.runs.config import StreamConfig
    from lifelong.runs.stream import run_stream

    torch.set_num_threads(1)
    out, settings, label = job
    run_stream(StreamConfig.from_dict(settings), out, progress=False)
    return label


def jobs_for(name: str, spec: dict, seeds: list[int], out: Path) -> list[tuple[str, dict, str]]:
    jobs = []
    for label, (method, params) in spec["methods"].items():
        for seed in seeds:
            folder = out / name / f"{label}-s{seed}"
            settings = {**spec["config"], "method": method, "method_params": params,
                        "seed": seed, "device": "cpu"}
            settings = {k: v for k, v in settings.items() if v is not None}
            if (folder / "summary.json").is_file():
                saved = json.loads((folder / "summary.json").read_text())
                if saved.get("samples") and len(saved["task_values"]) == (
                        settings["tasks"] or len(saved["task_values"])):
                    continue
            jobs.append((str(folder), settings, f"{name}/{label}-s{seed}"))
    return jobs


def load(out: Path, name: str, labels: list[str]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for label in labels:
        for path in sorted((out / name).glob(f"{label}-s*/summary.json")):
            runs.setdefault(label, []).append(json.loads(path.read_text()))
    return runs


def mean_se(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(r) for r in rows)
    data = np.array([r[:length] for r in rows], dtype=float)
    se = data.std(0, ddof=1) / np.sqrt(len(data)) if len(data) > 1 else np.zeros(length)
    return data.mean(0), se


def plot(out: Path, name: str, runs: dict[str, list[dict]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metric = next(iter(runs.values()))[0]["metric"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, summaries in runs.items():
        if name == "regression":
            x = np.array([b["end"] for b in summaries[0]["bins"]]) / 1e3
            mean, se = mean_se([[b[metric] for b in s["bins"]] for s in summaries])
            x = x[:len(mean)]
        else:
            mean, se = mean_se([s["task_values"] for s in summaries])
            x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, label=f"{label} ({len(summaries)} seeds)")
        ax.fill_between(x, mean - se, mean + se, alpha=0.25)
    ax.set_xlabel("thousands of steps" if name == "regression" else "task")
    ax.set_ylabel("online squared error (20k-step bins)" if name == "regression"
                  else "online accuracy per task")
    ax.set_title("slowly-changing regression, 20-5-1" if name == "regression"
                 else "online permuted MNIST, 784-100-100-10, 5k samples per task")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"{name}_online.png"
    fig.savefig(path, dpi=120)
    written.append(str(path))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, title in [("dead_units", axes[0], "dead units (fraction of hidden units)"),
                           ("effective_rank", axes[1], "effective rank, last hidden layer")]:
        for label, summaries in runs.items():
            mean, se = mean_se([[d[key] for d in s["diagnostics"]] for s in summaries])
            steps = np.array([d["samples"] for d in summaries[0]["diagnostics"]])[:len(mean)]
            x = steps / 1e3 if name == "regression" else steps / 5000
            ax.plot(x, mean, label=label)
            ax.fill_between(x, mean - se, mean + se, alpha=0.25)
        ax.set_title(title)
        ax.set_xlabel("thousands of steps" if name == "regression" else "task")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path = out / f"{name}_diagnostics.png"
    fig.savefig(path, dpi=120)
    written.append(str(path))
    plt.close(fig)
    return written


def table(name: str, runs: dict[str, list[dict]]) -> str:
    metric = next(iter(runs.values()))[0]["metric"]
    lines = [f"### {name}", "",
             f"| method | seeds | first {'bin' if name == 'regression' else 'task'} | "
             f"last {'bin' if name == 'regression' else 'task'} | mean | dead units (end) | "
             "eff. rank (end) | weight magnitude (end) | plasticity (end) | µs/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, summaries in runs.items():
        if name == "regression":
            series = [[b[metric] for b in s["bins"]] for s in summaries]
        else:
            series = [s["task_values"] for s in summaries]

        def cell(values: list[float], digits: int = 3) -> str:
            arr = np.array(values, dtype=float)
            se = arr.std(ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else 0.0
            return f"{arr.mean():.{digits}f} ± {se:.{digits}f}"

        end = [s["diagnostics"][-1] for s in summaries]
        lines.append(
            f"| {label} | {len(summaries)} | {cell([v[0] for v in series])} | "
            f"{cell([v[-1] for v in series])} | {cell([np.mean(v) for v in series])} | "
            f"{cell([d['dead_units'] for d in end])} | "
            f"{cell([d['effective_rank'] for d in end], 1)} | "
            f"{cell([d['weight_magnitude'] for d in end], 4)} | "
            f"{cell([d['plasticity'] for d in end])} | "
            f"{np.mean([s['us_per_step'] for s in summaries]):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/plasticity")
    parser.add_argument("--experiments", default="regression,mnist")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--mnist-seeds", default=None, help="seeds for mnist (default --seeds)")
    parser.add_argument("--methods", default=None, help="only these method labels")
    parser.add_argument("--tasks", type=int, default=50, help="permuted MNIST tasks")
    parser.add_argument("--regression-tasks", type=int, default=100,
                        help="regression tasks of 10k steps (100: 1M steps)")
    parser.add_argument("--mnist-lr", type=float, default=0.01)
    parser.add_argument("--data-dir", default=os.environ.get("LIFELONG_DATA"))
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="only tables and figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.methods.split(",") if args.methods else None
    specs = experiments(args)
    names = args.experiments.split(",")
    for name in names:
        if chosen:
            specs[name]["methods"] = {k: v for k, v in specs[name]["methods"].items()
                                      if k in chosen}
    if not args.report_only:
        jobs = []
        for name in names:
            name_seeds = seeds if name != "mnist" or not args.mnist_seeds else [
                int(s) for s in args.mnist_seeds.split(",")]
            jobs += jobs_for(name, specs[name], name_seeds, out)
        # longest first: regression CBP, then the rest
        jobs.sort(key=lambda j: (0 if "regression" in j[2] else 1, "cbp" not in j[2]))
        print(f"{len(jobs)} runs to do", flush=True)
        with ProcessPoolExecutor(args.jobs) as pool:
            for label in pool.map(run_one, jobs):
                print("done", label, flush=True)
    report = []
    for name in names:
        runs = load(out, name, list(specs[name]["methods"]))
        if not runs:
            continue
        report.append(table(name, runs))
        for path in plot(out, name, runs):
            print("wrote", path)
    (out / "table.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
