"""Multi-process training under ``torchrun``: the process group, rank-sharded loaders, gathered evaluation.

A run launched as ::

    torchrun --standalone --nproc_per_node 4 -m gmn.experiments.accuracy_prediction --scale paper

starts one process per GPU, each with the environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
:func:`init_distributed` reads them, puts the process on ``cuda:LOCAL_RANK`` (NCCL for CUDA tensors, gloo for
CPU tensors and Python objects) or on the CPU (gloo), and initialises the process group once. Without them
(or with ``WORLD_SIZE=1``) it returns a one-process :class:`DistContext` and touches nothing.

Sharding keeps the *global* batch of the single-process loader: every epoch each rank iterates the loader's
own batch sampler (so the shuffle consumes the random generator exactly as one process would), rank 0's
batches are broadcast, and rank ``r`` of ``W`` takes the contiguous slice ``[r m // W, (r + 1) m // W)`` of
each global batch of ``m`` indices (:func:`shard_batch`). The slices of one epoch are disjoint, cover the
epoch, and are the same on every run. A rank whose slice is empty (a last batch smaller than ``W``) gets one
padding sample that :func:`gmn.engine.fit` weights by zero, so all ranks take the same number of steps.
Weighting each rank's mean loss by ``W * n_rank / m`` (:func:`gmn.engine.fit` does) makes the averaged DDP
gradient the gradient of the global batch's mean loss: training with ``W`` processes follows the
single-process run up to float rounding (models without batch statistics or dropout).

Example
-------
>>> shard_batch([10, 11, 12, 13, 14], rank=1, world_size=2)
([12, 13, 14], 3)
>>> shard_batch([10], rank=0, world_size=2)  # empty share: one padding sample, zero real ones
([10], 0)
>>> init_distributed("cpu")  # not under torchrun
DistContext(rank=0, world_size=1, local_rank=0, device=device(type='cpu'))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, Sampler

from symgraph.cli_util import resolve_device

__all__ = [
    "DistContext",
    "init_distributed",
    "active_context",
    "shard_bounds",
    "shard_batch",
    "RankBatchSampler",
    "ShardedLoader",
    "shard_loader",
    "broadcast_object",
    "all_gather_object",
    "all_reduce_sum",
    "main_first",
    "shutdown",
]

T = TypeVar("T")

#: How long the other ranks wait for rank 0 in :func:`main_first` (zoo generation at paper scale takes hours).
MAIN_FIRST_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """True when several processes train together (a process group is initialised)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Expected an integer in the environment variable {name} (got {value!r})") from None


