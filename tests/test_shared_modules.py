"""Modules applied several times (weight sharing, appendix C.2): one parameter, one edge set per use, share
edges that make every automorphism permute all uses alike; to_state_dict gives one tensor per name.

Negative controls: the same graph without its share edges has a larger group (S_h per use), whose elements
have no consistent Phi, and a permutation that moves one use's hidden units alone is not an automorphism."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.automorphisms.tied import sharing_violations
from symgraph.graph import EdgeKey
from symgraph.symmetry import analytic_order, random_analytic_permutation

D, H, USES = 4, 3, 3


class Block(nn.Module):
    def __init__(self, d: int = D, h: int = H):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.l2(torch.relu(self.l1(x)))


class RepeatedBlock(nn.Module):
    """One residual block applied USES times (ALBERT's cross-layer sharing, in small)."""

    def __init__(self):
        super().__init__()
        self.inp, self.block, self.head = nn.Linear(3, D), Block(), nn.Linear(D, 2)

    def forward(self, x):
        h = self.inp(x)
        for _ in range(USES):
            h = self.block(h)
        return self.head(h)


class LinearTwice(nn.Module):
    """An MLP that calls one nn.Linear twice: its input units, its outputs of use 1 and of use 2 move together."""

    def __init__(self):
        super().__init__()
        self.a, self.l, self.h = nn.Linear(3, D), nn.Linear(D, D), nn.Linear(D, 2)

    def forward(self, x):
        return self.h(torch.relu(self.l(torch.relu(self.l(torch.relu(self.a(x)))))))


def _share_color(g) -> int:
    return g.edge_color_keys.index(EdgeKey("identity", "share"))


def _without_share_edges(g):
    keep = g.edge_color != _share_color(g)
    return dataclasses.replace(
        g, edge_index=g.edge_index[:, keep], edge_color=g.edge_color[keep], edge_weight=g.edge_weight[keep]
    )


def _uses(g, name: str):
    return [s for s in g.slots if s.name == name]


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


MODELS = [
    (RepeatedBlock, math.factorial(D) * math.factorial(H), "block.l1.weight", USES),
    (LinearTwice, math.factorial(D), "l.weight", 2),
]


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("make,order,shared,uses", MODELS, ids=["repeated_block", "linear_twice"])
def test_shared_module_has_one_slot_per_use_and_a_bit_identical_state_dict(make, order, shared, uses, tracer):
    m = make()
    g = symgraph.parameter_graph(m, tracer=tracer)
    assert len(_uses(g, shared)) == uses
    sd, ref = g.to_state_dict(), m.state_dict()
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    # every use carries the same values on its own edges
    first, *later = _uses(g, shared)
    for s in later:
        assert torch.equal(
            g.edge_weight[s.start : s.start + s.numel], g.edge_weight[first.start : first.start + first.numel]
        )


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("make,order,shared,uses", MODELS, ids=["repeated_block", "linear_twice"])
def test_group_of_a_shared_module_is_the_analytic_one_with_the_hidden_units_permuted_once(
    make, order, shared, uses, tracer
):
    m = make().double()
    g = symgraph.parameter_graph(m, tracer=tracer)
    aut = symgraph.automorphism_group(g)
    assert aut.order == analytic_order(g) == order  # e.g. S_D on the stream x S_H once, not S_H^3
    assert sharing_violations(g, aut.generators, []) == []
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p in (aut.random_element(generator=gen), random_analytic_permutation(g, gen)):
            assert g.is_automorphism(p)
            sd = g.permute(p).to_state_dict()  # one consistent tensor per name (raises otherwise)
            assert sd.keys() == m.state_dict().keys()
            assert symgraph.check_function_preservation(m, p, _x(), graph=g, modes=("eval", "train")) < 1e-12


@pytest.mark.parametrize("make,order,shared,uses", MODELS, ids=["repeated_block", "linear_twice"])
def test_automorphism_group_of_the_model_keeps_the_sharing(make, order, shared, uses):
    m = make()
    aut = symgraph.automorphism_group(m)  # the model-level path: its weight-sharing check passes
    assert aut.order == order
    p = aut.random_element(generator=torch.Generator().manual_seed(3))
    new = symgraph.permute_model(m, p, graph=aut)
    assert symgraph.check_function_preservation(m, p, _x(), graph=aut) < 1e-12
    assert not all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), m.state_dict().values()))


