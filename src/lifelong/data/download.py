"""Where data files are looked for, and checksummed, atomic downloads into the cache.

Environment variables:

- `LIFELONG_DATA`: directories searched for data files when no `data_dir` is given
  (several may be joined with `os.pathsep`).
- `LIFELONG_CACHE`: the cache directory, where downloads go (default
  `$XDG_CACHE_HOME/lifelong`, else `~/.cache/lifelong`); it is always searched last.
- `LIFELONG_NO_DOWNLOAD=1`: never download; a missing file is an error.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from lifelong._version import __version__
from lifelong.errors import DataError

_CHUNK = 1 << 20
_FALSE_WORDS = {"", "0", "false", "no", "off"}


def _env(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def cache_dir() -> Path:
    """The download cache: `$LIFELONG_CACHE`, else `$XDG_CACHE_HOME/lifelong`, else
    `~/.cache/lifelong`. It is not created here."""
    if explicit := _env("LIFELONG_CACHE"):
        return Path(explicit).expanduser().absolute()
    base = _env("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return (root / "lifelong").absolute()


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for data files, in order.

    `data_dir` if given, else the entries of `$LIFELONG_DATA` if set; always followed by
    `cache_dir()`. Paths are made absolute so that error messages are unambiguous.
    """
    if data_dir is not None and os.fspath(data_dir) != "":
        dirs = [Path(data_dir)]
    elif env := _env("LIFELONG_DATA"):
        dirs = [Path(p) for p in env.split(os.pathsep) if p]
    else:
        dirs = []
    out: list[Path] = []
    for d in [*dirs, cache_dir()]:
        d = d.expanduser().absolute()
        if d not in out:
            out.append(d)
    return out


def downloads_enabled(download: bool | None = None) -> bool:
    """Whether a loader may download: the explicit `download` argument if given, else True unless
    `$LIFELONG_NO_DOWNLOAD` is set to something other than 0/false/no/off."""
    if download is not None:
        return bool(download)
    return os.environ.get("LIFELONG_NO_DOWNLOAD", "").strip().lower() in _FALSE_WORDS


def md5sum(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex MD5 of a file, read in chunks so that large files do not fill memory."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> md5, so repeated loads in one process hash each file once.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def cached_md5(path: Path) -> str:
    """`md5sum(path)`, computed once per path, size and modification time in a process (raises
    OSError when the file cannot be read)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = md5sum(path)
    return _MD5_CACHE[key]


def _progress_bar(stack: ExitStack, name: str, total: int | None):
    """Start a rich progress bar on stderr (closed with `stack`); return its `advance(n)`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = stack.enter_context(
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    )
    task = progress.add_task(f"downloading {name}", total=total)
    return lambda n: progress.advance(task, n)


def _fetch(url: str, tmp: Path, *, name: str, timeout: float, progress: bool) -> str:
    """Stream `url` into `tmp` (created or truncated) and return the MD5 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": f"lifelong/{__version__}"})
    h = hashlib.md5(usedforsecurity=False)
    with ExitStack() as stack:
        response = stack.enter_context(urllib.request.urlopen(request, timeout=timeout))
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        out = stack.enter_context(open(tmp, "wb"))
        advance = None
        if progress and sys.stderr.isatty():
            advance = _progress_bar(stack, name, total)
        # A connection cut short raises IncompleteRead when the length is known; when it is not,
        # the MD5 check catches the short file.
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return h.hexdigest()


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    md5: str,
    *,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download a file from the first mirror in `urls` that serves it with the expected `md5`.

    The data is streamed to a temporary file beside `dest`, checked, then moved into place with
    `os.replace`, so `dest` only ever holds a complete, verified file. If `dest` already holds a
    file with the right MD5, nothing is downloaded. A progress bar is drawn on stderr when
    `progress` is true and stderr is a terminal.

    Raises `DataError` listing every URL tried and why it failed (an MD5 mismatch names the
    expected and actual checksums).
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    if not urls:
        raise DataError(f"cannot download {dest.name}: no URL given")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create directory {dest.parent} for {dest.name}: {e}; "
            "set LIFELONG_CACHE to a writable directory"
        ) from None
    # A unique hidden name, so concurrent downloads of the same file never share a temp file.
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    failures: list[str] = []
    try:
        for url in urls:
            try:
                actual = _fetch(url, tmp, name=dest.name, timeout=timeout, progress=progress)
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError/HTTPError/timeouts are OSErrors; IncompleteRead is an HTTPException;
                # a malformed URL is a ValueError.
                failures.append(f"{url} ({_describe(e)})")
                continue
            if actual != md5:
                failures.append(f"{url} (md5 mismatch: expected {md5}, got {actual})")
                continue
            os.replace(tmp, dest)
            return dest
    finally:
        tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {dest.name} (expected md5 {md5}) to {dest.parent}; "
        f"tried: {'; '.join(failures)}"
    )


def _describe(e: BaseException) -> str:
    """The exception as one short line, e.g. `HTTP Error 404: Not Found`."""
    return " ".join((str(e) or type(e).__name__).split())
