"""Per-step cost at batch size 1 of the plasticity methods, against plain SGD, side by side.

A 784-100-100-10 ReLU MLP on a stream of random MNIST-shaped inputs (the cost does not depend on
the pixels), one thread. Each configuration is timed `--repeats` times in interleaved order (so a
slow moment of the machine hits all of them alike) and the median is reported:

- `hand-written SGD`: the five-line PyTorch loop, the floor;
- `stream naive`: lifelong's online loop (online scoring included) with no method;
- one row per method, through the same loop;
- `upgd optimizer`: the same five-line loop as hand-written SGD with `lifelong.optim.UPGD`
  in place of `torch.optim.SGD`.

    python benchmarks/stream_overhead.py              # table to stdout
    python benchmarks/stream_overhead.py --steps 20000 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from lifelong.core import build_method
from lifelong.core.batch import Batch
from lifelong.models import MLP
from lifelong.optim import UPGD
from lifelong.scenarios import Stream
from lifelong.training.online import train_stream

METHODS = {
    "stream naive": ("naive", {}),
    "cbp": ("cbp", {}),
    "cbp (adaptable)": ("cbp", {"cbp": {"utility": "adaptable"}}),
    "upgd (first order)": ("upgd", {"upgd": {"utility": "first"}}),
    "upgd (σ = 0: no noise)": ("upgd", {"upgd": {"sigma": 0.0}}),
    "upgd (second order)": ("upgd", {"upgd": {"utility": "second"}}),
    "shrink-perturb": ("shrink-perturb", {}),
    "l2 (weight decay)": ("l2", {"l2": {"anchor": "zero", "lambda": 1e-3}}),
}


def random_stream(steps: int, device: str) -> Stream:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(steps, 784, generator=g)
    y = torch.randint(0, 10, (steps,), generator=g)
    data = Batch(x, y)
    return Stream("random", (784,), 10, 1, steps, False, lambda t: data,
                  lambda t, n: data.select(slice(0, n)))


def time_hand_written(steps: int, device: str, optimizer_class=torch.optim.SGD) -> float:
    torch.manual_seed(0)
    model = MLP((784,), (100, 100), 10).to(device)
    optimizer = optimizer_class(model.parameters(), lr=0.01)
    data = random_stream(steps, device).segment(0).to(device)
    xs, ys = data.x.split(1), data.y.split(1)
    started = time.perf_counter()
    for x, y in zip(xs, ys):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def time_method(spec: str, params: dict, steps: int, device: str) -> float:
    torch.manual_seed(0)
    model = MLP((784,), (100, 100), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = build_method(spec, params).attach(model, optimizer, seed=0)
    stream = random_stream(steps, device)
    stats = train_stream(model, optimizer, method, stream, device=device)
    method.detach()
    return stats.seconds / stats.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=None, help="comma-separated row labels")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    wanted = None if args.methods is None else set(args.methods.split(","))
    rows = {k: v for k, v in METHODS.items() if wanted is None or k in wanted}
    optimizer_rows = {k: v for k, v in {"upgd optimizer": UPGD}.items()
                      if wanted is None or k in wanted}
    times: dict[str, list[float]] = {"hand-written SGD": [], **{k: [] for k in optimizer_rows},
                                     **{k: [] for k in rows}}
    time_hand_written(1000, args.device)  # warm-up
    for _ in range(args.repeats):
        times["hand-written SGD"].append(time_hand_written(args.steps, args.device))
        for label, optimizer_class in optimizer_rows.items():
            times[label].append(time_hand_written(args.steps, args.device, optimizer_class))
        for label, (spec, params) in rows.items():
            times[label].append(time_method(spec, params, args.steps, args.device))
    base = statistics.median(times["hand-written SGD"])
    naive = statistics.median(times["stream naive"]) if "stream naive" in times else None
    print(f"batch 1, 784-100-100-10, {args.steps} steps x {args.repeats} repeats, "
          f"{args.device}, {args.threads} thread(s), torch {torch.__version__}")
    print("| row | µs/step (median) | ÷ hand-written SGD | ÷ stream naive |")
    print("|---|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        vs_naive = f"{median / naive:.2f}" if naive else "-"
        print(f"| {label} | {1e6 * median:.0f} | {median / base:.2f} | {vs_naive} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
