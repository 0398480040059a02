"""report.html in a real browser: headless Chromium loads the page, says what it saw, and takes
screenshots. Used by the browser test and by benchmarks/report_screenshot.py; needs no Python
package, only a Chromium (or Chrome) binary.

`inspect_report` opens a small harness page that loads the report, unchanged, in an iframe
(`--allow-file-access-from-files` lets the harness read a file:// frame) and, once everything has
loaded, writes what it found (each image's natural size, each table cell's numbers, external
resources, the page's size) as JSON into its own DOM, which `--dump-dom` prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = ("no Chromium found (looked for $LIFELONG_CHROMIUM, then "
                f"{', '.join(CANDIDATES)} on PATH); install it with "
                "`apt-get install -y chromium` (Debian/Ubuntu) or `brew install --cask chromium`, "
                "or point LIFELONG_CHROMIUM at a Chrome binary")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
         "--disable-extensions", "--disable-background-networking")

HARNESS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe id="report" src="__SRC__" style="border:0;width:__W__px;height:__H__px"></iframe>
<pre id="lifelong-result"></pre>
<script>
window.addEventListener("load", () => {
  let result;
  try {
    const doc = document.getElementById("report").contentDocument;
    const root = doc.documentElement;
    const resources = "img[src],script[src],link[href],iframe[src],object[data],embed[src],"
      + "video[src],audio[src],source[src]";
    result = {
      title: doc.title,
      headings: [...doc.querySelectorAll("h1,h2")].map(h => h.textContent),
      images: [...doc.images].map(img => ({
        file: img.dataset.file || null, data_uri: img.src.startsWith("data:image/png;base64,"),
        complete: img.complete, width: img.naturalWidth, height: img.naturalHeight})),
      cells: [...doc.querySelectorAll("td[data-metric]")].map(td => ({
        method: td.dataset.method, metric: td.dataset.metric,
        mean: td.dataset.mean === undefined ? null : Number(td.dataset.mean),
        std: td.dataset.std === undefined ? null : Number(td.dataset.std),
        text: td.textContent.trim()})),
      external: [...doc.querySelectorAll(resources)]
        .map(e => e.getAttribute("src") || e.getAttribute("href") || e.getAttribute("data"))
        .filter(url => !url.startsWith("data:")),
      scripts: doc.scripts.length,
      scroll_width: root.scrollWidth, client_width: root.clientWidth,
      scroll_height: root.scrollHeight,
    };
  } catch (error) {
    result = {error: String(error)};
  }
  document.getElementById("lifelong-result").textContent = JSON.stringify(result);
});
</script></body></html>
"""


def find_chromium() -> str | None:
    """$LIFELONG_CHROMIUM, else the first Chromium/Chrome on PATH, else None."""
    given = os.environ.get("LIFELONG_CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def _chromium(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="lifelong-chromium-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *arguments],
                              capture_output=True, text=True, timeout=timeout, check=False)


def inspect_report(page: str | Path, width: int = 1280, height: int = 900,
                   timeout: float = 90) -> dict[str, Any]:
    """Load `page` in headless Chromium at `width` x `height` and return what it saw: `images`
    (file, data_uri, complete, natural width and height), `cells` (the metric table cells'
    method, metric, mean, std and text), `external` (URLs of resources that are not data: URIs),
    `scripts`, `headings`, `title`, and the page's `scroll_width`, `client_width` and
    `scroll_height` in CSS pixels."""
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(prefix="lifelong-harness-") as folder:
        harness = Path(folder) / "harness.html"
        harness.write_text(HARNESS.replace("__SRC__", html.escape(page.as_uri()))
                           .replace("__W__", str(width)).replace("__H__", str(height)),
                           encoding="utf-8")
        done = _chromium("--allow-file-access-from-files", "--virtual-time-budget=10000",
                         f"--window-size={width + 20},{height + 20}", "--dump-dom",
                         harness.as_uri(), timeout=timeout)
    found = re.search(r'<pre id="lifelong-result">(.*?)</pre>', done.stdout, re.S)
    if done.returncode != 0 or not found or not found.group(1).strip():
        raise RuntimeError(f"Chromium did not report on {page} (exit {done.returncode}); "
                           f"its stderr ends with: {done.stderr[-1500:]}")
    result = json.loads(html.unescape(found.group(1)))
    if "error" in result:
        raise RuntimeError(f"the harness could not read {page}: {result['error']}")
    return result


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int | None = None,
               timeout: float = 90) -> Path:
    """Save a PNG of `page` rendered `width` pixels wide; the whole page unless `height`."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if height is None:
        height = int(inspect_report(page, width, timeout=timeout)["scroll_height"])
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    done = _chromium(f"--window-size={width},{height}", f"--screenshot={png}",
                     "--virtual-time-budget=10000", page.as_uri(), timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot of {page} (exit {done.returncode}); "
                           f"its stderr ends with: {done.stderr[-1500:]}")
    return png
