"""Markdown table of Split MNIST results (from `lifelong compare` folders) next to the published
figures of van de Ven et al. (2022), as listed in shared/docs/METHODS.md (approximate values).

    for s in task domain class; do
      lifelong compare -b split-mnist --scenario $s --methods naive,joint,ewc,lwf,replay,agem \\
          --seeds 0,1,2 --jobs 2 --out runs/split-mnist-$s
    done
    python benchmarks/split_mnist_table.py runs/split-mnist-task runs/split-mnist-domain \\
        runs/split-mnist-class
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Final average accuracy, van de Ven, Tuytelaars & Tolias (2022), Nature Machine Intelligence.
PUBLISHED = {
    "task": {"naive": 0.84, "ewc": 0.99, "si": 0.99, "replay": 0.99, "joint": 0.99},
    "domain": {"naive": 0.60, "ewc": 0.62, "si": 0.68, "lwf": 0.72, "replay": 0.94,
               "joint": 0.98},
    "class": {"naive": 0.20, "ewc": 0.21, "si": 0.21, "lwf": 0.22, "replay": 0.90,
              "joint": 0.98},
}


def main(folders: list[str]) -> None:
    comparisons = {}
    for folder in folders:
        comparison = json.loads((Path(folder) / "comparison.json").read_text())
        comparisons[comparison["scenario"]] = comparison
    scenarios = [s for s in ("task", "domain", "class") if s in comparisons]
    methods = list(dict.fromkeys(m for c in comparisons.values() for m in c["methods"]))
    header = "| method | " + " | ".join(f"{s}-IL ACC (published)" for s in scenarios)
    print(header + " | " + " | ".join(f"{s}-IL forgetting" for s in scenarios) + " |")
    print("|---|" + "---:|" * (2 * len(scenarios)))
    for method in methods:
        accuracy, forgetting = [], []
        for scenario in scenarios:
            stats = comparisons[scenario]["methods"].get(method)
            if stats is None:
                accuracy.append("-")
                forgetting.append("-")
                continue
            published = PUBLISHED[scenario].get(method)
            reference = f" ({published:.2f})" if published is not None else ""
            acc, fgt = stats["acc"], stats["forgetting"]
            accuracy.append(f"{acc['mean']:.3f} ± {acc['std']:.3f}{reference}")
            forgetting.append(f"{fgt['mean']:.3f} ± {fgt['std']:.3f}")
        print(f"| {method} | " + " | ".join(accuracy + forgetting) + " |")
    seconds = {m: [comparisons[s]["methods"][m]["seconds"]["mean"] for s in scenarios
                   if m in comparisons[s]["methods"]] for m in methods}
    print("\nmean seconds per run (all scenarios): " + ", ".join(
        f"{m} {sum(v) / len(v):.0f}" for m, v in seconds.items() if v))


if __name__ == "__main__":
    main(sys.argv[1:])
