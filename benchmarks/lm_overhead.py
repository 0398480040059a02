"""Step time of MIGU and DAS on a transformer, relative to plain fine-tuning (the issue's limits:
MIGU at most 1.1x, DAS at most 1.3x).

all-MiniLM-L6-v2 classifier (22.7M parameters), batch 16 x 64 tokens, forward + backward + SGD
step. MIGU masks every Linear (T = 0.7, head included); DAS is on its second task, so its
importance exists and every head/FFN unit's parameters are masked; LoRA rows compare `lora` with
`lora+migu`. Every configuration has its own model; steps are interleaved (the order reversed
every round) so that machine noise hits all alike, and each figure is the median of the rounds.

    pip install 'lifelong[hf,minilm]'
    python benchmarks/lm_overhead.py                  # about 2 minutes on 2 CPU cores
    python benchmarks/lm_overhead.py --device cuda    # on a GPU

Run it on an otherwise idle machine: on a loaded CPU every small kernel waits for a core, and the
methods' extra kernels (MIGU: two per Linear) then cost far more than their arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lifelong.core import build_method
from lifelong.core.batch import Batch
from lifelong.models.hf import build_hf_model

CONFIGS = {"naive": "naive", "migu": "migu", "das": "das", "lora": "lora",
           "lora+migu": "lora+migu"}


def setup(spec: str, batch: Batch, device: torch.device):
    torch.manual_seed(0)
    model = build_hf_model("all-MiniLM-L6-v2", 4, format="classify").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    method = build_method(spec).attach(model, optimizer, seed=0)
    if "das" in spec:  # importance from a first task, masks active on the second
        method.before_task(0)
        method.training_data(0, batch)
        method.after_task(0, batch)
    method.before_task(1)
    model.train()
    return model, optimizer, method


def step(model, optimizer, method, batch: Batch, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    output = model(batch.x)
    loss = method.add_penalty(batch.loss(output), batch, output)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1000, 20000, (16, 64), generator=generator)
    batch = Batch(x, torch.randint(0, 4, (16,), generator=generator),
                  torch.ones(16, dtype=torch.long)).to(device)
    runs = {name: setup(spec, batch, device) for name, spec in CONFIGS.items()}
    for _ in range(3):  # warm-up
        for run in runs.values():
            step(*run, batch, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.rounds):
        order = list(runs.items())
        for name, run in (order if i % 2 == 0 else order[::-1]):
            times[name].append(step(*run, batch, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, {args.rounds} rounds")
    print("| configuration | ms per step | relative |")
    print("|---|---:|---:|")
    for name, value in median.items():
        base = median["lora"] if name.startswith("lora+") else median["naive"]
        reference = "lora" if name.startswith("lora+") else "naive"
        print(f"| {name} | {value * 1e3:.1f} | {value / base:.3f}x of {reference} |")


if __name__ == "__main__":
    main()
