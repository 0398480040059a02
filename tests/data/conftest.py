"""Fixtures for the data tests: an isolated cache, a local HTTP server, fake IDX datasets."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import md5sum, write_idx
from lifelong.data import mnist as mnist_mod


@pytest.fixture(autouse=True)
def isolated_env(isolated_env: Path) -> Path:
    """tests/conftest.py's isolated cache, for every data test."""
    return isolated_env


class _Handler(SimpleHTTPRequestHandler):
    """Serves files from a folder; `/truncated/...` promises 1000 bytes and sends 10."""

    def __init__(self, *args, log: list[str], **kwargs) -> None:
        self.log = log
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.log.append(self.path)
        if self.path.startswith("/truncated/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclasses.dataclass
class LocalServer:
    root: Path
    url: str
    requests: list[str]
    stop: Callable[[], None]


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    """An HTTP server on 127.0.0.1 serving `root` from a background thread."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    log: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root), log=log))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            server.shutdown()
            server.server_close()
            thread.join(5)

    yield LocalServer(root, f"http://127.0.0.1:{server.server_address[1]}/", log, stop)
    stop()


@dataclasses.dataclass
class FakeDataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: dict[str, Path]  # official .gz name -> path written


@pytest.fixture
def fake_idx_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDataset]:
    """Factory writing a tiny MNIST-like dataset and patching its MD5s into `SPECS[key]`.

    `folder` receives the four files, compressed (`gz=True`) or not; `n_labels` overrides the
    number of training labels, `max_label` the largest label, to build inconsistent datasets.
    """
    scratch = tmp_path / "scratch"
    counter = iter(range(1000))

    def make(
        folder: Path,
        key: str = "mnist",
        *,
        gz: bool = True,
        n_train: int = 12,
        n_test: int = 5,
        n_labels: int | None = None,
        max_label: int = 9,
        seed: int = 0,
    ) -> FakeDataset:
        rng = np.random.default_rng(seed)
        data = {
            mnist_mod.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            mnist_mod.TRAIN_LABELS: rng.integers(
                0, max_label + 1, n_train if n_labels is None else n_labels, dtype=np.uint8
            ),
            mnist_mod.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            mnist_mod.TEST_LABELS: rng.integers(0, max_label + 1, n_test, dtype=np.uint8),
        }
        folder.mkdir(parents=True, exist_ok=True)
        files, paths = {}, {}
        for name, arr in data.items():
            work = scratch / str(next(counter))
            work.mkdir(parents=True)
            gz_path = write_idx(work / name, arr)
            raw_path = write_idx(work / name.removesuffix(".gz"), arr)
            files[name] = mnist_mod.FileSpec(md5sum(gz_path), md5sum(raw_path))
            src = gz_path if gz else raw_path
            paths[name] = Path(shutil.copy(src, folder / src.name))
        spec = dataclasses.replace(mnist_mod.SPECS[key], files=files)
        monkeypatch.setitem(mnist_mod.SPECS, key, spec)
        return FakeDataset(
            data[mnist_mod.TRAIN_IMAGES],
            data[mnist_mod.TRAIN_LABELS].astype(np.int64),
            data[mnist_mod.TEST_IMAGES],
            data[mnist_mod.TEST_LABELS].astype(np.int64),
            paths,
        )

    return make
