"""report.html of a real compare run, opened in headless Chromium: every figure loads, the table
shows comparison.json's numbers, nothing external is fetched, the page fits its width, and a
screenshot is a non-blank PNG.

Chromium is required (CI installs it, see .ci/run): without it this test fails and says how to
install it, unless LIFELONG_SKIP_BROWSER=1 is set.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image, ImageStat

from lifelong.cli import main
from lifelong.report.browser import INSTALL_HINT, find_chromium, inspect_report, screenshot


@pytest.fixture
def chromium() -> str:
    if os.environ.get("LIFELONG_SKIP_BROWSER") == "1":
        pytest.skip("LIFELONG_SKIP_BROWSER=1")
    binary = find_chromium()
    if binary is None:
        pytest.fail(f"the browser test needs Chromium: {INSTALL_HINT}; "
                    "or set LIFELONG_SKIP_BROWSER=1 to skip it")
    return binary


@pytest.mark.slow
def test_compare_report_renders_in_chromium(chromium, tmp_path) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "-b", "split-digits", "--iterations", "5", "--hidden", "16",
                 "--methods", "naive,ewc", "--seeds", "0,1", "--diagnostics", "--quiet",
                 "--out", str(out)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    seen = inspect_report(out / "report.html", width=1280)

    # every figure loaded, from an embedded PNG; one per file in report/
    assert len(seen["images"]) == len(list((out / "report").glob("*.png"))) >= 6
    for image in seen["images"]:
        assert image["data_uri"] and image["complete"], image
        assert image["width"] > 0 and image["height"] > 0, image
    # the metrics table shows comparison.json's numbers
    cells = {(c["method"], c["metric"]): c for c in seen["cells"]}
    for method, metrics in comparison["methods"].items():
        for key in ("acc", "bwt", "fwt", "forgetting", "seconds"):
            cell, stats = cells[(method, key)], metrics[key]
            assert cell["mean"] == pytest.approx(stats["mean"], rel=1e-12)
            assert cell["std"] == pytest.approx(stats["std"], rel=1e-12)
            digits = 2 if key == "seconds" else 3
            assert cell["text"] == f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    # self-contained, no script, no horizontal scrolling at 1280 pixels
    assert seen["external"] == [] and seen["scripts"] == 0
    assert seen["scroll_width"] <= seen["client_width"]
    assert {"Results", "Accuracy over the task sequence", "Plasticity diagnostics",
            "Timing"} <= set(seen["headings"])

    # a screenshot of the whole page: a PNG of that size with something drawn on it
    png = screenshot(out / "report.html", tmp_path / "shot.png", width=1280,
                     height=seen["scroll_height"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as picture:
        assert picture.size == (1280, seen["scroll_height"])
        grey = picture.convert("L")
        low, high = grey.getextrema()
        assert high - low > 150  # dark text and figures on a light page
        assert ImageStat.Stat(grey).stddev[0] > 10
        assert len(picture.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100
