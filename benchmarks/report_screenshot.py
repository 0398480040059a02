"""The report page of a short compare run on Split MNIST, rendered in headless Chromium and saved
as a screenshot (docs/report_split_mnist.png), after checking in the browser that every figure
loaded and that the table shows comparison.json's numbers.

    LIFELONG_DATA=../shared/data python benchmarks/report_screenshot.py

runs `lifelong compare -b split-mnist --scenario class --methods naive,ewc,replay --seeds 0,1
--iterations 300 --diagnostics --jobs 2 --out runs/report-split-mnist` (one to three minutes on
two CPU cores), which writes report.html, then opens it in Chromium (`apt-get install -y
chromium`). --out and --png change where it writes; --keep reuses a finished compare folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lifelong.cli import main as lifelong
from lifelong.report.browser import inspect_report, screenshot
from lifelong.report.html import write_report

COMPARE = ["compare", "-b", "split-mnist", "--scenario", "class", "--methods",
           "naive,ewc,replay", "--seeds", "0,1", "--iterations", "300", "--diagnostics",
           "--jobs", "2", "--quiet"]


def check(seen: dict, comparison: dict) -> None:
    """What the browser saw: every image loaded, the table holds comparison.json's means."""
    broken = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    if broken or not seen["images"]:
        sys.exit(f"figures that did not load: {broken or 'no figure at all'}")
    cells = {(c["method"], c["metric"]): c for c in seen["cells"]}
    for method, metrics in comparison["methods"].items():
        for key, stats in metrics.items():
            shown = cells.get((method, key), {}).get("mean")
            if stats["mean"] is not None and shown != stats["mean"]:
                sys.exit(f"{method} {key}: the page shows {shown}, comparison.json "
                         f"{stats['mean']}")
    if seen["external"] or seen["scroll_width"] > seen["client_width"]:
        sys.exit(f"external resources {seen['external']} or wider than the window "
                 f"({seen['scroll_width']} > {seen['client_width']} pixels)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/report-split-mnist", help="compare folder")
    parser.add_argument("--png", default="docs/report_split_mnist.png", help="screenshot")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    parser.add_argument("--keep", action="store_true",
                        help="reuse --out when it already holds comparison.json")
    args = parser.parse_args()
    out = Path(args.out)
    if not (args.keep and (out / "comparison.json").is_file()):
        code = lifelong([*COMPARE, "--out", str(out)])
        if code:
            sys.exit(code)
    page = write_report(out)
    seen = inspect_report(page, width=args.width)
    check(seen, json.loads((out / "comparison.json").read_text()))
    png = screenshot(page, args.png, width=args.width, height=seen["scroll_height"])
    print(f"{len(seen['images'])} figures loaded, table matches comparison.json; wrote {png} "
          f"({args.width}x{seen['scroll_height']})")


if __name__ == "__main__":
    main()
