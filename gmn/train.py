"""Training loop for metanetwork regressors (accuracy prediction, paper Sec. 4.1 / E.1.2).

:func:`train_regressor` trains any model that maps a batch to ``[B, k]`` outputs against ``batch.y``
(``[B, k]``): AdamW, BCE-with-logits (the paper's sigmoid + BCE on accuracies in [0, 1]) or MSE,
validation R^2 and Kendall tau (scipy) after each epoch, the best validation state kept, and a checkpoint
written atomically after each epoch so that a killed run resumes where it stopped.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.cli_util import atomic_torch_save  # re-exported: checkpoints are written atomically

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

    With ``loss="bce"`` predictions are ``sigmoid(logits)``; with ``"mse"`` the raw outputs.
    """
    device = resolve_device(device)
    forward = forward or _default_forward
    crit = _loss_fn(loss)
    was_training = model.training
    model.eval()
    preds, targets, total, n = [], [], 0.0, 0
    for batch in loader:
        out, y = forward(model, _to(batch, device))
        total += float(crit(out, y)) * y.shape[0]
        n += y.shape[0]
        preds.append((torch.sigmoid(out) if loss == "bce" else out).cpu())
        targets.append(y.cpu())
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
    device = resolve_device(device)
    model.to(device)
    forward = forward or _default_forward
    crit = _loss_fn(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, Any] = {"epochs": [], "best_epoch": None, "best_metric": None, "device": str(device)}
    best_state = None
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = state["history"]
        best_state = state.get("best_model")
        start = int(state["epoch"]) + 1
    sign = -1.0 if select == "loss" else 1.0
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        it = tqdm(train_loader, disable=not progress, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for batch in it:
            out, y = forward(model, _to(batch, device))
            lval = crit(out, y)
            opt.zero_grad(set_to_none=True)
            lval.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += float(lval.detach()) * y.shape[0]
            n += y.shape[0]
            if progress:
                it.set_postfix(loss=f"{total / max(n, 1):.4f}")
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
        if ckpt is not None:
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
    return history
