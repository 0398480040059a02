"""Time per training step of each method in lifelong's loop, relative to a hand-written loop.

Permuted MNIST (two tasks, domain-incremental), MLP 784-256-256-10, SGD, at batch 128 and batch 1.
Each method first trains briefly on task 0 (so EWC has a Fisher, LwF a teacher, the memories hold
samples), then steps on task 1 are timed. The hand-written loop (the same slicing, forward,
cross-entropy, backward and step on the same data) is timed in the same process, interleaved with
the methods over several rounds; each figure is the median over rounds.

    LIFELONG_DATA=../shared/data python benchmarks/overhead.py            # about 3 minutes
    LIFELONG_DATA=../shared/data python benchmarks/overhead.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lifelong.core import build_method
from lifelong.models import MLP
from lifelong.runs.setup import seed_everything
from lifelong.scenarios import get_benchmark
from lifelong.training.loop import train_task

METHODS = {  # name -> (spec, settings)
    "naive": ("naive", {}),
    "ewc": ("ewc", {"ewc": {"lambda": 100, "fisher_samples": 1000}}),
    "ewc (online)": ("ewc", {"ewc": {"lambda": 100, "mode": "online", "fisher_samples": 1000}}),
    "l2": ("l2", {}),
    "lwf": ("lwf", {}),
    "replay": ("replay", {"replay": {"memory_size": 500}}),
    "agem (ref batch = batch)": ("agem", {"agem": {"memory_size": 500}}),
    "agem (ref batch 256)": ("agem", {"agem": {"memory_size": 500, "ref_batch_size": 256}}),
    "si": ("si", {}),
    "mas": ("mas", {"mas": {"importance_samples": 1000}}),
    "l1": ("l1", {}),
    "derpp": ("derpp", {"derpp": {"memory_size": 500}}),
    "gem": ("gem", {"gem": {"memory_per_task": 256}}),
    "spg": ("spg", {"spg": {"importance_samples": 1000}}),
    "ncl": ("ncl", {"ncl": {"fisher_samples": 1000}}),
    "ncl (diagonal)": ("ncl", {"ncl": {"fisher": "diagonal", "fisher_samples": 1000}}),
}
LIMITS = {"naive": 1.10, "ewc": 1.2, "agem (ref batch = batch)": 2.2, "lwf": 1.7}


def hand_written_steps(model, optimizer, x, y, batch_size: int, steps: int,
                       generator: torch.Generator) -> None:
    """The loop a user would write: slice a shuffled batch, forward, loss, backward, step."""
    order = torch.randperm(len(x), generator=generator)
    position = 0
    for _ in range(steps):
        if position >= len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def setup(spec: str, settings: dict, scenario, batch_size: int, warmup_steps: int):
    seed_everything(0)
    model = MLP(scenario.input_shape, (256, 256), scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if spec == "agem" and "ref_batch_size" not in settings["agem"]:
        settings = {"agem": {**settings["agem"], "ref_batch_size": batch_size}}
    method = build_method(spec, settings).attach(model, optimizer, scenario.readout, seed=0)
    generator = torch.Generator().manual_seed(0)
    first = scenario.tasks[0].train_data()
    scenario.readout.begin_task(0)
    method.before_task(0)
    train_task(model, optimizer, method, scenario.readout, method.training_data(0, first),
               batch_size=batch_size, iterations=warmup_steps, generator=generator)
    method.after_task(0, first)
    scenario.readout.begin_task(1)
    method.before_task(1)
    method.training_data(1, scenario.tasks[1].train_data())
    return model, optimizer, method, generator


def measure(scenario, batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of the hand-written loop and of every method."""
    data = scenario.tasks[1].train_data()
    seed_everything(0)
    hand_model = MLP(scenario.input_shape, (256, 256), scenario.num_outputs)
    hand_optimizer = torch.optim.SGD(hand_model.parameters(), lr=0.01)
    hand_generator = torch.Generator().manual_seed(0)
    runs = {name: setup(spec, settings, scenario, batch_size, warmup_steps=min(steps, 200))
            for name, (spec, settings) in METHODS.items()}
    times: dict[str, list[float]] = {"hand-written": []}
    times.update({name: [] for name in METHODS})
    for _ in range(rounds + 1):  # the first round warms up and is discarded
        started = time.perf_counter()
        hand_written_steps(hand_model, hand_optimizer, data.x, data.y, batch_size, steps,
                           hand_generator)
        times["hand-written"].append((time.perf_counter() - started) / steps)
        for name, (model, optimizer, method, generator) in runs.items():
            stats = train_task(model, optimizer, method, scenario.readout, data,
                               batch_size=batch_size, iterations=steps, generator=generator)
            times[name].append(stats.seconds / steps)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--methods", help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--batch-sizes", default="128,1", help="128, 1 or both")
    args = parser.parse_args()
    if args.methods:
        chosen = [m.strip() for m in args.methods.split(",")]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            parser.error(f"unknown rows {unknown}; accepted: {', '.join(METHODS)}")
        for name in list(METHODS):
            if name not in chosen:
                del METHODS[name]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    scenario = get_benchmark("permuted-mnist").build(
        "domain", options={"num_tasks": 2, "permute_first": True})
    settings = [(128, 20 if args.quick else 150, 2 if args.quick else 5),
                (1, 100 if args.quick else 2000, 2 if args.quick else 5)]
    settings = [item for item in settings if item[0] in sizes]
    results = {}
    for batch_size, steps, rounds in settings:
        results[batch_size] = measure(scenario, batch_size, steps, rounds)
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), {platform.processor() or ''}"
          f" {platform.machine()}, SGD, MLP 784-256-256-10\n")
    print("| method | " + " | ".join(f"batch {b}: µs/step | ratio" for b in sizes) + " | limit |")
    print("|---|" + "---:|---:|" * len(sizes) + "---:|")
    failures = []
    for name in ["hand-written", *METHODS]:
        cells = []
        for batch_size in sizes:
            value = results[batch_size][name]
            ratio = value / results[batch_size]["hand-written"]
            cells += [f"{value * 1e6:,.0f}", f"{ratio:.2f}x"]
            if name in LIMITS and ratio > LIMITS[name]:
                failures.append(f"{name} at batch {batch_size}: {ratio:.2f}x > {LIMITS[name]}x")
        limit = f"{LIMITS[name]}x" if name in LIMITS else ""
        print(f"| {name} | {' | '.join(cells)} | {limit} |")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({str(k): v for k, v in results.items()}, stream, indent=2)
    print("\nall within limits" if not failures else "\nover the limit: " + "; ".join(failures))


if __name__ == "__main__":
    main()
