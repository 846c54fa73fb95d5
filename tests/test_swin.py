"""Swin window attention with a relative position bias, and patch merging: random elements of the computed group
keep the function (float64, eval and train), nauty's order equals the declared one and an exact count, negative
controls (a bias table not tied to its heads, offsets that may move) are caught; values no encoder handles raise
``UnsupportedModuleError`` (never a raw ``TypeError``).

The plain-torch modules below are written here and carry torchvision's class names, so that the default suite
checks the encoders without torchvision; the ``models`` tests run torchvision's own Swin."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.encoders import swin
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double, randomize_buffers

F64 = torch.float64
TV = "torchvision.models.swin_transformer"


def relative_index(wh: int, ww: int) -> torch.Tensor:
    """Row of the bias table for each (query, key) token pair of a wh x ww window, flattened [N * N]."""
    a, b = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    return ((a[:, None] - a[None, :] + wh - 1) * (2 * ww - 1) + (b[:, None] - b[None, :] + ww - 1)).reshape(-1)


def _regions(n: int, w: int, s: int) -> torch.Tensor:
    lab = torch.zeros(n, dtype=torch.long)
    lab[n - w : n - s] = 1
    lab[n - s :] = 2
    return lab


class ShiftedWindowAttention(nn.Module):
    """Window attention over [B, H, W, C]: pad to whole windows, cyclic shift, heads with a relative position
    bias and (when shifted) a mask between regions that the shift brought together, projection, shift back."""

    def __init__(self, dim, window_size, shift_size, num_heads, qkv_bias=True):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = list(window_size), list(shift_size), num_heads
        self.attention_dropout = self.dropout = 0.0
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(0.5 * torch.randn((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_index(wh, ww))

    def forward(self, x):
        B, H, W, C = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        x = F.pad(x, (0, 0, 0, (-W) % ww, 0, (-H) % wh))
        Hp, Wp = x.shape[1:3]
        sh = self.shift_size[0] if wh < Hp else 0
        sw = self.shift_size[1] if ww < Wp else 0
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        nh, nw, N, d = Hp // wh, Wp // ww, wh * ww, C // heads
        t = x.view(B, nh, wh, nw, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nh * nw, N, C)
        q, k, v = self.qkv(t).view(-1, N, 3, heads, d).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index].view(N, N, heads).permute(2, 0, 1)
        s = (q * d**-0.5) @ k.transpose(-2, -1) + bias
        if sh or sw:
            region = _regions(Hp, wh, sh)[:, None] * 3 + _regions(Wp, ww, sw)[None, :]
            rw = region.view(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(nh * nw, N)
            mask = (rw[:, :, None] != rw[:, None, :]).to(s.dtype) * -100.0
            s = (s.view(B, nh * nw, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N)
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(-1, N, C)
        o = self.proj(o).view(B, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if sh or sw:
            o = torch.roll(o, (sh, sw), (1, 2))
        return o[:, :H, :W]


class PatchMerging(nn.Module):
    """Pad H and W to even sizes, concatenate the 2x2 sub-grids on the channels, LayerNorm, reduce to 2C."""

    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        H, W = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[..., i::2, j::2, :] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))], -1)
        return self.reduction(self.norm(x))


for _cls in (ShiftedWindowAttention, PatchMerging):  # torchvision's names: the encoders match them by name
    _cls.__module__ = TV


class Block(nn.Module):
    def __init__(self, dim, window, shift, heads, qkv_bias=True):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window, shift, heads, qkv_bias)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    """Patch embedding, a plain and a shifted window block, patch merging, one block, norm, mean, head."""

    def __init__(self, dim=4, heads=2, window=(2, 2), shift=(1, 1), qkv_bias=True, merge=True):
        super().__init__()
        self.embed, self.norm0 = nn.Conv2d(2, dim, 2, 2), nn.LayerNorm(dim)
        blocks = [Block(dim, window, (0, 0), heads, qkv_bias), Block(dim, window, shift, heads, qkv_bias)]
        if merge:
            blocks += [PatchMerging(dim), Block(2 * dim, window, (0, 0), 2 * heads, qkv_bias)]
        self.blocks = nn.Sequential(*blocks)
        out = 2 * dim if merge else dim
        self.norm, self.head = nn.LayerNorm(out), nn.Linear(out, 3)

    def forward(self, x):
        x = self.norm0(self.embed(x).permute(0, 2, 3, 1))
        return self.head(self.norm(self.blocks(x)).mean((1, 2)))


def _prep(model, seed=0):
    return randomize_buffers(perturbed_double(model, seed), torch.Generator().manual_seed(seed))


def _worst(model, aut, x, n=4):
    gen = torch.Generator().manual_seed(0)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(n)
    )


def _attention_order(dim: int, heads: int) -> int:
    d = dim // heads
    return math.factorial(heads) * math.factorial(d) ** (2 * heads)


# (kwargs, input shape, exact order or None). One block, dim 4, 2 heads of 2 dims: heads S_2, q/k and v dims S_2
# each per head; the stream S_4 (embedding, norms, proj outputs tied); the MLP's hidden S_8 per block.
CASES = {
    "no_merge": (
        dict(merge=False),
        (2, 2, 8, 8),
        math.factorial(4) * (_attention_order(4, 2) * math.factorial(8)) ** 2,
    ),
    "merge": (dict(), (2, 2, 8, 8), None),
    "padded_odd_grid": (dict(window=(2, 3), shift=(1, 1)), (2, 2, 10, 14), None),
    "no_qkv_bias_one_head": (dict(heads=1, qkv_bias=False), (2, 2, 8, 8), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_automorphisms_of_swin_keep_the_function_and_the_order_is_analytic(name):
    kw, shape, expected = CASES[name]
    model = _prep(TinySwin(**kw))
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    if expected is not None:
        assert aut.order == expected
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert _worst(model, aut, x) < 1e-10
    sd = aut.graph.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items() if k in sd)
    assert {k for k, p in model.named_parameters()} <= set(sd)


def test_the_bias_table_is_one_edge_per_entry_from_fixed_offsets_to_heads():
    model = _prep(TinySwin(merge=False))
    g = symgraph.parameter_graph(model, input_shape=(1, 2, 8, 8))
    slot = next(s for s in g.slots if s.name == "blocks.0.attn.relative_position_bias_table")
    table = model.blocks[0].attn.relative_position_bias_table
    ids = torch.arange(slot.start, slot.start + table.numel())
    src, dst = g.edge_index[:, ids]
    assert torch.equal(g.edge_weight[ids], table.detach().reshape(-1))
    assert bool(g.fixed_mask[src].all()) and src.unique().numel() == table.shape[0]
    assert dst.unique().numel() == table.shape[1] and bool(g.role_mask("head")[dst].all())


def _untied_bias(ctx, path, table, heads, ws):
    """Negative control: the table on columns of its own, not joined to the heads (free to move alone)."""
    b = ctx.builder
    R, H = table.shape
    offsets = b.add_nodes(R, "position", "position", f"{path} relative offsets", module=path, level=0)
    columns = b.add_nodes(H, "head", "attention", f"{path} bias columns", module=path, level=0)
    b.add_edges(
        offsets.repeat_interleave(H),
        columns.repeat(R),
        b.edge_color(("attention", "rel_bias", ws)),
        table,
        f"{path}.relative_position_bias_table",
    )


def _movable_offsets(ctx, path, table, heads, ws):
    """Negative control: offsets as hidden nodes, so that rows of the table may be permuted."""
    b = ctx.builder
    R, H = table.shape
    offsets = b.add_nodes(R, "hidden", "position", f"{path} relative offsets", module=path, level=0)
    b.add_edges(
        offsets.repeat_interleave(H),
        heads.repeat(R),
        b.edge_color(("attention", "rel_bias", ws)),
        table,
        f"{path}.relative_position_bias_table",
    )


@pytest.mark.parametrize("broken", [_untied_bias, _movable_offsets])
def test_negative_control_a_bias_table_not_tied_to_heads_and_fixed_offsets_is_caught(monkeypatch, broken):
    monkeypatch.setattr(swin, "relative_position_bias_edges", broken)
    model = _prep(TinySwin(merge=False)).eval()
    x = torch.randn(2, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert _worst(model, aut, x, n=6) > 1e-6


def test_negative_control_subgrids_of_patch_merging_with_one_colour_are_caught(monkeypatch):
    # all four sub-grids recorded alike: their nodes become interchangeable and the reduction's columns move
    real = swin.structural_op
    monkeypatch.setattr(swin, "structural_op", lambda name, a, b, ij: real(name, a, b))
    model = _prep(TinySwin()).eval()
    x = torch.randn(2, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert _worst(model, aut, x, n=6) > 1e-6


class ScaledHeads(nn.Module):
    """k * c on split heads (MaxViT's ``k = k * scale_factor``): no encoder handles it yet."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, 2, 2).permute(2, 0, 3, 1, 4)
        k = k * 0.5
        return ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, T, 4)


