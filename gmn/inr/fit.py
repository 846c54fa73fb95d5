"""Fit many SIRENs of one architecture at once: stacked parameters, batched matmuls, one Adam.

Parameters of ``B`` SIRENs are held as a dict of stacked tensors (``layers.i.weight``: ``[B, out, in]``,
``layers.i.bias``: ``[B, out]``), the same keys as :class:`symgraph.models.siren.SIREN`'s state_dict, so that
``{k: v[j] for k, v in params.items()}`` loads into one SIREN. The forward pass is a chain of ``baddbmm``
(equivalent to ``torch.func.vmap(functional_call)`` over the stacked parameters, but without vmap's
per-call overhead). The loss is the *sum over INRs* of each INR's mean-squared error, so each INR receives
exactly the gradient it would get alone; Adam is elementwise, so one Adam over the stacked tensors is ``B``
independent Adams.

Example
-------
>>> import torch
>>> from gmn.inr.fit import init_siren_params, batched_siren_forward
>>> p = init_siren_params(4, 1, (8, 8), 1, omega0=30.0, generator=torch.Generator().manual_seed(0))
>>> batched_siren_forward(p, torch.zeros(5, 1), omega0=30.0).shape
torch.Size([4, 5, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = ["FitConfig", "init_siren_params", "batched_siren_forward", "fit_sirens", "unstack", "stack"]


@dataclass(frozen=True)
class FitConfig:
    """The optimisation schedule of an INR fit (full batch Adam).

    ``lr`` is the Adam learning rate and ``weight_decay`` Adam's L2 penalty (``torch.optim.Adam``'s
    ``weight_decay``); the fit runs at most ``steps`` steps. ``stop_mse`` > 0 stops each INR on its own
    (as one INR trained alone with an early stop): after the first step whose loss, computed before that
    step's update, is at most ``stop_mse``, that INR's parameters are kept and it leaves the batch.
    ``tol`` > 0 stops the whole batch once every INR's MSE is below it (checked every ``check_every`` steps).
    ``lr_decay_to`` > 0 applies a cosine decay of the learning rate down to ``lr * lr_decay_to``.
    """

    steps: int = 1000
    lr: float = 1e-3
    tol: float = 0.0
    check_every: int = 50
    lr_decay_to: float = 0.0
    weight_decay: float = 0.0
    stop_mse: float = 0.0


def _layer_dims(in_dim: int, hidden: Sequence[int], out_dim: int) -> list[tuple[int, int]]:
    dims = (in_dim, *hidden, out_dim)
    return list(zip(dims[:-1], dims[1:]))


def init_siren_params(
    batch: int,
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    omega0: float = 30.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Stacked SIREN initialisations (Sitzmann et al.'s bounds, as :func:`symgraph.models.siren.siren_init_`)."""
    out: dict[str, torch.Tensor] = {}
    for i, (a, b) in enumerate(_layer_dims(in_dim, hidden, out_dim)):
        wb = 1.0 / a if i == 0 else math.sqrt(6.0 / a) / omega0
        bb = 1.0 / math.sqrt(a)
        w = (torch.rand(batch, b, a, generator=generator) * 2 - 1) * wb
        bias = (torch.rand(batch, b, generator=generator) * 2 - 1) * bb
        out[f"layers.{i}.weight"] = w.to(device)
        out[f"layers.{i}.bias"] = bias.to(device)
    return out


def num_layers(params: dict[str, torch.Tensor]) -> int:
    return sum(1 for k in params if k.endswith(".weight"))


def batched_siren_forward(params: dict[str, torch.Tensor], x: torch.Tensor, omega0: float = 30.0) -> torch.Tensor:
    """Evaluate ``B`` SIRENs: ``x`` is ``[P, in]`` (shared coordinates) or ``[B, P, in]``; returns ``[B, P, out]``."""
    n = num_layers(params)
    w0 = params["layers.0.weight"]
    h = x.unsqueeze(0).expand(w0.shape[0], *x.shape) if x.dim() == 2 else x
    for i in range(n):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < n - 1:
            h = torch.sin(omega0 * h)
    return h


def fit_sirens(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: FitConfig = FitConfig(),
    omega0: float = 30.0,
    progress: bool = True,
    desc: str = "fit",
    return_steps: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor] | tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Fit ``B`` SIRENs to targets ``y`` ``[B, P, out]`` at coordinates ``x`` (``[P, in]`` or ``[B, P, in]``).

    Returns the fitted parameters (detached) and the final per-INR MSE ``[B]`` (and, with ``return_steps``,
    the number of Adam steps each INR took ``[B]``). INRs that stop early (``config.stop_mse``) leave the
    batch, so the remaining steps cost less; Adam's state of the others is carried over unchanged.
    """
    final = {k: v.detach().clone() for k, v in params.items()}
    n = y.shape[0]
    steps_taken = torch.full((n,), config.steps, dtype=torch.long)
    active = torch.arange(n, device=y.device)
    cur = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(cur.values(), lr=config.lr, weight_decay=config.weight_decay)
    xs = x
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        opt.param_groups[0]["lr"] = _lr(config, step)
        opt.zero_grad(set_to_none=True)
        per = (batched_siren_forward(cur, xs, omega0) - y[active]).pow(2).mean(dim=(1, 2))
        per.sum().backward()
        opt.step()
        if step % config.check_every == 0 or step == config.steps - 1:
            bar.set_postfix(max_mse=f"{per.max().item():.2e}", left=int(active.numel()))
            if config.tol > 0 and bool((per.detach() < config.tol).all()):
                steps_taken[active.cpu()] = step + 1
                break
        if config.stop_mse > 0:
            done = per.detach() <= config.stop_mse
            if bool(done.any()):
                for k in cur:
                    final[k][active[done]] = cur[k].detach()[done]
                steps_taken[active[done].cpu()] = step + 1
                keep = ~done
                cur, opt = _drop_rows(cur, opt, keep)
                active = active[keep]
                if x.dim() == 3:
                    xs = x[active]
                if active.numel() == 0:
                    break
    for k in cur:
        final[k][active] = cur[k].detach()
    with torch.no_grad():
        mse = (batched_siren_forward(final, x, omega0) - y).pow(2).mean(dim=(1, 2))
    return (final, mse, steps_taken) if return_steps else (final, mse)


def _lr(config: FitConfig, step: int) -> float:
    """The learning rate of step ``step``: constant, or cosine-decayed to ``lr * lr_decay_to`` over ``steps``."""
    if config.lr_decay_to <= 0:
        return config.lr
    low = config.lr * config.lr_decay_to
    return low + (config.lr - low) * (1 + math.cos(math.pi * step / config.steps)) / 2


def _drop_rows(cur: dict[str, torch.Tensor], opt: torch.optim.Adam, keep: torch.Tensor):
    """The rows ``keep`` of the stacked parameters, with the same Adam (its state and learning rate) on them."""
    new = {k: v.detach()[keep].clone().requires_grad_(True) for k, v in cur.items()}
    group = opt.param_groups[0]
    new_opt = torch.optim.Adam(new.values(), lr=group["lr"], weight_decay=group["weight_decay"])
    for old, p in zip(cur.values(), new.values()):
        st = opt.state[old]
        new_opt.state[p] = {"step": st["step"], "exp_avg": st["exp_avg"][keep], "exp_avg_sq": st["exp_avg_sq"][keep]}
    return new, new_opt


def unstack(params: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    """The state_dict of INR ``j`` (loads into a :class:`~symgraph.models.siren.SIREN`)."""
    return {k: v[j] for k, v in params.items()}


def stack(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`unstack` over a list of state dicts with equal keys and shapes."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}
