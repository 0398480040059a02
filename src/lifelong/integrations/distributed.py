"""Data-parallel training (DDP, Accelerate, a Trainer on several GPUs): keeping replicas equal.

Under data parallelism every replica sees a different shard of each batch. Gradients are averaged
by DDP before the optimizer step, but any statistic a method computes itself (a Fisher, an
importance, MIGU's magnitudes, A-GEM's reference gradient, CBP's utilities) comes from the
replica's own samples. Unless it is averaged too, replicas apply different updates and drift
apart. Methods call `all_reduce_mean_` / `all_reduce_sum_` on such statistics; outside a
process group (one process) these do nothing, at no cost.

Conventions the methods follow:

- the data a method's hooks receive (`training_data`, `after_task`) is the replica's own shard, as
  a `DistributedSampler` gives it; a mean over samples is the sum over all shards divided by the
  total count (`all_reduce_sum_and_count_`), so uneven shards weigh each sample once;
- a statistic of one step's batch (CBP's features, UPGD's curvature) is averaged over the
  replicas, as DDP averages the gradients: equal per-replica batches make it the statistic of the
  global batch;
- random draws that change the weights (CBP, UPGD, Shrink & Perturb) come from the method's
  generator, whose state is broadcast from rank 0 when the method is attached
  (`broadcast_generator_`);
- methods are attached to the inner model (`ddp.module`) after wrapping, and their probes (Fisher
  passes, reference gradients, teachers) run on it: nothing needs the wrapper. Methods that add
  parameters (the LoRA family) are the exception: attach them, and begin each task, before
  wrapping, since DDP averages the gradients of the parameters it was given.
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


# Collectives on small tensors cost their latency, not their size: tensors of one device and
# dtype go together in one flat buffer, up to this many bytes per collective.
_BUCKET_BYTES = 64 * 2**20


def _buckets(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """`tensors` grouped by device and dtype, each group cut into buckets of _BUCKET_BYTES."""
    groups: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for tensor in tensors:
        key = (tensor.device, tensor.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if key not in groups or sizes[key] + nbytes > _BUCKET_BYTES:
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(tensor)
        sizes[key] += nbytes
    return [bucket for buckets in groups.values() for bucket in buckets]


def _all_reduce(tensors: Sequence[Tensor], op: dist.ReduceOp, divisor: int = 1) -> None:
    """All-reduce `tensors` in place, one collective per bucket; then divide by `divisor`."""
    for bucket in _buckets(tensors):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            flat = bucket[0]
        else:
            flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=op)
        if divisor != 1:
            flat.div_(divisor)
        if flat is not bucket[0]:
            torch._foreach_copy_(bucket, [part.view_as(t) for part, t in
                                          zip(flat.split([t.numel() for t in bucket]), bucket)])


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Sum each tensor over the replicas, in place (small tensors share one collective)."""
    if is_distributed():
        _all_reduce(tensors, dist.ReduceOp.SUM)


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average each tensor over the replicas, in place."""
    if is_distributed():
        _all_reduce(tensors, dist.ReduceOp.SUM, dist.get_world_size())


def all_reduce_max_(tensors: Sequence[Tensor]) -> None:
    """The element-wise maximum over the replicas, in place."""
    if is_distributed():
        _all_reduce(tensors, dist.ReduceOp.MAX)


def all_reduce_sum_and_count_(tensors: Sequence[Tensor], count: float) -> Tensor:
    """Sum `tensors` (in place) and `count` over the replicas, in one collective; returns the
    total count as a 0-d tensor of the tensors' dtype and device (read it only where needed: on
    an accelerator that waits for the device).

    For a mean over samples split unevenly between replicas: each replica sums its own samples,
    and the mean is the total sum over the total count, not the mean of the replicas' means.
    """
    like = tensors[0]
    # float32 counts are exact up to 2^24 samples; lower precisions get a collective of their own
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float64
    total = torch.full((), float(count), dtype=dtype, device=like.device)
    if is_distributed():
        _all_reduce([*tensors, total], dist.ReduceOp.SUM)
    return total


def all_reduce_count(count: int) -> int:
    """An integer (a number of samples) summed over the replicas."""
    if not is_distributed():
        return count
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total)


def broadcast_(tensors: Sequence[Tensor], source: int = 0) -> None:
    """Every replica takes `source`'s values (e.g. random draws that must agree)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=source)


def broadcast_generator_(generator: torch.Generator, source: int = 0) -> None:
    """Every replica's `generator` takes `source`'s state, so that random draws which change the
    weights (re-initialised units, noise) agree however each replica was seeded. The state
    travels on the generator's own device (NCCL cannot send host tensors)."""
    if not is_distributed():
        return
    state = generator.get_state().to(generator.device)
    dist.broadcast(state, src=source)
    generator.set_state(state.cpu())


def same_on_every_replica(tensor: Tensor) -> bool:
    """Whether `tensor` is bit-identical on all replicas (a check for tests and debugging)."""
    if not is_distributed():
        return True
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
