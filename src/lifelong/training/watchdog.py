"""Worker processes that die with their parent: `watch_parent(pid)` as a pool's initializer.

A parent killed with SIGKILL cannot stop its workers, and orphans would go on training and
writing into run folders that a re-run then races with. Each worker watches its parent itself:
a daemon thread polls `os.getppid()` (an orphan is re-parented, to init or a subreaper, so the
value changes; this works on Linux and macOS alike) and ends the process at once with
`os._exit`, writing nothing more. On Linux the kernel is also asked to SIGKILL the worker when the
parent dies (PR_SET_PDEATHSIG), which acts without waiting for the next poll.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.2
ORPHAN_EXIT_STATUS = 70  # os._exit status of a worker whose parent is gone
_PR_SET_PDEATHSIG = 1


def watch_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS) -> None:
    """End this process as soon as `parent_pid` is no longer its parent."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # an addition; the poll is the rule
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for
        os._exit(ORPHAN_EXIT_STATUS)
    threading.Thread(target=_poll, args=(parent_pid, poll_seconds), name="lifelong-watchdog",
                     daemon=True).start()


def _poll(parent_pid: int, poll_seconds: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    os._exit(ORPHAN_EXIT_STATUS)
