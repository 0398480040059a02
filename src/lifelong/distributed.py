"""Data-parallel training (DDP, Accelerate, a Trainer on several GPUs): keeping replicas equal.

Under data parallelism every replica sees a different shard of each batch. Gradients are averaged
by DDP before the optimizer step, but any statistic a method computes itself (a Fisher, an
importance, MIGU's magnitudes, A-GEM's reference gradient, CBP's utilities) comes from the
replica's own samples. Unless it is averaged too, replicas apply different updates and drift
apart. Methods call `all_reduce_mean_` / `all_reduce_sum_` on such statistics; outside a
process group (one process) these do nothing, at no cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Sum each tensor over the replicas, in place (one collective per tensor)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average each tensor over the replicas, in place."""
    if not is_distributed():
        return
    size = dist.get_world_size()
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)


def all_reduce_max_(tensors: Sequence[Tensor]) -> None:
    """The element-wise maximum over the replicas, in place."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def broadcast_(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Every replica takes `source`'s values (e.g. random draws that must agree)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=source)


def same_on_every_replica(tensor: Tensor) -> bool:
    """Whether `tensor` is bit-identical on all replicas (a check for tests and debugging)."""
    if not is_distributed():
        return True
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
