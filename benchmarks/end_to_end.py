"""End to end: `lifelong run` against the same method in a hand-written loop, as subprocesses.

Permuted MNIST (the issue's setting: 5 tasks of 60k, domain-incremental, MLP 784-256-256-10, SGD
0.01, batch 128, one epoch per task), one thread. For each method and repeat, two processes run
one after the other (interleaved: A B A B ..., so a machine that gets busier slows both):

    cli      python -m lifelong.cli run -b permuted-mnist -m METHOD ... --no-report --out TMP
             (baseline evaluation, metrics.jsonl, a checkpoint after each task, summary.json,
             the tables; the checkpoint dropped at the end), then, timed on its own,
             python -m lifelong.cli report TMP (report.html, which `run` writes by default)
    own      this file with --own-loop: the library's user API in a loop a user would write
             (begin_task, mini-batches with prepare_batch / add_penalty, end_task), and the same
             numbers: the untrained model's accuracy on every task (the baseline FWT needs) and
             the evaluation of every task after each task (evaluate_tasks)

Each figure is the wall time of the whole process (start-up and imports included, for both),
and its CPU time (user + system, from the process's rusage: one thread, so CPU time is the work
done, and it is much less disturbed than wall time by other processes on a busy machine); the
table gives the medians over repeats, the ratios cli / own, and the report's wall time.

    LIFELONG_DATA=../shared/data python benchmarks/end_to_end.py --methods naive,replay
    LIFELONG_DATA=../shared/data python benchmarks/end_to_end.py --tasks 2 --train-size 6000

`--train-size N` trains ceil(N / 128) mini-batches per task instead of one epoch (both arms; the
tasks still hold 60k samples, so methods that keep data choose among all of them).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BATCH, LR, HIDDEN = 128, 0.01, (256, 256)
METHODS = ("naive", "ewc", "online-ewc", "si", "mas", "l1", "l2", "lwf", "replay", "agem", "gem",
           "der", "derpp", "joint", "spg", "ncl", "migu", "cbp", "upgd", "shrink-perturb")
# not here: lottery (task-incremental only), das (transformers), the LoRA methods
SETTINGS = {"online-ewc": ("ewc", ["ewc.mode=online"])}  # a row label -> method and --set


def _threads_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli_command(method: str, tasks: int, iterations: int | None, out: str) -> list[str]:
    spec, sets = SETTINGS.get(method, (method, []))
    schedule = ["--epochs", "1"] if iterations is None else ["--iterations", str(iterations)]
    command = [sys.executable, "-m", "lifelong.cli", "run", "-b", "permuted-mnist", "-m", spec,
               "--optimizer", "sgd", "--lr", str(LR), "--batch-size", str(BATCH),
               "--hidden", ",".join(map(str, HIDDEN)), "--device", "cpu", *schedule,
               "--set", f"benchmark.num_tasks={tasks}", "--no-report", "--out", out]
    for pair in sets:
        command += ["--set", pair]
    return command


def own_command(method: str, tasks: int, iterations: int | None) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--own-loop", method,
               "--tasks", str(tasks)]
    return command + ([] if iterations is None else ["--iterations", str(iterations)])


def own_loop(method: str, tasks: int, iterations: int | None) -> None:
    """The method in a user's own loop, through the library's user API."""
    import torch

    from lifelong.core import Batch, build_method
    from lifelong.models import MLP
    from lifelong.runs.experiment import baseline_accuracies
    from lifelong.scenarios import get_benchmark
    from lifelong.training.evaluate import evaluate_tasks
    from lifelong.training.lifecycle import begin_task, end_task

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec, sets = SETTINGS.get(method, (method, []))
    params: dict = {}
    for pair in sets:
        key, _, value = pair.partition("=")
        owner, _, field = key.partition(".")
        params.setdefault(owner, {})[field] = value
    scenario = get_benchmark("permuted-mnist").build("domain", options={"num_tasks": tasks})
    readout = scenario.readout
    model = MLP(scenario.input_shape, HIDDEN, scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    method_object = build_method(spec, params).attach(model, optimizer, readout, seed=0)
    shuffle = torch.Generator().manual_seed(0)
    baseline_accuracies(model, scenario, torch.device("cpu"), 1000)  # for FWT, as the CLI
    rows = []
    for task in scenario.tasks:
        data = task.train_data()
        train = begin_task(method_object, task.id, data, readout=readout)
        order = torch.randperm(len(train), generator=shuffle)
        steps = iterations or math.ceil(len(train) / BATCH)
        model.train()
        for step in range(steps):
            start = step * BATCH % len(train)
            index = order[start:start + BATCH]
            batch = Batch(train.x[index], train.y[index], train.task_ids[index])
            batch = method_object.prepare_batch(batch)
            output = model(batch.x)
            loss = batch.loss(readout.select(output, batch.task_ids))
            loss = method_object.add_penalty(loss, batch, output)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        end_task(method_object, task.id, data)
        rows.append([accuracy for accuracy, _ in evaluate_tasks(
            model, readout, scenario, torch.device("cpu"), 1000, method=method_object)])
    print(f"final accuracies {[round(a, 3) for a in rows[-1]]}")


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of `command` run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=_threads_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated rows (default: all: {', '.join(METHODS)})")
    parser.add_argument("--tasks", type=int, default=5, help="permutations (tasks)")
    parser.add_argument("--train-size", type=int,
                        help="samples per task: ceil(N / 128) mini-batches instead of one epoch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved pairs per method")
    parser.add_argument("--no-report-timing", action="store_true",
                        help="do not time `lifelong report` on each finished run")
    parser.add_argument("--own-loop", metavar="METHOD", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.own_loop:
        own_loop(args.own_loop, args.tasks, args.iterations)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown rows {unknown}; accepted: {', '.join(METHODS)}")
    iterations = None if args.train_size is None else math.ceil(args.train_size / BATCH)
    print(f"permuted-mnist, {args.tasks} tasks, "
          f"{'one epoch of 60k' if iterations is None else f'{iterations} mini-batches'} per "
          f"task, MLP 784-{'-'.join(map(str, HIDDEN))}-10, SGD {LR}, batch {BATCH}, 1 thread, "
          f"{args.repeats} interleaved repeats; python {platform.python_version()}",
          flush=True)
    print("\n| method | cli wall s | own wall s | wall ratio | cli CPU s | own CPU s | CPU ratio "
          "| report.html wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for method in methods:
        cli, own, report = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                cli.append(timed(cli_command(method, args.tasks, iterations, out)))
                if not args.no_report_timing:
                    report.append(timed([sys.executable, "-m", "lifelong.cli", "report", out]))
            own.append(timed(own_command(method, args.tasks, iterations)))
        (cli_s, cli_cpu), (own_s, own_cpu) = (
            tuple(statistics.median(run[i] for run in runs) for i in (0, 1)) for runs in (cli, own))
        report_s = f"{statistics.median(r[0] for r in report):.1f}" if report else "-"
        worst = max(worst, cli_s / own_s)
        print(f"| {method} | {cli_s:.1f} | {own_s:.1f} | {cli_s / own_s:.2f}x | {cli_cpu:.1f} | "
              f"{own_cpu:.1f} | {cli_cpu / own_cpu:.2f}x | {report_s} |", flush=True)
    print(f"\nlargest wall ratio {worst:.2f}x (goal: at most 1.10x)")


if __name__ == "__main__":
    main()
