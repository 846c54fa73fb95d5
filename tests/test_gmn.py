"""Graph metanetworks: invariance/equivariance to automorphisms, sensitivity to non-automorphisms, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

import gmn
import symgraph
from gmn.layers import GMNLayer
from symgraph.symmetry import random_analytic_permutation


def _mlp(widths, act=nn.ReLU):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


def _cnn(c=(3, 4, 5), k=3):
    return nn.Sequential(
        nn.Conv2d(c[0], c[1], k, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[1], c[2], k),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * c[2], 6),
        nn.Tanh(),
        nn.Linear(6, 2),
    ).double()


def random_automorphism(g: symgraph.NeuralGraph, gen: torch.Generator) -> torch.Tensor:
    """A random automorphism drawn from the graph's declared analytic symmetries."""
    perm = random_analytic_permutation(g, generator=gen)
    assert g.is_automorphism(perm)
    assert not torch.equal(perm, torch.arange(g.num_nodes))
    return perm


def input_swap(g: symgraph.NeuralGraph) -> torch.Tensor:
    """Swap two input nodes: edges and colours are preserved, but fixed nodes move (not an automorphism)."""
    perm = torch.arange(g.num_nodes)
    a, b = g.input_nodes[:2].tolist()
    perm[a], perm[b] = b, a
    assert not g.is_automorphism(perm)
    return perm


def _data(g):
    return gmn.graph_to_data(g, dtype=torch.float64)


def _model(**kw):
    torch.manual_seed(0)
    kw.setdefault("hidden_dim", 16)
    kw.setdefault("num_layers", 2)
    return gmn.GMN(**kw).double().eval()


GRAPHS = {
    "mlp": lambda: symgraph.parameter_graph(_mlp((3, 5, 4, 2))),
    "cnn": lambda: symgraph.parameter_graph(_cnn(), input_shape=(1, 3, 8, 8)),
}


@pytest.mark.parametrize("arch", sorted(GRAPHS))
def test_gmn_output_is_invariant_to_random_automorphisms_in_float64(arch, tol):
    torch.manual_seed(1)
    g = GRAPHS[arch]()
    model = _model()
    gen = torch.Generator().manual_seed(2)
    out = model(Batch.from_data_list([_data(g)]))
    for _ in range(2):
        gp = g.permute(random_automorphism(g, gen))
        assert not torch.equal(gp.edge_weight, g.edge_weight)
        out_p = model(Batch.from_data_list([_data(gp)]))
        assert (out - out_p).abs().max() < tol[torch.float64]


@pytest.mark.parametrize("arch", sorted(GRAPHS))
def test_swapping_two_input_nodes_changes_gmn_output(arch):
    """Negative control: input nodes are fixed by every automorphism; a GMN must see their swap."""
    g = GRAPHS[arch]()
    model = _model()
    out = model(Batch.from_data_list([_data(g)]))
    gp = g.permute(input_swap(g), check=False)
    out_p = model(Batch.from_data_list([_data(gp)]))
    assert (out - out_p).abs().max() > 1e-6


@pytest.mark.parametrize("arch", sorted(GRAPHS))
def test_gmn_edge_output_is_equivariant_to_random_automorphisms(arch, tol):
    g = GRAPHS[arch]()
    model = _model(out_dim=None, edge_out_dim=2)
    gen = torch.Generator().manual_seed(3)
    perm = random_automorphism(g, gen)
    eperm = g.edge_permutation(perm)
    out = model(Batch.from_data_list([_data(g)]))
    out_p = model(Batch.from_data_list([_data(g.permute(perm))]))
    assert out.shape == (g.num_edges, 2)
    assert (out_p[eperm] - out).abs().max() < tol[torch.float64]
    # negative control: without re-indexing the outputs differ (the check is not vacuous)
    assert (out_p - out).abs().max() > 1e-6


def test_gmn_edge_output_is_not_equivariant_to_input_swap():
    g = GRAPHS["mlp"]()
    model = _model(out_dim=None, edge_out_dim=1)
    perm = input_swap(g)
    gp = g.permute(perm, check=False)
    eperm = g.edge_permutation(perm)
    out = model(Batch.from_data_list([_data(g)]))
    out_p = model(Batch.from_data_list([_data(gp)]))
    assert (out_p[eperm] - out).abs().max() > 1e-6


