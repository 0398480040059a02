"""Small C kernels for the CPU, compiled at first use with the machine's C compiler.

Batch-1 streaming on a CPU is bound by passes over memory and by the per-call cost of PyTorch
operations (several µs each); a method that needs five elementwise passes per step cannot stay
near plain SGD. The kernels here fuse those passes. They are plain C (no PyTorch headers), so
compiling one takes a fraction of a second; the shared library is cached under
`$LIFELONG_CACHE_DIR/kernels` (default `~/.cache/lifelong/kernels`), keyed by the source, the
compiler, its flags and the CPU (`-march=native`), and written atomically, so parallel test
workers or processes can compile at once.

Everything has a PyTorch fallback: without a compiler, on another device or dtype, or with
`LIFELONG_NATIVE=0` in the environment, the methods take their ATen path, which computes the same
update (up to float rounding). `load(name)` returns None then and `unavailable(name)` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
NATIVE = "-march=native"  # dropped if the compiler refuses it
_why_not: dict[str, str] = {}


def enabled() -> bool:
    """False when the environment sets LIFELONG_NATIVE to 0/false/no/off."""
    return os.environ.get("LIFELONG_NATIVE", "1").strip().lower() not in ("0", "false", "no",
                                                                          "off")


def cache_dir() -> Path:
    root = os.environ.get("LIFELONG_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lifelong" / "kernels"


def unavailable(name: str) -> str | None:
    """Why kernel `name` could not be loaded (None if it was, or was not tried yet)."""
    return _why_not.get(name)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or \
        shutil.which("clang")


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux) or its description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile(compiler: str, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(handle)
    try:
        errors = ""
        for extra in ((NATIVE,), ()):
            done = subprocess.run([compiler, *FLAGS, *extra, str(source), "-o", partial],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(partial, target)  # atomic: readers see a whole library or none
                return
            errors = done.stderr.strip()
        raise RuntimeError(f"{compiler} failed: {errors[-500:]}")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel `name` (`<name>.c` beside this file), or None (see `unavailable`)."""
    if not enabled():
        _why_not[name] = "disabled by LIFELONG_NATIVE"
        return None
    if sys.platform == "win32":
        _why_not[name] = "native kernels are built on Linux and macOS only"
        return None
    compiler = _compiler()
    if compiler is None:
        _why_not[name] = "no C compiler found (set CC, or install gcc or clang)"
        return None
    source = Path(__file__).with_name(f"{name}.c")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        key = hashlib.sha256("\0".join([
            source.read_text(), compiler, version, " ".join(FLAGS), NATIVE, platform.machine(),
            _cpu_signature()]).encode()).hexdigest()[:20]
        target = cache_dir() / f"{name}-{key}.so"
        if not target.exists():
            _compile(compiler, source, target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _why_not[name] = f"{type(error).__name__}: {error}"
        return None
    _why_not.pop(name, None)
    return library


def readable(tensors: list) -> bool:
    """Whether the kernels can read these tensors in place: contiguous float32 on the CPU."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
               for t in tensors)


def bound(name: str, bind: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """`load(name)` with its functions' signatures declared by `bind` (once)."""
    library = load(name)
    if library is not None and not getattr(library, "_lifelong_bound", False):
        bind(library)
        library._lifelong_bound = True
    return library


def warn_unavailable(owner: str, name: str) -> None:
    """Tell the user that `owner` runs its PyTorch path because kernel `name` did not build
    (not when the user turned kernels off)."""
    if enabled():
        warnings.warn(f"{owner}: the compiled CPU step ({name}.c) is unavailable "
                      f"({unavailable(name)}); the PyTorch path computes the same result, more "
                      "slowly at batch size 1", stacklevel=3)
