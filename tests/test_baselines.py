"""Baselines: DeepSets, DMC, StatNN, NP-NFN — their (in)variances, each with a negative control (all on
WeightSpaceBatch inputs, the metanet protocol of gmn.metanets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch_geometric.data import Batch

import gmn
import symgraph
from gmn.baselines import DMC, NPNFN, DeepSetsBaseline, NFNSpec, StatNN, UnsupportedArchitectureError
from gmn.baselines.statnn import tensor_statistics


def _mlp(widths=(3, 5, 4, 2), bias=True):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double()


def _cnn(bias=True):
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5, bias=bias),
        nn.ReLU(),
        nn.Linear(5, 2, bias=bias),
    ).double()


def _graphs():
    return {
        "mlp": symgraph.parameter_graph(_mlp()),
        "mlp_nobias": symgraph.parameter_graph(_mlp(bias=False)),
        "cnn": symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 6, 6)),
        "cnn_nobias": symgraph.parameter_graph(_cnn(bias=False), input_shape=(1, 2, 6, 6)),
    }


def _automorphism(g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(g.num_nodes)
    for grp in g.node_groups:
        if grp.role == "hidden" and grp.count > 1:
            perm[grp.start : grp.stop] = grp.start + torch.randperm(grp.count, generator=gen)
    assert g.is_automorphism(perm)
    return perm


def _batch(*gs):
    return Batch.from_data_list([gmn.graph_to_data(g, dtype=torch.float64) for g in gs])


def _swap_weights_across_tensors(g):
    """Swap the first weight of the first and of the second parameter tensor (changes per-tensor statistics)."""
    w = g.edge_weight.clone()
    a = g.edge_param.edges_of(g.edge_param.names[0]).start
    b = g.edge_param.edges_of(g.edge_param.names[-1]).start
    w[a], w[b] = g.edge_weight[b] + 0.5, g.edge_weight[a]
    return g.with_weights(w)


# ---------------------------------------------------------------------------------------------- DeepSets
def test_deepsets_is_invariant_to_automorphisms_and_sensitive_to_values(tol):
    g = _graphs()["cnn"]
    torch.manual_seed(2)
    model = DeepSetsBaseline(hidden_dim=16).double().eval()
    out = model(_batch(g))
    assert (model(_batch(g.permute(_automorphism(g)))) - out).abs().max() < tol[torch.float64]
    assert (model(_batch(_swap_weights_across_tensors(g))) - out).abs().max() > 1e-8


def test_deepsets_and_dmc_take_mixed_architecture_batches_and_match_single_graphs():
    gs = list(_graphs().values())
    torch.manual_seed(3)
    for model in (DeepSetsBaseline(hidden_dim=8).double().eval(), DMC(channels=8).double().eval()):
        out = model(_batch(*gs))
        assert out.shape == (len(gs), 1)
        for i, g in enumerate(gs):
            assert torch.allclose(model(_batch(g))[0], out[i], atol=1e-12), type(model).__name__


# ---------------------------------------------------------------------------------------------- DMC
def test_dmc_is_not_invariant_to_hidden_unit_permutations():
    """DMC reads the weights as a sequence: it is not equivariant (why it fails out of distribution)."""
    g = _graphs()["mlp"]
    torch.manual_seed(4)
    model = DMC(channels=8, first_stride=1).double().eval()
    out = model(_batch(g))
    assert (model(_batch(g.permute(_automorphism(g)))) - out).abs().max() > 1e-8
    seq, mask = model.sequences(_batch(g))
    assert seq.shape == (1, g.num_edges) and mask.all()
    assert torch.equal(seq[0], g.edge_weight)
    with pytest.raises(ValueError, match="odd kernel_size"):
        DMC(kernel_size=4)


# ---------------------------------------------------------------------------------------------- StatNN
def test_tensor_statistics_match_torch():
    torch.manual_seed(5)
    vals = [torch.randn(n, dtype=torch.float64) for n in (1, 2, 7, 30)]
    seg = torch.cat([torch.full((v.numel(),), i) for i, v in enumerate(vals)])
    perm = torch.randperm(seg.numel())
    stats, count = tensor_statistics(torch.cat(vals)[perm], seg[perm], 5)
    assert count.tolist() == [1, 2, 7, 30, 0]
    q = torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64)
    for i, v in enumerate(vals):
        ref = torch.cat([v.mean().view(1), v.var(unbiased=False).view(1), torch.quantile(v, q)])
        assert torch.allclose(stats[i], ref, atol=1e-12)
    assert (stats[4] == 0).all()


@pytest.mark.parametrize("layout", ["pad", "pool"])
def test_statnn_is_invariant_to_automorphisms_with_a_negative_control(layout, tol):
    g = _graphs()["cnn"]
    torch.manual_seed(6)
    model = StatNN(hidden_dim=16, layout=layout, max_tensors=8).double().eval()
    out = model(_batch(g))
    assert (model(_batch(g.permute(_automorphism(g)))) - out).abs().max() < tol[torch.float64]
    assert (model(_batch(_swap_weights_across_tensors(g))) - out).abs().max() > 1e-8


def test_statnn_pad_layout_refuses_too_many_tensors_and_pool_layout_mixes_architectures():
    gs = list(_graphs().values())
    with pytest.raises(UnsupportedArchitectureError, match="at most 4 parameter tensors"):
        StatNN(max_tensors=4).double()(_batch(gs[2]))
    torch.manual_seed(7)
    model = StatNN(hidden_dim=8, layout="pool").double().eval()
    out = model(_batch(*gs))
    for i, g in enumerate(gs):
        assert torch.allclose(model(_batch(g))[0], out[i], atol=1e-12)


# ---------------------------------------------------------------------------------------------- NP-NFN
@pytest.mark.parametrize("arch", ["mlp", "mlp_nobias", "cnn", "cnn_nobias"])
def test_npnfn_is_equivariant_to_hidden_unit_permutations(arch, tol):
    g = _graphs()[arch]
    torch.manual_seed(8)
    model = NPNFN(g, hidden_dim=6, num_layers=2, out_dim=1, edge_out_dim=2).double().eval()
    perm = _automorphism(g, seed=1)
    eperm = g.edge_permutation(perm)
    gp = g.permute(perm)
    out, out_p = model.edit(_batch(g)), model.edit(_batch(gp))
    assert out.shape == (g.num_edges, 2)
    assert (out_p[eperm] - out).abs().max() < tol[torch.float64]
    assert (model(_batch(g)) - model(_batch(gp))).abs().max() < tol[torch.float64]
    assert (out_p - out).abs().max() > 1e-8  # the check above is not vacuous


def test_npnfn_equivariance_check_flags_a_non_symmetry():
    """Negative control: permuting the rows of W1 without the columns of W2 is not a symmetry."""
    g = _graphs()["mlp"]
    torch.manual_seed(9)
    model = NPNFN(g, hidden_dim=6, num_layers=2, out_dim=None, edge_out_dim=1).double().eval()
    spec = NFNSpec.from_graph(g)
    w = g.edge_weight.clone()
    r = g.edge_param.edges_of(spec.layers[0].weight)
    rows = torch.tensor([1, 0, 2, 3, 4])
    W = w[r.start : r.stop].view(5, 3)
    w[r.start : r.stop] = W[rows].reshape(-1)
    gb = g.with_weights(w)
    out, out_b = model.edit(_batch(g)), model.edit(_batch(gb))
    # where the rows went, if it were a symmetry
    idx = torch.arange(g.num_edges)
    idx[r.start : r.stop] = r.start + torch.arange(15).view(5, 3)[rows].reshape(-1)
    assert (out_b - out[idx]).abs().max() > 1e-6


def test_npnfn_batches_networks_of_different_widths():
    gs = [symgraph.parameter_graph(_mlp((3, k, 4, 2))) for k in (2, 5, 5)]
    torch.manual_seed(10)
    model = NPNFN(gs[0], hidden_dim=4, edge_out_dim=1).double().eval()
    out, edits = model(_batch(*gs)), gmn.split_edge_output(_batch(*gs), model.edit(_batch(*gs)))
    assert len(model._pooled_groups(_batch(*gs))[0]) == 2  # widths 2 and 5: two groups, outputs in batch order
    for i, g in enumerate(gs):
        assert torch.allclose(model(_batch(g))[0], out[i], atol=1e-12)
        assert torch.allclose(model.edit(_batch(g)), edits[i], atol=1e-12)
    assert not torch.allclose(out[0], out[1])  # negative control: the comparison above can fail
    with pytest.raises(UnsupportedArchitectureError, match="layer signature"):
        model(_batch(symgraph.parameter_graph(_mlp((3, 4, 2)))))


def test_npnfn_edge_output_maps_back_onto_the_parameters():
    m = _mlp()
    g = symgraph.parameter_graph(m)
    model = NPNFN(g, hidden_dim=4, out_dim=None, edge_out_dim=1).double()
    sd = gmn.edge_output_to_state_dict(g, model.edit(_batch(g)), residual_scale=0.1)
    m.load_state_dict(sd)


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("resnet", dict(in_shape=(2, 6, 6), hidden=4, norm="none"), "only linear, convolution and bias edges"),
        ("vit", dict(in_shape=(2, 8, 8), dim=8, depth=1), "expected an MLP or CNN without normalisation"),
        ("deepsets", dict(in_shape=(2, 4, 4), hidden=8), "only linear, convolution and bias edges"),
        ("cnn2d", dict(in_shape=(2, 6, 6), hidden=4, norm="batchnorm"), "without normalisation layers"),
    ],
)
def test_npnfn_raises_unsupported_architecture_on_residual_attention_deepsets_and_norms(name, kw, match):
    from symgraph.models import build_model

    m = build_model(name, **kw)
    g = symgraph.parameter_graph(m, input_shape=m.example_input_shape)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        NPNFN(g)
    with pytest.raises(UnsupportedArchitectureError, match=match):  # nor a batch of it, for a model of a chain
        NPNFN(_graphs()["mlp"]).double()(_batch(g.with_weights(g.edge_weight.double(), g.node_weight.double())))
    # the other baselines take it
    d = _batch(g.with_weights(g.edge_weight.double(), g.node_weight.double()))
    for model in (DeepSetsBaseline(hidden_dim=4), DMC(channels=4), StatNN(hidden_dim=4, layout="pool")):
        assert model.double()(d).shape == (1, 1)
