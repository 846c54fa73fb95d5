"""The metanet protocol and registry (gmn.metanets) on the one batch type (gmn.WeightSpaceBatch).

Every registered metanet takes the same batch; ``forward``/``pooled``/``edit`` have the documented shapes;
``edit`` is equivariant exactly where the registry says so (the MLP's is not: the negative control); the
registry's ``supports`` gives the paper's "n/a" reasons; batching shifts every index attribute by what it
indexes (declared ``__inc__``), so batched and per-graph element sets agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch_geometric.data import Batch, Data

import gmn
import symgraph
from gmn import metanets
from gmn.errors import MetanetOutputError
from gmn.weight_space import INDEX_ATTRIBUTES, WeightSpaceBatch, weight_space_loader
from symgraph.models import build_model
from symgraph.symmetry import random_analytic_permutation

F64 = torch.float64


def _mlp(widths=(3, 5, 4, 2), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).double()


def _data(g):
    return gmn.graph_to_data(g, dtype=F64)


def _build(name, example, **kw):
    torch.manual_seed(1)
    return metanets.build(name, hidden_dim=6, example=example, **kw).double().eval()


def test_registry_has_every_metanet_with_its_support():
    assert metanets.names() == ("gmn", "deepsets", "dmc", "statnn", "npnfn", "dws", "mlp")
    assert {n: metanets.entry(n).supports for n in metanets.names()} == {
        "gmn": "any",
        "deepsets": "any",
        "dmc": "any",
        "statnn": "any",
        "npnfn": "chain",
        "dws": "chain-shape",
        "mlp": "architecture",
    }
    with pytest.raises(ValueError, match="Expected a metanet in"):
        metanets.build("nope", hidden_dim=4)
    with pytest.raises(ValueError, match="already registered"):
        metanets.register("gmn")(lambda **kw: None)
    with pytest.raises(ValueError, match="example="):
        metanets.build("npnfn", hidden_dim=4)


@pytest.mark.parametrize("name", ["gmn", "deepsets", "dmc", "statnn", "npnfn", "dws", "mlp"])
def test_every_metanet_takes_the_same_batch_and_follows_the_protocol(name):
    g = symgraph.parameter_graph(_mlp())
    d = _data(g)
    batch = WeightSpaceBatch.from_data_list([d, _data(symgraph.parameter_graph(_mlp(seed=1)))])
    model = _build(name, d, out_dim=3)
    assert isinstance(model, metanets.Metanet)
    out, pooled = model(batch), model.pooled(batch)
    assert out.shape == (2, 3) and pooled.shape == (2, model.pooled_dim)
    assert not torch.allclose(out[0], out[1])  # two different networks
    plain = Batch.from_data_list([d])  # a torch_geometric batch of WeightSpaceData works the same
    assert torch.allclose(model(plain), out[:1], atol=1e-12)
    if name in ("deepsets", "dmc", "statnn"):
        with pytest.raises(MetanetOutputError, match="no edit output"):
            model.edit(batch)
        with pytest.raises(ValueError, match="edit_dim=None"):
            metanets.build(name, hidden_dim=4, edit_dim=1)
    else:
        editor = _build(name, d, out_dim=None, edit_dim=2)
        assert editor.edit(batch).shape == (2 * g.num_edges, 2)


@pytest.mark.parametrize("name", ["gmn", "npnfn", "dws", "mlp"])
def test_edit_is_equivariant_where_the_registry_says_so_and_the_mlp_is_not(name, tol):
    """``edit`` maps an automorphism of the input network to the same permutation of its per-parameter
    outputs (GMN, NP-NFN, DWSNet); the MLP's edit is the negative control that shows the check can fail."""
    g = symgraph.parameter_graph(_mlp())
    perm = random_analytic_permutation(g, torch.Generator().manual_seed(2))
    assert g.is_automorphism(perm)
    eperm = g.edge_permutation(perm)
    editor = _build(name, _data(g), out_dim=None, edit_dim=1)
    out = editor.edit(WeightSpaceBatch.from_data_list([_data(g)]))
    out_p = editor.edit(WeightSpaceBatch.from_data_list([_data(g.permute(perm))]))
    err = float((out_p[eperm] - out).detach().abs().max())
    if metanets.entry(name).equivariant_edit:
        assert err < tol[F64]
        assert float((out_p - out).detach().abs().max()) > 1e-6  # not vacuous: the outputs do move
    else:
        assert err > 1e-4


def test_supports_gives_the_papers_na_reasons():
    chain = [_data(symgraph.parameter_graph(_mlp((3, k, 2)))) for k in (4, 5)]
    resnet = build_model("resnet", in_shape=(2, 6, 6), hidden=4, norm="none")
    mixed = chain + [_data(symgraph.parameter_graph(resnet, input_shape=resnet.example_input_shape))]
    for name in ("gmn", "deepsets", "dmc", "statnn"):
        assert metanets.unsupported(name, mixed) is None
    assert metanets.unsupported("npnfn", chain) is None  # widths may differ
    assert metanets.unsupported("npnfn", mixed).startswith("NP-NFN cannot process this architecture: expected only")
    assert metanets.unsupported("dws", mixed).startswith("DWSNets cannot process")
    assert metanets.unsupported("dws", chain) == "DWSNets needs networks of one shape (got 2)"
    assert metanets.unsupported("dws", chain[:1]) is None
    assert metanets.unsupported("mlp", chain) == "MLP needs networks of one architecture (got 2 sizes)"
    deeper = _data(symgraph.parameter_graph(_mlp((3, 4, 4, 2))))
    assert metanets.unsupported("npnfn", [*chain, deeper]) == "NP-NFN needs one layer layout for all networks (got 2)"


