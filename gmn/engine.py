"""The one training engine: every experiment's loop (accuracy prediction, SSL, INR editing) is :func:`fit`.

``fit(model, optimizer, batches, step, epochs, ...)`` runs ``epochs`` passes over ``batches`` (an iterable,
or ``batches(epoch)`` giving that epoch's iterable), calling ``step(net, batch) -> (loss, count)`` and taking
one optimizer step per batch. Around that loop it does, in one place for every experiment:

- **Seeding**: ``seed`` reseeds torch's generators first (:func:`seed_everything`, which experiments also call
  before they build a model). Data order that must not depend on the global generator is the caller's
  (e.g. a ``torch.Generator`` seeded per epoch inside ``batches``).
- **Checkpoints** with one key layout (:data:`CHECKPOINT_FORMAT`): after every epoch, atomically, ``{"format",
  "fingerprint", "epoch", "model", "optimizer", "history", "best_model", "rng"}`` (``rng``: torch's CPU and
  CUDA generator states).
- **Resume after SIGKILL**: with ``resume=True`` an existing checkpoint is loaded (refused with a clear
  error if its ``fingerprint``, the caller's description of the run, differs) and training continues after
  its epoch with the saved generator states, so a killed and resumed run ends with the same parameters as an
  uninterrupted one (``tests/test_engine.py`` kills a run with SIGKILL and checks this).
- **Model selection**: after every epoch ``validate(model) -> {name: value}`` is recorded; with ``select=(name,
  "max" | "min")`` the best epoch's state is kept (NaNs never win) and restored at the end.
- **Progress**: a tqdm bar per epoch (running mean loss) and one line per epoch.
- **DDP** under ``torchrun`` (:mod:`gmn.distributed`): the model is wrapped in DistributedDataParallel, a
  map-style ``DataLoader`` is sharded per global batch (each rank's loss weighted so that the averaged
  gradient is the global batch's), other iterables run whole on every rank (with a warning); only rank 0
  writes checkpoints and prints, and a checkpoint is read by rank 0 and broadcast.

Example
-------
>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Linear(2, 1)
>>> data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
>>> step = lambda net, b: (((net(b[0]) - b[1]) ** 2).mean(), b[0].shape[0])
>>> h = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), data, step, epochs=2, progress=False)
>>> [r["epoch"] for r in h.epochs], len(h.step_losses)
([0, 1], 6)
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.cli_util import atomic_torch_save

from .distributed import all_reduce_sum, broadcast_object, init_distributed, shard_loader
from .io import load_checked

__all__ = ["CHECKPOINT_FORMAT", "History", "seed_everything", "fit", "read_checkpoint"]

#: The key layout of every checkpoint :func:`fit` writes.
CHECKPOINT_FORMAT = "gmn.engine/1"

StepFn = Callable[[nn.Module, Any], tuple[Tensor, int]]


def seed_everything(seed: int) -> None:
    """Seed torch's generators (CPU and every CUDA device): what a run's model initialisation draws from.

    >>> seed_everything(3); a = torch.rand(1); seed_everything(3); bool(torch.rand(1) == a)
    True
    """
    torch.manual_seed(int(seed))


@dataclass
class History:
    """What :func:`fit` records (saved in every checkpoint).

    ``epochs``: one row per epoch ``{"epoch" (0-based), "train_loss", "lr", <validation metrics>, "time_s"}``;
    ``step_losses``: every step's loss; ``best_epoch``/``best_metric``: the selected epoch (``select``);
    ``seconds``: training time over all runs of a resumed fit; ``extra``: what ``extra()`` returned when the
    run started; ``device``.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**d)

    def metric(self, name: str) -> list[Any]:
        """One column of :attr:`epochs` (e.g. ``"val_mse"``), epoch by epoch."""
        return [row[name] for row in self.epochs]


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | os.PathLike, fingerprint: Any = None) -> dict[str, Any]:
    """A checkpoint written by :func:`fit` (``torch.load(weights_only=True)``), checked: format and, when
    given, the ``fingerprint`` of the run. Unreadable or foreign files are a ``ValueError`` naming the file."""
    hint = "delete it (or pass --no-resume) to restart"
    state = load_checked(path, hint, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format", "another key layout") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"Expected a {CHECKPOINT_FORMAT} checkpoint at {path} (got {got}); {hint}")
    if fingerprint is not None and state.get("fingerprint") != _json(fingerprint):
        raise ValueError(
            f"Expected {path} to be a checkpoint of the same run (got one of another configuration: "
            f"{state.get('fingerprint')} vs {_json(fingerprint)}); use a new --out or --no-resume"
        )
    return state


class _Steps:
    """``(batch, loss_weight, count)`` per step: the batches as they are, or this rank's shards under DDP.

    The weight turns DDP's average of the ranks' mean losses into the global batch's mean loss; ``count`` is
    the number of real samples (for the reported train loss), ``None`` where the step's own count applies.
    """

    def __init__(self, batches: Iterable, ctx, sharded_cache: dict[int, Any]):
        self.batches, self.ctx = batches, ctx
        self.sharded = None
        if ctx.enabled:
            key = id(batches)
            if key not in sharded_cache:
                sharded_cache[key] = (batches, shard_loader(batches, ctx))
                if sharded_cache[key][1] is None:
                    warnings.warn(
                        "the training batches are not a map-style torch DataLoader, so every rank runs all of "
                        "them (correct, not faster)",
                        stacklevel=4,
                    )
            self.sharded = sharded_cache[key][1]

    def __len__(self) -> int:
        src = self.sharded if self.sharded is not None else self.batches
        return len(src) if hasattr(src, "__len__") else 0

    def __iter__(self):
        if self.sharded is None:
            return ((batch, None, None) for batch in self.batches)
        w = self.ctx.world_size
        return ((batch, w * n_real / n_global, n_real) for batch, n_real, n_global in self.sharded)


def _to(batch: Any, device: torch.device) -> Any:
    return batch.to(device) if hasattr(batch, "to") else batch


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable | Callable[[int], Iterable],
    step: StepFn,
    epochs: int,
    *,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    select: tuple[str, str] | None = None,
    restore_best: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    fingerprint: Any = None,
    seed: int | None = None,
    device: str | torch.device = "auto",
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "train",
    extra: Callable[[], dict[str, Any]] | None = None,
    describe: Callable[[dict[str, Any]], str] | None = None,
) -> History:
    """Train ``model`` (see the module docstring); returns its :class:`History`.

    Parameters
    ----------
    model : nn.Module
        Moved to the run's device; what checkpoints save and selection restores.
    optimizer : torch.optim.Optimizer
        Over ``model``'s parameters.
    batches : iterable, or callable ``epoch -> iterable``
        Each item is passed to ``step`` (moved to the device first if it has ``.to``).
    step : callable ``(net, batch) -> (loss, count)``
        ``net`` is ``model`` or its DDP wrapper: call it, not ``model``, for the forward pass. ``count`` weights
        the batch in the epoch's mean train loss.
    epochs : int
    validate : callable ``model -> {name: float}``, optional
        Run after every epoch (in the epoch's row).
    select : (name, "max" | "min"), optional
        The validation metric that picks the epoch whose state is restored (``restore_best``).
    checkpoint, resume, fingerprint
        Where the checkpoint lives, whether to continue from it, and a JSON-able description of the run that
        must match the checkpoint's.
    seed : int, optional
        :func:`seed_everything` first.
    device : "auto", "cpu", "cuda", "cuda:N"
        Under torchrun ``"auto"``/``"cuda"`` mean this rank's GPU.
    grad_clip : float, optional
        Max gradient norm.
    extra : callable ``() -> dict``, optional
        Evaluated once when the run starts (not on resume); kept in ``History.extra`` and the checkpoint (e.g.
        the untrained model's metrics).
    describe : callable ``row -> str``, optional
        The line printed after every epoch (with ``progress``).
    """
    from tqdm.auto import tqdm

    if select is not None and (validate is None or select[1] not in ("max", "min")):
        raise ValueError(f"Expected select=(metric, 'max' | 'min') together with validate (got {select!r})")
    if seed is not None:
        seed_everything(seed)
    ctx = init_distributed(device)
    dev = ctx.device
    model.to(dev)
    history = History(device=str(dev))
    best_state: dict[str, Tensor] | None = None
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    found = ckpt is not None and resume and ckpt.exists()
    state = None
    if ctx.enabled:  # rank 0's view of the checkpoint, so that all ranks resume at the same epoch
        state = broadcast_object(read_checkpoint(ckpt, fingerprint) if found and ctx.is_main else None, ctx)
    elif found:
        state = read_checkpoint(ckpt, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])
        history.device = str(dev)
        best_state = state["best_model"]
        start = int(state["epoch"])
        _set_rng_state(state["rng"])
    elif extra is not None:
        history.extra = dict(extra())
    net: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids=None: batches are already on the device; a batch need not reach every parameter
        net = DistributedDataParallel(model, find_unused_parameters=True)  # broadcasts rank 0's parameters
    progress = progress and ctx.is_main
    sharded_cache: dict[int, Any] = {}
    better = (lambda a, b: a > b) if select is None or select[1] == "max" else (lambda a, b: a < b)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        total, n = 0.0, 0
        epoch_batches = batches(epoch) if callable(batches) else batches
        steps = _Steps(epoch_batches, ctx, sharded_cache)
        bar = tqdm(steps, disable=not progress, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for batch, weight, count in bar:
            loss, own_count = step(net, _to(batch, dev))
            optimizer.zero_grad(set_to_none=True)
            (loss if weight is None else loss * weight).backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            value = float(loss.detach())
            count = own_count if count is None else count
            total += value * count
            n += count
            history.step_losses.append(value)
            if progress:
                bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
        if ctx.enabled:
            total, n = all_reduce_sum([total, n], ctx)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n, 1), "lr": optimizer.param_groups[0]["lr"]}
        if validate is not None:
            metrics = validate(model)
            row.update(metrics)
            if select is not None:
                m = float(metrics[select[0]])
                if not math.isnan(m) and (history.best_metric is None or better(m, history.best_metric)):
                    history.best_metric, history.best_epoch = m, epoch
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        row["time_s"] = time.perf_counter() - t0
        history.seconds += row["time_s"]
        history.epochs.append(row)
        if progress:
            tqdm.write(describe(row) if describe is not None else _describe(row, desc, epochs))
        if ckpt is not None and ctx.is_main:
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": _json(fingerprint),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history.as_dict(),
                    "best_model": best_state,
                    "rng": _rng_state(),
                },
                ckpt,
            )
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    del net  # the DDP wrapper (and its reducer) is not needed past training
    return history


def _describe(row: dict[str, Any], desc: str, epochs: int) -> str:
    parts = [f"{desc} epoch {row['epoch'] + 1}/{epochs} train_loss {row['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)]
    return " ".join(parts)
