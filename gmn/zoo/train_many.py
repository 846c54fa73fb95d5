"""Train many networks of one architecture at once with ``torch.func`` (vmap over stacked parameters).

Every network of a group has the same parameter shapes; optimizer kind (SGD/Adam/RMSprop), learning rate,
weight decay, label smoothing, dropout rate and initialisation may differ per network. Parameters and
buffers are stacked along a leading model axis; one vmapped ``grad`` call computes all gradients, and the
optimizers (SGD with momentum, Adam, RMSprop, all with coupled L2 weight decay as in ``torch.optim``) are
tensor updates over the stack. BatchNorm running statistics are stacked buffers updated in place under
vmap; dropout rates are stacked buffers too, with different masks per network (``randomness="different"``).
Learning rate: linear warm-up over the first 10% of steps, then linear decay to zero (paper E.1.1). All
networks of a group see the same mini-batch order.

``train_group(..., vectorize=False)`` runs the same arithmetic one network at a time (the sequential
baseline of ``benchmarks/zoo_throughput.py``; with dropout 0 it gives the same result up to float round-off).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from .grouped import grouped_forward, grouped_leaves

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


_OPT_IDS = {"sgd": 0, "adam": 1, "rmsprop": 2}


class _StackedOptimizer:
    """SGD (momentum 0.9), Adam and RMSprop over a stack, each network with its own kind, lr and weight decay.

    The three updates are computed for the whole stack and each network keeps its own (a masked select): a
    group then only needs equal shapes, which makes vmapped groups of a diverse zoo several times larger.
    """

    def __init__(self, kinds: list[str], params: dict, lr: torch.Tensor, wd: torch.Tensor):
        bad = sorted(set(kinds) - set(_OPT_IDS))
        if bad:
            raise ValueError(f"Expected optimizers among sgd, adam, rmsprop (got {bad})")
        self.kind = torch.tensor([_OPT_IDS[k] for k in kinds], device=lr.device)
        self.lr, self.wd, self.t = lr, wd, 0
        self.mom = {k: torch.zeros_like(v) for k, v in params.items()}  # SGD momentum / Adam first moment
        self.sq = {k: torch.zeros_like(v) for k, v in params.items()}  # Adam / RMSprop second moment
        self.present = {i for i in range(3) if bool((self.kind == i).any())}

    def step(self, params: dict, grads: dict, scale: float) -> dict:
        self.t += 1
        out = {}
        b1, b2 = 0.9, 0.999
        for k, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr, wd, kind = self.lr.view(shape) * scale, self.wd.view(shape), self.kind.view(shape)
            g = grads[k] + wd * p
            sgd_m = 0.9 * self.mom[k] + g
            adam_m = b1 * self.mom[k] + (1 - b1) * g
            adam_v = b2 * self.sq[k] + (1 - b2) * g * g
            rms_v = 0.99 * self.sq[k] + 0.01 * g * g
            new = p
            if 0 in self.present:
                new = torch.where(kind == 0, p - lr * sgd_m, new)
            if 1 in self.present:
                step = (adam_m / (1 - b1**self.t)) / ((adam_v / (1 - b2**self.t)).sqrt() + 1e-8)
                new = torch.where(kind == 1, p - lr * step, new)
            if 2 in self.present:
                new = torch.where(kind == 2, p - lr * g / (rms_v.sqrt() + 1e-8), new)
            self.mom[k] = torch.where(kind == 0, sgd_m, torch.where(kind == 1, adam_m, self.mom[k]))
            self.sq[k] = torch.where(kind == 1, adam_v, torch.where(kind == 2, rms_v, self.sq[k]))
            out[k] = new
        return out


class _BufferDropout(nn.Module):
    """Dropout whose rate is a buffer, so that stacked networks of one group can have different rates."""

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = (torch.rand_like(x) < keep).to(x.dtype)
        return x * mask / keep


def _with_buffer_dropout(model: nn.Module) -> nn.Module:
    for name, child in list(model.named_children()):
        if type(child) is nn.Dropout:
            setattr(model, name, _BufferDropout(child.p))
        else:
            _with_buffer_dropout(child)
    return model


def _per_network_loss(logits: torch.Tensor, y: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """``[M]`` smoothed cross-entropies of ``[B, M, K]`` logits (each network's :func:`_smoothed_ce`)."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)
    return ((1 - ls) * nll - ls * logp.mean(-1)).mean(0)


def _train_stack(makers, hps, data, epochs, batch_size, device, data_seed, engine="vmap") -> list[TrainResult]:
    models = []
    for make, hp in zip(makers, hps):
        torch.manual_seed(hp.seed)
        models.append(make().to(device))
    keys = list(models[0].state_dict().keys())  # saved state: the real model's entries (no dropout buffers)
    models = [_with_buffer_dropout(m) for m in models]
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    lr = torch.tensor([h.lr for h in hps], device=device)
    wd = torch.tensor([h.weight_decay for h in hps], device=device)
    ls = torch.tensor([h.label_smoothing for h in hps], device=device)
    opt = _StackedOptimizer([h.optimizer for h in hps], params, lr, wd)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    n = len(y_tr)
    steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
    total = epochs * steps_per_epoch

    def loss_fn(p, b, x, y, ls_i):
        return _smoothed_ce(functional_call(base, (p, b), (x,)), y, ls_i)

    step_fn = vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None, 0), randomness="different")
    leaves = grouped_leaves(base) if engine in ("grouped", "grouped-cl") else None
    flat = type(base).__name__ == "CNN1D"
    cl = engine == "grouped-cl"
    if leaves is not None:

        def step_fn(p, b, x, y, ls_i):  # noqa: F811  (the grouped engine: one grouped network, summed losses)
            p = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            loss = _per_network_loss(grouped_forward(leaves, p, b, x, True, flat, cl), y, ls_i)
            grads = torch.autograd.grad(loss.sum(), list(p.values()))
            return dict(zip(p, grads)), loss.detach()

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
        if leaves is not None:
            fwd = lambda p, b, xb: grouped_forward(leaves, p, b, xb, False, flat, cl).transpose(0, 1)  # noqa: E731
        with torch.no_grad():
            for i in range(0, len(y), 512):
                logits = fwd(params, buffers, x[i : i + 512].to(device))
                correct += (logits.argmax(-1) == y[i : i + 512].to(device)).float().sum(-1)
        return (correct / len(y)).cpu()

    acc_tr, acc_te = accuracy(data.x_train, data.y_train), accuracy(data.x_test, data.y_test)
    results = []
    for m in range(len(hps)):
        sd = {}
        for k in keys:
            src = params[k] if k in params else buffers[k]
            sd[k] = src[m].detach().cpu().clone()
        results.append(TrainResult(sd, float(acc_tr[m]), float(acc_te[m]), float(loss[m])))
    return results