def test_batching_shifts_every_index_attribute_by_what_it_indexes():
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
    ds = [gmn.graph_to_data(symgraph.parameter_graph(m)) for m in (bn, _mlp().float(), bn)]
    b = WeightSpaceBatch.from_data_list(ds)
    for i, d in enumerate(ds):
        got = b.get_example(i)
        for key in INDEX_ATTRIBUTES:
            assert torch.equal(got[key], d[key]), key  # get_example undoes exactly the declared shifts
    # in the batch, node_param_node and param_edge/chain_edge index the batch's own nodes and edges
    offset = ds[0].num_nodes + ds[1].num_nodes
    assert torch.equal(b.node_param_node, torch.cat([ds[0].node_param_node, ds[2].node_param_node + offset]))
    want = torch.cat([ds[0].x[ds[0].node_param_node], ds[2].x[ds[2].node_param_node]])
    assert torch.equal(b.x[b.node_param_node], want)
    assert torch.equal(b.edge_attr[b.param_edge], torch.cat([d.edge_attr[d.param_edge] for d in ds]))
    assert torch.equal(b.edge_attr[b.chain_edge], ds[1].edge_attr[ds[1].chain_edge])  # only the MLP is a chain
    assert torch.equal(b.param_slot, torch.cat([d.param_slot for d in ds]))  # positions are not shifted
    # negative control: a plain Data does not know these attributes are indices (PyG would not shift them)
    plain = Batch.from_data_list([Data(**d.to_dict()) for d in ds])
    assert torch.equal(plain.param_edge[ds[0].param_edge.numel() :][: ds[1].param_edge.numel()], ds[1].param_edge)
    assert not torch.equal(plain.node_param_node, b.node_param_node)  # unshifted: would index the wrong nodes


def test_param_elements_of_a_batch_are_those_of_each_graph():
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
    ds = [gmn.graph_to_data(symgraph.parameter_graph(m)) for m in (_mlp().float(), bn)]
    el = WeightSpaceBatch.from_data_list(ds).param_elements()
    for i, d in enumerate(ds):
        one = d.param_elements()
        mask = el.graph == i
        assert torch.equal(el.value[mask], one.value) and torch.equal(el.kind[mask], one.kind)
        assert torch.equal(el.depth[mask], one.depth)
        assert torch.equal(el.tensor[mask] - i * el.max_tensors, one.tensor)
    assert el.max_tensors == 4 + 4 and el.value.numel() == sum(d.param_elements().value.numel() for d in ds)


def test_chain_groups_are_computed_once_per_batch_and_stack_the_weights():
    gs = [symgraph.parameter_graph(_mlp((3, k, 2))) for k in (4, 5, 4)]
    b = WeightSpaceBatch.from_graphs(gs, dtype=F64)
    groups = b.chain_groups()
    assert groups is b.chain_groups()  # cached on the batch
    assert [grp.graphs.tolist() for grp in groups] == [[0, 2], [1]]
    Ws, bs = groups[0].weights(b.edge_attr[:, 0])
    assert torch.equal(Ws[0][1, :, :, 0], _mlp((3, 4, 2))[0].weight.detach())
    assert torch.equal(bs[1][0, :, 0], _mlp((3, 4, 2))[2].bias.detach())
    params = groups[1].params(b.edge_attr[:, 0])
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "0.weight": (1, 5, 3, 1),
        "0.bias": (1, 5),
        "2.weight": (1, 2, 5, 1),
        "2.bias": (1, 2),
    }


def test_weight_space_loader_shuffles_like_torch_geometrics_loader():
    """Every metanet of an experiment reads batches from one loader type; it draws its shuffle from torch's
    generator exactly as torch_geometric's DataLoader does (so the change of loader kept GMN's numbers)."""
    from torch_geometric.loader import DataLoader as PygLoader

    ds = []
    for i in range(7):
        d = gmn.graph_to_data(symgraph.parameter_graph(nn.Linear(2, 1 + i % 3)), y=float(i))
        ds.append(d)
    torch.manual_seed(4)
    ours = [b.y.flatten().tolist() for b in weight_space_loader(ds, 3, shuffle=True)]
    torch.manual_seed(4)
    pyg = [b.y.flatten().tolist() for b in PygLoader(ds, batch_size=3, shuffle=True)]
    torch.manual_seed(5)
    other = [b.y.flatten().tolist() for b in weight_space_loader(ds, 3, shuffle=True)]
    assert ours == pyg and ours != other
    assert all(isinstance(b, WeightSpaceBatch) for b in weight_space_loader(ds, 3))
