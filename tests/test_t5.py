"""Hugging Face's T5 encoder: a relative position bias shared by the heads of every layer (issue 20).

T5's layer-0 attention owns ``relative_attention_bias = nn.Embedding(num_buckets, H)``; the bias
``B[bucket(j - i), h]`` (integer buckets of the positions only, no parameters) is added to the unscaled scores of
head ``h``, and the same ``position_bias`` tensor is reused by every later layer (in transformers 5 it reaches
``scaled_dot_product_attention`` as the additive ``attn_mask``, after a ``where`` with the all-ones default
padding mask that the export front end folds away).

Graph: the embedding of constant buckets is one fixed ``position`` node per bucket with an edge ``B[r, h]`` to the
bias feature ``h`` (``symgraph.encoders.embedding``); the attention encoder joins bias feature ``h`` to head
``h``'s node in *each* layer that reads it (a parameter-free ``rel_bias`` edge), so that a head moves only with
its bias column, jointly in all layers.

Analytic order of the coverage configuration (d_model 32, d_ff 64, d_kv 8, 2 layers, 4 heads, 100 tokens, 32
buckets): the vocabulary rows are inputs and ``last_hidden_state`` is the output, so the residual stream (the
embedding features, every RMSNorm weight, the ``o`` and ``wo`` output units, tied by the residual sums) is
fixed, and so are the bucket rows. What moves:

- per layer, the 64 ReLU units of ``wi``/``wo``: ``(64!)^2``;
- per layer and head, the q and k dimensions jointly (the scores only see ``q_h . k_h``; T5 does not scale)
  and the v dimensions: ``(8!)^(2 * 4 * 2) = (8!)^16``;
- the heads: one ``S_4`` for both layers *and* the table's columns (``4!``), not ``(4!)^2``: head ``h`` of layer
  1 reads bias column ``h`` too, so permuting the heads of one layer alone changes the function.

``|Aut| = 4! * (8!)^16 * (64!)^2`` (log10 = 253.275). Negative controls: without the bias edges, or without
them in layer 1 only, nauty finds the per-layer head permutations, and the function checker sees them change
the output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.encoders import attention
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

F64 = torch.float64
CONFIG = dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=100)  # symgraph.coverage's row
H, DKV, DFF, LAYERS, BUCKETS = 4, 8, 64, 2, 32
ORDER = math.factorial(H) * math.factorial(DKV) ** (2 * H * LAYERS) * math.factorial(DFF) ** LAYERS


def _t5(seed: int = 0) -> nn.Module:
    from symgraph.arch import quiet_transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = transformers.T5EncoderModel(transformers.T5Config(**CONFIG))
    return perturbed_double(model, seed).eval()


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def t5():
    model = _t5()
    aut = symgraph.automorphism_group(model, example_input=_ids(1, 7))
    return model, aut


def _nodes(g, name: str) -> torch.Tensor:
    grp = next(n for n in g.node_groups if n.name == name)
    return torch.arange(grp.start, grp.start + grp.count)


def _worst(model, aut, x, n=4, modes=("eval",)) -> float:
    gen = torch.Generator().manual_seed(0)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, modes=modes, graph=aut)
        for _ in range(n)
    )


def test_the_bias_table_is_one_fixed_position_node_per_bucket_joined_to_the_heads_of_every_layer(t5):
    model, aut = t5
    g = aut.graph
    name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    table = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    slot = next(s for s in g.slots if s.name == name)
    ids = torch.arange(slot.start, slot.start + table.numel())
    src, dst = g.edge_index[:, ids]
    assert torch.equal(g.edge_weight[ids], table.detach().reshape(-1))  # entry [r, h]: bucket r -> feature h
    assert src.unique().numel() == BUCKETS and bool(g.role_mask("position")[src].all())
    assert dst.unique().numel() == H and not bool(g.fixed_mask[dst].any())
    # each bias feature has one rel_bias edge to head h of each layer, and nothing else reads it
    out = torch.isin(g.edge_index[0], dst.unique())
    heads = g.edge_index[1, out]
    assert heads.numel() == H * LAYERS and bool(g.role_mask("head")[heads].all())
    keys = {g.edge_color_keys[int(c)] for c in g.edge_color[out]}
    assert len(keys) == 1 and "rel_bias" in str(next(iter(keys)))


def test_order_is_the_analytic_one_heads_permute_jointly_in_all_layers(t5):
    model, aut = t5
    assert aut.order == ORDER == analytic_order(aut.graph)
    assert abs(aut.log10_order - 253.2754) < 1e-3


def test_random_automorphisms_keep_the_function_in_float64(t5):
    model, aut = t5
    assert _worst(model, aut, _ids(3, 7), modes=("eval", "train")) < 1e-10
    # another length than the graph was built at: every bucket row is a fixed node, read or not
    assert _worst(model, aut, _ids(3, 11), n=2) < 1e-10


def test_to_state_dict_round_trip_is_bit_identical(t5):
    model, aut = t5
    sd = aut.graph.to_state_dict()
    ref = model.state_dict()
    assert set(sd) == set(ref)  # shared.weight (tied to encoder.embed_tokens.weight) included
    assert all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in ref.items())


def _drop_bias(monkeypatch, only: str | None = None):
    """Negative control: the attention encoder ignores the per-head bias (in the SDPA op ``only``, or in all)."""
    real = attention._attend

    def broken(ctx, op, *args, bias=(), **kw):
        return real(ctx, op, *args, bias=() if only in (None, op.name) else bias, **kw)

    monkeypatch.setattr(attention, "_attend", broken)


def test_negative_control_bias_not_joined_to_the_heads_is_caught(monkeypatch):
    _drop_bias(monkeypatch)
    model = _t5()
    aut = symgraph.automorphism_group(model, example_input=_ids(1, 7))
    # each layer's heads and the table's columns now move on their own: (4!)^3 instead of 4!
    assert aut.order == ORDER * math.factorial(H) ** 2
    assert _worst(model, aut, _ids(3, 7), n=6) > 1e-6


def _swap_heads(g, sdpa: str, block: int, a: int = 0, b: int = 1) -> torch.Tensor:
    """Swap heads ``a`` and ``b`` of one layer: its q, k, v outputs, q.k nodes and head nodes."""
    perm = torch.arange(g.num_nodes)
    path = f"encoder.block.{block}.layer.0.SelfAttention"
    for name, d in ((f"{path}.q outputs", DKV), (f"{path}.k outputs", DKV), (f"{path}.v outputs", DKV)):
        n = _nodes(g, name).view(H, d)
        perm[n[a]], perm[n[b]] = n[b], n[a]
    qk = _nodes(g, f"{sdpa} q.k nodes").view(H, DKV)
    perm[qk[a]], perm[qk[b]] = qk[b], qk[a]
    hd = _nodes(g, f"{sdpa} heads")
    perm[hd[a]], perm[hd[b]] = hd[b], hd[a]
    return perm


def test_negative_control_heads_of_layer_1_permuted_alone_are_caught(monkeypatch, t5):
    model, aut = t5
    x = _ids(3, 7)
    perm = _swap_heads(aut.graph, "scaled_dot_product_attention_1", 1)
    assert not aut.graph.is_automorphism(perm)  # the rel_bias edges of layer 1 forbid it
    _drop_bias(monkeypatch, only="scaled_dot_product_attention_1")
    broken = symgraph.parameter_graph(model, example_input=x[:1])
    assert broken.is_automorphism(perm)  # without them it is an automorphism, and it changes the function
    assert symgraph.check_function_preservation(model, perm, x, modes=("eval",), graph=broken) > 1e-6
    assert symgraph.automorphism_group(broken).order == ORDER * math.factorial(H)


def test_the_same_head_swap_in_both_layers_and_the_table_keeps_the_function(t5):
    model, aut = t5
    g = aut.graph
    perm = _swap_heads(g, "scaled_dot_product_attention", 0)
    perm = perm[_swap_heads(g, "scaled_dot_product_attention_1", 1)]
    bias = _nodes(g, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias features")
    perm[bias[0]], perm[bias[1]] = bias[1], bias[0]
    assert g.is_automorphism(perm)
    assert symgraph.check_function_preservation(model, perm, _ids(3, 7), modes=("eval",), graph=g) < 1e-10


class _Padded(nn.Module):
    """T5 with a constant padding mask that masks the last two tokens: not encoded (refused, never unsound)."""

    def __init__(self, t5):
        super().__init__()
        self.t5 = t5
        self.register_buffer("mask", torch.tensor([[1, 1, 1, 1, 1, 0, 0]]), persistent=False)

    def forward(self, ids):
        return self.t5(ids, attention_mask=self.mask).last_hidden_state


class _Ones(_Padded):
    """An explicit all-ones attention mask: masks nothing, folded like the default."""

    def forward(self, ids):
        return self.t5(ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_attention_mask_of_ones_is_folded_and_a_padding_mask_is_refused(t5):
    model, aut = t5
    assert symgraph.automorphism_group(_Ones(model).eval(), example_input=_ids(1, 7)).order == ORDER
    with pytest.raises(UnsupportedModuleError, match="aten.where"):
        symgraph.parameter_graph(_Padded(model).eval(), example_input=_ids(1, 7))


# ------------------------------------------------------------------ the same bias in hand-written attention (fx)
class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x, bias):
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, D // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = q @ k.transpose(-2, -1) + bias  # T5: no scaling
        return self.o((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D))


class TinyT5(nn.Module):
    """Two attention layers sharing one relative position bias ``[H, T, T]`` read at constant buckets."""

    def __init__(self, dim=4, heads=2, buckets=3, tokens=5, length=4, layers=2):
        super().__init__()
        self.embed, self.rel = nn.Embedding(tokens, dim), nn.Embedding(buckets, heads)
        self.layers = nn.ModuleList(_Attention(dim, heads) for _ in range(layers))
        pos = torch.arange(length)
        self.register_buffer("buckets", (pos[None] - pos[:, None]).clamp(-1, 1) + 1, persistent=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, ids):
        x = self.embed(ids)
        bias = self.rel(self.buckets).permute(2, 0, 1)
        for layer in self.layers:
            x = x + layer(x, bias)
        return self.head(x)


def test_hand_written_shared_bias_scores_plus_bias_order_and_function():
    model = perturbed_double(TinyT5())
    x = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(0))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    # the stream (4 embedding features, tied through the residual sums) S_4; one S_2 for the heads of both
    # layers and the table's columns; per layer and head S_2 on the q/k dims and S_2 on the v dims
    assert aut.order == analytic_order(aut.graph) == math.factorial(4) * 2 * 2 ** (2 * 2 * 2)
    assert _worst(model, aut, x, modes=("eval", "train")) < 1e-10


class _SameForAllHeads(TinyT5):
    """A learned [T, T] bias added to the scores of every head: not one feature per head."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 4))

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(x + self.layers[0](x, self.table))


class _Subtracted(_Attention):
    def forward(self, x, bias):
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, D // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = q @ k.transpose(-2, -1) - bias
        return self.o((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D))


def test_scores_plus_a_tensor_that_is_not_a_per_head_bias_is_refused():
    with pytest.raises(UnsupportedModuleError, match="not encoded"):
        symgraph.parameter_graph(_SameForAllHeads(), example_input=torch.zeros(1, 4, dtype=torch.long))
    model = TinyT5()
    model.layers[0] = _Subtracted(4, 2)
    with pytest.raises(UnsupportedModuleError, match="subtracting a tensor"):
        symgraph.parameter_graph(model, example_input=torch.zeros(1, 4, dtype=torch.long))
