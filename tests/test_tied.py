"""Tied parameters: the weight-sharing condition (appendix C.2) checked on the group's generators, with the
negative control of a tie the graph's symmetry does not respect."""

from __future__ import annotations

import torch
import torch.nn as nn

import symgraph
from symgraph.automorphisms.tied import sharing_violations, tied_parameters


class TiedHead(nn.Module):
    """GPT-2 style: the output projection is the embedding table, read on a residual stream."""

    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(6, 4), nn.Linear(4, 4), nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.mid(torch.relu(h)))


class TiedBranches(nn.Module):
    """Two parallel branches with one weight tensor: each branch's hidden units are free on their own in the
    graph, but the tie needs one permutation for both."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(3, 4), nn.Linear(3, 4)
        self.c.weight = self.a.weight
        self.ha, self.hc = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return self.ha(torch.relu(self.a(x))) + self.hc(torch.tanh(self.c(x)))


def test_tied_parameters_are_found_by_storage():
    assert tied_parameters(TiedHead()) == [("emb.weight", "head.weight")]
    assert tied_parameters(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))) == []


def test_group_of_a_tied_embedding_and_head_keeps_the_sharing():
    m = TiedHead()
    aut = symgraph.automorphism_group(m, example_input=torch.zeros(1, 3, dtype=torch.long))
    assert aut.order > 1
    assert sharing_violations(aut.graph, aut.generators, tied_parameters(m)) == []
    sd = symgraph.permute_model(m, aut.random_element(generator=torch.Generator().manual_seed(0))).state_dict()
    assert torch.equal(sd["emb.weight"], sd["head.weight"])


class Chain(TiedHead):
    """The tie without a residual stream: nothing but the sharing links the embedding's features to the
    head's inputs."""

    def forward(self, ids):
        return self.head(torch.relu(self.mid(torch.relu(self.emb(ids)))))


def _untied_encoding(monkeypatch):
    """The encoding before tied names got share edges: each name's slot on its own (the negative control)."""
    from symgraph.builder import GraphBuilder

    monkeypatch.setattr(GraphBuilder, "_tied_first", lambda self, param, name: None)


def test_negative_control_a_graph_without_share_edges_breaks_the_tie_and_is_reported(monkeypatch):
    _untied_encoding(monkeypatch)
    m = Chain()
    aut = symgraph.automorphism_group(symgraph.parameter_graph(m, example_input=torch.zeros(1, 3, dtype=torch.long)))
    assert len(sharing_violations(aut.graph, aut.generators, tied_parameters(m))) == 1
    m = TiedBranches()
    aut = symgraph.automorphism_group(symgraph.parameter_graph(m))  # the graph's group, no model-level check
    violations = sharing_violations(aut.graph, aut.generators, tied_parameters(m))
    assert len(violations) == 1 and "a.weight, c.weight" in violations[0]
    # and indeed: a random element of the graph's group breaks the tie in the permuted state_dict
    gen = torch.Generator().manual_seed(0)
    broken = any(
        not torch.equal(sd["a.weight"], sd["c.weight"])
        for sd in (aut.graph.permute(aut.random_element(generator=gen)).to_state_dict() for _ in range(8))
    )
    assert broken
    # the model-level call refuses such a graph's group by name
    import pytest

    from symgraph.errors import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="a.weight, c.weight"):
        symgraph.automorphism_group(TiedBranches())


def test_tied_names_read_by_different_layers_are_joined_by_share_edges():
    """One tensor under two names, on branches or read the other way round (an embedding reused as a head):
    share edges make every automorphism keep the copies equal, and the group is the analytic one."""
    import math

    from symgraph.symmetry import analytic_order

    gen = torch.Generator().manual_seed(0)
    for model, x, expected in (
        (TiedBranches().double(), torch.randn(5, 3, dtype=torch.float64), math.factorial(4)),
        (Chain().double(), torch.randint(0, 6, (5, 3)), math.factorial(4)),  # mid's inputs = outputs
    ):
        aut = symgraph.automorphism_group(model, example_input=x[:1])
        assert aut.order == expected == analytic_order(aut.graph)
        assert sharing_violations(aut.graph, aut.generators, tied_parameters(model)) == []
        assert any(k == ("identity", "share") for k in aut.graph.edge_color_keys)
        for _ in range(4):
            perm = aut.random_element(generator=gen)
            assert symgraph.check_function_preservation(model, perm, x, graph=aut) < 1e-12
            sd = aut.graph.permute(perm).to_state_dict()
            a, b = tied_parameters(model)[0]
            assert torch.equal(sd[a], sd[b])
        sd = aut.graph.to_state_dict()
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_a_tied_model_keeps_its_group():
    m = TiedHead()  # a tie the group keeps: computed as usual
    assert symgraph.automorphism_group(m, example_input=torch.zeros(1, 3, dtype=torch.long)).order > 1
