"""Decoder-style transformers (issue 20, items 4 and 5): Hugging Face RMS norms under torch.export, GPT-2's
transposed ``Conv1D`` and tied head, causal attention, grouped-query attention and rotary position embeddings.

Each encoding is checked both ways: *sound* (random elements of nauty's group keep the function, float64, train
and eval mode) and *complete* (nauty's order equals the analytic order the encoders declare, and a formula),
with a negative control each that shows the check can fail.

Hugging Face's RMS norms compute their statistics in float32 even in a float64 model (``x.to(torch.float32)``),
so a permutation of the features would change the result by float32 rounding (~1e-8);
``check_function_preservation`` keeps such casts in float64 (tested below, with the rounding it removes as
the control).
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.automorphisms.tied import sharing_violations, tied_parameters
from symgraph.symmetry import analytic_order, analytic_symmetry

transformers = pytest.importorskip("transformers")

TOL = 1e-10


def _group(model, x):
    """(graph, group) of a float64 model through the torch.export front end."""
    g = symgraph.parameter_graph(model, example_input=x, tracer="export")
    return g, symgraph.automorphism_group(g)


def _max_change(model, aut, g, xs, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), xs, graph=g) for _ in range(n)
    )


def _analytic_elements_are_automorphisms(g, n=3):
    sym, gen = analytic_symmetry(g), torch.Generator().manual_seed(1)
    return all(g.is_automorphism(sym.random_element(gen)) for _ in range(n))


def _out_nodes(g, name, n_in):
    """The output nodes of a linear layer's weight ``name`` (``[out, in]``, flat order), in row order."""
    e = g.edge_param.edges_of(name)
    return g.edge_index[1, e.start : e.stop : n_in]


# ---------------------------------------------------------------------------------------------- RMS norm
class RMSBlock(nn.Module):
    """A pre-norm residual block with Hugging Face's LlamaRMSNorm (its ``x.to(float32)`` is read by the residual)."""

    def __init__(self, D=6):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.inp, self.norm, self.fc, self.out = nn.Linear(3, D), LlamaRMSNorm(D), nn.Linear(D, D), nn.Linear(D, 2)
        with torch.no_grad():
            self.norm.weight.normal_()

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc(torch.relu(self.norm(h)))
        return self.out(h)


def test_hf_rms_norm_is_one_op_under_export_and_its_group_is_the_residual_stream():
    m = RMSBlock().double()
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    g, aut = _group(m, x)
    assert g.meta["tracer"] == "export"
    assert "norm.weight" in g.to_state_dict()
    assert aut.order == analytic_order(g) == math.factorial(6)  # the residual stream (fc's outputs join it)
    assert _max_change(m, aut, g, torch.randn(4, 4, 3, dtype=torch.float64)) < TOL
    # negative control: swapping two stream features without their norm weights changes the function
    perm = torch.arange(g.num_nodes)
    a, b = _out_nodes(g, "inp.weight", 3)[:2].tolist()
    perm[a], perm[b] = b, a
    assert not g.is_automorphism(perm)
    mm = symgraph.permute_model(m, aut.random_element(generator=torch.Generator().manual_seed(0)))
    broken = {k: v.clone() for k, v in mm.state_dict().items()}
    broken["norm.weight"] = broken["norm.weight"].flip(0)
    mm.load_state_dict(broken)
    xs = torch.randn(4, 4, 3, dtype=torch.float64)
    assert (mm(xs) - m(xs)).abs().max() > 1e-3


def test_hf_rms_norm_with_its_own_float32_statistics_is_still_encoded():
    g, aut = _group(RMSBlock().double(), torch.randn(1, 4, 3, dtype=torch.float64))
    assert aut.order == analytic_order(g) == math.factorial(6)


# ---------------------------------------------------------------------------------------------- Conv1D
def _conv1d(nf, nx):
    from transformers.pytorch_utils import Conv1D

    c = Conv1D(nf, nx)
    with torch.no_grad():
        c.bias.normal_()
    return c


