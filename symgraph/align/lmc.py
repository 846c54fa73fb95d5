"""Linear mode connectivity before and after weight matching, on scikit-learn's digits (seconds on CPU).

Two networks of one architecture are trained from different seeds (different initialisation and data
order); the loss and accuracy of ``theta(t) = (1 - t) theta_A + t theta_B`` are measured at 21 values of
``t``, once with ``theta_B`` as trained and once with ``theta_B`` aligned to ``theta_A`` by
:func:`symgraph.align`. The *barrier* is ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``.

BatchNorm networks: interpolating the running statistics does not give the statistics of the interpolated
network, so each interpolated network's running statistics are also recomputed on the training split (one
train-mode forward pass of the whole split, no gradients: the statistics of the training data) before it is
evaluated; both barriers are reported (``bn_recomputed`` and ``bn_interpolated``). Networks without
BatchNorm have one.

Example
-------
>>> from symgraph.align.lmc import DEMO_ARCHS
>>> sorted(DEMO_ARCHS)
['cnn', 'mlp', 'resnet', 'vit']
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SymgraphError

__all__ = ["DEMO_ARCHS", "LMCConfig", "digits", "train", "interpolation_curve", "barrier", "run_lmc", "plot_lmc"]

#: The demo's architectures (registry strings; all take 1 x 8 x 8 inputs and give 10 logits).
DEMO_ARCHS = {
    "mlp": "mlp:hidden=128-128",
    "cnn": "cnn2d:hidden=32,conv_layers=2,norm=batchnorm",
    "resnet": "resnet:hidden=16,blocks=1-1",
    "vit": "vit:dim=32,depth=2,heads=4,patch=2,mlp_dim=64",
}


@dataclass(frozen=True)
class LMCConfig:
    """Training and evaluation settings of the demo (defaults: a few seconds per network on 2 CPU cores)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    points: int = 21
    seeds: tuple[int, int] = (0, 1)
    test_fraction: float = 0.2
    split_seed: int = 0


def digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (bundled with scikit-learn: nothing is downloaded) as ``(x_train, y_train,
    x_test, y_test)``: images ``[n, 1, 8, 8]`` standardised with the training split's pixel mean and std.

    Example
    -------
    >>> xtr, ytr, xte, yte = digits()
    >>> tuple(xtr.shape[1:]), int(ytr.max()) + 1, xtr.shape[0] + xte.shape[0]
    ((1, 8, 8), 10, 1797)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * x.shape[0]))
    te, tr = order[:n_test], order[n_test:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


def train(arch: str, data, seed: int, config: LMCConfig = LMCConfig()) -> nn.Module:
    """Train a registry architecture on ``data`` (``digits()``'s tuple) with Adam; seed fixes init and order."""
    from ..models import build_model

    xtr, ytr = data[0], data[1]
    torch.manual_seed(seed)
    model = build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps = config.epochs * math.ceil(xtr.shape[0] / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    model.train()
    for _ in range(config.epochs):
        perm = torch.randperm(xtr.shape[0], generator=gen)
        for i in range(0, xtr.shape[0], config.batch_size):
            idx = perm[i : i + config.batch_size]
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples in train mode
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _interpolate(a: nn.Module, b: nn.Module, t: float) -> nn.Module:
    sa, sb = a.state_dict(), b.state_dict()
    out = copy.deepcopy(a)
    mixed = {k: ((1 - t) * v + t * sb[k]) if v.is_floating_point() else v.clone() for k, v in sa.items()}
    out.load_state_dict(mixed)
    return out


@torch.no_grad()
def _recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> None:
    """Running statistics of every BatchNorm recomputed on ``x``: one train-mode pass, cumulative average of
    the batch statistics (``batch_size=None``, the default: one batch, so the statistics of ``x`` itself)."""
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved[m] = m.momentum
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    model.train()
    step = x.shape[0] if batch_size is None else int(batch_size)
    for i in range(0, x.shape[0], step):
        model(x[i : i + step])
    for m, mom in saved.items():
        m.momentum = mom
    model.eval()


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def interpolation_curve(a: nn.Module, b: nn.Module, data, points: int = 21, recompute_bn: bool = False):
    """Loss and accuracy (train and test) of ``(1 - t) a + t b`` at ``points`` values of ``t`` in [0, 1]."""
    xtr, ytr, xte, yte = data
    ts = np.linspace(0.0, 1.0, points)
    out = {"t": ts.tolist(), "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    for t in ts.tolist():
        m = _interpolate(a, b, t)
        if recompute_bn:
            _recompute_bn(m, xtr)
        for split, (x, y) in (("train", (xtr, ytr)), ("test", (xte, yte))):
            loss, acc = _evaluate(m, x, y)
            out[f"{split}_loss"].append(loss)
            out[f"{split}_acc"].append(acc)
    return out


def barrier(ts, losses) -> float:
    """``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` (0 for a path no worse than the chord).

    Example
    -------
    >>> barrier([0.0, 0.5, 1.0], [1.0, 3.0, 1.0])
    2.0
    """
    ts, losses = np.asarray(ts, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    chord = (1 - ts) * losses[0] + ts * losses[-1]
    return float(max(0.0, np.max(losses - chord)))


@dataclass
class LMCResult:
    """One architecture's demo: curves, barriers, alignment statistics and timings."""

    arch: str
    spec: str
    curves: dict = field(default_factory=dict)  # "naive"/"aligned" x "bn_recomputed"/"bn_interpolated"/"plain"
    barriers: dict = field(default_factory=dict)
    endpoint_acc: dict = field(default_factory=dict)
    alignment: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "arch": self.arch,
            "spec": self.spec,
            "barriers": self.barriers,
            "endpoint_acc": self.endpoint_acc,
            "alignment": self.alignment,
            "seconds": self.seconds,
            "curves": self.curves,
        }


def run_lmc(arch: str, config: LMCConfig = LMCConfig(), log=None) -> LMCResult:
    """Train two networks of ``arch`` (a key of :data:`DEMO_ARCHS` or a registry string), align the second to
    the first, and measure both linear paths (see the module docstring)."""
    from .matching import weight_matching

    spec = DEMO_ARCHS.get(arch, arch)
    say = log or (lambda msg: None)
    res = LMCResult(arch=arch, spec=spec)
    data = digits(config.test_fraction, config.split_seed)
    t0 = time.perf_counter()
    a = train(spec, data, config.seeds[0], config)
    b = train(spec, data, config.seeds[1], config)
    res.seconds["train"] = time.perf_counter() - t0
    say(f"{arch}: trained two networks in {res.seconds['train']:.1f} s")
    t0 = time.perf_counter()
    wm = weight_matching(a, b, seed=0)
    res.seconds["align"] = time.perf_counter() - t0
    b_aligned = wm.aligned
    with torch.no_grad():
        same = float((b(data[2]) - b_aligned(data[2])).abs().max())
    res.alignment = {**wm.as_dict(), "max_output_change_on_test": same}
    res.alignment.pop("factors")
    say(
        f"{arch}: aligned in {res.seconds['align']:.1f} s (objective {wm.objective_before:.4g} -> "
        f"{wm.objective_after:.4g}); the aligned network's outputs differ by {same:.2g}"
    )
    variants = ["bn_recomputed", "bn_interpolated"] if _has_batchnorm(a) else ["plain"]
    t0 = time.perf_counter()
    for name, other in (("naive", b), ("aligned", b_aligned)):
        for v in variants:
            curve = interpolation_curve(a, other, data, config.points, recompute_bn=v == "bn_recomputed")
            res.curves[f"{name}/{v}"] = curve
            res.barriers[f"{name}/{v}"] = {
                "test_loss": barrier(curve["t"], curve["test_loss"]),
                "train_loss": barrier(curve["t"], curve["train_loss"]),
                "min_test_acc": min(curve["test_acc"]),
            }
    res.seconds["curves"] = time.perf_counter() - t0
    plain = res.curves[f"naive/{variants[0]}"]
    res.endpoint_acc = {"a": plain["test_acc"][0], "b": plain["test_acc"][-1]}
    return res


def plot_lmc(res: LMCResult, path: str | Path) -> None:
    """One PNG: test loss and test accuracy along both paths (BatchNorm nets: recomputed solid, interpolated
    statistics dashed). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..cli_util import atomic_open

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    colors = {"naive": "tab:red", "aligned": "tab:blue"}
    for key, curve in res.curves.items():
        name, variant = key.split("/")
        style = "--" if variant == "bn_interpolated" else "-"
        what = {"plain": "", "bn_recomputed": ", BN stats recomputed", "bn_interpolated": ", BN stats interpolated"}
        label = f"{name}{what[variant]} (barrier {res.barriers[key]['test_loss']:.3f})"
        axes[0].plot(curve["t"], curve["test_loss"], style, color=colors[name], label=label)
        axes[1].plot(curve["t"], curve["test_acc"], style, color=colors[name])
    axes[0].set_ylabel("test loss")
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xlabel("t  (θ = (1 - t) θ_A + t θ_B)")
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Linear mode connectivity on digits: {res.arch} ({res.spec})", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_lmc(res: LMCResult, out_dir: str | Path) -> dict[str, str]:
    """``lmc_<arch>.json`` and ``lmc_<arch>.png`` in ``out_dir`` (created if missing); returns the paths."""
    from ..cli_util import atomic_write

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SymgraphError(f"--out: Expected a directory for the demo's files (got the file {str(out)!r})")
    out.mkdir(parents=True, exist_ok=True)
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in res.arch)
    png, js = out / f"lmc_{name}.png", out / f"lmc_{name}.json"
    plot_lmc(res, png)
    atomic_write(js, json.dumps(res.as_dict(), indent=1))
    return {"png": str(png), "json": str(js)}
