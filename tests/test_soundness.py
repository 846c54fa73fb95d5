"""Soundness of parameter-free ops applied on some paths and not others (issue 20 item 3).

GoogLeNet's branch 1 (a 1x1 conv of the block input) and branch 4 (a 3x3 max-pool, then a 1x1 conv of the
same input) used to look identical in the parameter graph, because pooling kept the channel nodes and left
no trace; nauty then swapped their channels, which changes the function. Every such op is now part of the
value (``Features.ops``) and of the colour of the layer that reads it. These tests build two-branch models
(:class:`tests.strategies.BranchNet`) with one op on one branch only and check, in float64, that random
automorphisms preserve the function in eval and train mode and that nauty's order equals the declared
analytic order. The negative control re-creates the old encoding (structural ops dropped) and must be caught.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings

import symgraph
from symgraph.encoders import pooling, shape
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import BRANCH_OPS, BranchNet, branch_archs, build_arch

SAMPLES = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is ~10x faster than two on a loaded machine (no spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _combine_for(op: str) -> list[str]:
    if BRANCH_OPS[op][1]:
        return ["cat", "add", "mean"]
    return ["mean", "add"] if op == "mean_broadcast" else ["mean"]


CASES = [(op, c) for op in sorted(BRANCH_OPS) for c in _combine_for(op)]


def _model(op: str, combine: str, stem: int = 3, seed: int = 0, kernel: int = 1) -> nn.Module:
    kw = {"op": op, "combine": combine, "stem": stem, "width": 2, "kernel": kernel}
    return build_arch("branch", kw, seed=seed)


def _worst_change(model: nn.Module, aut, samples: int = SAMPLES) -> float:
    """Largest output change (eval and train mode, float64) over random automorphisms, relative to the output."""
    x = torch.randn(3, *model.example_input_shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        scale = float(model.eval()(x).abs().max()) or 1.0
    worst = 0.0
    for s in range(samples):
        perm = aut.random_element(torch.Generator().manual_seed(s))
        worst = max(worst, symgraph.check_function_preservation(model, perm, x, graph=aut) / scale)
    return worst


@pytest.mark.parametrize("op, combine", CASES)
def test_random_automorphism_preserves_function_with_an_op_on_one_branch(op, combine):
    model = _model(op, combine)
    aut = symgraph.automorphism_group(model)
    assert aut.order == analytic_order(aut.graph)
    assert _worst_change(model, aut) < 1e-12


@pytest.mark.parametrize("op", ["maxpool", "avgpool", "pad", "roll", "transpose", "upsample"])
def test_ops_on_the_raw_input_get_input_nodes_of_their_own(op):
    """Without a stem both branches read the input; ``conv(x)`` and ``conv(op(x))`` must not read the same
    input nodes (the old key had the input's shape only, and these ops keep the shape)."""
    model = _model(op, "cat", stem=0)
    aut = symgraph.automorphism_group(model)
    assert aut.order == analytic_order(aut.graph)
    assert int(aut.graph.role_mask("input").sum()) == 2  # x and op(x): one channel each
    assert _worst_change(model, aut) < 1e-12


@settings(max_examples=6)
@given(branch_archs())
def test_drawn_two_branch_models_are_sound(arch):
    model = build_arch(*arch)
    aut = symgraph.automorphism_group(model)
    assert aut.order == analytic_order(aut.graph)
    assert _worst_change(model, aut, samples=3) < 1e-12


# ---------------------------------------------------------------------------------------------- negative control
def _drop_records(original):
    """``then`` of the old encoding: the op changes the shape only (what pooling did before the fix)."""

    def then(ctx, op, x, record, axis=None, lazy=True, **changes):
        return original(ctx, op, x, None, axis=axis, lazy=False, **changes)

    return then


#: the ops whose old encoding was unsound (constant scaling was always recorded as a node colour)
OLD_UNSOUND = ["maxpool", "avgpool", "upsample", "pad", "roll", "flip", "transpose", "regrid", "slice"]


@pytest.mark.parametrize("op", OLD_UNSOUND)
def test_negative_control_the_old_passthrough_encoding_is_caught(monkeypatch, op):
    combine = "cat" if BRANCH_OPS[op][1] else "mean"
    # a regridded value averaged after pointwise layers is the same function: a 3x3 conv sees the grid
    model = _model(op, combine, kernel=3 if op == "regrid" else 1)
    aut = symgraph.automorphism_group(model)
    assert aut.order == analytic_order(aut.graph) and _worst_change(model, aut) < 1e-12
    monkeypatch.setattr(shape, "then", _drop_records(shape.then))
    monkeypatch.setattr(pooling, "then", _drop_records(pooling.then))
    old = symgraph.automorphism_group(model)
    assert old.order > analytic_order(old.graph)  # branch 1 and branch 2 merged into one S_n
    assert _worst_change(model, old, samples=12) > 1e-3  # and a found automorphism changes the function


def test_negative_control_scaling_was_already_visible(monkeypatch):
    """The control above proves something only where the op was invisible: scaling never was."""
    model = _model("scale", "cat")
    monkeypatch.setattr(shape, "then", _drop_records(shape.then))
    monkeypatch.setattr(pooling, "then", _drop_records(pooling.then))
    aut = symgraph.automorphism_group(model)
    assert aut.order == analytic_order(aut.graph) and _worst_change(model, aut) < 1e-12


# ---------------------------------------------------------------------------------------------- the encoding
def test_a_conv_after_a_pool_has_another_edge_colour_than_the_same_conv_without_it():
    g = symgraph.parameter_graph(_model("maxpool", "cat"))
    b1 = {int(c) for c in g.edge_color[list(g.edge_param.edges_of("b1.0.weight"))]}
    b2 = {int(c) for c in g.edge_color[list(g.edge_param.edges_of("b2.0.weight"))]}
    assert b1.isdisjoint(b2)
    (key,) = {g.edge_color_keys[c] for c in b2}
    assert key[-1][0] == "after" and key[-1][1][0] == "max_pool2d"
    assert ("kernel_size", (3, 3)) in key[-1][1] and ("stride", (1, 1)) in key[-1][1]


def test_module_and_functional_pooling_give_the_same_record():
    class Mod(nn.Module):
        def __init__(self, functional):
            super().__init__()
            self.c1, self.c2, self.functional = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1), functional
            self.pool = nn.MaxPool2d(3, 1, 1)

        def forward(self, x):
            h = self.c1(x)
            return self.c2(F.max_pool2d(h, kernel_size=3, stride=1, padding=1) if self.functional else self.pool(h))

    keys = [set(symgraph.parameter_graph(Mod(f), input_shape=(1, 1, 4, 4)).edge_color_keys) for f in (0, 1)]
    assert keys[0] == keys[1]


