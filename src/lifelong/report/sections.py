"""The sections of report.html, each added to a `Page`: the header, the metrics table, the
accuracy over the task sequence, the plasticity diagnostics, the timing, a stream run's results
and the settings. Their building blocks are in `lifelong.report.blocks`."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import yaml

from .._version import __version__
from ..metrics import seed_stats
from . import figures
from .blocks import NOT_RECORDED, Page, cell, esc, fmt, fmt_mean_std, table
from .data import Report, Run, as_array, mean_std, numeric_keys

# (key in summary.json / comparison.json, column title, digits, better: +1 higher, -1 lower)
METRICS = (("acc", "ACC", 3, 1), ("bwt", "BWT", 3, 1), ("fwt", "FWT", 3, 1),
           ("forgetting", "forgetting", 3, -1), ("seconds", "seconds", 2, -1))
GLOSSARY = ("ACC: mean accuracy over all tasks after the last one; BWT (backward transfer): mean "
            "change of a task's accuracy from just after learning it to the end; FWT (forward "
            "transfer): accuracy on a task before training on it, minus the untrained model's; "
            "forgetting: mean drop from a task's best accuracy to its final one; seconds: "
            "wall-clock time of the whole run.")
DIAGNOSTIC_TITLES = {"dead_units": "dead units (fraction)", "effective_rank": "effective rank",
                     "stable_rank": "stable rank", "weight_magnitude": "mean |w|",
                     "gradient_magnitude": "mean |∂L/∂w|", "plasticity": "plasticity p(Z)"}
SETTINGS_SHOWN = ("epochs", "iterations", "batch_size", "lr", "optimizer", "model", "hidden",
                  "head", "tasks", "steps", "bin_size", "boundaries")


def _best(report: Report, key: str, sign: int) -> set[str]:
    """The methods with the best mean of a metric (none when they all have the same)."""
    means = {m: round(s.get(key, {}).get("mean"), 12) for m, s in report.methods.items()
             if s.get(key, {}).get("mean") is not None}
    if len(set(means.values())) < 2:
        return set()
    best = max(sign * v for v in means.values())
    return {m for m, v in means.items() if sign * v == best}


def _settings_line(run: Run) -> str:
    if not run.config_text:
        return ""
    try:
        config = yaml.safe_load(run.config_text) or {}
    except yaml.YAMLError:
        return ""
    shown = [f"{k.replace('_', ' ')} "
             + (",".join(map(str, v)) if isinstance(v, list) else str(v))
             for k in SETTINGS_SHOWN if (v := config.get(k)) not in (None, [], "")]
    return f'<p class="meta">settings: {esc(" · ".join(shown))}</p>' if shown else ""


def header_section(page: Page, report: Report) -> None:
    runs = report.runs
    if report.kind == "compare":
        title = f"{report.benchmark}, {report.scenario}-incremental: " \
                f"{len(report.methods)} method{'s' if len(report.methods) > 1 else ''} compared"
        what = f"methods {', '.join(report.methods)} · seeds {', '.join(map(str, report.seeds))}"
    elif report.kind == "stream":
        title = f"{runs[0].method} on the {report.benchmark} stream"
        what = f"seed {runs[0].seed}"
    else:
        title = f"{runs[0].method} on {report.benchmark}, {report.scenario}-incremental"
        what = f"seed {runs[0].seed}"
    first = runs[0].summary if runs else {}
    versions = f"lifelong {first.get('lifelong_version', __version__)}"
    if first.get("torch_version"):
        versions += f", torch {first['torch_version']}"
    device = ", ".join(dict.fromkeys(str(r.summary["device"]) for r in runs
                                     if r.summary.get("device"))) or NOT_RECORDED
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page.add(f"<h1>{esc(title)}</h1>",
             f'<p class="meta">{esc(what)} · device {esc(device)} · {esc(versions)}</p>',
             _settings_line(runs[0]) if runs else "",
             f'<p class="meta">folder {esc(report.directory.resolve().name)} · report made '
             f"{esc(made)}</p>")


def divergence_section(page: Page, report: Report) -> None:
    """A banner naming every run that diverged and why, in place of numbers made of NaN."""
    diverged = [r for r in report.runs if r.diverged]
    if not diverged:
        return
    if report.kind != "compare":
        message = (diverged[0].summary.get("divergence") or {}).get("message", "diverged")
        page.add(f'<p class="diverged"><strong>This run diverged</strong>: {esc(message)}. '
                 "It has no results: no metrics and no figures are shown (they would be made "
                 "of NaN).</p>")
        return
    items = "".join(
        f"<li>{esc(r.method)} seed {r.seed}: "
        f"{esc((r.summary.get('divergence') or {}).get('message', 'diverged'))}</li>"
        for r in diverged)
    page.add(f'<div class="diverged"><strong>{len(diverged)} of {len(report.runs)} runs '
             f"diverged</strong> (a non-finite loss or weights); their methods show "
             f"<em>diverged k/n</em> instead of a mean over the other seeds, and the figures "
             f"show only the runs that finished.<ul>{items}</ul></div>")


def metrics_section(page: Page, report: Report) -> None:
    page.add("<h2>Results</h2>")
    header = ["method", "seeds"] + [title for _, title, _, _ in METRICS] + \
             ["seconds / task", "peak MB"]
    best = {key: _best(report, key, sign) for key, _, _, sign in METRICS}
    rows = []
    for method, metric_stats in report.methods.items():
        runs = report.runs_of(method)
        per_task = seed_stats([float(np.mean(r.task_seconds)) if r.task_seconds else None
                          for r in runs])
        memory = seed_stats([r.summary.get("peak_memory_mb") for r in runs])
        count = max((s.get("count", 0) for s in metric_stats.values() if isinstance(s, dict)),
                    default=0)
        row = [f"<td>{esc(method)}</td>", f"<td>{count}</td>"]
        diverged = metric_stats.get("diverged")
        row += [f'<td class="diverged" data-metric="{key}" data-method="{esc(method)}">'
                f"diverged {diverged}/{len(runs)}</td>" if diverged and key != "seconds" else
                cell(metric_stats.get(key), digits, key, method, method in best[key])
                for key, _, digits, _ in METRICS]
        row += [cell(per_task, 2, "seconds_per_task", method), cell(memory, 0, "peak_mb", method)]
        rows.append(row)
    page.add(table(header, rows, raw_rows=True))
    several = any(s.get("acc", {}).get("count", 1) > 1 for s in report.methods.values())
    spread = ("mean ± sample standard deviation over seeds" if several else
              "one seed per method, so no standard deviation")
    best_note = "; the best mean of each column in bold" if len(report.methods) > 1 else ""
    page.add(f'<p class="note">{esc(spread + best_note)}. {esc(GLOSSARY)}</p>')
    if report.kind == "compare":
        rows = [[r.method, str(r.seed)] + [fmt(r.summary.get(k), d) for k, _, d, _ in METRICS]
                + [str(r.folder.relative_to(report.directory)) if r.folder and
                   r.folder.is_relative_to(report.directory) else (r.folder or NOT_RECORDED)]
                for r in report.runs]
        page.add("<details><summary>every run</summary>",
                 table(["method", "seed"] + [t for _, t, _, _ in METRICS] + ["folder"], rows),
                 "</details>")


def _seen_accuracy(matrix: np.ndarray) -> np.ndarray:
    """ACC_k: mean accuracy on tasks 0..k after training task k."""
    return np.array([np.nanmean(matrix[k, : k + 1]) for k in range(matrix.shape[0])])


def accuracy_section(page: Page, report: Report) -> None:
    page.add("<h2>Accuracy over the task sequence</h2>")
    matrices = {m: [r.accuracy_matrix for r in report.runs_of(m) if r.accuracy_matrix.size]
                for m in report.methods}
    matrices = {m: [a for a in arrays if a.shape == arrays[0].shape]
                for m, arrays in matrices.items() if arrays}
    if not matrices:
        page.missing(f"accuracy matrix: {NOT_RECORDED}")
        return
    if len(matrices) > 1:
        series = {m: mean_std([_seen_accuracy(a) for a in arrays])
                  for m, arrays in matrices.items()}
        final = {m: mean_std([a[-1] for a in arrays]) for m, arrays in matrices.items()}
        page.figures_row([
            page.figure("average-accuracy", figures.method_lines(
                series, "average accuracy on the tasks seen so far", "accuracy",
                unit_range=True), "Mean accuracy on tasks 0..k after training task k, per "
                "method (mean over seeds, band ± std)."),
            page.figure("final-accuracy", figures.final_accuracy_bars(
                final, "accuracy of each task at the end"), "Accuracy on each task after "
                "training the last one (the accuracy matrix's last row; error bars ± std)."),
        ])
    for method, arrays in matrices.items():
        mean, std = mean_std(arrays)
        seeds = f"mean of {len(arrays)} seeds" if len(arrays) > 1 else "one seed"
        page.add(f"<h3>{esc(method)}</h3>")
        page.figures_row([
            page.figure(f"{method}-accuracy-matrix",
                        figures.accuracy_heatmap(mean, f"{method}: accuracy matrix ({seeds})"),
                        f"{method}: accuracy on task j (column) after training task i (row), "
                        f"{seeds}."),
            page.figure(f"{method}-task-accuracy",
                        figures.task_curves(mean, std, f"{method}: accuracy of each task"),
                        f"{method}: accuracy of every task after each task (one line per task; "
                        "dotted before the task is trained"
                        + ("; band ± std over seeds" if std is not None else "") + ")."),
        ])


def _diagnostic_panels(report: Report, x_key: str) -> dict[str, dict[str, Any]]:
    """panels[title][method] = (x, (mean, std)) for every numeric key recorded over time."""
    panels: dict[str, dict[str, Any]] = {}
    for method in report.methods:
        runs = [r for r in report.runs_of(method) if r.records]
        if not runs:
            continue
        for key in numeric_keys([rec for r in runs for rec in r.records]):
            xs = sorted({rec[x_key] for r in runs for rec in r.records
                         if rec.get(x_key) is not None and key in rec})
            if not xs:
                continue
            position = {x: i for i, x in enumerate(xs)}
            stack = []
            for run in runs:
                values = np.full(len(xs), np.nan)
                for rec in run.records:
                    if rec.get(x_key) in position and isinstance(rec.get(key), (int, float)):
                        values[position[rec[x_key]]] = float(rec[key])
                stack.append(values)
            x = np.array(xs, dtype=float)
            title = DIAGNOSTIC_TITLES.get(key, key.replace("_", " "))
            panels.setdefault(title, {})[method] = (x, mean_std(stack))
    return panels


def diagnostics_section(page: Page, report: Report) -> None:
    page.add("<h2>Plasticity diagnostics</h2>")
    stream = report.kind == "stream"
    panels = _diagnostic_panels(report, "samples" if stream else "task")
    if not panels:
        command = "lifelong stream" if stream else "lifelong run / compare"
        page.missing(f"diagnostics: {NOT_RECORDED} (add --diagnostics to {command})")
        return
    seeds = any(len(report.runs_of(m)) > 1 for m in report.methods)
    xlabel = "samples seen" if stream else "after training task k"
    page.figures_row([page.figure("diagnostics", figures.diagnostic_panels(
        panels, xlabel, integer_x=not stream), "Measured on a probe set of the current task "
        + ("at each diagnosis" if stream else "after each task")
        + (" (mean over seeds, band ± std)" if seeds else "") + ". Definitions: "
        "lifelong.metrics.diagnostics (Dohare et al. 2024; Elsayed & Mahmood 2024).")])
    last = []
    for method in report.methods:
        final = {title: lines[method][1][0][-1] for title, lines in panels.items()
                 if method in lines}
        last.append([method] + [f"{final[t]:.4g}" if t in final and np.isfinite(final[t])
                                else NOT_RECORDED for t in panels])
    page.add('<p class="note">at the end of the run:</p>', table(["method", *panels], last))


def timing_section(page: Page, report: Report) -> None:
    page.add("<h2>Timing</h2>")
    rows, series = [], {}
    for method in report.methods:
        runs = report.runs_of(method)
        total = seed_stats([r.summary.get("seconds") for r in runs])
        per_task = [as_array(r.task_seconds) for r in runs if r.task_seconds]
        per_task = [p for p in per_task if per_task and p.shape == per_task[0].shape]
        if per_task:
            series[method] = mean_std(per_task)
            mean = series[method][0]
            cells = [fmt(float(np.mean(mean)), 2), fmt(float(np.min(mean)), 2),
                     fmt(float(np.max(mean)), 2)]
        else:
            cells = [NOT_RECORDED] * 3
        rows.append([method, fmt_mean_std(total, 2), *cells])
    page.add(table(["method", "total seconds", "seconds per task (mean)", "fastest task",
                    "slowest task"], rows))
    if series:
        page.figures_row([page.figure("seconds-per-task", figures.method_lines(
            series, "seconds per task", "seconds (training + evaluation)"),
            "Wall-clock seconds of each task: training, evaluation on every task"
            " and diagnostics.")])
    else:
        page.missing(f"seconds per task: {NOT_RECORDED}")


def stream_sections(page: Page, report: Report) -> None:
    run = report.runs[0]
    summary = run.summary
    metric = summary.get("metric", "accuracy")
    page.add("<h2>Results</h2>")
    keys = (f"mean_online_{metric}", f"first_task_{metric}", f"last_10pct_tasks_{metric}")
    titles = (f"mean online {metric}", f"first task {metric}", f"last 10% of tasks {metric}")
    page.add(table(["method", *titles, "samples", "steps"],
                   [[run.method, *[fmt(summary.get(k), 4) for k in keys],
                     f"{summary.get('samples', 0):,}", f"{summary.get('steps', 0):,}"]]))
    page.add(f'<p class="note">{esc(metric)} of each sample measured before the update on it '
             "(online, prequential).</p>")
    bins = [b for b in summary.get("bins", []) if "end" in b]
    if bins:
        page.figures_row([page.figure("online-metric", figures.stream_curve(
            bins, metric, f"{run.method}: online {metric}"),
            f"Online {metric} per bin of samples; faint lines: task changes.")])
    else:
        page.missing(f"bins: {NOT_RECORDED}")
    values = summary.get("task_values") or []
    if values:
        page.figures_row([page.figure("per-task", figures.method_lines(
            {run.method: (as_array(values), None)}, f"online {metric} of each task", metric,
            xlabel="task"), f"Mean online {metric} over each task's samples.")])
    diagnostics_section(page, report)
    page.add("<h2>Timing</h2>", table(
        ["total seconds", "µs per step", "peak MB", "device"],
        [[fmt(summary.get("seconds"), 2), fmt(summary.get("us_per_step"), 1),
          fmt(summary.get("peak_memory_mb"), 0), str(summary.get("device", NOT_RECORDED))]]))


def settings_section(page: Page, report: Report) -> None:
    shown = {}
    for method in report.methods:
        runs = [r for r in report.runs_of(method) if r.config_text]
        if runs:
            shown[method] = runs[0]
    if not shown:
        return
    page.add("<h2>Settings</h2>")
    for method, run in shown.items():
        page.add(f"<details><summary>{esc(method)}: config.yaml (seed {run.seed})</summary>"
                 f"<pre>{esc(run.config_text)}</pre></details>")

