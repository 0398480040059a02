"""Search directories, MD5 and downloads (served from a local HTTP server, no network)."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path

import pytest

from lifelong.data import cache_dir, data_dirs, download, downloads_enabled, md5sum
from lifelong.errors import DataError

PAYLOAD = bytes(range(256)) * 300  # 76.8 kB: several reads, but instant
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def _leftovers(folder: Path, keep: str | None = None) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep) if folder.exists() else []


# --- data_dirs / cache_dir / downloads_enabled ----------------------------------------------


def test_data_dirs_explicit_then_cache(tmp_path: Path, isolated_env: Path) -> None:
    os.environ["LIFELONG_DATA"] = str(tmp_path / "from-env")  # ignored: the argument wins
    assert data_dirs(tmp_path / "mine") == [tmp_path / "mine", isolated_env]
    assert data_dirs(str(tmp_path / "mine")) == [tmp_path / "mine", isolated_env]


def test_data_dirs_env_then_cache(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert data_dirs() == [isolated_env]
    monkeypatch.setenv("LIFELONG_DATA", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert data_dirs(None) == [tmp_path / "a", tmp_path / "b", isolated_env]


def test_data_dirs_are_absolute_and_unique(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert data_dirs("rel") == [tmp_path / "rel", isolated_env]
    assert data_dirs(isolated_env) == [isolated_env]


def test_cache_dir_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == Path(os.environ["LIFELONG_CACHE"])
    monkeypatch.delenv("LIFELONG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lifelong"
    assert data_dirs()[-1] == tmp_path / "xdg" / "lifelong"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lifelong"


@pytest.mark.parametrize(
    "env, arg, expected",
    [
        (None, None, True),
        ("1", None, False),
        ("true", None, False),
        ("0", None, True),
        ("", None, True),
        ("1", True, True),
        (None, False, False),
    ],
)
def test_downloads_enabled(
    monkeypatch: pytest.MonkeyPatch, env: str | None, arg: bool | None, expected: bool
) -> None:
    if env is not None:
        monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", env)
    assert downloads_enabled(arg) is expected


def test_md5sum_streams_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert md5sum(path) == PAYLOAD_MD5
    assert md5sum(path, chunk_size=7) == PAYLOAD_MD5


# --- download ---------------------------------------------------------------------------------


def test_download_verifies_and_then_uses_the_cache(tmp_path: Path, http_server) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "cache" / "sub" / "file.bin"  # parent does not exist yet
    got = download([http_server.url + "file.bin"], dest, PAYLOAD_MD5, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["file.bin"]  # no temp file left behind
    assert http_server.requests == ["/file.bin"]

    http_server.stop()
    assert download([http_server.url + "file.bin"], dest, PAYLOAD_MD5, timeout=2) == dest
    assert http_server.requests == ["/file.bin"]


def test_download_falls_through_failing_mirrors(tmp_path: Path, http_server) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    urls = [_closed_port_url(), http_server.url + "missing/file.bin", http_server.url + "file.bin"]
    dest = tmp_path / "out" / "file.bin"
    assert download(urls, dest, PAYLOAD_MD5, progress=False, timeout=5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests == ["/missing/file.bin", "/file.bin"]
    assert _leftovers(dest.parent) == ["file.bin"]


def test_wrong_md5_leaves_nothing(tmp_path: Path, http_server) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "file.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as err:
        download([http_server.url + "file.bin"], dest, wrong, progress=False)
    msg = str(err.value)
    assert "file.bin" in msg and wrong in msg and PAYLOAD_MD5 in msg
    assert "\n" not in msg
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_all_mirrors_failing_lists_every_url(tmp_path: Path, http_server) -> None:
    urls = [http_server.url + "nope/file.bin", _closed_port_url(), "notaurl"]
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError) as err:
        download(urls, dest, PAYLOAD_MD5, progress=False, timeout=5)
    msg = str(err.value)
    for url in urls:
        assert url in msg
    assert "404" in msg and "file.bin" in msg
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_interrupted_transfer_leaves_nothing(tmp_path: Path, http_server) -> None:
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="truncated/file.bin"):
        download([http_server.url + "truncated/file.bin"], dest, PAYLOAD_MD5, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_wrong_existing_file_is_replaced(tmp_path: Path, http_server) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    download([http_server.url + "file.bin"], dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests == ["/file.bin"]


def test_progress_bar_on_a_terminal(
    tmp_path: Path, http_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    download([http_server.url + "file.bin"], tmp_path / "file.bin", PAYLOAD_MD5)
    assert "file.bin" in capsys.readouterr().err
    download([http_server.url + "file.bin"], tmp_path / "again.bin", PAYLOAD_MD5, progress=False)
    assert capsys.readouterr().err == ""