def test_graphs_without_structural_ops_keep_their_colours():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    g = symgraph.parameter_graph(m, input_shape=(1, 1, 4, 3))
    assert not any(isinstance(k[-1], tuple) and k[-1][:1] == ("after",) for k in g.edge_color_keys)
    assert ("linear", "flat", 2, 1) in g.edge_color_keys


def test_feature_axis_moves_are_not_recorded_but_position_reorders_are():
    class T(nn.Module):
        def __init__(self, swap):
            super().__init__()
            self.c, self.lin, self.swap = nn.Conv2d(1, 2, 1), nn.Linear(2, 1), swap

        def forward(self, x):
            h = self.c(x)
            return self.lin(h.permute(0, 3, 2, 1) if self.swap else h.permute(0, 2, 3, 1))

    plain, swapped = (symgraph.parameter_graph(T(s), input_shape=(1, 1, 3, 3)) for s in (False, True))
    assert ("linear",) in plain.edge_color_keys
    assert any(k[0] == "linear" and k[-1][1][0] == "permute" for k in swapped.edge_color_keys)


def test_pooling_over_the_feature_axis_and_rolling_channels_are_refused():
    class PoolC(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return F.max_pool1d(self.lin(x), 2)  # (B, T, 4): the last axis holds the features

    with pytest.raises(UnsupportedModuleError, match="feature axis"):
        symgraph.parameter_graph(PoolC(), input_shape=(1, 3, 4))

    class RollC(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 1, 1)

        def forward(self, x):
            return self.c2(torch.roll(self.c1(x), 1, dims=1))

    with pytest.raises(UnsupportedModuleError, match="feature axis"):
        symgraph.parameter_graph(RollC(), input_shape=(1, 1, 3, 3))


def test_residual_of_a_pooled_and_an_unpooled_stream_keeps_them_apart():
    """``x + pool(x)`` on one stream: the two operands' edges differ in colour."""

    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            h = self.c1(x)
            return self.c2(h + F.avg_pool2d(h, 3, 1, 1))

    model = R().double()
    aut = symgraph.automorphism_group(model, input_shape=(1, 1, 4, 4))
    g = aut.graph
    res = [k for k in g.edge_color_keys if k[0] == "residual"]
    assert len(res) == 2 and sum(1 for k in res if isinstance(k[-1], tuple) and k[-1][0] == "after") == 1
    assert aut.order == analytic_order(g) == 6
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    assert symgraph.check_function_preservation(model, aut.random_element(), x, graph=aut) < 1e-12


def test_branch_models_are_built_by_the_shared_strategies():
    assert isinstance(build_arch("branch", {"op": "maxpool", "combine": "cat"}), BranchNet)
