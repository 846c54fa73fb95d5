"""The paper's propositions as executable checks (proofs_checks): every check passes at CI sizes and catches its
negative control, and the constructions themselves fail when broken (one wrong weight, no global feature, a
misrouted indicator, a wrong power sum, a non-automorphism).
"""

from __future__ import annotations

import json
import math

import pytest
import sympy as sp
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import symgraph
from proofs_checks import REGISTRY, load_all
from proofs_checks.__main__ import main
from proofs_checks.common import CheckResult, mlp_view, random_mlp, run_checks
from proofs_checks.d13_bias_nodes import bias_node_gmn, feature_encoding_outputs
from proofs_checks.prop9_statnn import powersum_quantiles, statnn_features_reference, statnn_gmn
from proofs_checks.prop10_npnfn import GLOBAL_FAMILIES, NPNFNCoeffs, npnfn_gmn, npnfn_reference
from proofs_checks.prop11_forward_pass import forward_pass_gmn

load_all()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors on a shared machine: one thread avoids OpenMP spin-waits
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_check_passes_at_ci_size_and_catches_its_negative_control(name, tol):
    (res,) = run_checks([name], quick=True, seed=0)
    assert res.cases > 0, res.notes
    assert res.max_error <= tol[torch.float64], (res.max_error, res.notes)
    assert res.control_caught, (res.control_error, res.notes)
    assert res.passed


def test_a_check_whose_negative_control_is_not_caught_fails():
    res = CheckResult(name="x", proposition="x", statement="x", cases=3, max_error=0.0, control_error=1e-12)
    assert not res.finish().passed
    res = CheckResult(name="x", proposition="x", statement="x", cases=3, max_error=1e-3, control_error=1.0)
    assert not res.finish().passed
    res = CheckResult(name="x", proposition="x", statement="x", cases=0, max_error=0.0, control_error=1.0)
    assert not res.finish().passed


@st.composite
def mlps(draw, max_depth=4, max_width=6):
    """Whole float64 MLPs: depth, widths, per-layer bias flags, activation and weights (seeded)."""
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    act = draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]))
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=draw(st.booleans())))
        if i < depth - 1:
            layers.append(act())
    model = nn.Sequential(*layers).double()
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


@given(mlps())
def test_constructed_gmns_express_forward_pass_and_npnfn_on_any_mlp(model):
    g = symgraph.parameter_graph(model)
    x = torch.randn(3, model[0].in_features, dtype=torch.float64)
    with torch.no_grad():
        assert (forward_pass_gmn(g, x) - model(x)).abs().max() < 1e-10
    view = mlp_view(model, g)
    c = NPNFNCoeffs.random(view.num_layers, torch.Generator().manual_seed(0))
    got, ref = npnfn_gmn(view, c), npnfn_reference(view, c)
    for a, b in zip(got[0], ref[0]):
        assert (a - b).abs().max() < 1e-10
    for a, b, has in zip(got[1], ref[1], view.has_bias):
        assert not has or (a - b).abs().max() < 1e-10


