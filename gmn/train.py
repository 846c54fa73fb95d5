"""Training loop for metanetwork regressors (accuracy prediction, paper Sec. 4.1 / E.1.2).

:func:`train_regressor` trains any model that maps a batch to ``[B, k]`` outputs against ``batch.y``
(``[B, k]``): AdamW, BCE-with-logits (the paper's sigmoid + BCE on accuracies in [0, 1]) or MSE,
validation R^2 and Kendall tau (scipy) after each epoch, the best validation state kept, and a checkpoint
written atomically after each epoch so that a killed run resumes where it stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``; see :mod:`gmn.distributed`) the same call trains with
DistributedDataParallel: one process per GPU (``cuda:LOCAL_RANK``, NCCL) or per CPU worker (gloo), each global
batch of the training loader split over the ranks, validation and :func:`evaluate` over the full sets
(sharded, then gathered: identical numbers on every rank), and only rank 0 writing checkpoints and printing::

    torchrun --standalone --nproc_per_node 4 my_script.py   # my_script calls gmn.train_regressor

Example
-------
>>> import torch, torch.nn as nn, symgraph, gmn
>>> from torch_geometric.loader import DataLoader
>>> gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in (2, 3, 4, 5)]
>>> data = [gmn.graph_to_data(g, y=0.2 * i) for i, g in enumerate(gs)]
>>> hist = gmn.train_regressor(gmn.GMN(hidden_dim=8, num_layers=1), DataLoader(data, batch_size=2),
...                            DataLoader(data, batch_size=4), epochs=2, lr=1e-3, progress=False)
>>> len(hist["epochs"]), sorted(hist["epochs"][-1])[:3]
(2, ['epoch', 'lr', 'time_s'])
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.cli_util import atomic_torch_save  # re-exported: checkpoints are written atomically

from .distributed import (
    DistContext,
    active_context,
    all_gather_object,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shard_loader,
)

__all__ = ["train_regressor", "evaluate", "regression_metrics", "resolve_device", "atomic_torch_save"]

ForwardFn = Callable[[nn.Module, Any], tuple[Tensor, Tensor]]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """R^2 (``1 - SS_res / SS_tot``), Kendall tau (tau-b, scipy) and MSE over all entries.

    Example
    -------
    >>> m = regression_metrics(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.0, 0.5, 1.0]))
    >>> round(m["r2"], 3), m["tau"]
    (0.96, 1.0)
    """
    from scipy.stats import kendalltau

    p = pred.detach().double().flatten().cpu()
    t = target.detach().double().flatten().cpu()
    ss_res = float(((p - t) ** 2).sum())
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    tau = float(kendalltau(p.numpy(), t.numpy()).statistic) if p.numel() > 1 else float("nan")
    return {"r2": r2, "tau": tau, "mse": ss_res / max(p.numel(), 1)}


def _default_forward(model: nn.Module, batch) -> tuple[Tensor, Tensor]:
    out = model(batch)
    y = batch.y
    return out, y.view(out.shape).to(out.dtype)


def _loss_fn(loss: str) -> nn.Module:
    if loss == "bce":
        return nn.BCEWithLogitsLoss()
    if loss == "mse":
        return nn.MSELoss()
    raise ValueError(f"Expected loss 'bce' or 'mse' (got {loss!r})")


def _to(batch, device: torch.device):
    return batch.to(device) if hasattr(batch, "to") else batch


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss: str = "bce",
    device: str | torch.device = "auto",
    forward: ForwardFn | None = None,
) -> dict[str, Any]:
    """Loss, R^2, Kendall tau and MSE of ``model`` on ``loader``; also the predictions and targets.

    With ``loss="bce"`` predictions are ``sigmoid(logits)``; with ``"mse"`` the raw outputs. In a torchrun
    process group each rank evaluates its share of every batch and the results are gathered in the loader's
    order, so every rank returns the same full-set metrics.
    """
    ctx = active_context(device)
    device = ctx.device
    forward = forward or _default_forward
    crit = _loss_fn(loss)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # no DDP collectives while ranks evaluate different numbers of batches
    was_training = model.training
    model.eval()
    if ctx.enabled:
        preds, targets, total, n = _evaluate_distributed(model, loader, loss, crit, device, forward, ctx)
    else:
        rows = [_eval_batch(model, batch, loss, crit, device, forward) for batch in loader]
        preds, targets = [r[2] for r in rows], [r[3] for r in rows]
        total, n = sum(r[0] for r in rows), sum(r[1] for r in rows)
    model.train(was_training)
    if n == 0:
        return {
            "loss": float("nan"),
            "r2": float("nan"),
            "tau": float("nan"),
            "mse": float("nan"),
            "pred": torch.zeros(0),
            "target": torch.zeros(0),
        }
    pred, target = torch.cat(preds), torch.cat(targets)
    return {"loss": total / n, **regression_metrics(pred, target), "pred": pred, "target": target}


def _eval_batch(model, batch, loss, crit, device, forward) -> tuple[float, int, Tensor, Tensor]:
    """``(loss_sum, count, predictions, targets)`` of one batch (predictions: sigmoid of logits for BCE)."""
    out, y = forward(model, _to(batch, device))
    pred = (torch.sigmoid(out) if loss == "bce" else out).cpu()
    return float(crit(out, y)) * y.shape[0], y.shape[0], pred, y.cpu()


def _evaluate_distributed(model, loader, loss, crit, device, forward, ctx: DistContext):
    """Sharded evaluation gathered in the loader's order: ``(preds, targets, loss_sum, count)`` on every rank."""
    sharded = shard_loader(loader, ctx)
    rows = []  # (step, loss_sum, count, pred, target) of this rank's real samples
    steps = sharded if sharded is not None else ((b, None, None) for b in loader)
    for step, (batch, n_real, _) in enumerate(steps):
        if n_real == 0:  # padding: this rank's share of a global batch smaller than the world
            continue
        rows.append((step, *_eval_batch(model, batch, loss, crit, device, forward)))
    if sharded is None:  # every rank ran the whole loader: take rank 0's numbers so that all ranks agree
        _warn_unsharded("the evaluation loader")
        rows = broadcast_object(rows, ctx)
    else:  # a global batch is the concatenation of the ranks' contiguous shares, in rank order
        gathered = all_gather_object(rows, ctx)
        keyed = [((row[0], rank), row) for rank, rank_rows in enumerate(gathered) for row in rank_rows]
        rows = [row for _, row in sorted(keyed, key=lambda kr: kr[0])]
    preds = [r[3] for r in rows]
    targets = [r[4] for r in rows]
    return preds, targets, sum(r[1] for r in rows), sum(r[2] for r in rows)