class Conv1DNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _conv1d(5, 3), _conv1d(2, 5)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_conv1d_is_a_linear_layer_with_its_weight_stored_in_out(tracer):
    m = Conv1DNet().double()
    x = torch.randn(1, 3, dtype=torch.float64)
    g = symgraph.parameter_graph(m, example_input=x, tracer=tracer)
    sd = g.to_state_dict()
    assert all(torch.equal(sd[k], v) and sd[k].shape == v.shape for k, v in m.state_dict().items())
    # edge (i, o) of a.weight carries W[i, o]: input node i -> output node o
    e = g.edge_param.edges_of("a.weight")
    src, dst = g.edge_index[:, e.start : e.stop]
    inputs = g.input_nodes.tolist()
    outs = torch.unique(dst).tolist()
    i, o = torch.tensor([inputs.index(s) for s in src.tolist()]), torch.tensor([outs.index(d) for d in dst.tolist()])
    assert torch.equal(g.edge_weight[e.start : e.stop], m.a.weight[i, o])
    # negative control: read as an [out, in] weight (nn.Linear's layout), the same edges carry other values
    assert not torch.equal(g.edge_weight[e.start : e.stop].view(3, 5), m.a.weight.t().contiguous().view(3, 5))
    aut = symgraph.automorphism_group(g)
    assert aut.order == analytic_order(g) == math.factorial(5)
    assert _max_change(m, aut, g, torch.randn(4, 3, dtype=torch.float64)) < TOL


# ---------------------------------------------------------------------------------------------- GPT-2 blocks
class MiniGPT(nn.Module):
    """GPT-2's own blocks (``transformers`` GPT2Block: Conv1D projections, causal SDPA, gelu_new) on a token
    embedding whose table is the tied output head; no position embedding (GPT-2's ``wpe`` reads an
    ``arange``, a constant index that the embedding encoder does not take yet)."""

    def __init__(self, tie=True, D=8, V=11):
        super().__init__()
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        cfg = transformers.GPT2Config(n_embd=D, n_layer=2, n_head=2, vocab_size=V, n_positions=16)
        cfg._attn_implementation = "sdpa"
        self.wte = nn.Embedding(V, D)
        self.h = nn.ModuleList([GPT2Block(cfg, layer_idx=i) for i in range(2)])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            nn.init.normal_(p, std=0.5)

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _gpt2_order(D=8, H=2, layers=2, mlp=32):
    d = D // H
    attn = math.factorial(H) * (math.factorial(d) * math.factorial(d)) ** H
    return math.factorial(D) * (attn * math.factorial(mlp)) ** layers


def test_gpt2_blocks_with_a_tied_head_are_sound_and_complete():
    m = MiniGPT().double()
    ids = torch.randint(0, 11, (1, 5), generator=torch.Generator().manual_seed(0))
    g, aut = _group(m, ids)
    assert aut.order == analytic_order(g) == _gpt2_order()
    tied = tied_parameters(m)
    assert tied == [("wte.weight", "lm_head.weight")]
    assert sharing_violations(g, aut.generators, tied) == []
    gen = torch.Generator().manual_seed(2)
    sd = symgraph.permute_model(m, aut.random_element(generator=gen)).state_dict()
    assert torch.equal(sd["wte.weight"], sd["lm_head.weight"])
    ids4 = torch.randint(0, 11, (4, 5), generator=gen)
    assert _max_change(m, aut, g, ids4) < TOL
    # causal: the q.k nodes carry is_causal=True in their colour, and the model is causal indeed
    assert [k.extra[1] for k in set(g.node_keys_typed) if k.kind == "qk"] == [True]
    m.eval()
    out, out2 = m(ids4), m(torch.cat([ids4[:, :3], (ids4[:, 3:] + 1) % 11], 1))
    assert torch.allclose(out[:, :3], out2[:, :3]) and not torch.allclose(out[:, 3:], out2[:, 3:])


def test_negative_control_a_gpt2_head_that_is_not_tied_breaks_the_stream_symmetry():
    # untied, the head reads the stream like any layer: same group; the tie is what the sharing check guards
    m = MiniGPT(tie=False).double()
    g, aut = _group(m, torch.zeros(1, 5, dtype=torch.long))
    assert aut.order == analytic_order(g)
    # swapping two stream features in the embedding table only (not in the head) changes the logits
    mm = MiniGPT().double()
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    before = mm(ids)
    with torch.no_grad():
        w = mm.wte.weight.detach().clone()
        mm.lm_head.weight = nn.Parameter(w.clone())
        mm.wte.weight[:, [0, 1]] = w[:, [1, 0]]
    assert (mm(ids) - before).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- GQA and rotary
