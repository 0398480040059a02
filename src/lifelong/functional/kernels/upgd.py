"""Python binding of `upgd.c` (see there for what each sweep computes)."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import bound, readable

_P = ctypes.POINTER(ctypes.c_void_p)


def _bind(library: ctypes.CDLL) -> None:
    library.upgd_step_f32.restype = None
    library.upgd_step_f32.argtypes = [
        ctypes.c_int, _P, _P, _P, _P, ctypes.POINTER(ctypes.c_int64), ctypes.c_float, ctypes.c_int,
        ctypes.c_float, ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_float,
        ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
    library.normal_f32.restype = None
    library.normal_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32,
                                   ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32]
    library.threefry2x32_20.restype = None
    library.threefry2x32_20.argtypes = [ctypes.POINTER(ctypes.c_uint32),
                                        ctypes.POINTER(ctypes.c_uint32)]


def library() -> ctypes.CDLL | None:
    return bound("upgd", _bind)


def supports(tensors: list[Tensor]) -> bool:
    """Whether the kernel can work on these tensors: contiguous float32 on the CPU."""
    return bool(tensors) and readable(tensors)


class UPGDKernel:
    """One UPGD step over fixed parameters and their utility buffers (float32, CPU)."""

    def __init__(self, lib: ctypes.CDLL, params: list[Tensor], utility: list[Tensor]) -> None:
        n = len(params)
        self._step_f32 = lib.upgd_step_f32
        self._n = n
        self._params_list = params
        self._pointers = ctypes.c_void_p * n
        self._grads = self._pointers()
        self._params = self._pointers()
        self._utility = self._pointers(*[u.data_ptr() for u in utility])
        self._sizes = (ctypes.c_int64 * n)(*[p.numel() for p in params])
        self.maxima = torch.empty(n + 1)  # per tensor, then the largest (NaN: a NaN utility)
        self._maxima = self.maxima.data_ptr()
        self._noise: dict[int, tuple[list[Tensor], ctypes.Array]] = {}  # by id: table windows

    def step(self, grads: list[Tensor], coefficient: float, trace: bool, sigma: float,
             protect: bool, weight_decay: float, local: bool, step: int, key: tuple[int, int],
             noise: list[Tensor] | None = None, lr: float = 0.0) -> None:
        """v += coefficient·g⊙θ (if `trace`), then g ← the gated, noised, decayed gradient, or,
        with lr > 0, θ ← θ − lr·(that) (g unchanged). `noise`: N(0, 1) tensors shaped like the
        parameters, or None to draw counter-based normals (Threefry2x32-20 of the element, the
        tensor, the step and `key`)."""
        if not supports(grads) or any(g.shape != p.shape
                                      for g, p in zip(grads, self._params_list)):
            raise ValueError("upgd kernel: gradients must be contiguous float32 CPU tensors "
                             "shaped like their parameters")
        # read every step: `model.to()` or `p.data = ...` would move a parameter
        self._params[:] = [p.data_ptr() for p in self._params_list]
        self._grads[:] = [g.data_ptr() for g in grads]
        self._step_f32(self._n, self._grads, self._params, self._utility,
                       self._noise_pointers(noise), self._sizes, coefficient, trace, sigma,
                       protect, weight_decay, local, lr, step, key[0], key[1], self._maxima)

    def _noise_pointers(self, noise: list[Tensor] | None) -> ctypes.Array | None:
        if noise is None:
            return None
        known = self._noise.get(id(noise))
        if known is None or known[0] is not noise:
            known = self._noise[id(noise)] = (noise, self._pointers(*[x.data_ptr() for x in noise]))
        return known[1]


def counter_normal(lib: ctypes.CDLL, n: int, tensor: int, step: int,
                   key: tuple[int, int]) -> Tensor:
    """The n float32 normals the kernel draws for tensor index `tensor` at `step`."""
    out = torch.empty(n)
    lib.normal_f32(out.data_ptr(), n, tensor, step, key[0], key[1])
    return out


def threefry2x32_20(lib: ctypes.CDLL, counter: tuple[int, int],
                    key: tuple[int, int]) -> tuple[int, int]:
    """The kernel's Threefry2x32-20 of one counter (for known-answer tests)."""
    words = (ctypes.c_uint32 * 4)(*counter, *key)
    out = (ctypes.c_uint32 * 2)()
    lib.threefry2x32_20(words, out)
    return out[0], out[1]
