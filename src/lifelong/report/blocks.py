"""The building blocks of report.html: escaping, number formats, table cells that carry the exact
numbers, tables, and `Page`, which collects the sections' HTML and embeds the figures.
The sections themselves are in `lifelong.report.sections`."""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NOT_RECORDED = "not recorded"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    return NOT_RECORDED if value is None else f"{value:.{digits}f}"


def fmt_mean_std(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """`mean ± std` (sample std over seeds); the mean alone for one seed."""
    if not stat or stat.get("mean") is None:
        return NOT_RECORDED
    if stat.get("count", 1) < 2 or stat.get("std") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def cell(stat: Mapping[str, Any] | None, digits: int, key: str, method: str,
         best: bool = False) -> str:
    """A table cell whose text is formatted and whose data-* attributes hold the exact numbers
    (so a test can match them with comparison.json)."""
    text = fmt_mean_std(stat, digits)
    if text == NOT_RECORDED:
        return f'<td data-metric="{esc(key)}" data-method="{esc(method)}"><span class="na">' \
               f"{NOT_RECORDED}</span></td>"
    attributes = f' data-mean="{stat["mean"]!r}"'
    if stat.get("count", 1) >= 2 and stat.get("std") is not None:
        attributes += f' data-std="{stat["std"]!r}"'
    classes = ' class="best"' if best else ""
    return (f'<td{classes} data-metric="{esc(key)}" data-method="{esc(method)}"{attributes}>'
            f"{esc(text)}</td>")


class Page:
    """Collects the sections' HTML and the figures (name -> PNG bytes) as they are drawn."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: dict[str, bytes] = {}

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def missing(self, what: str) -> None:
        self.add(f'<p class="missing">{esc(what)}</p>')

    def figure(self, name: str, png: bytes, caption: str) -> str:
        """Keep a figure's PNG under a unique file name; return its <figure> element."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        file_name, count = f"{stem}.png", 1
        while file_name in self.figures:
            count += 1
            file_name = f"{stem}-{count}.png"
        self.figures[file_name] = png
        width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure style="width:{width}px"><img src="data:image/png;base64,{data}" '
                f'width="{width}" height="{height}" alt="{esc(caption)}" '
                f'data-file="{esc(file_name)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def figures_row(self, items: Iterable[str]) -> None:
        self.add('<div class="figures">', *items, "</div>")


def table(header: Sequence[str], rows: Iterable[Sequence[str]], raw_rows: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw_rows` (then they are whole <td> elements)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(row) if raw_rows else "".join(f"<td>{esc(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>' \
           f'{"".join(body)}</tbody></table></div>'