def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class Attn(nn.Module):
    """Causal attention with H query heads and Hk key/value heads (``repeat_kv`` as in Llama, or SDPA's
    ``enable_gqa``), optionally with Llama's rotary embedding (``inv_freq`` may repeat a frequency)."""

    def __init__(self, H=4, Hk=2, d=4, D=8, T=5, rope=False, mode="repeat", inv_freq=None):
        super().__init__()
        self.H, self.Hk, self.d, self.rope, self.mode = H, Hk, d, rope, mode
        self.q, self.k, self.v = nn.Linear(D, H * d), nn.Linear(D, Hk * d), nn.Linear(D, Hk * d)
        self.o, self.out = nn.Linear(H * d, D), nn.Linear(D, 2)
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)) if inv_freq is None else inv_freq
        f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        emb = torch.cat([f, f], -1)
        self.register_buffer("cos", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin", emb.sin()[None, None], persistent=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)
        k = self.k(x).view(B, T, self.Hk, self.d).transpose(1, 2)
        v = self.v(x).view(B, T, self.Hk, self.d).transpose(1, 2)
        if self.rope:
            q = q * self.cos + _rotate_half(q) * self.sin
            k = k * self.cos + _rotate_half(k) * self.sin
        r = self.H // self.Hk
        if self.mode == "repeat" and r > 1:
            k = k[:, :, None].expand(B, self.Hk, r, T, self.d).reshape(B, self.H, T, self.d)
            v = v[:, :, None].expand(B, self.Hk, r, T, self.d).reshape(B, self.H, T, self.d)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.mode == "gqa" and r > 1)
        a = a.transpose(1, 2).reshape(B, T, self.H * self.d)
        return self.out(torch.relu(self.o(a)))


def _attn_order(H, Hk, d, rope_pairs=None, D=8):
    """Hk! (r!)^Hk (qk!)^Hk (d!)^Hk, times S_D of the output projection; ``rope_pairs``: the sizes of the
    classes of rotary pairs with equal frequencies (q/k dims then only permute within those)."""
    r = H // Hk
    qk = math.factorial(d) if rope_pairs is None else math.prod(math.factorial(c) for c in rope_pairs)
    return math.factorial(Hk) * (math.factorial(r) * qk * math.factorial(d)) ** Hk * math.factorial(D)


