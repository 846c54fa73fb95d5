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


def test_negative_control_a_tie_across_independent_branches_is_reported():
    # also without a residual stream: the embedding's features and the head's inputs permute independently
    class Chain(TiedHead):
        def forward(self, ids):
            return self.head(torch.relu(self.mid(torch.relu(self.emb(ids)))))

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


def test_automorphism_group_refuses_a_model_whose_tie_its_symmetry_breaks():
    import pytest

    from symgraph.errors import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="a.weight, c.weight"):
        symgraph.automorphism_group(TiedBranches())
    m = TiedHead()  # a tie the group keeps: computed as usual
    assert symgraph.automorphism_group(m, example_input=torch.zeros(1, 3, dtype=torch.long)).order > 1