class LayerOfABuffer(nn.Module):
    """A linear layer applied to a buffer (Swin V2's ``cpb_mlp(relative_coords_table)``)."""

    def __init__(self):
        super().__init__()
        self.mlp, self.out = nn.Linear(2, 3), nn.Linear(3, 2)
        self.register_buffer("coords", torch.randn(5, 2))

    def forward(self, x):
        return self.out(x) + self.mlp(self.coords).sum()


@pytest.mark.parametrize(
    "model,shape,match",
    [(ScaledHeads(), (1, 3, 4), "SplitFeatures"), (LayerOfABuffer(), (1, 3), "buffer 'coords'")],
)
def test_ops_no_encoder_handles_raise_unsupported_module_error(model, shape, match):
    with pytest.raises(UnsupportedModuleError, match=match):
        symgraph.parameter_graph(model, input_shape=shape)


class ShiftedWindowAttentionV2(ShiftedWindowAttention):
    """torchvision's Swin V2 attention name on a V1 module (no ``logit_scale``, no ``cpb_mlp``): refused."""


ShiftedWindowAttentionV2.__module__ = TV


def test_swin_v2_attention_without_logit_scale_and_cpb_mlp_is_refused():
    model = nn.Sequential(ShiftedWindowAttentionV2(4, (2, 2), (0, 0), 2))
    with pytest.raises(UnsupportedModuleError, match="ShiftedWindowAttentionV2.*cpb_mlp"):
        symgraph.parameter_graph(model, input_shape=(1, 4, 4, 4))


# ------------------------------------------------------------------ torchvision's own Swin (models environment)
@pytest.fixture(scope="module")
def tv():
    return pytest.importorskip("torchvision", reason="the models environment (make test-models) has torchvision")


@pytest.mark.models
def test_torchvision_swin_matches_the_plain_torch_window_attention(tv):
    # the test module above computes what torchvision's does, parameter for parameter
    ref = tv.models.swin_transformer.ShiftedWindowAttention(8, [2, 3], [1, 1], 2).double()
    mine = ShiftedWindowAttention(8, (2, 3), (1, 1), 2).double()
    assert torch.equal(mine.relative_position_index, ref.relative_position_index)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 7, 8, dtype=F64)
    assert torch.allclose(ref(x), mine(x), atol=1e-12)


@pytest.mark.models
def test_torchvision_swin_order_is_analytic_and_automorphisms_keep_the_function(tv):
    model = tv.models.swin_transformer.SwinTransformer(
        [4, 4], 8, [2, 2], [2, 4], [2, 2], stochastic_depth_prob=0.0, num_classes=3
    )
    model = _prep(model)
    x = torch.randn(2, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert _worst(model, aut, x, n=2) < 1e-10