def _x(n=1):
    return torch.randn(n, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("mode", ["repeat", "gqa"])
@pytest.mark.parametrize("rope", [False, True])
def test_grouped_query_attention_is_sound_and_complete(mode, rope):
    torch.manual_seed(0)
    m = Attn(mode=mode, rope=rope).double()
    g, aut = _group(m, _x())
    expected = _attn_order(4, 2, 4, rope_pairs=[1, 1] if rope else None)
    assert aut.order == analytic_order(g) == expected
    assert _analytic_elements_are_automorphisms(g)
    assert _max_change(m, aut, g, _x(4)) < TOL


def test_multi_head_attention_with_rotary_embedding_fixes_the_qk_dims():
    torch.manual_seed(0)
    m = Attn(H=2, Hk=2, rope=True).double()
    g, aut = _group(m, _x())
    assert aut.order == analytic_order(g) == _attn_order(2, 2, 4, rope_pairs=[1, 1])
    assert _max_change(m, aut, g, _x(4)) < TOL


def test_rotary_pairs_with_equal_frequencies_permute_as_pairs():
    torch.manual_seed(0)
    inv = torch.tensor([1.0, 0.3, 1.0], dtype=torch.float64)  # pairs 0 and 2 rotate alike
    m = Attn(H=2, Hk=2, d=6, rope=True, inv_freq=inv).double()
    g, aut = _group(m, _x())
    assert aut.order == analytic_order(g) == _attn_order(2, 2, 6, rope_pairs=[2, 1])
    assert _max_change(m, aut, g, _x(4)) < TOL


def _permute_head_dims(m, sigma, head=0, kv_head=0):
    """Permute q dims of query head ``head`` and k dims of key head ``kv_head`` by ``sigma`` (rows of q, k)."""
    mm = copy.deepcopy(m)
    d = m.d
    with torch.no_grad():
        for lin, h in ((mm.q, head), (mm.k, kv_head)):
            rows = torch.arange(h * d, (h + 1) * d)
            lin.weight[rows] = lin.weight[rows[sigma]].clone()
            lin.bias[rows] = lin.bias[rows[sigma]].clone()
    return mm


def test_negative_control_full_symmetric_group_on_rotary_qk_dims_changes_the_function():
    torch.manual_seed(0)
    sigma = torch.tensor([1, 0, 2, 3])  # swaps dims 0 and 1: two different frequencies
    xs = _x(4)
    plain = Attn(H=2, Hk=2).double()
    assert (_permute_head_dims(plain, sigma)(xs) - plain(xs)).abs().max() < TOL  # S_d is a symmetry without rope
    rope = Attn(H=2, Hk=2, rope=True).double()
    assert (_permute_head_dims(rope, sigma)(xs) - rope(xs)).abs().max() > 1e-4  # ... and not with it
    g, aut = _group(rope, _x())
    assert aut.order < _attn_order(2, 2, 4)  # the graph does not allow it either


def test_negative_control_kv_heads_moving_without_their_query_groups_change_the_function():
    torch.manual_seed(0)
    m = Attn(mode="repeat").double()
    xs = _x(4)
    mm = _permute_head_dims(m, torch.arange(4), head=0, kv_head=0)  # a copy
    with torch.no_grad():  # swap kv heads 0 and 1 in k and v, leave the query heads
        for lin in (mm.k, mm.v):
            lin.weight.copy_(lin.weight.view(2, 4, -1).flip(0).reshape(8, -1))
            lin.bias.copy_(lin.bias.view(2, 4).flip(0).reshape(-1))
    assert (mm(xs) - m(xs)).abs().max() > 1e-4
    g, aut = _group(m, _x())
    perm = torch.arange(g.num_nodes)
    for name in ("k.weight", "v.weight"):
        nodes = _out_nodes(g, name, 8)
        perm[nodes] = nodes.view(2, 4).flip(0).reshape(-1)
    assert not g.is_automorphism(perm)
    # and without the copies declaration the analytic group misses nauty's query-head permutations
    decls = g.meta["symmetries"]
    g.meta["symmetries"] = [s for s in decls if s.kind != "copies"]
    try:
        assert analytic_order(g) * 2**2 == aut.order
    finally:
        g.meta["symmetries"] = decls


# ---------------------------------------------------------------------------------------------- HF models
@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_hf_causal_lms_with_gqa_rope_and_rms_norm_are_sound_and_complete(name):
    from symgraph.coverage import run_one

    row = run_one(f"hf:{name}", verify=2)
    assert row["status"] == "ok", row
    assert row["analytic_equal"] and row["control_caught"]


# ---------------------------------------------------------------------------------------------- causal masks
class CausalAttn(Attn):
    """Multi-head causal attention written three ways: ``is_causal=True`` followed by a no-op reshape of the
    heads, or an explicit lower-triangular mask (boolean or additive), built from constants."""

    def __init__(self, how="is_causal"):
        super().__init__(H=2, Hk=2)
        self.how = how

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)
        k = self.k(x).view(B, T, self.H, self.d).transpose(1, 2)
        v = self.v(x).view(B, T, self.H, self.d).transpose(1, 2)
        if self.how == "is_causal":
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).reshape(B, self.H, T, self.d)
        else:
            keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = keep if self.how == "bool" else torch.zeros(T, T, dtype=x.dtype).masked_fill(~keep, -math.inf)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(torch.relu(self.o(a.transpose(1, 2).reshape(B, T, self.H * self.d))))


@pytest.mark.parametrize(
    ("how", "tracer"), [("is_causal", "fx"), ("is_causal", "export"), ("bool", "export"), ("additive", "export")]
)
def test_causal_attention_is_encoded_and_sound(how, tracer):
    torch.manual_seed(0)
    m = CausalAttn(how).double()
    g = symgraph.parameter_graph(m, example_input=_x(), tracer=tracer)
    aut = symgraph.automorphism_group(g)
    assert aut.order == analytic_order(g) == _attn_order(2, 2, 4)
    assert [k.extra[1] for k in set(g.node_keys_typed) if k.kind == "qk"] == [True]
    assert _max_change(m, aut, g, _x(4)) < TOL


def test_negative_control_a_mask_that_is_not_causal_is_refused():
    class Banded(CausalAttn):
        def forward(self, x):
            B, T, _ = x.shape
            q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)
            mask = torch.ones(T, T, dtype=torch.bool).triu(-1).tril(1)  # a band: position-dependent, not causal
            a = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            return self.o(a.transpose(1, 2).reshape(B, T, self.H * self.d))

    from symgraph.errors import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="attention mask"):
        symgraph.parameter_graph(Banded("bool").double(), example_input=_x(), tracer="export")