@pytest.mark.parametrize(
    "config",
    [
        dict(order=("global", "node", "edge"), global_aggr="inside"),
        dict(use_global=False, pool=("edge",)),
        dict(aggr="mean", global_reduce="sum", norm=None, residual=False),
    ],
)
def test_gmn_variants_are_invariant(config, tol):
    g = GRAPHS["cnn"]()
    model = _model(**config)
    perm = random_automorphism(g, torch.Generator().manual_seed(4))
    a = model(Batch.from_data_list([_data(g)]))
    b = model(Batch.from_data_list([_data(g.permute(perm))]))
    assert (a - b).abs().max() < tol[torch.float64]


@pytest.mark.parametrize("heads", [dict(out_dim=3), dict(out_dim=None)])
def test_param_pooling_and_the_pooled_representation_are_invariant(heads, tol):
    """``pool=("param",)`` (one mean per parameter tensor) with a graph head, and the pooled representation
    itself (no head): invariant to random automorphisms of a CNN's graph; an input swap changes them."""
    g = GRAPHS["cnn"]()
    k = sum(1 for s in g.slots if s.location == "edge" and not s.is_buffer)
    model = _model(pool=("param",), param_tensors=k, use_global=False, **heads)
    a = model(Batch.from_data_list([_data(g), _data(g)]))
    assert a.shape == (2, 3 if heads["out_dim"] else 16 * k) and model.pooled_dim == 16 * k
    b = model(
        Batch.from_data_list([_data(g.permute(random_automorphism(g, torch.Generator().manual_seed(6)))), _data(g)])
    )
    assert (a - b).abs().max() < tol[torch.float64]
    c = model(Batch.from_data_list([_data(g.permute(input_swap(g), check=False)), _data(g)]))
    assert (a[0] - c[0]).abs().max() > 1e-6  # negative control


def test_param_pooling_needs_the_number_of_tensors():
    with pytest.raises(ValueError, match="param_tensors"):
        gmn.GMN(hidden_dim=4, num_layers=1, pool=("param",))
    g = GRAPHS["mlp"]()  # 6 edge-stored tensors
    model = _model(pool=("param",), param_tensors=2)
    with pytest.raises(ValueError, match="param_tensors"):
        model(Batch.from_data_list([_data(g)]))


_BATCH_GRAPHS = {
    "mlp_a": lambda: symgraph.parameter_graph(_mlp((3, 5, 2))),
    "mlp_b": lambda: symgraph.parameter_graph(_mlp((4, 3, 3, 1))),
    "tanh_mlp": lambda: symgraph.parameter_graph(_mlp((2, 6, 1), nn.Tanh)),
    "cnn": lambda: symgraph.parameter_graph(_cnn(), input_shape=(1, 3, 8, 8)),
}
_CACHE: dict = {}


def _cached(name):
    if name not in _CACHE:
        torch.manual_seed(5)
        _CACHE[name] = _data(_BATCH_GRAPHS[name]())
        _CACHE[name, "alone"] = None
    return _CACHE[name]


@settings(max_examples=8)
@given(st.lists(st.sampled_from(sorted(_BATCH_GRAPHS)), min_size=2, max_size=4))
def test_graph_batched_with_other_architectures_gives_the_same_output_as_alone(names):
    datas = [_cached(n) for n in names]
    model = _CACHE.get("model") or _CACHE.setdefault("model", _model(edge_out_dim=1))
    out_b, edge_b = model(Batch.from_data_list(datas))
    per_graph = gmn.split_edge_output(Batch.from_data_list(datas), edge_b)
    for i, n in enumerate(names):
        if _CACHE.get((n, "alone")) is None:
            _CACHE[n, "alone"] = model(Batch.from_data_list([datas[i]]))
        out_a, edge_a = _CACHE[n, "alone"]
        assert torch.allclose(out_b[i], out_a[0], atol=1e-12, rtol=0)
        assert torch.allclose(per_graph[i], edge_a, atol=1e-12, rtol=0)