def _resolve(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """:func:`symgraph.cli_util.resolve_device`, then (under torchrun) a bare ``cuda`` is this rank's GPU."""
    dev = resolve_device(str(device))
    if local_rank is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """This process's :class:`DistContext`; under ``torchrun`` (``WORLD_SIZE > 1``) the process group too.

    ``device`` is ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:k"``. Under torchrun
    ``"auto"``/``"cuda"`` mean ``cuda:LOCAL_RANK`` (made the current CUDA device) with backend
    ``"cpu:gloo,cuda:nccl"``; a CPU device uses gloo. The group is initialised once per process; later calls
    return the context of the existing group. Without torchrun the device is resolved by
    :func:`symgraph.cli_util.resolve_device` and nothing else happens.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=_resolve(device))
    if not dist.is_available():
        raise RuntimeError(f"Expected a PyTorch build with torch.distributed (WORLD_SIZE={world} is set)")
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _resolve(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def active_context(device: str | torch.device = "auto") -> DistContext:
    """Like :func:`init_distributed`, but never initialises a group: one process unless one already exists."""
    if dist.is_available() and dist.is_initialized():
        return init_distributed(device)
    return DistContext(device=_resolve(device))


def shard_bounds(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``m`` items (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Expected 0 <= rank < world_size (got rank {rank}, world_size {world_size})")
    return rank * m // world_size, (rank + 1) * m // world_size


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> tuple[list[int], int]:
    """Rank ``rank``'s indices of one global batch and how many of them are real.

    An empty share (``len(batch) < world_size``) is ``[batch[0]]`` with zero real samples: the rank still
    takes the step (DDP needs every rank in every all-reduce) but its loss is weighted by zero.
    """
    start, stop = shard_bounds(len(batch), rank, world_size)
    share = [int(i) for i in batch[start:stop]]
    if share:
        return share, len(share)
    if not batch:
        raise ValueError("Expected a non-empty global batch")
    return [int(batch[0])], 0


class RankBatchSampler(Sampler[list[int]]):
    """One rank's slices of the global batches of ``batch_sampler`` (see the module docstring).

    Parameters
    ----------
    batch_sampler : iterable of lists of indices
        The single-process batch sampler (``DataLoader.batch_sampler``); iterated once per epoch on every
        rank, so that shuffling advances every rank's random generator alike.
    rank, world_size : int
    sync : callable, optional
        ``sync(batches) -> batches`` makes all ranks agree on the epoch's global batches (broadcast from
        rank 0 under torchrun); identity when omitted.

    After each ``iter()`` (once its first batch is drawn), :attr:`plan` holds ``(n_real, n_global)`` per step.
    """

    def __init__(
        self,
        batch_sampler: Any,
        rank: int,
        world_size: int,
        sync: Callable[[list[list[int]]], list[list[int]]] | None = None,
    ):
        shard_bounds(0, rank, world_size)  # validates
        self.batch_sampler = batch_sampler
        self.rank, self.world_size = rank, world_size
        self.sync = sync
        self.plan: list[tuple[int, int]] = []

    def global_batches(self) -> list[list[int]]:
        """The next epoch's global batches (advances the inner sampler's shuffle), agreed on by all ranks."""
        batches = [[int(i) for i in b] for b in self.batch_sampler]
        return self.sync(batches) if self.sync is not None else batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        shares = [shard_batch(b, self.rank, self.world_size) for b in batches]
        self.plan = [(n_real, len(b)) for (_, n_real), b in zip(shares, batches)]
        for share, _ in shares:
            yield share

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __repr__(self) -> str:
        return f"RankBatchSampler(rank={self.rank}, world_size={self.world_size}, steps={len(self)})"


class ShardedLoader:
    """A DataLoader's batches, this rank's slice of each; iterating yields ``(batch, n_real, n_global)``.

    The batches are collated by the original loader's ``collate_fn`` (also torch_geometric's ``Collater``)
    with its worker settings; ``n_real`` is the number of real samples in this rank's batch (0 for a
    padding batch) and ``n_global`` the size of the global batch it came from.
    """

    def __init__(self, loader: DataLoader, ctx: DistContext):
        self.sampler = RankBatchSampler(
            loader.batch_sampler, ctx.rank, ctx.world_size, sync=lambda b: broadcast_object(b, ctx)
        )
        kwargs: dict[str, Any] = dict(
            batch_sampler=self.sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,  # the base seed is drawn from it, as the original loader would
            persistent_workers=loader.persistent_workers,
        )
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        self.loader = DataLoader(loader.dataset, **kwargs)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        batches = iter(self.loader)  # now, as DataLoader.__iter__ does (it draws the workers' base seed)
        return self._with_sizes(batches)

    def _with_sizes(self, batches: Iterator[Any]) -> Iterator[tuple[Any, int, int]]:
        for step, batch in enumerate(batches):
            n_real, n_global = self.sampler.plan[step]
            yield batch, n_real, n_global

    def __repr__(self) -> str:
        return f"ShardedLoader({self.sampler!r})"


def shard_loader(loader: Any, ctx: DistContext) -> ShardedLoader | None:
    """``loader`` sharded over the ranks of ``ctx``, or None where it cannot be (not a map-style DataLoader
    with a batch sampler: the caller then runs the whole loader on every rank)."""
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        return None
    if isinstance(loader.dataset, IterableDataset):
        return None
    return ShardedLoader(loader, ctx)


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; gloo on CPU); ``obj`` itself with one process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64, CPU)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def main_first(fn: Callable[[], T], ctx: DistContext, timeout: timedelta = MAIN_FIRST_TIMEOUT) -> T | None:
    """Run ``fn`` on rank 0 while the other ranks wait; ``fn()`` on rank 0, None on the others.

    For work that must not run concurrently in one directory (zoo generation). The wait is a gloo group with
    a long ``timeout`` (the default group's would expire during hours of work); an exception on rank 0 is
    re-raised on every rank.
    """
    return each_then_wait(lambda: fn() if ctx.is_main else None, ctx, timeout)


def each_then_wait(fn: Callable[[], T], ctx: DistContext, timeout: timedelta = MAIN_FIRST_TIMEOUT) -> T:
    """Run ``fn`` on every rank, then wait until all ranks are done (a gloo group with a long ``timeout``,
    made before ``fn`` runs so that ranks finishing hours apart do not time out); an exception on any rank is
    re-raised on every rank. For work split by rank (``generate_zoo(part=(rank, world))``)."""
    if not ctx.enabled:
        return fn()
    group = dist.new_group(backend="gloo", timeout=timeout)
    result, error = None, None
    try:
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        boxes: list = [None] * ctx.world_size
        dist.all_gather_object(boxes, None if error is None else f"{type(error).__name__}: {error}", group=group)
    finally:
        dist.destroy_process_group(group)
    if error is not None:
        raise error
    failed = [f"rank {r}: {msg}" for r, msg in enumerate(boxes) if msg is not None]
    if failed:
        raise RuntimeError("; ".join(failed))
    return result


def shutdown() -> None:
    """Destroy the default process group if one exists (end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
