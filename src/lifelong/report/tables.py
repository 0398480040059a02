"""Tables printed by the command line (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

METRIC_COLUMNS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy_matrix_table(matrix: Sequence[Sequence[float]],
                          baseline: Sequence[float | None] | None = None) -> Table:
    """R[i][j]: rows = after training task i, columns = accuracy on task j."""
    size = len(matrix)
    table = Table(title="accuracy matrix R[i][j] (row: after task i, column: task j)")
    table.add_column("after", justify="right")
    for j in range(size):
        table.add_column(f"task {j}", justify="right")
    if baseline is not None:
        table.add_row("init", *[_fmt(b) for b in baseline], style="dim")
    for i, row in enumerate(matrix):
        cells = [f"[bold]{_fmt(v)}[/]" if i == j else _fmt(v) for j, v in enumerate(row)]
        table.add_row(f"task {i}", *cells)
    return table


def metrics_table(summary: Mapping[str, Any]) -> Table:
    table = Table(title=f"{summary['method']} on {summary['benchmark']} "
                        f"({summary['scenario']}-incremental, seed {summary['seed']})")
    for _, title in METRIC_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("peak MB", justify="right")
    table.add_row(*[_fmt(summary[key]) for key, _ in METRIC_COLUMNS],
                  f"{summary['seconds']:.1f}", f"{summary['peak_memory_mb']:.0f}")
    return table


def _mean_std(stats: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    if stats.get("count", 1) < 2:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def comparison_table(comparison: Mapping[str, Any], title: str | None = None) -> Table:
    """One row per method: mean ± std over seeds of every metric, and time. A method with a
    diverged run shows `diverged k/n` instead of its metrics (never a mean of the others)."""
    scenario = comparison["scenario"]
    seeds = ",".join(map(str, comparison["seeds"]))
    diverged = [r for r in comparison.get("runs", []) if r.get("status") == "diverged"]
    caption = None
    if diverged:
        caption = (f"{len(diverged)} run{'s' if len(diverged) > 1 else ''} diverged: "
                   + ", ".join(f"{r['method']} seed {r['seed']}" for r in diverged)
                   + " (see their summary.json); a --resume keeps them as they are, delete "
                     "their folders to run them again")
    table = Table(title=title or f"{comparison['benchmark']}, {scenario}-incremental, "
                                 f"seeds {seeds} (mean ± std)", caption=caption)
    table.add_column("method")
    for _, name in METRIC_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("seconds", justify="right")
    for method, stats in comparison["methods"].items():
        if stats.get("diverged"):
            cells = [f"[red]diverged {stats['diverged']}/{len(comparison['seeds'])}[/]"
                     ] * len(METRIC_COLUMNS)
        else:
            cells = [_mean_std(stats.get(key)) for key, _ in METRIC_COLUMNS]
        table.add_row(escape(method), *cells, _mean_std(stats.get("seconds"), 1))
    return table


def _forgetting_cell(stats: Mapping[str, Any]) -> str:
    """Mean forgetting coloured at a glance: green below 5 points, yellow below 15, red above."""
    mean = stats.get("mean")
    if mean is None:
        return "-"
    colour = "green" if mean < 0.05 else "yellow" if mean < 0.15 else "red"
    return f"[{colour}]{mean:.2f}[/]"


def demo_table(comparisons: Mapping[str, Mapping[str, Any]]) -> Table:
    """Final accuracy and forgetting of each method in each scenario, side by side, in 80
    columns (means over seeds; each comparison.json holds the standard deviations)."""
    from rich import box

    seeds = next(iter(comparisons.values()))["seeds"]
    table = Table(title=f"split-digits, mean of {len(seeds)} seeds: final accuracy (ACC) and "
                        "forgetting (F)",
                  caption="F: accuracy on earlier tasks lost by the end ([green]<0.05[/], "
                          "[yellow]<0.15[/], [red]more[/])",
                  box=box.SIMPLE_HEAD)
    table.add_column("method", style="bold")
    for scenario in comparisons:
        table.add_column(f"{scenario}-IL ACC", justify="right")
        table.add_column("F", justify="right")
    methods = next(iter(comparisons.values()))["methods"]
    for method in methods:
        cells = []
        for comparison in comparisons.values():
            stats = comparison["methods"][method]
            cells += [_fmt(stats["acc"]["mean"], 2), _forgetting_cell(stats["forgetting"])]
        table.add_row(method, *cells)
    return table


def stream_table(summary: Mapping[str, Any], rows: int = 10) -> Table:
    """The online metric over the stream in about `rows` evenly spaced bins, with the
    diagnostics measured nearest each bin's end."""
    metric = summary["metric"]
    bins = summary["bins"]
    diagnoses = {d["samples"]: d for d in summary.get("diagnostics", [])}
    table = Table(title=f"{summary['method']} on {summary['benchmark']} (seed {summary['seed']}):"
                        f" online {metric}, mean {_fmt(summary[f'mean_online_{metric}'])}, "
                        f"{summary['us_per_step']:.0f} µs/step")
    table.add_column("samples", justify="right")
    table.add_column("task", justify="right")
    table.add_column(f"online {metric}", justify="right")
    if diagnoses:
        for title in ("dead units", "eff. rank", "|w|", "plasticity"):
            table.add_column(title, justify="right")
    step = max(1, len(bins) // rows)
    chosen = bins[::step]
    if bins and chosen[-1] is not bins[-1]:
        chosen.append(bins[-1])
    for b in chosen:
        cells = [f"{b['end']:,}", str(b["task"]), _fmt(b[metric], 4 if metric == "error" else 3)]
        if diagnoses:
            d = diagnoses.get(b["end"])
            cells += ["-"] * 4 if d is None else [
                _fmt(d["dead_units"]), _fmt(d["effective_rank"], 1),
                _fmt(d["weight_magnitude"], 4), _fmt(d.get("plasticity"))]
        table.add_row(*cells)
    return table
