"""timm's vision transformers with attention of their own: LeViT (per-head attention biases gathered from a table,
q/k/v side by side in each head, subsample attention, BatchNorm on linear layers).

Each encoding: random elements of the computed group keep the function (float64, eval and train), nauty's order
equals the declared (analytic) one, the state_dict round trip is bit-identical, and a negative control (the new
structure not encoded) is caught by the function check. The plain-torch modules below mirror timm's code, so
that the default suite checks the encoders without timm; the ``models`` tests build timm's own small variants.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.encoders import attention, levit
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double, randomize_buffers

F64 = torch.float64


def _prep(model, seed=0):
    return randomize_buffers(perturbed_double(model, seed), torch.Generator().manual_seed(seed))


def _worst(model, aut, x, n=4):
    gen = torch.Generator().manual_seed(0)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(n)
    )


def _check(model, x, expected=None):
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    if expected is not None:
        assert aut.order == expected
    with torch.no_grad():  # deep random models reach large outputs: compare relative to their size
        scale = max(1.0, float(model.eval()(x).abs().max()))
    assert _worst(model, aut, x) < 1e-10 * scale  # check_function_preservation compares in train and eval mode
    sd = aut.graph.to_state_dict()
    ref = model.state_dict()
    assert {k for k, _ in model.named_parameters()} <= set(sd)
    assert all(torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype for k in sd)
    return aut


# ---------------------------------------------------------------------------------------------- LeViT
class LinearNorm(nn.Module):
    """timm's ``levit.LinearNorm``: a linear layer without bias, then BatchNorm1d over the tokens."""

    def __init__(self, i, o):
        super().__init__()
        self.linear, self.bn = nn.Linear(i, o, bias=False), nn.BatchNorm1d(o)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def bias_idxs(res: int, stride: int = 1) -> torch.Tensor:
    """timm's relative offsets |dq - dk| of each (query, key) pair, flattened to one table column per offset."""
    k = torch.stack(torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")).flatten(1)
    q = torch.stack(torch.meshgrid(torch.arange(0, res, stride), torch.arange(0, res, stride), indexing="ij"))
    rel = (q.flatten(1)[..., :, None] - k[..., None, :]).abs()
    return rel[0] * res + rel[1]


class LevitAttention(nn.Module):
    """timm's ``levit.Attention`` (stride 1) and ``AttentionDownsample`` (stride 2: queries at every other token)."""

    def __init__(self, dim, out, kd, vd, heads, res, stride=1):
        super().__init__()
        self.h, self.kd, self.vd, self.res, self.stride = heads, kd, vd, res, stride
        if stride == 1:
            self.qkv = LinearNorm(dim, heads * (2 * kd + vd))
        else:
            self.kv, self.q = LinearNorm(dim, heads * (kd + vd)), LinearNorm(dim, heads * kd)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(heads * vd, out))
        self.attention_biases = nn.Parameter(torch.zeros(heads, res * res))
        self.register_buffer("attention_bias_idxs", bias_idxs(res, stride), persistent=False)

    def forward(self, x):
        B, N, C = x.shape
        if self.stride == 1:
            q, k, v = self.qkv(x).view(B, N, self.h, -1).split([self.kd, self.kd, self.vd], dim=3)
        else:
            k, v = self.kv(x).view(B, N, self.h, -1).split([self.kd, self.vd], dim=3)
            s = x.view(B, self.res, self.res, C)[:, :: self.stride, :: self.stride].reshape(B, -1, C)
            q = self.q(s).view(B, -1, self.h, self.kd)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = q @ k * self.kd**-0.5 + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, -1, self.h * self.vd)
        return self.proj(x)


