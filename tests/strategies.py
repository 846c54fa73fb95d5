"""Hypothesis strategies that draw whole architectures, and helpers to build and compare them.

Each strategy draws ``(name, kwargs)`` for :func:`symgraph.models.build_model` (small sizes, 4x4 or 8x8 inputs,
so that a drawn model builds and runs in milliseconds). Other test modules import these:

>>> from tests.strategies import architectures, build_arch
>>> # @given(architectures())
>>> # def test_something(arch): model = build_arch(*arch)
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from symgraph.models import build_model

__all__ = [
    "mlp_archs",
    "cnn_archs",
    "resnet_archs",
    "transformer_archs",
    "vit_archs",
    "deepsets_archs",
    "grid_archs",
    "branch_archs",
    "BranchNet",
    "BRANCH_OPS",
    "architectures",
    "build_arch",
    "example_batch",
    "randomize_buffers",
    "permuted_model",
    "max_output_diff",
]

NORMS = ("batchnorm", "groupnorm", "layernorm", "instancenorm", "none")
IMPLS = ("manual", "sdpa", "packed", "mha")


@st.composite
def mlp_archs(draw):
    hidden = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    return "mlp", {
        "in_shape": (1, 2, 2),
        "hidden": hidden,
        "out_dim": draw(st.integers(1, 3)),
        "activation": draw(st.sampled_from(["relu", "tanh", "gelu"])),
    }


@st.composite
def cnn_archs(draw, dims: int | None = None):
    dims = dims or draw(st.sampled_from([1, 2]))
    return (
        f"cnn{dims}d",
        {
            "in_shape": (draw(st.integers(1, 2)), 4, 4),
            "hidden": draw(st.integers(1, 6)),
            "conv_layers": draw(st.integers(1, 3)),
            "linear_layers": draw(st.integers(1, 2)),
            "norm": draw(st.sampled_from(NORMS)),
            "kernel": draw(st.sampled_from([1, 3] if dims == 2 else [3, 5])),
            "groups": draw(st.integers(1, 3)),
            "out_dim": draw(st.integers(1, 3)),
        },
    )


@st.composite
def resnet_archs(draw):
    stages = draw(st.integers(1, 2))
    blocks = tuple(draw(st.lists(st.integers(1, 2), min_size=stages, max_size=stages)))
    return "resnet", {
        "in_shape": (1, 4, 4),
        "hidden": draw(st.integers(1, 4)),
        "blocks": blocks,
        "block": draw(st.sampled_from(["basic", "bottleneck"])),
        "norm": draw(st.sampled_from(["batchnorm", "groupnorm", "none"])),
        "out_dim": 2,
    }


@st.composite
def transformer_archs(draw):
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 3))
    layer = draw(st.sampled_from(["prenorm", "torch"]))
    return "transformer", {
        "seq_len": draw(st.integers(1, 4)),
        "in_dim": draw(st.integers(1, 3)),
        "dim": heads * head_dim,
        "depth": draw(st.integers(1, 2)),
        "heads": heads,
        "mlp_dim": draw(st.integers(1, 5)),
        "out_dim": 2,
        "layer": layer,
        "impl": draw(st.sampled_from(IMPLS)),
        "norm_first": draw(st.booleans()),
        "image_input": False,
    }


@st.composite
def vit_archs(draw):
    heads = draw(st.integers(1, 3))
    return "vit", {
        "in_shape": (1, 4, 4),
        "patch": draw(st.sampled_from([2, 4])),
        "dim": heads * draw(st.integers(1, 3)),
        "depth": draw(st.integers(1, 2)),
        "heads": heads,
        "mlp_dim": draw(st.integers(1, 4)),
        "out_dim": 2,
        "impl": draw(st.sampled_from(IMPLS)),
        "pool": draw(st.sampled_from(["cls", "mean"])),
    }


@st.composite
def deepsets_archs(draw):
    return "deepsets", {
        "in_shape": (1, 2, 2),
        "hidden": draw(st.integers(1, 6)),
        "layers": draw(st.integers(1, 3)),
        "linear_layers": draw(st.integers(1, 2)),
        "out_dim": 2,
        "norm": draw(st.sampled_from(["batchnorm", "groupnorm", "layernorm", "none"])),
        "pool": draw(st.sampled_from(["mean", "sum", "max"])),
    }


@st.composite
def grid_archs(draw):
    return "grid_inr", {
        "features": draw(st.integers(1, 3)),
        "resolution": (draw(st.integers(2, 3)), draw(st.integers(2, 3))),
        "hidden": tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))),
    }


# ---------------------------------------------------------------------------------------------- two branches
#: op name -> (op on a (B, C, s, s) value and its size s, whether it keeps the shape). Each is parameter-free
#: and applied on one branch only, as GoogLeNet's branch 4 (max-pool, then a 1x1 conv of the block input).
BRANCH_OPS = {
    "maxpool": (lambda x, s: F.max_pool2d(x, 3, stride=1, padding=1), True),
    "maxpool_ceil": (lambda x, s: F.max_pool2d(x, 2, stride=2, ceil_mode=True), False),
    "avgpool": (lambda x, s: F.avg_pool2d(x, 3, stride=1, padding=1), True),
    "adaptive_max": (lambda x, s: F.adaptive_max_pool2d(x, 2), False),
    "upsample": (lambda x, s: F.interpolate(x, scale_factor=2, mode="bilinear")[:, :, :s, :s], True),
    "upsample_nearest": (lambda x, s: F.interpolate(x, scale_factor=2)[:, :, 1:, 1:], False),
    "pad": (lambda x, s: F.pad(x, (1, 0, 1, 0))[:, :, :s, :s], True),
    "reflect_pad": (lambda x, s: F.pad(x, (1, 1, 1, 1), mode="reflect"), False),
    "scale": (lambda x, s: x * 3.0, True),
    "roll": (lambda x, s: torch.roll(x, 1, dims=3), True),
    "flip": (lambda x, s: x.flip(2), True),
    "transpose": (lambda x, s: x.transpose(2, 3), True),
    "regrid": (lambda x, s: x.reshape(x.shape[0], x.shape[1], s // 2, s * 2), False),
    "slice": (lambda x, s: x[:, :, 1:, :], False),
    "mean_broadcast": (lambda x, s: x.mean((2, 3), keepdim=True), False),
}


class BranchNet(nn.Module):
    """A GoogLeNet/Inception-style block: ``stem -> [branch 1: 1x1 conv | branch 2: op, 1x1 conv] -> combine``.

    Stem: 3x3 conv + BatchNorm + ReLU (or none: the branches read the input). Each branch conv (1x1, or
    ``kernel`` x ``kernel``) has no bias
    and is followed by BatchNorm and ReLU, as torchvision's ``BasicConv2d``, so only the op tells the two
    branches apart. ``combine``: ``"cat"`` (channels; then a 3x3 conv head), ``"add"`` (a residual sum;
    3x3 conv head) or ``"mean"`` (each branch's mean over positions, concatenated: for ops that change the
    shape). Then the mean over positions and a linear layer.
    """

    def __init__(
        self,
        op: str = "maxpool",
        combine: str = "cat",
        in_ch: int = 1,
        size: int = 4,
        stem: int = 3,
        width: int = 2,
        out_dim: int = 2,
        stem_bias: bool = False,
        kernel: int = 1,
    ):
        super().__init__()
        self.op_name, self.combine, self.size = op, combine, size
        self.op, keeps = BRANCH_OPS[op]
        if not keeps and combine != "mean" and not (op == "mean_broadcast" and combine == "add"):
            raise ValueError(f"op {op!r} changes the shape: combine with 'mean'")
        c = stem or in_ch
        self.stem = (
            nn.Sequential(nn.Conv2d(in_ch, stem, 3, padding=1, bias=stem_bias), nn.BatchNorm2d(stem), nn.ReLU())
            if stem
            else nn.Identity()
        )
        k, p = kernel, kernel // 2
        self.b1 = nn.Sequential(nn.Conv2d(c, width, k, padding=p, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(c, width, k, padding=p, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        mid = 2 * width if combine == "cat" else width
        self.head = (
            nn.Sequential(nn.Conv2d(mid, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            if combine != "mean"
            else nn.Identity()
        )
        self.fc = nn.Linear(2 * width if combine == "mean" else width, out_dim)
        self.example_input_shape = (1, in_ch, size, size)

    def forward(self, x):
        x = self.stem(x)
        a, b = self.b1(x), self.b2(self.op(x, self.size))
        if self.combine == "mean":
            return self.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))
        y = torch.cat([a, b], 1) if self.combine == "cat" else a + b
        return self.fc(self.head(y).mean((2, 3)))


@st.composite
def branch_archs(draw):
    stem = draw(st.sampled_from([0, 2, 3]))
    # a constant scale of the raw input is encoded on the last axis (an elementwise op on input nodes), which a
    # conv cannot read: scaling needs a stem
    op = draw(st.sampled_from(sorted(o for o in BRANCH_OPS if stem or o != "scale")))
    keeps = BRANCH_OPS[op][1]
    if keeps:
        combine = draw(st.sampled_from(["cat", "add", "mean"]))
    else:
        combine = draw(st.sampled_from(["mean", "add"])) if op == "mean_broadcast" else "mean"
    return "branch", {
        "op": op,
        "combine": combine,
        "in_ch": draw(st.integers(1, 2)),
        "stem": stem,
        "width": draw(st.integers(1, 3)),
        "out_dim": draw(st.integers(1, 2)),
        "kernel": draw(st.sampled_from([1, 3])),
    }


def architectures():
    """Any of the families above."""
    return st.one_of(
        mlp_archs(),
        cnn_archs(),
        resnet_archs(),
        transformer_archs(),
        vit_archs(),
        deepsets_archs(),
        grid_archs(),
        branch_archs(),
    )


# ---------------------------------------------------------------------------------------------- helpers
def randomize_buffers(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give norm layers non-trivial affine parameters and running statistics (so that permuting them matters)."""
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm) and t is not None:
                    t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator, dtype=torch.float64) + 0.5)
    return model


def perturbed_double(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """``model`` in float64 with seeded noise of size ``scale`` added to every parameter (so that no two units
    are equal by accident)."""
    torch.manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def build_arch(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """Build a drawn architecture in float64 with seeded weights and non-trivial norm buffers."""
    torch.manual_seed(seed)
    model = (BranchNet(**kwargs) if name == "branch" else build_model(name, **kwargs)).double()
    return randomize_buffers(model, torch.Generator().manual_seed(seed))


def example_batch(model: nn.Module, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """A random float64 batch of the model's example input shape (token ids for embedding models)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *tuple(model.example_input_shape)[1:])
    if getattr(model, "example_input_dtype", None) == torch.long:
        vocab = next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings
        return torch.randint(0, vocab, shape, generator=gen)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def permuted_model(model: nn.Module, state: dict) -> nn.Module:
    """A deep copy of ``model`` with ``state`` loaded (parameters and buffers)."""
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out


def max_output_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool) -> tuple[float, float]:
    """(max |a(x) - b(x)|, max |a(x)|) in train or eval mode, on deep copies (train mode updates buffers)."""
    a, b = copy.deepcopy(a).train(train), copy.deepcopy(b).train(train)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max()), float(ya.abs().max())