def test_negative_control_a_rotation_other_than_rotate_half_is_not_taken_for_rope():
    class Swapped(Attn):  # cat(x2, x1) without the sign: not a rotation, not fused, refused as a constant product
        def forward(self, x):
            B, T, _ = x.shape
            q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)
            h = self.d // 2
            q = q * self.cos + torch.cat([q[..., h:], q[..., :h]], -1) * self.sin
            a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
            return self.o(a.transpose(1, 2).reshape(B, T, self.H * self.d))

    from symgraph.errors import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="constant tensor"):
        symgraph.parameter_graph(Swapped(H=2, Hk=2).double(), example_input=_x(), tracer="export")


def test_a_learned_bias_added_to_attention_scores_is_refused_by_name():
    class Biased(nn.Module):  # T5-style: scores + a learned per-head, per-position-pair bias
        def __init__(self):
            super().__init__()
            self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 2)
            self.bias = nn.Parameter(torch.randn(1, 2, 5, 5))

        def forward(self, x):
            B, T, _ = x.shape
            q = self.q(x).view(B, T, 2, 4).transpose(1, 2)
            a = torch.softmax(q @ q.transpose(-1, -2) + self.bias, dim=-1) @ q
            return self.o(a.transpose(1, 2).reshape(B, T, 8))

    from symgraph.errors import UnsupportedModuleError

    for tracer in ("fx", "export"):
        with pytest.raises(UnsupportedModuleError, match="adding a tensor to attention scores"):
            symgraph.parameter_graph(Biased().double(), example_input=_x(), tracer=tracer)


@pytest.mark.parametrize("keep_all", [True, False])
def test_where_with_a_constant_all_true_condition_is_its_first_value(keep_all):
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 6), nn.Linear(6, 2)

        def forward(self, x):
            keep = torch.ones(x.shape[1], dtype=torch.bool)
            if not keep_all:
                keep[0] = False  # masks position 0: a position-dependent op, refused
            return self.b(torch.where(keep[None, :, None], torch.relu(self.a(x)), 0.0))

    from symgraph.errors import UnsupportedModuleError

    m = Masked().double()
    if not keep_all:
        with pytest.raises(UnsupportedModuleError, match="aten.where"):
            symgraph.parameter_graph(m, example_input=_x(), tracer="export")
        return
    g, aut = _group(m, _x())
    assert aut.order == analytic_order(g) == math.factorial(6)
    assert _max_change(m, aut, g, _x(4)) < TOL


def test_a_causal_mask_edited_in_place_is_not_taken_for_causal():
    """``mask[2, 0] = False`` is a copy_ into a view of the constant mask, which reads nothing back: folded
    (not dropped), it makes the mask non-causal, which is refused."""

    class Edited(CausalAttn):
        def forward(self, x):
            B, T, _ = x.shape
            q = self.q(x).view(B, T, self.H, self.d).transpose(1, 2)
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            mask[2, 0] = False
            a = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            return self.o(a.transpose(1, 2).reshape(B, T, self.H * self.d))

    from symgraph.errors import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="attention mask"):
        symgraph.parameter_graph(Edited("bool").double(), example_input=_x(), tracer="export")


def test_the_float64_check_keeps_hf_rms_norm_statistics_in_float64(monkeypatch):
    """HF's RMS norm casts to float32 inside its forward; the check evaluates it in float64 (< 1e-12).
    Controls: with the casts kept, float32 rounding shows (> 1e-10: the context does something), and a
    permutation that is not an automorphism (two input features swapped) is still caught."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from symgraph import permute

    torch.manual_seed(0)
    norm = LlamaRMSNorm(16)
    nn.init.normal_(norm.weight)
    m = nn.Sequential(nn.Linear(6, 16), norm, nn.Linear(16, 3)).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    aut = symgraph.automorphism_group(m)
    gen = torch.Generator().manual_seed(0)
    perms = [aut.random_element(generator=gen) for _ in range(4)]
    assert max(symgraph.check_function_preservation(m, p, x, graph=aut) for p in perms) < 1e-12
    swap = torch.arange(aut.graph.num_nodes)
    swap[0], swap[1] = 1, 0  # two input features
    assert symgraph.check_function_preservation(m, swap, x, graph=aut) > 1e-6
    monkeypatch.setattr(permute, "_NoDowncasts", contextlib.nullcontext)
    assert max(symgraph.check_function_preservation(m, p, x, graph=aut) for p in perms) > 1e-10
