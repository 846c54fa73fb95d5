"""Parameters read only in train mode (GoogLeNet/Inception auxiliary heads): the graph encodes the train-mode
forward, so automorphisms keep the function in both modes; the eval-only graph is the negative control."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order

Outputs = namedtuple("Outputs", ["logits", "aux"])


class AuxNet(nn.Module):
    """A trunk with an auxiliary head that runs in train mode only, returning a namedtuple then."""

    def __init__(self):
        super().__init__()
        self.stem, self.mid, self.head = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2)
        self.aux = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        out = self.head(torch.relu(self.mid(h)))
        if self.training:
            return Outputs(out, self.aux(h))
        return out


def _model():
    torch.manual_seed(0)
    return AuxNet().double().eval()


def test_train_only_parameters_are_encoded_and_the_function_is_kept_in_both_modes():
    m = _model()
    aut = symgraph.automorphism_group(m)
    g = aut.graph
    assert g.meta["mode"] == "train" and g.meta["unencoded"] == []
    # stem units are tied to the aux head's inputs; mid's 5 and aux's 6 hidden units free
    assert aut.order == analytic_order(g) == math.factorial(4) * math.factorial(5) * math.factorial(6)
    assert not m.training  # the model's mode is restored
    x = torch.randn(6, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        perm = aut.random_element(generator=gen)
        assert symgraph.check_function_preservation(m, perm, x, graph=aut) < 1e-12


def test_negative_control_the_eval_only_graph_changes_the_train_mode_output(monkeypatch):
    import symgraph.build as build

    m = _model()
    g = build._parameter_graph(m, None, None, "sound", "auto", None)  # what was built before: eval mode only
    assert "aux.0.weight" in g.meta["unencoded"]
    aut = symgraph.automorphism_group(g)
    x = torch.randn(6, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    worst_eval = worst_train = 0.0
    for _ in range(4):
        perm = aut.random_element(generator=gen)
        worst_eval = max(worst_eval, symgraph.check_function_preservation(m, perm, x, graph=aut, modes=("eval",)))
        worst_train = max(worst_train, symgraph.check_function_preservation(m, perm, x, graph=aut, modes=("train",)))
    assert worst_eval < 1e-12 and worst_train > 1e-6


def test_parameters_unused_in_both_modes_keep_the_eval_graph():
    class Dead(AuxNet):
        def forward(self, x):  # aux never read
            return self.head(torch.relu(self.mid(torch.relu(self.stem(x)))))

    g = symgraph.parameter_graph(Dead().double().eval())
    assert "mode" not in g.meta and "aux.0.weight" in g.meta["unencoded"]


def test_a_train_mode_forward_that_cannot_be_encoded_is_refused_by_name():
    class Odd(AuxNet):
        def forward(self, x):
            h = torch.relu(self.stem(x))
            out = self.head(torch.relu(self.mid(h)))
            if self.training:
                return out + torch.sort(self.aux(h), dim=1).values  # sort has no encoder
            return out

    torch.manual_seed(0)
    with pytest.raises(UnsupportedModuleError, match="not read in eval mode"):
        symgraph.parameter_graph(Odd().double().eval())
