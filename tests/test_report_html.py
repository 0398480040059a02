"""report.html: the page's numbers are comparison.json's, its figures are embedded PNGs, its text
is escaped, missing pieces say "not recorded", and a report never costs a run its results."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import lifelong.report.html as report_html
from lifelong.cli import main
from lifelong.report.blocks import fmt_mean_std
from lifelong.report.data import ReportError
from lifelong.report.html import render_report, write_report

FAST = ["-b", "split-digits", "--iterations", "5", "--hidden", "16", "--quiet"]
METRICS = ("acc", "bwt", "fwt", "forgetting", "seconds")


class _Page(HTMLParser):
    """Every start tag with its attributes, and the metric cells with their text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: dict[tuple[str, str], dict[str, str | None]] = {}
        self._cell: dict[str, str | None] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "td" and "data-metric" in attributes:
            self._cell = {**attributes, "text": ""}
            self.cells[(attributes["data-method"], attributes["data-metric"])] = self._cell

    def handle_endtag(self, tag) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "cmp"
    assert main(["compare", *FAST, "--methods", "naive,ewc", "--seeds", "0,1", "--diagnostics",
                 "--out", str(out)]) == 0
    return out


def _summary(method: str, seed: int, **extra) -> dict:
    matrix = [[0.9, 0.5], [0.7, 0.95]]
    return {"benchmark": "toy", "scenario": "task", "method": method, "seed": seed,
            "acc": 0.825, "bwt": -0.2, "fwt": None, "forgetting": 0.2,
            "accuracy_matrix": matrix, "baseline_accuracy": [0.5, 0.5],
            "task_seconds": [0.5, 0.25], "method_reports": [], "diagnostics": [],
            "seconds": 0.75, "peak_memory_mb": 100.0, "device": "cpu", **extra}


def _write(path: Path, data: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(data))


def test_compare_report_holds_the_numbers_of_comparison_json(compare_dir) -> None:
    comparison = json.loads((compare_dir / "comparison.json").read_text())
    page = _Page((compare_dir / "report.html").read_text())  # written by compare itself
    for method, metrics in comparison["methods"].items():
        for key in METRICS:
            cell, stats = page.cells[(method, key)], metrics[key]
            assert float(cell["data-mean"]) == stats["mean"]
            assert float(cell["data-std"]) == stats["std"]
            digits = 2 if key == "seconds" else 3
            assert cell["text"] == f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    assert {"naive", "ewc"} <= {a.get("data-method") for _, a in page.tags}


def test_every_image_is_an_embedded_png_also_saved_beside_the_page(compare_dir) -> None:
    page = _Page((compare_dir / "report.html").read_text())
    images = [a for tag, a in page.tags if tag == "img"]
    files = {a["data-file"] for a in images}
    # the heatmap and task curves of each method, average accuracy, diagnostics, timing
    assert {"naive-accuracy-matrix.png", "ewc-task-accuracy.png", "average-accuracy.png",
            "diagnostics.png", "seconds-per-task.png"} <= files
    assert files == {p.name for p in (compare_dir / "report").glob("*.png")}
    for attributes in images:
        prefix = "data:image/png;base64,"
        assert attributes["src"].startswith(prefix)
        png = base64.b64decode(attributes["src"][len(prefix):])
        assert png == (compare_dir / "report" / attributes["data-file"]).read_bytes()
    # self-contained: no script, no stylesheet link, no remote or local resource
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object")]
    assert not re.search(r'(src|href)="(https?:|//)', (compare_dir / "report.html").read_text())
    assert not list(compare_dir.glob(".*.tmp")) and not list(compare_dir.glob("report/.*"))


def test_the_report_shows_diagnostics_and_timing_when_recorded(compare_dir) -> None:
    text = (compare_dir / "report.html").read_text()
    for title in ("dead units (fraction)", "effective rank", "plasticity p(Z)",
                  "seconds per task (mean)"):
        assert title in text
    assert "not recorded" not in text


def test_all_text_put_in_the_page_is_escaped(tmp_path) -> None:
    nasty = '<img src=x onerror="alert(1)">&'
    _write(tmp_path, _summary(nasty, 0, benchmark="b<i>&\"'"))
    (tmp_path / "config.yaml").write_text(f"method: '{nasty}'\nlr: 0.1\n")
    text, _ = render_report(tmp_path)
    assert nasty not in text and "b<i>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in text
    assert not [t for t, a in _Page(text).tags if t == "img" and a["src"] == "x"]


