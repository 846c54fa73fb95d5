"""The regression objective of accuracy prediction (paper Sec. 4.1 / E.1.2), trained by :mod:`gmn.engine`.

:func:`train_regressor` trains any model that maps a batch to ``[B, k]`` outputs against ``batch.y``
(``[B, k]``): AdamW, BCE-with-logits (the paper's sigmoid + BCE on accuracies in [0, 1]) or MSE,
validation R^2 and Kendall tau (scipy) after each epoch, the best validation state kept, and a checkpoint
written atomically after each epoch so that a killed run resumes where it stopped (all of it
:func:`gmn.engine.fit`; this module adds the loss, the metrics and the sharded evaluation).

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

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.cli_util import atomic_torch_save, resolve_device  # re-exported (one implementation each)

from . import engine
from .distributed import DistContext, active_context, all_gather_object, broadcast_object, shard_loader

__all__ = ["train_regressor", "evaluate", "regression_metrics", "resolve_device", "atomic_torch_save"]

ForwardFn = Callable[[nn.Module, Any], tuple[Tensor, Tensor]]


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
    out, y = forward(model, engine._to(batch, device))
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
    fingerprint: Any = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_loader`` with :func:`gmn.engine.fit`; returns the history as a dict.

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
        Written atomically after each epoch (:data:`gmn.engine.CHECKPOINT_FORMAT`). With ``resume=True`` an
        existing checkpoint is loaded and training continues after its epoch (``fingerprint``: see
        :func:`gmn.engine.fit`).
    grad_clip : float, optional
        Max gradient norm.
    select : {"r2", "tau", "loss"}
        Validation metric that picks the best epoch (``restore_best`` loads it at the end).
    forward : callable, optional
        ``forward(model, batch) -> (outputs, targets)`` for models that do not take a batch with ``.y``.
    seed : int, optional
        Seeds torch first (the shuffle of a ``shuffle=True`` loader draws from torch's generator).

    Under torchrun the model is wrapped in DistributedDataParallel, a map-style ``DataLoader`` is sharded per
    global batch (others run whole on every rank, with a warning), the history is the same on every rank, and
    only rank 0 writes the checkpoint and prints (see :mod:`gmn.engine`).

    Returns
    -------
    dict
        ``{"epochs": [{"epoch", "train_loss", "lr", "val_loss", "val_r2", "val_tau", "time_s"}, ...],
        "best_epoch", "best_metric", "device", ...}`` (:class:`gmn.engine.History` as a dict).
    """
    if select not in ("r2", "tau", "loss"):
        raise ValueError(f"Expected select 'r2', 'tau' or 'loss' (got {select!r})")
    forward = forward or _default_forward
    crit = _loss_fn(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(net: nn.Module, batch) -> tuple[Tensor, int]:
        out, y = forward(net, batch)
        return crit(out, y), y.shape[0]

    def validate(m: nn.Module) -> dict[str, float]:
        ev = evaluate(m, val_loader, loss, device, forward)
        return {"val_loss": ev["loss"], "val_r2": ev["r2"], "val_tau": ev["tau"]}

    def describe(row: dict[str, Any]) -> str:
        msg = f"epoch {row['epoch'] + 1}/{epochs} train_loss {row['train_loss']:.4f}"
        if "val_r2" in row:
            msg += f" val_loss {row['val_loss']:.4f} R2 {row['val_r2']:.3f} tau {row['val_tau']:.3f}"
        return msg

    history = engine.fit(
        model,
        opt,
        train_loader,
        step,
        epochs,
        validate=validate if val_loader is not None else None,
        select=(f"val_{select}", "min" if select == "loss" else "max") if val_loader is not None else None,
        restore_best=restore_best,
        checkpoint=checkpoint,
        resume=resume,
        fingerprint=fingerprint,
        seed=seed,
        device=device,
        grad_clip=grad_clip,
        progress=progress,
        desc="regressor",
        describe=describe,
    )
    return history.as_dict()
