"""report.html: one self-contained page for a run folder or a compare folder.

`write_report(DIR)` writes `DIR/report.html` and each figure as a PNG in `DIR/report/`. The page
needs nothing else: the figures are embedded as base64 `data:` URIs, the style is inline, there is
no script. It shows the metrics table (mean ± sample std over seeds, the numbers of
comparison.json), the accuracy matrix of each method (mean over seeds) as an annotated heatmap,
the accuracy of every task after each task, the plasticity diagnostics over time when they were
recorded (`--diagnostics`), the time per task, and the settings. A stream run (`lifelong stream`)
gets its online metric per bin, the diagnostics over samples and its timing.

This module puts the page together; its sections are in `lifelong.report.sections`, their
building blocks (formats, tables, the figures' embedding) in `lifelong.report.blocks`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..training.rundir import atomic_write_bytes, atomic_write_text, check_out_dir
from .blocks import Page
from .data import ReportError, load_report
from .sections import (
    accuracy_section,
    diagnostics_section,
    divergence_section,
    header_section,
    metrics_section,
    settings_section,
    stream_sections,
    timing_section,
)

__all__ = ["REPORT_NAME", "FIGURE_FOLDER", "ReportError", "render_report", "write_report"]

REPORT_NAME = "report.html"
FIGURE_FOLDER = "report"

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1d2330;background:#fff;margin:0}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 8px;padding-bottom:4px;
 border-bottom:1px solid #dde1e8}h3{font-size:16px;margin:20px 0 6px}
.meta{color:#586174;font-size:13.5px;margin:2px 0}
.note{color:#586174;font-size:13px;margin:6px 0;max-width:1000px}
.diverged{color:#8b1a1a;background:#fdecea;border:1px solid #f1b0aa;border-radius:4px;
 padding:8px 12px;margin:12px 0}td.diverged{color:#b3261e;font-weight:600}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #f0e2b6;border-radius:4px;
 padding:6px 10px;display:inline-block}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{padding:5px 12px;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th{background:#f4f6f9;font-weight:600}th:first-child,td:first-child{text-align:left}
td.best{font-weight:700}td .na{color:#98a0ae;font-style:italic}
.scroll{overflow-x:auto;max-width:100%}
.figures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;max-width:100%}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12.5px;color:#586174;margin-top:2px}
details{margin:10px 0}summary{cursor:pointer;color:#2b5797}
pre{background:#f6f8fa;padding:10px;border-radius:4px;font-size:12.5px;overflow-x:auto}
"""


def render_report(directory: str | Path) -> tuple[str, dict[str, bytes]]:
    """The page's HTML and its figures ({file name: PNG bytes}) for a run or compare folder."""
    report = load_report(directory)
    page = Page()
    header_section(page, report)
    divergence_section(page, report)
    finished = dataclasses.replace(report, runs=[r for r in report.runs if not r.diverged])
    if report.kind != "compare" and not finished.runs:
        pass  # a diverged run: the banner, and its settings to re-run it
    elif report.kind == "stream":
        stream_sections(page, report)
    else:
        metrics_section(page, report)
        accuracy_section(page, finished)
        diagnostics_section(page, finished)
        timing_section(page, finished)
    settings_section(page, report)
    title = re.sub(r"<[^>]+>", "", page.parts[0])  # the <h1>, already escaped
    text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{STYLE}</style></head>\n<body><main>\n"
            + "\n".join(p for p in page.parts if p) + "\n</main></body></html>\n")
    return text, page.figures


def write_report(directory: str | Path) -> Path:
    """Write `directory/report.html` (self-contained) and its figures as PNGs in
    `directory/report/`; return the page's path. Raises ReportError for a folder that is neither
    a run folder (summary.json) nor a compare folder (comparison.json)."""
    directory = Path(directory)
    text, pngs = render_report(directory)
    folder = directory / FIGURE_FOLDER
    check_out_dir(folder if pngs else directory)  # unwritable: one line, not a traceback
    for name, png in pngs.items():
        atomic_write_bytes(folder / name, png)
    if folder.is_dir():  # figures of an earlier report that this one no longer has
        for stale in folder.glob("*.png"):
            if stale.name not in pngs:
                stale.unlink(missing_ok=True)
    atomic_write_text(directory / REPORT_NAME, text)
    return directory / REPORT_NAME