def train_group(
    make_model: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]],
    hps: list[HParams],
    data,
    epochs: int = 10,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    vectorize: bool = True,
    data_seed: int = 0,
    engine: str = "vmap",
) -> list[TrainResult]:
    """Train ``len(hps)`` networks of equal parameter shapes together (vmapped when ``vectorize``).

    ``make_model`` is one factory for all, or one per network (they may differ in dropout rate: rates are
    stacked buffers). Optimizer kinds may differ within a group too. ``engine`` (with ``vectorize``):
    ``"vmap"`` (``torch.func.vmap``), ``"grouped"`` / ``"grouped-cl"`` (:mod:`gmn.zoo.grouped`: one network with
    grouped convolutions, ``-cl`` channels-last; CNN architectures only, others fall back to vmap).

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
    makers = list(make_model) if isinstance(make_model, Sequence) else [make_model] * len(hps)
    if len(makers) != len(hps):
        raise ValueError(f"Expected one model factory per network ({len(hps)}) (got {len(makers)})")
    if engine not in ("vmap", "grouped", "grouped-cl"):
        raise ValueError(f"Expected engine 'vmap', 'grouped' or 'grouped-cl' (got {engine!r})")
    if vectorize:
        return _train_stack(makers, hps, data, epochs, batch_size, device, data_seed, engine)
    out = []
    for make, hp in zip(makers, hps):
        out += _train_stack([make], [hp], data, epochs, batch_size, device, data_seed)
    return out
