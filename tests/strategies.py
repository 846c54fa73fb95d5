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


def architectures():
    """Any of the families above."""
    return st.one_of(
        mlp_archs(), cnn_archs(), resnet_archs(), transformer_archs(), vit_archs(), deepsets_archs(), grid_archs()
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


def build_arch(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """Build a drawn architecture in float64 with seeded weights and non-trivial norm buffers."""
    torch.manual_seed(seed)
    model = build_model(name, **kwargs).double()
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
