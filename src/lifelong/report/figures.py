"""The figures of report.html, as PNG bytes.

Drawn with matplotlib's object API (`matplotlib.figure.Figure`, no pyplot): no global state, no
display, the Agg renderer whatever the user's default backend is, safe in worker processes.
Arrays hold NaN where a value was not recorded; matplotlib leaves those points out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
WIDTH = 5.6  # inches: two figures side by side fit a 1200-pixel page
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")

# (mean over seeds, sample std over seeds or None) of one series
Series = tuple[np.ndarray, "np.ndarray | None"]


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _figure(width: float = WIDTH, height: float = 3.8) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _band(ax, x: np.ndarray, series: Series, **style) -> None:
    mean, std = series
    ax.plot(x, mean, **style)
    if std is not None and np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=style.get("color"), alpha=0.15,
                        linewidth=0)


def _task_ticks(ax, count: int) -> None:
    """Task ids 0..count-1 on the x axis (as in the accuracy matrix and summary.json)."""
    step = max(1, int(np.ceil(count / 12)))
    ax.set_xticks(list(range(0, count, step)))
    ax.set_xlim(-0.3, count - 0.7)


def accuracy_heatmap(matrix: np.ndarray, title: str) -> bytes:
    """R[i][j] (row: after training task i, column: evaluated on task j), values written in."""
    size = matrix.shape[0]
    side = min(5.6, max(3.4, 0.5 * size + 1.6))
    figure = _figure(side + 0.9, side)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="viridis")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="accuracy")
    if size <= 20:
        fontsize = 9 if size <= 6 else 7 if size <= 12 else 5
        for i in range(size):
            for j in range(matrix.shape[1]):
                value = matrix[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                            color="black" if value > 0.6 else "white")
    step = max(1, int(np.ceil(size / 12)))
    ax.set_xticks(range(0, matrix.shape[1], step))
    ax.set_yticks(range(0, size, step))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=10)
    return _png(figure)


def task_curves(mean: np.ndarray, std: np.ndarray | None, title: str) -> bytes:
    """Accuracy of every task j after each task k: one line per task, solid from the task it was
    trained on, dotted before (zero-shot); a band of ± std over seeds when there are several."""
    tasks = mean.shape[0]
    x = np.arange(tasks)
    figure = _figure()
    ax = figure.add_subplot()
    for j in range(mean.shape[1]):
        style = {"color": colour(j)}
        column_std = None if std is None else std[:, j]
        ax.plot(x[: j + 1], mean[: j + 1, j], linestyle=":", alpha=0.6, **style)
        _band(ax, x[j:], (mean[j:, j], None if column_std is None else column_std[j:]),
              marker="o", markersize=3, label=f"task {j}", **style)
    _task_ticks(ax, tasks)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("after training task k")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if mean.shape[1] <= 12:
        ax.legend(fontsize=7, ncol=2 if mean.shape[1] > 5 else 1, loc="lower left")
    return _png(figure)


def method_lines(series: Mapping[str, Series], title: str, ylabel: str,
                 xlabel: str = "after training task k",
                 x: Sequence[float] | None = None, unit_range: bool = False) -> bytes:
    """One line per method (mean over seeds, band ± std): e.g. average accuracy on the tasks
    seen so far, or seconds per task."""
    figure = _figure()
    ax = figure.add_subplot()
    length = max(len(mean) for mean, _ in series.values())
    xs = np.asarray(x if x is not None else np.arange(length), dtype=float)
    for index, (label, (mean, std)) in enumerate(series.items()):
        _band(ax, xs[: len(mean)], (mean, std), color=colour(index), marker="o", markersize=3,
              label=label)
    if x is None:
        _task_ticks(ax, length)
    if unit_range:
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


def final_accuracy_bars(series: Mapping[str, Series], title: str) -> bytes:
    """Accuracy on each task after the last one (the accuracy matrix's last row), a group of
    bars per task, one bar per method (error bars ± std over seeds)."""
    figure = _figure()
    ax = figure.add_subplot()
    tasks = max(len(mean) for mean, _ in series.values())
    width = 0.8 / len(series)
    for index, (label, (mean, std)) in enumerate(series.items()):
        x = np.arange(len(mean)) - 0.4 + width * (index + 0.5)
        ax.bar(x, np.nan_to_num(mean), width, yerr=std, color=colour(index), label=label,
               error_kw={"elinewidth": 0.8, "capsize": 2})
    step = max(1, int(np.ceil(tasks / 12)))
    ax.set_xticks(list(range(0, tasks, step)))
    ax.set_ylim(0, 1.22)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("task j")
    ax.set_ylabel("accuracy after the last task")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(series), 5), frameon=False)
    return _png(figure)


def diagnostic_panels(panels: Mapping[str, Mapping[str, tuple[np.ndarray, Series]]],
                      xlabel: str, integer_x: bool = False) -> bytes:
    """One panel per diagnostic (dead units, effective rank, ...), one line per method in each:
    `panels[title][method] = (x, (mean, std))`."""
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure = _figure(3.9 * columns, 2.9 * rows)
    methods = list(dict.fromkeys(m for lines in panels.values() for m in lines))
    for index, (title, lines) in enumerate(panels.items()):
        ax = figure.add_subplot(rows, columns, index + 1)
        for method, (x, series) in lines.items():
            _band(ax, x, series, color=colour(methods.index(method)), marker="o",
                  markersize=2.5, label=method)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=8)
        if integer_x:  # task ids
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if index == 0 and len(methods) > 1:
            ax.legend(fontsize=7)
    return _png(figure)


def stream_curve(bins: Sequence[Mapping[str, float]], metric: str, title: str) -> bytes:
    """The online metric of each bin of a stream, with the task boundaries as faint lines."""
    figure = _figure(2 * WIDTH, 3.6)
    ax = figure.add_subplot()
    ends = np.array([b["end"] for b in bins], dtype=float)
    values = np.array([np.nan if b.get(metric) is None else b[metric] for b in bins], dtype=float)
    ax.plot(ends, values, color=colour(0), linewidth=1.2)
    tasks = [b.get("task") for b in bins]
    for previous, current, start in zip(tasks, tasks[1:], [b["start"] for b in bins[1:]]):
        if current != previous and len(bins) <= 400:
            ax.axvline(start, color="#999999", linewidth=0.5, alpha=0.5)
    ax.set_xlabel("samples seen")
    ax.set_ylabel(f"online {metric} (per bin)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(figure)