def test_gmn_trains_one_step_and_has_repr():
    g = GRAPHS["mlp"]()
    model = gmn.GMN(hidden_dim=8, num_layers=1, norm="batchnorm")
    batch = Batch.from_data_list([gmn.graph_to_data(g), gmn.graph_to_data(g, normalize="graph")])
    loss = model(batch).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.layers.parameters())
    assert "GMN(hidden_dim=8" in repr(model) and repr(model.layers[0]).startswith("GMNLayer(")
    model.reset_parameters()


def test_edge_output_to_state_dict_loads_into_the_model():
    m = _mlp((3, 4, 2)).float()
    g = symgraph.parameter_graph(m)
    model = gmn.GMNEdgeHead(hidden_dim=8, num_layers=1)
    out = model(Batch.from_data_list([gmn.graph_to_data(g)]))
    sd = gmn.edge_output_to_state_dict(g, out)
    m.load_state_dict(sd)
    assert torch.equal(m[0].weight.detach().flatten(), out[:12, 0].detach())
    sd2 = gmn.edge_output_to_state_dict(g, out, residual_scale=0.5)
    ref = g.to_state_dict()
    k = "2.bias"
    sl = g.edge_param.edges_of(k)
    assert torch.allclose(sd2[k], ref[k] + 0.5 * out[sl.start : sl.stop, 0])
    # gradients flow back to the metanet output (INR editing trains through functional_call)
    y = torch.func.functional_call(m, sd2, (torch.randn(5, 3),)).sum()
    y.backward()
    assert model.edge_head.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="Expected edge_out with"):
        gmn.edge_output_to_state_dict(g, out[:-1])


def test_gmn_layer_with_hand_built_functions_simulates_the_forward_pass():
    """Prop. 11 (D.2) with pluggable functions: msg = e * v_src, node = sigma(sum) on forward edges only."""
    torch.manual_seed(6)
    m = _mlp((3, 5, 2))
    g = symgraph.parameter_graph(m)
    x = torch.randn(3, dtype=torch.float64)
    hidden = g.role_mask("hidden").double()
    source = (g.role_mask("input") | g.role_mask("bias")).double()
    v = torch.stack([torch.zeros(g.num_nodes, dtype=torch.float64), source, hidden], 1)
    v[g.input_nodes, 0] = x
    v[g.role_mask("bias"), 0] = 1.0

    def msg_fn(v_dst, v_src, e, u_e):
        return e[:, :1] * v_src[:, :1]

    def node_fn(v, agg, u_n):
        val = torch.where(v[:, 2:3] > 0, torch.relu(agg), agg)
        return torch.cat([torch.where(v[:, 1:2] > 0, v[:, :1], val), v[:, 1:]], 1)

    layer = GMNLayer(3, 1, 0, order=("node",), msg_fn=msg_fn, node_fn=node_fn, residual=False, norm=None)
    e = g.edge_weight.view(-1, 1)
    for _ in range(2):
        v, e, _ = layer(v, g.edge_index, e)
    assert torch.allclose(v[g.output_nodes, 0], m(x), atol=1e-12)
    # negative control: messages reversed (receiver = src) do not compute the forward pass
    v2 = torch.stack([torch.zeros(g.num_nodes, dtype=torch.float64), source, hidden], 1)
    v2[g.input_nodes, 0] = x
    v2[g.role_mask("bias"), 0] = 1.0
    for _ in range(2):
        v2, _, _ = layer(v2, g.edge_index.flip(0), g.edge_weight.view(-1, 1))
    assert not torch.allclose(v2[g.output_nodes, 0], m(x), atol=1e-6)


def test_gmn_layer_global_inside_sums_per_graph():
    """Eq. 35 with global_fn_inside(e, u) = e: u becomes the per-graph sum of edge features."""
    gs = [symgraph.parameter_graph(_mlp((2, 3, 1))), symgraph.parameter_graph(_mlp((3, 4, 2)))]
    batch = Batch.from_data_list([g.to_pyg() for g in gs])
    layer = GMNLayer(
        1, 1, 1, order=("global",), global_aggr="inside", global_fn_inside=lambda e, u: e, residual=False, norm=None
    )
    v = torch.zeros(batch.num_nodes, 1, dtype=torch.float64)
    _, _, u = layer(v, batch.edge_index, batch.edge_weight.view(-1, 1), None, batch.batch)
    expected = torch.stack([g.edge_weight.sum() for g in gs]).view(-1, 1)
    assert torch.allclose(u, expected)


