"""Train many networks of one architecture at once with ``torch.func`` (vmap over stacked parameters).

Every network of a group has the same architecture and optimizer type; learning rate, weight decay, label
smoothing and initialisation differ per network. Parameters and buffers are stacked along a leading model
axis; one vmapped ``grad`` call computes all gradients, and the optimizers (SGD with momentum, Adam, RMSprop,
all with coupled L2 weight decay as in ``torch.optim``) are written as tensor updates over the stack.
BatchNorm running statistics are stacked buffers updated in place under vmap, dropout draws different
masks per network (``randomness="different"``). Learning rate: linear warm-up over the first 10% of steps,
then linear decay to zero (paper E.1.1). All networks of a group see the same mini-batch order.

``train_group(..., vectorize=False)`` runs the same arithmetic one network at a time (the sequential
baseline of ``benchmarks/zoo_throughput.py``; with dropout 0 it gives the same result up to float round-off).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

__all__ = ["HParams", "TrainResult", "train_group"]


@dataclass(frozen=True)
class HParams:
    """Per-network training hyperparameters (paper Table 5, 'All' rows)."""

    lr: float
    weight_decay: float
    label_smoothing: float
    optimizer: str  # sgd | adam | rmsprop
    seed: int


@dataclass(frozen=True)
class TrainResult:
    state_dict: dict
    train_acc: float
    test_acc: float
    final_loss: float


def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return ((1 - ls) * nll - ls * logp.mean(-1)).mean()


def _schedule(step: int, total: int) -> float:
    warm = max(1, total // 10)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


class _StackedOptimizer:
    def __init__(self, kind: str, params: dict, lr: torch.Tensor, wd: torch.Tensor):
        if kind not in ("sgd", "adam", "rmsprop"):
            raise ValueError(f"Expected optimizer sgd, adam or rmsprop (got {kind!r})")
        self.kind, self.lr, self.wd, self.t = kind, lr, wd, 0
        self.s1 = {k: torch.zeros_like(v) for k, v in params.items()}
        self.s2 = {k: torch.zeros_like(v) for k, v in params.items()} if kind == "adam" else None

    def step(self, params: dict, grads: dict, scale: float) -> dict:
        self.t += 1
        out = {}
        for k, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr, wd = self.lr.view(shape) * scale, self.wd.view(shape)
            g = grads[k] + wd * p
            if self.kind == "sgd":
                self.s1[k] = 0.9 * self.s1[k] + g
                out[k] = p - lr * self.s1[k]
            elif self.kind == "adam":
                b1, b2 = 0.9, 0.999
                self.s1[k] = b1 * self.s1[k] + (1 - b1) * g
                self.s2[k] = b2 * self.s2[k] + (1 - b2) * g * g
                mhat = self.s1[k] / (1 - b1**self.t)
                vhat = self.s2[k] / (1 - b2**self.t)
                out[k] = p - lr * mhat / (vhat.sqrt() + 1e-8)
            else:
                self.s1[k] = 0.99 * self.s1[k] + 0.01 * g * g
                out[k] = p - lr * g / (self.s1[k].sqrt() + 1e-8)
        return out


def _train_stack(make_model, hps, data, epochs, batch_size, device, data_seed) -> list[TrainResult]:
    models = []
    for hp in hps:
        torch.manual_seed(hp.seed)
        models.append(make_model().to(device))
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    lr = torch.tensor([h.lr for h in hps], device=device)
    wd = torch.tensor([h.weight_decay for h in hps], device=device)
    ls = torch.tensor([h.label_smoothing for h in hps], device=device)
    opt = _StackedOptimizer(hps[0].optimizer, params, lr, wd)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    n = len(y_tr)
    steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
    total = epochs * steps_per_epoch

    def loss_fn(p, b, x, y, ls_i):
        return _smoothed_ce(functional_call(base, (p, b), (x,)), y, ls_i)

    step_fn = vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None, 0), randomness="different")
    gen = torch.Generator().manual_seed(data_seed)
    base.train()
    step = 0
    loss = torch.zeros(len(hps))
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            grads, loss = step_fn(params, buffers, x_tr[idx], y_tr[idx], ls)
            params = opt.step(params, grads, _schedule(step, total))
            step += 1
    base.eval()

    def accuracy(x, y):
        correct = torch.zeros(len(hps), device=device)
        fwd = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), in_dims=(0, 0, None))
        with torch.no_grad():
            for i in range(0, len(y), 512):
                logits = fwd(params, buffers, x[i : i + 512].to(device))
                correct += (logits.argmax(-1) == y[i : i + 512].to(device)).float().sum(-1)
        return (correct / len(y)).cpu()

    acc_tr, acc_te = accuracy(data.x_train, data.y_train), accuracy(data.x_test, data.y_test)
    keys = list(models[0].state_dict().keys())
    results = []
    for m in range(len(hps)):
        sd = {}
        for k in keys:
            src = params[k] if k in params else buffers[k]
            sd[k] = src[m].detach().cpu().clone()
        results.append(TrainResult(sd, float(acc_tr[m]), float(acc_te[m]), float(loss[m])))
    return results


def train_group(
    make_model: Callable[[], nn.Module],
    hps: list[HParams],
    data,
    epochs: int = 10,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    vectorize: bool = True,
    data_seed: int = 0,
) -> list[TrainResult]:
    """Train ``len(hps)`` networks built by ``make_model`` (same architecture), vmapped when ``vectorize``.

    Example
    -------
    >>> from gmn.zoo.data import load_data
    >>> data = load_data("digits")
    >>> make = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> res = train_group(make, [HParams(1e-2, 1e-4, 0.0, "adam", s) for s in range(4)], data, epochs=2)
    >>> len(res), 0.0 <= res[0].test_acc <= 1.0
    (4, True)
    """
    if not hps:
        return []
    if len({h.optimizer for h in hps}) != 1:
        raise ValueError(f"Expected one optimizer type per group (got {sorted({h.optimizer for h in hps})})")
    if vectorize:
        return _train_stack(make_model, hps, data, epochs, batch_size, device, data_seed)
    out = []
    for hp in hps:
        out += _train_stack(make_model, [hp], data, epochs, batch_size, device, data_seed)
    return out
