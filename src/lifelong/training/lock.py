"""One process at a time per run folder: `claim_folder(DIR)` holds an advisory lock on DIR/.lock.

The lock is `fcntl.flock` on an open file, so the operating system releases it when the process
ends in any way (SIGKILL included): a lock is never stale, and there is nothing to clean up after a
crash. A second process that tries to claim the folder fails at once with one line naming the
holder's pid. Claims are re-entrant within a process (the command line claims a folder, then the
run inside it claims it again), counted per folder.

On a clean release the lock file is removed (unlinked while still locked, so a process that opened
the old file sees that it is gone and retries on a new one), and a folder that the claim created and
that is still empty is removed too: a refused or failed start leaves no folder behind. Where `fcntl`
is missing (Windows) folders are not locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from .rundir import check_out_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; folders are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # real path of a folder -> [file descriptor, claims in this process]


class FolderInUse(ConfigError):
    """Another process holds the folder's lock."""


def _acquire(lock: Path, folder: Path) -> int:
    """Open and lock `lock`; retry when the file was replaced between the open and the lock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by another lifelong process (pid {holder}); "
                              f"wait for it or choose another --out") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)  # the holder released and removed it after our open: lock the new one


@contextlib.contextmanager
def claim_folder(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Hold `path` (created if missing) for this process until the block ends; a folder another
    process holds raises `FolderInUse` (a ConfigError: one line, exit status 2). `None` (a run
    without a folder) claims nothing."""
    if path is None:
        yield None
        return
    folder = Path(path)
    created = not folder.exists()
    check_out_dir(folder)  # created, writable, else one line naming the reason
    if fcntl is None:
        yield folder
        return
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(folder / LOCK_NAME, folder), 1]
    try:
        yield folder
    finally:
        _release(key, folder, created)


def _release(key: str, folder: Path, created: bool) -> None:
    entry = _held[key]
    entry[1] -= 1
    if entry[1]:
        return
    del _held[key]
    (folder / LOCK_NAME).unlink(missing_ok=True)
    os.close(entry[0])
    if created:
        with contextlib.suppress(OSError):  # not empty (the run wrote files): keep it
            folder.rmdir()
