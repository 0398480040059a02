"""Reference, in PyTorch, of the counter-based normals that `upgd.c` draws (for tests, and for
anyone checking the noise).

Threefry2x32-20 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011): step s has the key threefry((s mod 2³², s div 2³²), user key); elements c + q and
c + q + 512 of tensor t (c a multiple of 1024, q < 512) are the Box–Muller pair (Box and Muller
1958) of the words (w0, w1) = threefry((c / 2 + q, t), step key):

    r = √(−2 ln u), u = (top 23 bits of w0 + ½) 2⁻²³,   θ = 2π w1 / 2³²,   (r cos θ, r sin θ).

The C code computes ln, sin and cos with float32 polynomials; this reference uses float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK = 0xFFFFFFFF
PARITY = 0x1BD11BDA
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
CHUNK = 1024
HALF = CHUNK // 2


def threefry2x32_20(counter: tuple[Tensor, Tensor], key: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Threefry2x32 with 20 rounds of int64 tensors holding 32-bit words."""
    k0, k1 = key
    ks = (k0, k1, PARITY ^ k0 ^ k1)
    x0, x1 = (counter[0] + ks[0]) & MASK, (counter[1] + ks[1]) & MASK
    for r in range(20):
        x0 = (x0 + x1) & MASK
        x1 = ((x1 << ROTATIONS[r % 8]) | (x1 >> (32 - ROTATIONS[r % 8]))) & MASK
        x1 = x1 ^ x0
        if r % 4 == 3:  # key injection s = (r + 1) / 4
            s = (r + 1) // 4
            x0 = (x0 + ks[s % 3]) & MASK
            x1 = (x1 + ks[(s + 1) % 3] + s) & MASK
    return x0, x1


def step_key(step: int, key: tuple[int, int]) -> tuple[int, int]:
    w0, w1 = threefry2x32_20((torch.tensor([step & MASK]), torch.tensor([step >> 32])), key)
    return int(w0), int(w1)


def counter_normal(n: int, tensor: int, step: int, key: tuple[int, int]) -> Tensor:
    """The n standard normals (float64) that upgd.c draws for tensor index `tensor` at `step`."""
    e = torch.arange(n, dtype=torch.int64)
    block = e // CHUNK * HALF + e % HALF
    w0, w1 = threefry2x32_20((block, torch.full_like(e, tensor)), step_key(step, key))
    radius = torch.sqrt(-2.0 * torch.log(((w0 >> 9).double() + 0.5) / 2.0 ** 23))
    angle = 2.0 * math.pi * w1.double() / 2.0 ** 32
    return torch.where(e % CHUNK < HALF, radius * torch.cos(angle), radius * torch.sin(angle))
