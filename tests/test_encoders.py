"""Encoders for norms, attention, DeepSets, embeddings (ViT pieces) and parameter grids: storage, declared
symmetry (automorphism + function preservation in float64, train and eval), exact analytic orders, and the
negative controls that show where the paper's encodings are unsound and that the checks catch broken cases."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import symgraph
from symgraph.encoders.attention import SplitFeatures
from symgraph.errors import ShapeMismatchError, TraceError, UnsupportedModuleError
from symgraph.models import DeepSetsLayer, GridINR, PreNormBlock, SelfAttention
from symgraph.models.resnet import BasicBlock, Bottleneck
from symgraph.symmetry import analytic_order, analytic_symmetry, random_analytic_permutation
from tests.strategies import max_output_diff, permuted_model, perturbed_double, randomize_buffers

F64 = torch.float64


def _prep(model: nn.Module, seed: int = 0) -> nn.Module:
    # non-trivial values everywhere (e.g. zero-initialised biases)
    return randomize_buffers(perturbed_double(model, seed, scale=0.1), torch.Generator().manual_seed(seed))


def _assert_symmetry_preserves_function(model, x, tol, encoding="sound", seeds=(0, 1, 2), modes=(True, False)):
    g = symgraph.parameter_graph(model, example_input=x, encoding=encoding)
    for seed in seeds:
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        assert g.is_automorphism(perm)
        other = permuted_model(model, g.permute(perm).to_state_dict())
        for train in modes:
            diff, scale = max_output_diff(model, other, x, train)
            assert diff <= tol[F64] * max(1.0, scale), (seed, train, diff)
    return g


def _group(g, name_part: str):
    hits = [grp for grp in g.node_groups if name_part in grp.name]
    assert hits, f"no node group named like {name_part!r}: {[grp.name for grp in g.node_groups]}"
    return torch.arange(hits[0].start, hits[0].stop)


def _transposition(n: int, i: int, j: int) -> torch.Tensor:
    p = torch.arange(n)
    p[i], p[j] = j, i
    return p


def _state_with(model, **changes):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, fn in changes.items():
        fn(sd[k.replace("__", ".")])
    return permuted_model(model, sd)


def _swap_rows(i: int, j: int, dim: int = 0):
    def fn(t):
        a, b = t.select(dim, i).clone(), t.select(dim, j).clone()
        t.select(dim, i).copy_(b)
        t.select(dim, j).copy_(a)

    return fn


# ============================================================================================== norms
@pytest.mark.parametrize("dims,affine,track", [(1, True, True), (2, False, True), (3, True, False), (2, False, False)])
def test_batchnorm_stores_gamma_beta_and_running_stats_on_channel_nodes(dims, affine, track, tol):
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    model = _prep(
        nn.Sequential(conv(2, 5, 1), bn(5, affine=affine, track_running_stats=track), nn.ReLU(), conv(5, 3, 1))
    )
    x = torch.randn((4, 2) + (3,) * dims, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol, seeds=(0,))
    nodes = _group(g, "batchnorm nodes")
    by_name = {s.name: s for s in g.slots}
    if affine:
        col = g.node_weight_columns.index("norm_weight")
        assert torch.equal(g.node_weight[nodes, col], model[1].weight.detach())
        assert by_name["1.bias"].column == g.node_weight_columns.index("norm_bias")
    if track:
        assert by_name["1.running_var"].location == "node" and by_name["1.running_var"].is_buffer
        assert by_name["1.num_batches_tracked"].location == "extra"
    # the norm is visible: one parameter-free edge per channel from the conv channel into its norm node
    into = torch.isin(g.edge_index[1], nodes)
    assert int(into.sum()) == 5 and bool((g.edge_weight[into] == 1).all())
    assert sum(s.numel for s in g.slots) == sum(t.numel() for t in model.state_dict().values())


@pytest.mark.parametrize("kind", ["instance", "layer", "layer_noaffine", "layer_nobias"])
def test_instance_and_layer_norm_permute_with_their_channels(kind, tol):
    if kind == "instance":
        model = nn.Sequential(
            nn.Conv1d(2, 4, 3),
            nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
            nn.Tanh(),
            nn.Conv1d(4, 2, 1),
        )
        x = torch.randn(3, 2, 6, dtype=F64)
    else:
        ln = {
            "layer": nn.LayerNorm(5),
            "layer_noaffine": nn.LayerNorm(5, elementwise_affine=False),
            "layer_nobias": nn.LayerNorm(5, bias=False),
        }[kind]
        model = nn.Sequential(nn.Linear(3, 5), ln, nn.ReLU(), nn.Linear(5, 2))
        x = torch.randn(4, 3, dtype=F64)
    g = _assert_symmetry_preserves_function(_prep(model), x, tol, seeds=(0, 1))
    assert analytic_order(g) == math.factorial(4 if kind == "instance" else 5)


def _gn_model(G=2, C=4):
    return _prep(nn.Sequential(nn.Conv2d(1, C, 3, padding=1), nn.GroupNorm(G, C), nn.ReLU(), nn.Conv2d(C, 2, 1)))


@given(st.sampled_from([(1, 4), (2, 4), (4, 4), (2, 6), (3, 6)]))
@settings(max_examples=5)
def test_groupnorm_symmetry_is_groups_and_within_groups(gc):
    G, C = gc
    model = _gn_model(G, C)
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, {F64: 1e-10}, seeds=(0, 1))
    assert analytic_order(g) == math.factorial(G) * math.factorial(C // G) ** G
    assert int(g.role_mask("group").sum()) == G


def _cross_group_swap(g, C=4):
    """Swap channel 0 (group 0) with channel C-1 (last group): conv output and norm nodes together."""
    conv, norm = _group(g, "0 output channels"), _group(g, "groupnorm nodes")
    perm = torch.arange(g.num_nodes)
    for nodes in (conv, norm):
        perm[nodes[0]], perm[nodes[C - 1]] = nodes[C - 1], nodes[0]
    return perm


def test_swapping_channels_across_groupnorm_groups_changes_function_and_is_no_automorphism():
    model = _gn_model(2, 4)
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    sound = symgraph.parameter_graph(model, example_input=x)
    paper = symgraph.parameter_graph(model, example_input=x, encoding="paper")
    assert not sound.is_automorphism(_cross_group_swap(sound))
    perm = _cross_group_swap(paper)
    assert paper.is_automorphism(perm)  # the paper's drawing (no group nodes) accepts it: unsound
    other = permuted_model(model, paper.permute(perm).to_state_dict())
    diff, _ = max_output_diff(model, other, x, train=False)
    assert diff > 1e-3


# ============================================================================================== residual blocks
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("stride,c_in", [(2, 4), (1, 3)])
def test_resnet_blocks_with_downsample_preserve_function_under_their_symmetry(block, stride, c_in, tol):
    model = _prep(
        nn.Sequential(
            nn.Conv2d(1, c_in, 3, padding=1),
            block(c_in, 2 if block is Bottleneck else 4, stride),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8 if block is Bottleneck else 4, 2),
        )
    )
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol, seeds=(0, 1))
    assert (model[1].downsample is not None) == any("downsample" in grp.name for grp in g.node_groups)


# ============================================================================================== attention
class _Attn(nn.Module):
    """Linear embedding -> attention -> Linear readout, on (B, T, d_in) tokens."""

    def __init__(
        self, attn: nn.Module, d_in: int = 3, E: int = 6, out: int = 2, kdim=None, vdim=None, batch_first=True
    ):
        super().__init__()
        self.embed = nn.Linear(d_in, E)
        self.kin = nn.Linear(d_in, kdim) if kdim else None
        self.vin = nn.Linear(d_in, vdim) if vdim else None
        self.attn = attn
        self.batch_first = batch_first
        self.out = nn.Linear(E, out)

    def forward(self, x):
        h = self.embed(x)
        if isinstance(self.attn, nn.MultiheadAttention):
            k = self.kin(x) if self.kin is not None else h
            v = self.vin(x) if self.vin is not None else h
            if not self.batch_first:
                h, k, v = h.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            y, _ = self.attn(h, k, v, need_weights=False)
            if not self.batch_first:
                y = y.transpose(0, 1)
        else:
            y = self.attn(h)
        return self.out(y.mean(dim=1))


def _attention_order(E: int, H: int) -> int:
    """Embedding outputs (S_E), heads, joint q/k and v dims within heads, out_proj outputs (S_E)."""
    hd = E // H
    return math.factorial(E) ** 2 * math.factorial(H) * math.factorial(hd) ** (2 * H)


MHA_CASES = {
    "packed": dict(),
    "no_bias": dict(bias=False),
    "bias_kv": dict(add_bias_kv=True),
    "zero_attn": dict(add_zero_attn=True),
    "not_batch_first": dict(batch_first=False),
}


@pytest.mark.parametrize("case", list(MHA_CASES) + ["kdim_vdim"])
def test_multihead_attention_symmetry_is_heads_and_joint_qk_and_v_dims(case, tol):
    E, H = 6, 2
    if case == "kdim_vdim":
        mha = nn.MultiheadAttention(E, H, kdim=4, vdim=5, batch_first=True)
        model = _Attn(mha, E=E, kdim=4, vdim=5)
    else:
        kw = dict(MHA_CASES[case])
        bf = kw.pop("batch_first", True)
        model = _Attn(nn.MultiheadAttention(E, H, batch_first=bf, **kw), E=E, batch_first=bf)
    model = _prep(model)
    x = torch.randn(2, 3, 3, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol)
    expected = _attention_order(E, H)
    if case == "kdim_vdim":  # the key and value input projections' hidden units
        expected = expected * math.factorial(4) * math.factorial(5)
    assert analytic_order(g) == expected
    assert int(g.role_mask("head").sum()) == H


@pytest.mark.parametrize("impl", ["manual", "sdpa", "packed", "mha"])
@given(H=st.integers(1, 3), hd=st.integers(1, 2))
@settings(max_examples=2)
def test_attention_implementations_have_the_same_exact_symmetry(impl, H, hd):
    E = H * hd
    model = _prep(_Attn(SelfAttention(E, H, impl=impl), E=E))
    x = torch.randn(2, 3, 3, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, {F64: 1e-10}, seeds=(0,))
    assert analytic_order(g) == _attention_order(E, H)


def test_head_split_values_track_both_axes():
    model = _Attn(SelfAttention(4, 2, impl="manual"), E=4)
    spec, _ = symgraph.trace_model(model, input_shape=(1, 3, 3))
    assert any(o.target == "transpose" for o in spec.ops)
    v = SplitFeatures(torch.arange(6).view(2, 3), (1, 5, 2, 3), (2, 3))
    op = types.SimpleNamespace(shape=(1, 2, 5, 3), name="t")
    assert v.moved(op, [0, 2, 1, 3]).axes == (1, 3)


def _traced_qk_swap(g, i=0):
    q, k = _group(g, "attn.q outputs"), _group(g, "attn.k outputs")
    perm = torch.arange(g.num_nodes)
    perm[q[i]], perm[k[i]] = k[i], q[i]
    return perm


def test_swapping_a_q_row_with_a_k_row_changes_function_and_is_an_automorphism_only_of_the_paper_graph():
    E, H = 4, 2
    # bias-free projections, so that q and k nodes differ only in their role in the attention
    model = _prep(_Attn(SelfAttention(E, H, impl="manual", bias=False), E=E))
    x = torch.randn(2, 3, 3, dtype=F64)
    sound = symgraph.parameter_graph(model, example_input=x)
    paper = symgraph.parameter_graph(model, example_input=x, encoding="paper")
    assert not sound.is_automorphism(_traced_qk_swap(sound))
    perm = _traced_qk_swap(paper)
    assert paper.is_automorphism(perm)
    other = permuted_model(model, paper.permute(perm).to_state_dict())
    sd, ref = other.state_dict(), model.state_dict()
    assert torch.equal(sd["attn.q.weight"][0], ref["attn.k.weight"][0])  # Phi swapped the rows
    diff, _ = max_output_diff(model, other, x, train=False)
    assert diff > 1e-4


def test_paper_multihead_attention_accepts_q_k_and_cross_head_swaps_that_change_function():
    E, H = 4, 2
    model = _prep(_Attn(nn.MultiheadAttention(E, H, batch_first=True), E=E))
    x = torch.randn(2, 3, 3, dtype=F64)
    paper = symgraph.parameter_graph(model, example_input=x, encoding="paper")
    sound = symgraph.parameter_graph(model, example_input=x)
    mid = _group(paper, "q/k/v")
    for i, j in ((0, E + 1), (0, 2)):  # q row 0 with k row 1; q dim 0 of head 0 with q dim 0 of head 1
        perm = torch.arange(paper.num_nodes)
        perm[mid[i]], perm[mid[j]] = mid[j], mid[i]
        assert paper.is_automorphism(perm)
        other = permuted_model(model, paper.permute(perm).to_state_dict())
        diff, _ = max_output_diff(model, other, x, train=False)
        assert diff > 1e-4
    qk = _group(sound, "q.k nodes")
    assert not sound.is_automorphism(_transposition(sound.num_nodes, int(qk[0]), int(qk[2])))
    # and the same parameter swap done by hand changes the function (the sound graph is right to refuse)
    other = _state_with(model, attn__in_proj_weight=_swap_rows(0, E + 1))
    assert max_output_diff(model, other, x, train=False)[0] > 1e-4


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_leaf_and_pre_norm_block_preserve_function(norm_first, tol):
    E, H = 4, 2
    layer = nn.TransformerEncoderLayer(E, H, 6, dropout=0.0, batch_first=True, norm_first=norm_first)
    model = _prep(_Attn(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), E=E))
    x = torch.randn(2, 3, 3, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol, seeds=(0, 1))
    # stream S_E (tied through both layers), per layer: heads/qk/v and S_6 hidden units
    expected = math.factorial(E) * (math.factorial(H) * math.factorial(E // H) ** (2 * H) * math.factorial(6)) ** 2
    assert analytic_order(g) == expected
    block = _prep(_Attn(PreNormBlock(E, H, 5), E=E))
    _assert_symmetry_preserves_function(block, x, tol, seeds=(0,))


def test_attention_mask_is_refused_with_a_clear_error():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 4)
            self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
            self.register_buffer("mask", torch.zeros(3, 3, dtype=torch.bool))

        def forward(self, x):
            h = self.embed(x)
            return self.mha(h, h, h, attn_mask=self.mask)[0]

    with pytest.raises(UnsupportedModuleError, match="attn_mask"):
        symgraph.parameter_graph(Masked(), input_shape=(1, 3, 2))


# ============================================================================================== DeepSets
def test_deepsets_layer_w1_w2_are_distinguishable_only_in_the_sound_encoding(tol):
    model = _prep(nn.Sequential(DeepSetsLayer(2, 3), nn.ReLU(), DeepSetsLayer(3, 2)))
    x = torch.randn(4, 5, 2, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol)
    assert analytic_order(g) == math.factorial(3)
    # swap W1[0, 1] with W2[0, 1] in the first layer: a different function ...
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    w1, w2 = float(sd["0.lin.weight"][0, 1]), float(sd["0.pool_lin.weight"][0, 1])
    sd["0.lin.weight"][0, 1], sd["0.pool_lin.weight"][0, 1] = w2, w1
    other = permuted_model(model, sd)
    assert max_output_diff(model, other, x, train=False)[0] > 1e-4

    def edge_multiset(graph):
        rows = torch.stack(
            [graph.edge_index[0].double(), graph.edge_index[1].double(), graph.edge_color.double(), graph.edge_weight],
            1,
        )
        return sorted(map(tuple, rows.tolist()))

    for encoding, same in (("paper", True), ("sound", False)):
        a = symgraph.parameter_graph(model, example_input=x, encoding=encoding)
        b = symgraph.parameter_graph(other, example_input=x, encoding=encoding)
        # ... that the paper's graph cannot tell apart (same coloured weighted edges), ours can
        assert (edge_multiset(a) == edge_multiset(b)) is same


# ====================================================================================== embeddings and ViT pieces
def test_vit_class_token_and_positional_embedding_are_edges_from_fixed_position_nodes(tol):
    from symgraph.models import ViT

    model = _prep(ViT(in_shape=(1, 4, 4), patch=2, dim=4, depth=1, heads=2, mlp_dim=3, out_dim=2))
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    g = _assert_symmetry_preserves_function(model, x, tol, seeds=(0,))
    pos_nodes = g.role_mask("position").nonzero().flatten()
    assert pos_nodes.numel() == 1 + 5  # one class-token node + one node per token position (4 patches + cls)
    assert bool(g.fixed_mask[pos_nodes].all())
    for name, numel in (("cls_token", 4), ("pos_embed", 20)):
        edges = g.edge_param.edges_of(name)
        assert len(edges) == numel
        assert bool(torch.isin(g.edge_index[0, edges.start : edges.stop], pos_nodes).all())
    # positional embedding entry pos[0, t, d] is the edge (position t) -> (feature d)
    e = g.edge_param.edges_of("pos_embed")
    src, dst = g.edge_index[:, e.start : e.stop].view(2, 5, 4)
    assert bool((src == src[:, :1]).all()) and bool((dst == dst[:1]).all())


def test_swapping_two_positional_embedding_rows_is_no_automorphism_and_changes_function():
    from symgraph.models import ViT

    model = _prep(ViT(in_shape=(1, 4, 4), patch=2, dim=4, depth=1, heads=2, mlp_dim=3, out_dim=2))
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    g = symgraph.parameter_graph(model)
    pos = _group(g, "pos_embed positions")
    assert not g.is_automorphism(_transposition(g.num_nodes, int(pos[1]), int(pos[2])))
    other = _state_with(model, pos_embed=_swap_rows(1, 2, dim=1))
    assert max_output_diff(model, other, x, train=False)[0] > 1e-6


def test_embedding_vocabulary_nodes_are_fixed_and_features_permute(tol):
    from symgraph.models import Transformer

    model = _prep(Transformer(seq_len=3, dim=4, depth=1, heads=2, vocab_size=7, out_dim=2))
    g = symgraph.parameter_graph(model)
    tokens = _group(g, "vocabulary")
    assert tokens.numel() == 7 and bool(g.fixed_mask[tokens].all())
    assert len(g.edge_param.edges_of("embed.weight")) == 28
    x = torch.randint(0, 7, (3, 3))
    for seed in (0, 1):
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        other = permuted_model(model, g.permute(perm).to_state_dict())
        diff, scale = max_output_diff(model, other, x, train=False)
        assert diff <= tol[F64] * max(1.0, scale)


# ============================================================================================== parameter grids
def test_grid_entries_are_edges_from_fixed_grid_positions_and_feature_channels_permute(tol):
    model = _prep(GridINR(features=3, resolution=(2, 3), hidden=(4,)))
    x = torch.rand(5, 2, dtype=F64) * 2 - 1
    g = _assert_symmetry_preserves_function(model, x, tol)
    assert analytic_order(g) == math.factorial(3) * math.factorial(4)
    e = g.edge_param.edges_of("grid.grid")
    src = g.edge_index[0, e.start : e.stop].view(3, 6)
    pos = _group(g, "grid positions")
    assert torch.equal(src, pos.view(1, 6).expand(3, 6)) and bool(g.fixed_mask[pos].all())
    # negative control: two grid positions are not interchangeable
    assert not g.is_automorphism(_transposition(g.num_nodes, int(pos[0]), int(pos[5])))
    other = _state_with(model, grid__grid=_swap_rows(0, 2, dim=2))
    assert max_output_diff(model, other, x, train=False)[0] > 1e-6


# ============================================================================================== the checks themselves
def test_checks_flag_a_permutation_outside_the_declared_symmetry():
    model = _prep(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    x = torch.randn(5, 3, dtype=F64)
    g = symgraph.parameter_graph(model)
    h1, h2 = _group(g, "0 outputs"), _group(g, "2 outputs")
    bad = _transposition(g.num_nodes, int(h1[0]), int(h2[0]))  # a unit of layer 1 with one of layer 2
    assert not g.is_automorphism(bad)
    inp = g.input_nodes
    assert not g.is_automorphism(_transposition(g.num_nodes, int(inp[0]), int(inp[1])))
    # a hand-made parameter permutation that moves only the incoming weights of a unit breaks the function
    other = _state_with(model, **{"0__weight": _swap_rows(0, 1)})
    assert max_output_diff(model, other, x, train=False)[0] > 1e-6


def test_analytic_symmetry_reports_factors_and_rejects_nested_block_structures():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.GroupNorm(4, 4), nn.ReLU(), nn.Conv2d(4, 1, 1)
    )
    g = symgraph.parameter_graph(model, input_shape=(1, 1, 2, 2))
    with pytest.raises(symgraph.SymgraphError, match="nested or overlapping"):
        analytic_symmetry(g)
    g2 = symgraph.parameter_graph(_gn_model(2, 4), input_shape=(1, 1, 4, 4))
    assert any("blocks" in f for f in analytic_symmetry(g2).factors)


# ============================================================================================== errors
def test_failed_trace_names_the_module_path_and_the_construct():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(Branchy()))
    with pytest.raises(TraceError) as info:
        symgraph.parameter_graph(model)
    msg = str(info.value)
    assert "'1.0'" in msg and "Branchy" in msg and "control flow" in msg and "register_encoder(Branchy)" in msg
    assert "Traceback" not in msg


def test_layernorm_over_two_dims_and_wrong_axis_norms_raise_typed_errors():
    with pytest.raises(UnsupportedModuleError, match="LayerNorm over 2 dims"):
        symgraph.parameter_graph(nn.Sequential(nn.Conv1d(2, 3, 1), nn.LayerNorm([3, 4])), input_shape=(1, 2, 4))
    with pytest.raises(ShapeMismatchError, match="Expected channels on axis 1"):
        symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(4)), input_shape=(1, 4, 2))