def test_gmn_layer_rejects_bad_options():
    with pytest.raises(ValueError, match="Expected order"):
        GMNLayer(4, 4, order=("edge", "edge"))
    with pytest.raises(ValueError, match="Expected global_aggr"):
        GMNLayer(4, 4, global_aggr="middle")
    with pytest.raises(ValueError, match="Expected norm"):
        GMNLayer(4, 4, norm="groupnorm")


def _registry_graph(name: str, **kw):
    from symgraph.models import build_model

    torch.manual_seed(7)
    m = build_model(name, **kw).double()
    for mod in m.modules():  # non-trivial running statistics, so that norms' node weights move visibly
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return symgraph.parameter_graph(m, input_shape=m.example_input_shape)


REGISTRY = {
    "cnn2d_groupnorm": ("cnn2d", dict(in_shape=(2, 6, 6), hidden=4, norm="groupnorm", groups=2, out_dim=3)),
    "cnn1d_batchnorm": ("cnn1d", dict(in_shape=(2, 6, 6), hidden=4, kernel=3, out_dim=3)),
    "deepsets": ("deepsets", dict(in_shape=(2, 4, 4), hidden=8, norm="batchnorm", out_dim=3)),
    "resnet": ("resnet", dict(in_shape=(2, 6, 6), hidden=4, out_dim=3)),
    "vit": ("vit", dict(in_shape=(2, 8, 8), dim=8, depth=1, out_dim=3)),
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gmn_is_invariant_on_norm_residual_attention_and_deepsets_architectures(name, tol):
    family, kw = REGISTRY[name]
    g = _registry_graph(family, **kw)
    model = _model(edge_out_dim=1)
    perm = random_automorphism(g, torch.Generator().manual_seed(8))
    out, eout = model(Batch.from_data_list([_data(g)]))
    out_p, eout_p = model(Batch.from_data_list([_data(g.permute(perm))]))
    assert (out - out_p).abs().max() < tol[torch.float64]
    assert (eout_p[g.edge_permutation(perm)] - eout).abs().max() < tol[torch.float64]
    out_s = model(Batch.from_data_list([_data(g.permute(input_swap(g), check=False))]))[0]
    assert (out - out_s).abs().max() > 1e-6


def test_train_regressor_checkpoints_atomically_and_resumes(tmp_path):
    from torch_geometric.loader import DataLoader

    gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in range(1, 7)]
    data = [gmn.graph_to_data(g, y=0.1 + 0.1 * k) for k, g in enumerate(gs)]
    train, val = DataLoader(data, batch_size=3, shuffle=False), DataLoader(data, batch_size=6)
    ckpt = tmp_path / "run" / "ckpt.pt"
    torch.manual_seed(0)
    model = gmn.GMN(hidden_dim=8, num_layers=1)
    h1 = gmn.train_regressor(model, train, val, epochs=2, lr=1e-3, checkpoint=ckpt, progress=False, device="cpu")
    assert [r["epoch"] for r in h1["epochs"]] == [0, 1]
    assert {"train_loss", "val_loss", "val_r2", "val_tau"} <= set(h1["epochs"][-1])
    assert ckpt.exists() and not [p for p in ckpt.parent.iterdir() if p.suffix == ".tmp"]
    # resume: a fresh model continues from epoch 2 with the saved weights and history
    model2 = gmn.GMN(hidden_dim=8, num_layers=1)
    h2 = gmn.train_regressor(
        model2, train, val, epochs=3, lr=1e-3, checkpoint=ckpt, progress=False, device="cpu", restore_best=False
    )
    assert [r["epoch"] for r in h2["epochs"]] == [0, 1, 2]
    assert h2["epochs"][0]["train_loss"] == h1["epochs"][0]["train_loss"]
    ev = gmn.evaluate(model2, val, device="cpu")
    assert ev["pred"].shape == (6, 1) and ((ev["pred"] > 0) & (ev["pred"] < 1)).all()
    m = gmn.regression_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
    assert m["tau"] == pytest.approx(-1.0) and m["r2"] == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="Expected loss"):
        gmn.train_regressor(model, train, epochs=1, loss="hinge", progress=False)