def test_one_run_without_diagnostics_says_not_recorded_and_has_no_std(tmp_path) -> None:
    _write(tmp_path, _summary("naive", 3))
    path = write_report(tmp_path)
    text = path.read_text()
    page = _Page(text)
    assert page.cells[("naive", "acc")]["text"] == "0.825"
    assert "data-std" not in page.cells[("naive", "acc")]
    assert page.cells[("naive", "fwt")]["text"] == "not recorded"  # FWT is None here
    assert "diagnostics: not recorded" in text and "one seed" in text
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {
        "naive-accuracy-matrix.png", "naive-task-accuracy.png", "seconds-per-task.png"}


def test_diagnostics_are_read_from_metrics_jsonl_when_the_summary_has_none(tmp_path) -> None:
    _write(tmp_path, _summary("naive", 0, task_seconds=[]))
    lines = [{"event": "diagnostics", "task": t, "dead_units": 0.1 * t, "effective_rank": 5.0}
             for t in range(2)]
    lines += [{"event": "task_end", "task": t, "seconds": 0.5} for t in range(2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines)
                                            + '{"event": "cut sh')  # a crash's last line
    text, figures = render_report(tmp_path)
    assert "diagnostics.png" in figures and "dead units (fraction)" in text
    assert _Page(text).cells[("naive", "seconds_per_task")]["text"] == "0.50"


def test_a_compare_folder_whose_run_folders_are_gone_still_renders(compare_dir, tmp_path) -> None:
    comparison = json.loads((compare_dir / "comparison.json").read_text())
    for run in comparison["runs"]:
        run["dir"] = "/nonexistent"
    (tmp_path / "comparison.json").write_text(json.dumps(comparison))
    text, figures = render_report(tmp_path)
    assert "naive-accuracy-matrix.png" in figures  # from comparison.json's matrices
    assert "seconds per task: not recorded" in text and "diagnostics: not recorded" in text


def test_a_stream_run_gets_its_online_metric_and_diagnostics(tmp_path) -> None:
    bins = [{"bin": i, "start": 100 * i, "end": 100 * (i + 1), "task": i // 2,
             "accuracy": 0.5 + 0.05 * i, "loss": 1.0, "seconds": 0.1} for i in range(6)]
    diagnostics = [{"samples": b["end"], "task": b["task"], "dead_units": 0.1,
                    "dead_units_per_layer": [0.1], "plasticity": None} for b in bins]
    _write(tmp_path, {"benchmark": "permuted-mnist", "method": "cbp", "seed": 0,
                      "metric": "accuracy", "mean_online_accuracy": 0.6, "bins": bins,
                      "task_values": [0.55, 0.65, 0.75], "diagnostics": diagnostics,
                      "samples": 600, "steps": 600, "us_per_step": 300.0, "seconds": 1.0,
                      "peak_memory_mb": 50.0, "device": "cpu"})
    text, figures = render_report(tmp_path)
    assert {"online-metric.png", "per-task.png", "diagnostics.png"} <= set(figures)
    assert "mean online accuracy" in text and "0.6000" in text
    assert "first task accuracy" in text  # absent from this summary: "not recorded"


def test_a_folder_with_nothing_to_report_is_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(ReportError, match="neither summary.json .* nor comparison.json"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_report_command_rewrites_the_page_and_drops_stale_figures(tmp_path, capsys) -> None:
    _write(tmp_path, _summary("naive", 0))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old-method-accuracy-matrix.png").write_bytes(b"old")
    assert main(["report", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert not (tmp_path / "report" / "old-method-accuracy-matrix.png").exists()


def test_a_failing_report_is_a_warning_and_the_results_stay(tmp_path, monkeypatch,
                                                            capsys) -> None:
    def broken(directory):
        raise ValueError("no figures today")

    monkeypatch.setattr(report_html, "write_report", broken)
    out = tmp_path / "run"
    assert main(["run", *FAST, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: report.html not written (ValueError: no figures today)" in captured.err
    assert "Traceback" not in captured.err
    assert "accuracy matrix" in captured.out and (out / "summary.json").is_file()
    assert not (out / "report.html").exists()


def test_no_report_skips_the_page(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["run", *FAST, "--no-report", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()


@pytest.mark.parametrize(("stat", "text"), [
    ({"mean": 0.5, "std": 0.25, "count": 2}, "0.500 ± 0.250"),
    ({"mean": 0.5, "std": 0.0, "count": 1}, "0.500"),
    ({"mean": None, "std": None, "count": 0}, "not recorded"),
    (None, "not recorded"),
])
def test_mean_std_format(stat, text) -> None:
    assert fmt_mean_std(stat) == text