class TinyLevit(nn.Module):
    """Tokens -> attention block (residual) -> subsample attention -> MLP block (residual) -> mean -> head."""

    def __init__(self, cin=3, dim=4, dim2=6, res=4, heads=2):
        super().__init__()
        self.embed = nn.Linear(cin, dim)
        self.attn = LevitAttention(dim, dim, 2, 3, heads, res)
        self.down = LevitAttention(dim, dim2, 2, 2, heads, res, stride=2)
        self.mlp = nn.Sequential(LinearNorm(dim2, 2 * dim2), nn.Hardswish(), LinearNorm(2 * dim2, dim2))
        self.head = nn.Linear(dim2, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        x = self.down(x)
        x = x + self.mlp(x)
        return self.head(x.mean(1))


def _levit_attention_order(heads, kd, vd):
    return math.factorial(heads) * (math.factorial(kd) * math.factorial(vd)) ** heads


def test_levit_attention_with_gathered_biases_order_and_function():
    model = _prep(LevitAttention(3, 3, 2, 3, 3, 3))
    x = torch.randn(4, 9, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    _check(model, x, _levit_attention_order(3, 2, 3))


def test_levit_subsample_attention_order_and_function():
    model = _prep(LevitAttention(3, 3, 2, 2, 2, 4, stride=2))
    x = torch.randn(4, 16, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    _check(model, x, _levit_attention_order(2, 2, 2))


def test_tiny_levit_random_automorphisms_keep_the_function():
    model = _prep(TinyLevit())
    x = torch.randn(4, 16, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    _check(model, x)


def test_the_bias_table_is_one_edge_per_entry_from_fixed_offsets_to_per_head_features():
    model = _prep(LevitAttention(3, 3, 2, 3, 3, 3))
    g = symgraph.parameter_graph(model, input_shape=(1, 9, 3))
    slot = next(s for s in g.slots if s.name == "attention_biases")
    table = model.attention_biases
    ids = torch.arange(slot.start, slot.start + table.numel())
    src, dst = g.edge_index[:, ids]
    assert torch.equal(g.edge_weight[ids], table.detach().reshape(-1))
    assert bool(g.fixed_mask[src].all()) and src.unique().numel() == table.shape[1]  # one offset per column
    assert dst.unique().numel() == table.shape[0]  # one feature per head


def test_negative_control_biases_not_joined_to_the_heads_are_caught(monkeypatch):
    """The attention encoder ignores the gathered per-head bias: heads then move without their bias rows."""
    real = attention._attend
    monkeypatch.setattr(attention, "_attend", lambda ctx, op, *a, bias=(), **kw: real(ctx, op, *a, **kw))
    model = _prep(LevitAttention(3, 3, 2, 3, 3, 3))
    x = torch.randn(4, 9, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == _levit_attention_order(3, 2, 3) * math.factorial(3)
    assert _worst(model, aut, x, n=6) > 1e-6


def test_negative_control_movable_offsets_are_caught(monkeypatch):
    """Offsets as hidden nodes: the table's columns (relative offsets) may then be permuted."""

    def movable(ctx, where, x, gathered, digest):
        b = ctx.builder
        R, D = x.tensor.shape[gathered], x.tensor.shape[1 - gathered]
        offsets = b.add_nodes(R, "hidden", "position", f"{x.name} offsets", level=0)
        out = ctx.new_hidden(D, "embedding", f"{where} gathered", offsets)
        b.add_edges(
            offsets.view(1, R).expand(D, R).reshape(-1),
            out.view(D, 1).expand(D, R).reshape(-1),
            b.edge_color(("embedding", "gather", digest, gathered)),
            x.stored,
            x.name,
        )
        b.declare(symgraph.builder.SymmetryDecl("perm", out, "features"))
        b.declare(symgraph.builder.SymmetryDecl("perm", offsets, "offsets"))
        return out

    monkeypatch.setattr(levit, "gather_edges", movable)
    model = _prep(LevitAttention(3, 3, 2, 3, 3, 3))
    x = torch.randn(4, 9, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order > _levit_attention_order(3, 2, 3)
    assert _worst(model, aut, x, n=6) > 1e-6


def test_indexing_a_table_other_than_one_constant_index_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return x + self.t[:2, 1:].sum()

    with pytest.raises(UnsupportedModuleError, match="2-D table read at one constant integer index"):
        symgraph.parameter_graph(Bad(), input_shape=(1, 3))


# ---------------------------------------------------------------------------------------------- timm models
def _timm(name, **kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return _prep(timm.create_model(name, pretrained=False, **kw))


@pytest.mark.models
@pytest.mark.slow
def test_timm_levit_128s_small_image_keeps_the_function():
    model = _timm("levit_128s", img_size=128)
    x = torch.randn(2, 3, 128, 128, dtype=F64, generator=torch.Generator().manual_seed(1))
    _check(model, x)
