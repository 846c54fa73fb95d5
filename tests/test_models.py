"""The model registry and the model families: every drawn architecture becomes a parameter graph that holds
each parameter and buffer exactly once, inverts bit for bit, and whose declared analytic symmetries are
automorphisms that preserve the function in train and eval mode (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import symgraph
from symgraph.errors import SymgraphError
from symgraph.models import build_model, format_arch, list_models, parse_arch, register_model
from symgraph.symmetry import analytic_order, random_analytic_permutation
from tests.strategies import (
    architectures,
    build_arch,
    cnn_archs,
    deepsets_archs,
    example_batch,
    grid_archs,
    max_output_diff,
    mlp_archs,
    permuted_model,
    resnet_archs,
    transformer_archs,
    vit_archs,
)

FAMILIES = ("mlp", "cnn2d", "cnn1d", "deepsets", "resnet", "vit", "transformer", "grid_inr")


# ---------------------------------------------------------------------------------------------- registry
def test_parse_arch_parses_ints_floats_bools_strings_and_tuples():
    name, kw = parse_arch("cnn2d:hidden=16,dropout=0.25,bias=False,norm=groupnorm,kernel=3x3,dims=64-32,x=none")
    assert name == "cnn2d"
    assert kw == {
        "hidden": 16,
        "dropout": 0.25,
        "bias": False,
        "norm": "groupnorm",
        "kernel": (3, 3),
        "dims": (64, 32),
        "x": None,
    }
    assert parse_arch("mlp") == ("mlp", {})


def test_format_arch_inverts_parse_arch():
    spec = "resnet:hidden=8,blocks=2-1,block=bottleneck,norm=groupnorm"
    assert format_arch(*parse_arch(spec)) == spec


def test_parse_arch_rejects_malformed_items():
    with pytest.raises(SymgraphError, match="Expected 'key=value'"):
        parse_arch("mlp:hidden")
    with pytest.raises(SymgraphError, match="Expected 'name"):
        parse_arch(":a=1")


def test_build_model_records_name_and_kwargs():
    m = build_model("cnn2d:hidden=4,conv_layers=1", norm="groupnorm")
    assert m.arch == ("cnn2d", {"hidden": 4, "conv_layers": 1, "norm": "groupnorm"})
    assert build_model(*m.arch[:1], **m.arch[1]).arch == m.arch
    assert build_model("resnet50_like", width=2, in_shape=(1, 8, 8)).arch == (
        "resnet50_like",
        {"width": 2, "in_shape": (1, 8, 8)},
    )


def test_list_models_has_every_family():
    assert set(FAMILIES) | {"resnet50_like"} <= set(list_models())


def test_unknown_model_and_bad_kwargs_raise_expected_got():
    with pytest.raises(SymgraphError, match=r"Expected one of the registered models .*\(got 'nope'\)"):
        build_model("nope")
    with pytest.raises(SymgraphError, match="Expected keyword arguments"):
        build_model("mlp", widths=3)


def test_register_model_refuses_a_second_owner_of_a_name():
    with pytest.raises(SymgraphError, match="already registered"):

        @register_model("mlp")
        class Other(nn.Module):
            pass


def test_registry_lets_another_module_register_itself():
    @register_model("test_models_tiny")
    class Tiny(nn.Module):
        example_input_shape = (1, 3)

        def __init__(self, width: int = 2):
            super().__init__()
            self.fc = nn.Linear(3, width)

        def forward(self, x):
            return self.fc(x)

    m = build_model("test_models_tiny:width=4")
    assert m.arch == ("test_models_tiny", {"width": 4}) and "test_models_tiny" in list_models()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_infers_its_input_from_example_input_shape(name):
    model = build_model(name)
    g = symgraph.parameter_graph(model)
    assert g.num_edges >= sum(s.numel for s in g.slots if s.location == "edge")
    with torch.no_grad():
        model.eval()(torch.zeros(model.example_input_shape, dtype=getattr(model, "example_input_dtype", None)))


def test_resnet50_like_has_the_resnet50_parameter_count():
    m = build_model("resnet50_like", out_dim=1000)
    # torchvision's resnet50 has 25,557,032 parameters with a 7x7 stem; ours has a 3x3 stem (CIFAR layout)
    assert sum(p.numel() for p in m.parameters()) == 25_557_032 - 64 * 3 * 49 + 64 * 3 * 9


# ---------------------------------------------------------------------------------------------- properties
def _check_counts_and_inverse(g, model):
    state = model.state_dict()
    assert sum(s.numel for s in g.slots) == sum(t.numel() for t in state.values())
    edge_entries = sum(s.numel for s in g.slots if s.location == "edge")
    assert int(g.edge_param.has_param().sum()) == edge_entries
    # parameter-free edges carry exactly 1
    assert bool((g.edge_weight[~g.edge_param.has_param()] == 1).all())
    back = g.to_state_dict()
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def _check_analytic_symmetry(g, model, tol, seeds=(0, 1)):
    x = example_batch(model)
    for seed in seeds:
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        assert g.is_automorphism(perm)
        other = permuted_model(model, g.permute(perm).to_state_dict())
        for train in (True, False):
            diff, scale = max_output_diff(model, other, x, train)
            assert diff <= tol[torch.float64] * max(1.0, scale), (train, diff)


@given(architectures())
@settings(max_examples=12)
def test_random_architecture_holds_every_parameter_and_buffer_once_and_inverts_bit_for_bit(arch):
    model = build_arch(*arch)
    _check_counts_and_inverse(symgraph.parameter_graph(model), model)


@pytest.mark.parametrize(
    "strategy",
    [mlp_archs, cnn_archs, resnet_archs, transformer_archs, vit_archs, deepsets_archs, grid_archs],
    ids=lambda s: s.__name__,
)
def test_random_analytic_symmetry_is_an_automorphism_and_preserves_function_in_train_and_eval(strategy, tol):
    @given(strategy())
    @settings(max_examples=3 if strategy in (vit_archs, resnet_archs, transformer_archs) else 4)
    def check(arch):
        model = build_arch(*arch)
        g = symgraph.parameter_graph(model)
        _check_analytic_symmetry(g, model, tol)

    check()


@given(cnn_archs(dims=2))
@settings(max_examples=5)
def test_analytic_order_of_a_cnn_is_the_product_of_its_channel_symmetries(arch):
    name, kw = arch
    model = build_arch(name, kw)
    g = symgraph.parameter_graph(model)
    hidden, convs, lin = kw["hidden"], kw["conv_layers"], kw["linear_layers"]
    conv_order = math.factorial(hidden)
    if kw["norm"] == "groupnorm":  # only whole groups and permutations within groups
        G = max(d for d in range(1, min(kw["groups"], hidden) + 1) if hidden % d == 0)
        conv_order = math.factorial(G) * math.factorial(hidden // G) ** G
    expected = conv_order**convs * math.factorial(hidden) ** (lin - 1)
    assert analytic_order(g) == expected


@pytest.mark.slow
@given(architectures())
@settings(max_examples=60)
def test_ci_slow_random_architectures_more_examples(arch):
    model = build_arch(*arch)
    g = symgraph.parameter_graph(model)
    _check_counts_and_inverse(g, model)
    _check_analytic_symmetry(g, model, {torch.float64: 1e-10}, seeds=(0, 1, 2))


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
@settings(max_examples=8)
def test_analytic_order_of_an_mlp_is_the_product_of_hidden_factorials(a, b, c):
    model = build_model("mlp", in_shape=(1, 1, 2), hidden=(a, b, c), out_dim=2)
    assert analytic_order(symgraph.parameter_graph(model)) == math.factorial(a) * math.factorial(b) * math.factorial(c)


# ---------------------------------------------------------------------------------------------- oracle
def _nauty_log10_order(g) -> float:
    """Independent count: nauty on the graph with every edge subdivided by two vertices coloured (edge colour,
    tail/head side), so that edge colours and directions are vertex colours of an undirected simple graph."""
    pynauty = pytest.importorskip("pynauty")
    n, src, dst = g.num_nodes, g.edge_index[0].tolist(), g.edge_index[1].tolist()
    adj: dict[int, list[int]] = {i: [] for i in range(n + 2 * len(src))}
    cells: dict[tuple, set] = {}
    fixed = g.fixed_mask.tolist()
    for i, c in enumerate(g.node_color.tolist()):
        cells.setdefault(("fixed", i) if fixed[i] else ("node", c), set()).add(i)
    for e, (s, d, c) in enumerate(zip(src, dst, g.edge_color.tolist())):
        a, b = n + 2 * e, n + 2 * e + 1
        adj[s].append(a)
        adj[a].append(b)
        adj[b].append(d)
        cells.setdefault(("tail", c), set()).add(a)
        cells.setdefault(("head", c), set()).add(b)
    graph = pynauty.Graph(len(adj), directed=False, adjacency_dict=adj, vertex_coloring=list(cells.values()))
    _, mantissa, exponent, _, _ = pynauty.autgrp(graph)
    return math.log10(mantissa) + exponent


@given(architectures())
@settings(max_examples=10)
def test_analytic_order_equals_an_independent_nauty_count_of_the_graph_automorphisms(arch):
    g = symgraph.parameter_graph(build_arch(*arch))
    assert abs(_nauty_log10_order(g) - math.log10(analytic_order(g))) < 1e-9


def test_nauty_count_exceeds_the_analytic_order_on_the_paper_groupnorm_graph():
    model = build_model("cnn2d", in_shape=(1, 4, 4), hidden=4, conv_layers=1, norm="groupnorm", groups=2)
    sound, paper = (symgraph.parameter_graph(model, encoding=e) for e in ("sound", "paper"))
    assert analytic_order(sound) == analytic_order(paper) == math.factorial(2) * math.factorial(2) ** 2
    assert abs(_nauty_log10_order(sound) - math.log10(analytic_order(sound))) < 1e-9
    assert _nauty_log10_order(paper) > math.log10(math.factorial(4)) - 1e-9  # every channel permutation


# ---------------------------------------------------------------------------------------------- optional torchvision
def _torchvision_model(name):
    tv = pytest.importorskip("torchvision")
    if name == "resnet18":
        return tv.models.resnet18(num_classes=3).double(), (2, 3, 32, 32)
    vit = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    return vit.double(), (2, 3, 32, 32)


@pytest.mark.models
@pytest.mark.parametrize("name", ["resnet18", "vit_small"])
def test_torchvision_model_round_trips_and_keeps_its_function_under_random_symmetries(name, tol):
    """The models environment (torchvision needs torch 2.14.1 here: `make test-models` builds it)."""
    model, shape = _torchvision_model(name)
    g = symgraph.parameter_graph(model, input_shape=(1,) + shape[1:])
    _check_counts_and_inverse(g, model)
    x = torch.randn(*shape, dtype=torch.float64)
    for seed in (0, 1):
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        assert g.is_automorphism(perm)
        other = permuted_model(model, g.permute(perm).to_state_dict())
        for train in (True, False):
            diff, scale = max_output_diff(model, other, x, train)
            assert diff <= tol[torch.float64] * max(1.0, scale), (name, seed, train, diff)
    # negative control: swapping two input channels is not a symmetry and changes the output
    inputs = g.input_nodes
    bad = torch.arange(g.num_nodes)
    bad[inputs[0]], bad[inputs[1]] = inputs[1], inputs[0]
    assert not g.is_automorphism(bad)