def _warn_unsharded(what: str) -> None:
    warnings.warn(
        f"{what} is not a map-style torch DataLoader, so every rank runs all of its batches (correct, not faster)",
        stacklevel=3,
    )


class _DistributedSteps:
    """``(batch, loss_weight, count)`` per training step under torchrun.

    The weight turns DDP's average of the ranks' mean losses into the global batch's mean loss; ``count`` is
    the number of real samples (for the reported train loss). ``iter()`` starts the underlying DataLoader
    iterator at once, as ``DataLoader.__iter__`` does, so that the random draws (and hence the shuffle)
    happen as in one process, where tqdm iterates the DataLoader itself.
    """

    def __init__(self, train_loader, sharded, world_size: int):
        self.train_loader, self.sharded, self.world_size = train_loader, sharded, world_size

    def __len__(self) -> int:
        return len(self.sharded if self.sharded is not None else self.train_loader)

    def __iter__(self):
        if self.sharded is None:  # every rank the whole batch: DDP averages identical gradients
            return ((batch, None, None) for batch in self.train_loader)
        return ((batch, self.world_size * n_real / n_global, n_real) for batch, n_real, n_global in self.sharded)


def train_regressor(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: str = "bce",
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    grad_clip: float | None = None,
    select: str = "r2",
    restore_best: bool = True,
    progress: bool = True,
    forward: ForwardFn | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_loader``; returns the history.

    Parameters
    ----------
    model : nn.Module
        Maps a batch to ``[B, k]`` outputs (logits for ``loss="bce"``).
    train_loader, val_loader : iterables of batches with ``.y`` (or use ``forward``)
    epochs, lr, weight_decay : AdamW settings (the paper uses Adam: ``weight_decay=0``)
    loss : {"bce", "mse"}
        BCE with logits (targets in [0, 1]) or MSE.
    device : "auto", "cpu", "cuda", ...
    checkpoint : path, optional
        Written atomically after each epoch (model, optimizer, epoch, history, best state). With
        ``resume=True`` an existing checkpoint is loaded and training continues after its epoch.
    grad_clip : float, optional
        Max gradient norm.
    select : {"r2", "tau", "loss"}
        Validation metric that picks the best epoch (``restore_best`` loads it at the end).
    forward : callable, optional
        ``forward(model, batch) -> (outputs, targets)`` for models that do not take a batch with ``.y``
        (e.g. NP-NFN on lists of graphs).

    Under torchrun the model is wrapped in DistributedDataParallel (``find_unused_parameters=True``: a batch
    need not reach every parameter), a map-style ``DataLoader`` is sharded per global batch (others run
    whole on every rank, with a warning), the history is the same on every rank, and only rank 0 writes the
    checkpoint and prints; a checkpoint is read by rank 0 and broadcast.

    Returns
    -------
    dict
        ``{"epochs": [{"epoch", "train_loss", "val_loss", "val_r2", "val_tau", "lr", "time_s"}, ...],
        "best_epoch", "best_metric", "device"}``.
    """
    from tqdm.auto import tqdm

    if select not in ("r2", "tau", "loss"):
        raise ValueError(f"Expected select 'r2', 'tau' or 'loss' (got {select!r})")
    if seed is not None:
        torch.manual_seed(seed)
    ctx = init_distributed(device)
    device = ctx.device
    model.to(device)
    forward = forward or _default_forward
    crit = _loss_fn(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, Any] = {"epochs": [], "best_epoch": None, "best_metric": None, "device": str(device)}
    best_state = None
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ctx.enabled:  # rank 0's view of the checkpoint, so that all ranks resume at the same epoch
        found = ckpt is not None and resume and ctx.is_main and ckpt.exists()
        state = broadcast_object(torch.load(ckpt, map_location="cpu", weights_only=True) if found else None, ctx)
    elif ckpt is not None and resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
    else:
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = state["history"]
        best_state = state.get("best_model")
        start = int(state["epoch"]) + 1
    net: nn.Module = model
    sharded = None
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids=None: batches are already on the device (DDP would otherwise try to move NP-NFN's graphs)
        net = DistributedDataParallel(model, find_unused_parameters=True)  # broadcasts rank 0's parameters
        sharded = shard_loader(train_loader, ctx)
        if sharded is None:
            _warn_unsharded("the training loader")
    progress = progress and ctx.is_main
    sign = -1.0 if select == "loss" else 1.0
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        total, n = 0.0, 0
        desc = f"epoch {epoch + 1}/{epochs}"
        steps = _DistributedSteps(train_loader, sharded, ctx.world_size) if ctx.enabled else train_loader
        it = tqdm(steps, disable=not progress, desc=desc, leave=False)
        for item in it:
            batch, weight, count = item if ctx.enabled else (item, None, None)
            out, y = forward(net, _to(batch, device))
            lval = crit(out, y)
            opt.zero_grad(set_to_none=True)
            (lval if weight is None else lval * weight).backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            count = y.shape[0] if count is None else count
            total += float(lval.detach()) * count
            n += count
            if progress:
                it.set_postfix(loss=f"{total / max(n, 1):.4f}")
        if ctx.enabled:
            total, n = all_reduce_sum([total, n], ctx)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n, 1), "lr": lr}
        if val_loader is not None:
            ev = evaluate(model, val_loader, loss, device, forward)
            row.update(val_loss=ev["loss"], val_r2=ev["r2"], val_tau=ev["tau"])
            metric = sign * ev[select]
            if not math.isnan(metric) and (history["best_metric"] is None or metric > history["best_metric"]):
                history["best_metric"], history["best_epoch"] = metric, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        row["time_s"] = time.perf_counter() - t0
        history["epochs"].append(row)
        if progress:
            msg = f"epoch {epoch + 1}/{epochs} train_loss {row['train_loss']:.4f}"
            if "val_r2" in row:
                msg += f" val_loss {row['val_loss']:.4f} R2 {row['val_r2']:.3f} tau {row['val_tau']:.3f}"
            tqdm.write(msg)
        if ckpt is not None and ctx.is_main:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best_model": best_state,
                },
                ckpt,
            )
    if history["best_metric"] is not None:
        history["best_metric"] = sign * history["best_metric"]
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    del net  # the DDP wrapper (and its reducer) is not needed past training
    return history
