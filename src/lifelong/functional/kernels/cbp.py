"""Python binding of `cbp.c` (see there for what it computes)."""

from __future__ import annotations

import ctypes

from torch import Tensor

from . import bound, readable

_P = ctypes.POINTER(ctypes.c_void_p)
_I64 = ctypes.POINTER(ctypes.c_int64)


def _bind(library: ctypes.CDLL) -> None:
    library.cbp_statistics_f32.restype = None
    library.cbp_statistics_f32.argtypes = [
        ctypes.c_int, _P, _P, _I64, _I64, ctypes.c_float, ctypes.c_int, _P, _I64,
        ctypes.c_float] + [ctypes.c_void_p] * 8


def library() -> ctypes.CDLL | None:
    return bound("cbp", _bind)


class StatisticsKernel:
    """CBP's batch-1 statistics step for Linear layers: fixed weights (the next layers' [rows,
    units], and for the adaptable utility the layers' own [units, fan_in])."""

    def __init__(self, lib: ctypes.CDLL, next_weights: list[Tensor],
                 in_weights: list[Tensor] | None, eta: float, log_decay: float) -> None:
        n = len(next_weights)
        self._fn = lib.cbp_statistics_f32
        self._n = n
        self._weights = next_weights + (in_weights or [])
        pointers = ctypes.c_void_p * n
        self._features, self._next, self._incoming = pointers(), pointers(), pointers()
        self._in_weights = in_weights
        self._units = (ctypes.c_int64 * n)(*[w.shape[1] for w in next_weights])
        self._rows = (ctypes.c_int64 * n)(*[w.shape[0] for w in next_weights])
        self._fan_in = (ctypes.c_int64 * n)(*[w[0].numel() for w in in_weights or next_weights])
        self._eta, self._log_decay = eta, log_decay

    @staticmethod
    def applies(next_weights: list[Tensor], in_weights: list[Tensor] | None) -> bool:
        """Whether the weights are ones the kernel reads: 2-D contiguous float32 on the CPU,
        the next layers reading the units on their last axis."""
        weights = next_weights + (in_weights or [])
        return readable(weights) and all(w.dim() == 2 for w in weights) and (
            in_weights is None or all(a.shape[0] == b.shape[1]
                                      for a, b in zip(in_weights, next_weights)))

    def usable(self, features: list[Tensor]) -> bool:
        """Whether this step's features (and the weights, still) can go through the kernel."""
        return readable(features) and all(h.numel() == units for h, units in
                                          zip(features, self._units)) and readable(self._weights)

    def step(self, features: list[Tensor], buffers: list[Tensor]) -> None:
        """`buffers`: ages, batch, act, out, in, corrected, mean, utility: flat contiguous
        float32 over all units (ages, in and corrected only read for the adaptable utility)."""
        self._features[:] = [h.data_ptr() for h in features]
        self._next[:] = [w.data_ptr() for w in self._weights[:self._n]]
        adaptable = self._in_weights is not None
        if adaptable:
            self._incoming[:] = [w.data_ptr() for w in self._in_weights]
        self._fn(self._n, self._features, self._next, self._units, self._rows, self._eta,
                 adaptable, self._incoming, self._fan_in, self._log_decay,
                 *[b.data_ptr() for b in buffers])