def test_forward_pass_gmn_equals_model_and_one_wrong_weight_breaks_it(tol):
    gen = torch.Generator().manual_seed(1)
    model = random_mlp(gen, depth=(3, 3), width=(3, 5), bias=True, act="tanh")
    g = symgraph.parameter_graph(model)
    x = torch.randn(7, model[0].in_features, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    assert (forward_pass_gmn(g, x) - ref).abs().max() < tol[torch.float64]
    bad = g.edge_weight.clone()
    bad[0] += 1.0  # first-layer weight; tanh never kills the signal
    assert (forward_pass_gmn(g, x, edge_weight=bad) - ref).abs().max() > 1e-6
    # one GMN layer too few cannot reach the outputs of a depth-3 MLP
    assert (forward_pass_gmn(g, x, num_layers=2) - ref).abs().max() > 1e-6


def test_npnfn_gmn_needs_global_feature_for_global_terms_and_bias_nodes_for_bias_terms(tol):
    gen = torch.Generator().manual_seed(2)
    view = mlp_view(random_mlp(gen, depth=(3, 3), width=(2, 4), bias=True))
    c = NPNFNCoeffs.random(view.num_layers, gen)
    ref = npnfn_reference(view, c)
    got = npnfn_gmn(view, c)
    for a, b in zip(got[0] + got[1], ref[0] + ref[1]):
        assert (a - b).abs().max() < tol[torch.float64]
    for fam in NPNFNCoeffs.names():
        c1 = NPNFNCoeffs.random(view.num_layers, gen, only=(fam,))
        ref1 = npnfn_reference(view, c1)
        no_u = npnfn_gmn(view, c1, use_global=False)
        err = max(float((a - b).abs().max()) for a, b in zip(no_u[0] + no_u[1], ref1[0] + ref1[1]))
        assert (err > 1e-6) == (fam in GLOBAL_FAMILIES), fam
        no_b = npnfn_gmn(view, c1, use_bias_messages=False)
        err = max(float((a - b).abs().max()) for a, b in zip(no_b[0] + no_b[1], ref1[0] + ref1[1]))
        assert (err > 1e-6) == (fam in ("a8", "a9")), fam  # b_i, b_j reach weight edges via bias nodes only


def test_statnn_gmn_features_match_and_a_misrouted_edge_does_not(tol):
    gen = torch.Generator().manual_seed(3)
    g = symgraph.parameter_graph(random_mlp(gen, depth=(2, 2), width=(3, 5), bias=True))
    ref = statnn_features_reference(g)
    assert (statnn_gmn(g, nn.Identity()) - ref).abs().max() < tol[torch.float64]
    assert (statnn_gmn(g, nn.Identity(), misroute_edge=0) - ref).abs().max() > 1e-6
    # the reference agrees with numpy's conventions (population variance, linear-interpolated percentiles)
    w = g.edge_weight[: g.edge_param.slots[0].numel].double().numpy()
    import numpy as np

    expect = [w.mean(), w.var(), *np.percentile(w, [0, 25, 50, 75, 100])]
    assert np.abs(ref[:7].numpy() - np.array(expect)).max() < tol[torch.float64]


def test_power_sums_up_to_n_determine_quantiles_and_fewer_do_not():
    vals = [sp.Rational(-3, 2), sp.Rational(1, 4), sp.Rational(1, 4), sp.Integer(2)]
    p = [sum(v**k for v in vals) for k in range(1, 5)]
    got = powersum_quantiles(p, 4)
    assert got is not None and got[0] == sp.Rational(-3, 2) and got[-1] == 2 and got[2] == sp.Rational(1, 4)
    # dim phi = n - 1 is not enough: {0,3,3} and {1,1,4} share p_1 and p_2 but not their minimum
    a, b = [0, 3, 3], [1, 1, 4]
    assert all(sum(x**k for x in a) == sum(x**k for x in b) for k in (1, 2)) and min(a) != min(b)
    assert powersum_quantiles(p[:-1] + [p[-1] + 1], 4) != got


def test_bias_node_sees_its_whole_layer_but_feature_encodings_do_not():
    gen = torch.Generator().manual_seed(4)
    model = random_mlp(gen, depth=(2, 2), width=(3, 4), bias=True)
    view = mlp_view(model)
    c = torch.tensor([0.7, -1.3], dtype=torch.float64)
    got = bias_node_gmn(view, c)
    for l, b in enumerate(view.biases):
        assert torch.allclose(got[l], c[l] * b.sum() * torch.ones_like(b), atol=1e-12, rtol=0)
    torch.manual_seed(0)
    from gmn.layers import GMNLayer

    for self_loops in (False, True):
        layer = GMNLayer(2, 3, 0, hidden_dim=8, order=("node", "edge"), residual=False, norm=None).double()
        pert = [b.clone() for b in view.biases]
        pert[0][1] += 1.0
        with torch.no_grad():
            before = feature_encoding_outputs(view, list(view.biases), layer, self_loops)
            after = feature_encoding_outputs(view, pert, layer, self_loops)
        assert before[0] == after[0]  # neuron 0 of layer 1 cannot see b_1 of its own layer in one step
        assert before[1] != after[1]  # but neuron 1's own output does move: the test is sensitive


def test_cli_prints_table_and_json_and_exits_1_on_failure(capsys, monkeypatch):
    assert main(["--quick", "--only", "prop10_npnfn_sympy"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["--quick", "--json", "--only", "prop11_forward_pass"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["passed"] and rows[0]["control_caught"] and rows[0]["cases"] > 0

    def broken(quick, seed):
        return CheckResult(
            name="broken", proposition="-", statement="-", cases=1, max_error=math.inf, control_error=1.0
        ).finish()

    monkeypatch.setitem(REGISTRY, "prop10_npnfn_sympy", broken)
    assert main(["--quick", "--only", "prop10_npnfn_sympy"]) == 1
    assert "FAIL" in capsys.readouterr().out
