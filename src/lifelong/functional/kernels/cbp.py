"""Python binding of `cbp.c` (see there for what it computes)."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import bound

_P = ctypes.POINTER(ctypes.c_void_p)
_I64 = ctypes.POINTER(ctypes.c_int64)


def _bind(library: ctypes.CDLL) -> None:
    library.cbp_contribution_f32.restype = None
    library.cbp_contribution_f32.argtypes = [ctypes.c_int, _P, _P, _I64, _I64, ctypes.c_float] + \
        [ctypes.c_void_p] * 5


def library() -> ctypes.CDLL | None:
    return bound("cbp", _bind)


class ContributionKernel:
    """CBP's statistics step for fixed next-layer weights [rows, units] and flat buffers."""

    def __init__(self, lib: ctypes.CDLL, next_weights: list[Tensor], eta: float) -> None:
        n = len(next_weights)
        self._fn = lib.cbp_contribution_f32
        self._n = n
        self._weights = next_weights
        self._pointers = ctypes.c_void_p * n
        self._features = self._pointers()
        self._next = self._pointers()
        self._units = (ctypes.c_int64 * n)(*[w.shape[1] for w in next_weights])
        self._rows = (ctypes.c_int64 * n)(*[w.shape[0] for w in next_weights])
        self._eta = eta

    def usable(self, features: list[Tensor]) -> bool:
        """Whether this step's features can go through the kernel: one contiguous float32 CPU
        vector of the layer's units each, and the weights still contiguous float32 CPU."""
        return all(h.dtype == torch.float32 and h.device.type == "cpu" and h.is_contiguous()
                   and h.numel() == units for h, units in zip(features, self._units)) and all(
            w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous()
            for w in self._weights)

    def step(self, features: list[Tensor], buffers: list[Tensor]) -> None:
        """`buffers`: batch, act, out, mean, utility: flat contiguous float32, all units."""
        self._features[:] = [h.data_ptr() for h in features]
        self._next[:] = [w.data_ptr() for w in self._weights]
        self._fn(self._n, self._features, self._next, self._units, self._rows, self._eta,
                 *[b.data_ptr() for b in buffers])