def test_negative_control_without_share_edges_the_group_is_larger_and_has_no_consistent_phi():
    m = RepeatedBlock().double()
    g = symgraph.parameter_graph(m)
    bare = _without_share_edges(g)
    assert bare.num_edges < g.num_edges
    aut = symgraph.automorphism_group(bare)
    assert aut.order == math.factorial(D) * math.factorial(H) ** USES  # each use's hidden units on their own
    assert sharing_violations(bare, aut.generators, []) != []
    gen = torch.Generator().manual_seed(0)
    perms = [aut.random_element(generator=gen) for _ in range(4)]
    inconsistent = 0
    for p in perms:
        try:
            bare.permute(p).to_state_dict()
        except ValueError as exc:
            assert "shared parameter" in str(exc)
            inconsistent += 1
    assert inconsistent > 0
    assert any(symgraph.check_function_preservation(m, p, _x(), graph=bare) == math.inf for p in perms)


def test_a_permutation_of_one_uses_hidden_units_alone_is_not_an_automorphism():
    m = RepeatedBlock().double()
    g = symgraph.parameter_graph(m)
    first = _uses(g, "block.l1.weight")[0]
    hidden = torch.unique(g.edge_index[1, first.start : first.start + first.numel])  # use 1's hidden units
    assert hidden.numel() == H
    p = torch.arange(g.num_nodes)
    p[hidden[0]], p[hidden[1]] = hidden[1], hidden[0]
    assert not g.is_automorphism(p)
    # the control can fail: without the share edges it is an automorphism, and it has no Phi
    bare = _without_share_edges(g)
    assert bare.is_automorphism(p)
    with pytest.raises(ValueError, match="shared parameter 'block.l1.weight'"):
        bare.permute(p).to_state_dict()
    assert symgraph.check_function_preservation(m, p, _x(), graph=bare) == math.inf
    # the same swap applied to every use is an automorphism and keeps the function
    q = torch.arange(g.num_nodes)
    for s in _uses(g, "block.l1.weight"):
        h = torch.unique(g.edge_index[1, s.start : s.start + s.numel])
        q[h[0]], q[h[1]] = h[1], h[0]
    assert g.is_automorphism(q)
    assert symgraph.check_function_preservation(m, q, _x(), graph=g) < 1e-12


def test_edited_weights_that_break_the_sharing_have_no_state_dict():
    g = symgraph.parameter_graph(LinearTwice())
    s = _uses(g, "l.weight")[1]
    ew = g.edge_weight.clone()
    ew[s.start] += 1.0
    with pytest.raises(ValueError, match="shared parameter 'l.weight'"):
        g.to_state_dict(edge_weight=ew)


@pytest.mark.slow
def test_albert_cross_layer_sharing_group_is_complete_sound_and_counts_the_shared_layer_once():
    pytest.importorskip("transformers")
    from symgraph.coverage import build

    m = build("hf:albert")
    cfg = m.config
    aut = symgraph.automorphism_group(m)
    g = aut.graph
    shared = "encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight"
    assert len(_uses(g, shared)) == cfg.num_hidden_layers == 2
    sd, ref = g.to_state_dict(), m.state_dict()
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    f = math.factorial
    heads, dh = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    # embedding features S_16; the residual stream ends in the (fixed) outputs; the shared layer once:
    # S_heads on the heads, S_dh on the q/k and on the v dims of each head, S_ffn on the FFN units
    expected = f(cfg.embedding_size) * f(heads) * f(dh) ** (2 * heads) * f(cfg.intermediate_size)
    assert aut.order == analytic_order(g) == expected
    ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        p = aut.random_element(generator=gen)
        g.permute(p).to_state_dict()
        assert symgraph.check_function_preservation(m, p, ids, graph=aut) < 1e-9
    bare = _without_share_edges(g)
    assert symgraph.automorphism_group(bare).order > aut.order


def test_one_linear_twice_in_a_sequential_has_both_state_names_on_its_first_use():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin).double()  # state_dict: 0.* and 2.*, one tensor each; fx calls "0" twice
    g = symgraph.parameter_graph(m)
    assert len(_uses(g, "0.weight")) == 2 and [(s.location, s.start) for s in _uses(g, "2.weight")] == [
        ("edge", _uses(g, "0.weight")[0].start)
    ]
    sd = g.to_state_dict()
    assert list(sd) == list(m.state_dict()) and all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    aut = symgraph.automorphism_group(m)  # tied names and uses: the model-level check passes
    assert aut.order == analytic_order(aut.graph) == 1  # the outputs of use 2 are fixed, so use 1's are too
    lin2 = nn.Linear(3, 3)
    m2 = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), lin2, nn.ReLU(), lin2, nn.ReLU(), nn.Linear(3, 1)).double()
    aut = symgraph.automorphism_group(m2)
    assert aut.order == analytic_order(aut.graph) == math.factorial(3)
    p = aut.random_element(generator=torch.Generator().manual_seed(0))
    new = symgraph.permute_model(m2, p, graph=aut).state_dict()
    assert torch.equal(new["2.weight"], new["4.weight"])
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert symgraph.check_function_preservation(m2, p, x, graph=aut) < 1e-12
