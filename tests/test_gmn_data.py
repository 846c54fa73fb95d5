"""gmn.data: features from colour keys, automorphism invariance of the features, batching, the on-disk dataset."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

import gmn
import symgraph
from gmn import data as D


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    )


def _hidden_shuffle(g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(g.num_nodes)
    for grp in g.node_groups:
        if grp.role == "hidden" and grp.count > 1:
            perm[grp.start : grp.stop] = grp.start + torch.randperm(grp.count, generator=gen)
    assert g.is_automorphism(perm)
    return perm


def test_node_features_come_from_colour_keys():
    g = symgraph.parameter_graph(_mlp())
    d = gmn.graph_to_data(g)
    assert d.x_cat.shape == (g.num_nodes, len(D.NODE_CAT_COLUMNS))
    assert d.x.shape == (g.num_nodes, D.NODE_FLOAT_DIM)
    role = d.x_cat[:, D.NODE_CAT_COLUMNS.index("role")]
    assert (role[g.input_nodes] == D.ROLE_VOCAB.index("input")).all()
    assert (role[g.output_nodes] == D.ROLE_VOCAB.index("output")).all()
    act = d.x_cat[:, D.NODE_CAT_COLUMNS.index("act_first")]
    hidden = [grp for grp in g.node_groups if grp.role == "hidden"]
    assert (act[hidden[0].start : hidden[0].stop] == D.ACTIVATION_VOCAB.index("relu")).all()
    assert (act[hidden[1].start : hidden[1].stop] == D.ACTIVATION_VOCAB.index("tanh")).all()
    assert (act[g.output_nodes] == D.ACTIVATION_VOCAB.index("none")).all()


def test_input_and_output_nodes_get_distinct_positional_ids():
    g = symgraph.parameter_graph(_mlp())
    pos = gmn.graph_to_data(g).x_cat[:, D.NODE_CAT_COLUMNS.index("position")]
    assert pos[g.input_nodes].tolist() == [1, 2, 3]
    assert pos[g.output_nodes].tolist() == [1 + D.MAX_POSITIONS, 2 + D.MAX_POSITIONS]
    others = ~(g.role_mask("input") | g.role_mask("output"))
    assert (pos[others] == 0).all()


def test_bias_nodes_get_the_depth_below_their_layer():
    g = symgraph.parameter_graph(_mlp())
    depth = gmn.graph_to_data(g).x_cat[:, D.NODE_CAT_COLUMNS.index("depth")]
    bias_groups = [grp for grp in g.node_groups if grp.role == "bias"]
    assert [int(depth[grp.start]) for grp in bias_groups] == [0, 1, 2]
    assert int(g.node_layer[bias_groups[2].start]) == 0  # the builder's raw depth does not tell them apart


def test_edge_features_both_directions_kernel_and_flatten_positions():
    g = symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 4, 4))
    d = gmn.graph_to_data(g)
    E = g.num_edges
    assert d.num_forward_edges == E and d.edge_index.shape == (2, 2 * E)
    assert torch.equal(d.edge_index[:, E:], g.edge_index.flip(0))
    assert torch.equal(d.edge_attr[:E], d.edge_attr[E:])
    assert (d.edge_cat[:E, 1] == 0).all() and (d.edge_cat[E:, 1] == 1).all()
    assert torch.equal(d.edge_cat[:E, [0, 2, 3]], d.edge_cat[E:, [0, 2, 3]])
    conv = g.edge_param.edges_of("0.weight")
    offs = d.edge_attr[conv.start : conv.stop, 2:4].view(3, 2, 3, 3, 2)
    assert torch.equal(offs[0, 0, :, :, 0], torch.tensor([[-1.0] * 3, [0.0] * 3, [1.0] * 3]))
    assert torch.equal(offs[0, 0, :, :, 1], torch.tensor([[-1.0, 0.0, 1.0]] * 3))
    lin = g.edge_param.edges_of("4.weight")
    flat = d.edge_attr[lin.start : lin.stop, 5:7].view(2, 3, 4, 2)
    assert torch.allclose(flat[0, 0, :, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    assert (flat[..., 1] == 1).all()
    assert d.edge_param_mask.all() and d.edge_attr[:E, 0].equal(g.edge_weight)
    assert d.edge_cat[conv.start, 0] == D.EDGE_KIND_VOCAB.index("conv")
    assert d.edge_cat[lin.start, 0] == D.EDGE_KIND_VOCAB.index("linear:flat")


def test_features_are_invariant_under_an_automorphism():
    g = symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 4, 4))
    perm = _hidden_shuffle(g)
    eperm = g.edge_permutation(perm)
    d, dp = gmn.graph_to_data(g), gmn.graph_to_data(g.permute(perm))
    E = g.num_edges
    assert torch.equal(dp.x_cat[perm], d.x_cat) and torch.equal(dp.x[perm], d.x)
    assert torch.equal(dp.edge_attr[:E][eperm], d.edge_attr[:E])
    assert torch.equal(dp.edge_cat[:E][eperm], d.edge_cat[:E])
    # negative control: the value column did move (the permutation is not the identity on weights)
    assert not torch.equal(dp.edge_attr[:E], d.edge_attr[:E])


def test_norm_parameters_are_stored_in_fixed_node_slots():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(1, 2)
    m[1].weight.data.uniform_(2, 3)
    g = symgraph.parameter_graph(m)
    d = gmn.graph_to_data(g)
    nodes = [grp for grp in g.node_groups if grp.kind == "batchnorm" and grp.role == "hidden"][0]
    x = d.x[nodes.start : nodes.stop]
    assert torch.allclose(x[:, 0], m[1].weight.detach())
    assert torch.allclose(x[:, 1], m[1].bias.detach())
    assert torch.allclose(x[:, 2], m[1].running_mean)
    assert torch.allclose(x[:, 3], m[1].running_var)
    assert d.num_node_params == 16 and d.num_param_tensors == 4 + 4
    assert torch.allclose(d.node_param_values[:4], m[1].weight.detach())


def test_unknown_keys_fall_into_the_other_bucket():
    assert D._edge_kind_id(("weird_op", 3)) == len(D.EDGE_KIND_VOCAB) - 1
    assert D._kind_id("brand_new_layer") == len(D.LAYER_KIND_VOCAB) - 1
    act, arg = D._act_name_and_arg("frobnicate(3)")
    assert act == len(D.ACTIVATION_VOCAB) - 1 and arg == pytest.approx(torch.log1p(torch.tensor(3.0)).item())
    assert D._act_name_and_arg("leaky_relu(0.01)")[0] == D.ACTIVATION_VOCAB.index("leaky_relu")
    assert D._key_hash(("conv", 1)) == D._key_hash(("conv", 1)) != D._key_hash(("conv", 2))


def test_normalisation_options():
    g = symgraph.parameter_graph(_mlp())
    w = gmn.graph_to_data(g, normalize="graph").edge_attr[: g.num_edges, 0]
    assert w.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    mean, std = gmn.weight_statistics([g, g])
    w2 = gmn.graph_to_data(g, normalize=(mean, std)).edge_attr[: g.num_edges, 0]
    assert w2.double().mean().item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="Expected normalize"):
        gmn.graph_to_data(g, normalize="per-layer")


def test_batches_of_different_architectures_keep_each_graph_intact():
    gs = [symgraph.parameter_graph(_mlp()), symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 4, 4))]
    ds = [gmn.graph_to_data(g, y=0.3 * i) for i, g in enumerate(gs)]
    b = Batch.from_data_list(ds)
    assert b.num_graphs == 2 and b.num_forward_edges.tolist() == [g.num_edges for g in gs]
    assert int(b.edge_is_forward.sum()) == sum(g.num_edges for g in gs)
    assert b.edge_param_mask.shape == (sum(g.num_edges for g in gs),)
    assert b.y.shape == (2, 1)
    second = b.get_example(1)
    assert torch.equal(second.edge_index, ds[1].edge_index)


def test_graph_dataset_round_trip_is_sharded_atomic_and_lazy(tmp_path):
    gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in range(1, 6)]
    ds = gmn.GraphDataset.build(tmp_path, [(g, 0.1 * k) for k, g in enumerate(gs)], shard_size=2, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_items"] == 5 and [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    for f in manifest["shards"]:
        torch.load(tmp_path / f["file"], weights_only=True)  # plain tensors: loads without pickle
    ds = gmn.GraphDataset(tmp_path, cache_shards=1)
    assert len(ds) == 5
    for k in (4, 0, 3):
        ref = gmn.graph_to_data(gs[k], y=0.1 * k)
        got = ds[k]
        for key in ("x", "x_cat", "edge_index", "edge_attr", "edge_cat", "edge_param_mask", "y"):
            assert torch.equal(got[key], ref[key]), key
        assert len(ds._cache) == 1
    assert torch.equal(ds[-1].x, ds[4].x)
    with pytest.raises(IndexError):
        ds[5]
    batches = list(DataLoader(ds, batch_size=2))
    assert [b.num_graphs for b in batches] == [2, 2, 1]
    with pytest.raises(FileNotFoundError, match="Expected a GraphDataset manifest"):
        gmn.GraphDataset(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- behaviour unchanged
#: Fingerprints of ``graph_to_data`` (every tensor's bytes, every other attribute's repr) and of the colour keys,
#: for registry models and a two-branch model, written by the code *before* the typed keys (issue 17 item 2) with
#: ``python -m tests.test_gmn_data --write``; the typed keys must reproduce them bit for bit.
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "gmn_data_golden.json")


def _golden_cases():
    from tests.test_align import REGISTRY_CASES

    cases = dict(REGISTRY_CASES)
    cases.update(
        {
            "vit_cls_manual": ("vit", dict(in_shape=(1, 4, 4), patch=2, dim=4, depth=1, heads=2, mlp_dim=3)),
            "vit_mean_sdpa": (
                "vit",
                dict(in_shape=(1, 4, 4), patch=4, dim=4, depth=1, heads=1, impl="sdpa", pool="mean"),
            ),
            "cnn1d_layernorm": ("cnn1d", dict(in_shape=(1, 4, 4), hidden=3, conv_layers=1, norm="layernorm", kernel=3)),
            "grid_inr": ("grid_inr", dict(features=2, resolution=(2, 3), hidden=(3,))),
            "siren": ("siren", dict(hidden=(4, 3))),
            "branch_maxpool": ("branch", dict(op="maxpool", combine="cat", width=2)),
            "branch_roll_add": ("branch", dict(op="roll", combine="add", width=2, kernel=3)),
        }
    )
    return cases


def _fingerprint(name: str, kw: dict) -> dict:
    import hashlib

    from tests.strategies import build_arch

    g = symgraph.parameter_graph(build_arch(name, kw, seed=0))
    d = gmn.graph_to_data(g)

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    out = {"edge_color_keys": sha(repr(g.edge_color_keys)), "node_color_keys": sha(repr(g.node_color_keys))}
    for k in sorted(d.keys()):
        v = d[k]
        if isinstance(v, torch.Tensor):
            v = v.contiguous()
            blob = f"{v.dtype}{tuple(v.shape)}".encode() + v.numpy().tobytes()
            out[k] = hashlib.sha256(blob).hexdigest()
        else:
            out[k] = repr(v.to_plain() if hasattr(v, "to_plain") else v)
    return out


@pytest.mark.parametrize("case", sorted(_golden_cases()))
def test_graph_to_data_is_bit_identical_to_the_stored_fingerprints(case):
    with open(GOLDEN) as f:
        expected = json.load(f)[case]
    name, kw = _golden_cases()[case]
    got = _fingerprint(name, kw)
    assert got.keys() == expected.keys()
    assert {k for k in got if got[k] != expected[k]} == set()


def test_negative_control_the_fingerprint_sees_one_changed_weight():
    name, kw = _golden_cases()["mlp"]
    with open(GOLDEN) as f:
        expected = json.load(f)["mlp"]
    from tests.strategies import build_arch

    model = build_arch(name, kw, seed=0)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 0.5
    g = symgraph.parameter_graph(model)
    d = gmn.graph_to_data(g)
    import hashlib

    v = d.edge_attr.contiguous()
    h = hashlib.sha256(f"{v.dtype}{tuple(v.shape)}".encode() + v.numpy().tobytes()).hexdigest()
    assert h != expected["edge_attr"]


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        data = {c: _fingerprint(*spec) for c, spec in sorted(_golden_cases().items())}
        tmp = GOLDEN + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, GOLDEN)
        print(f"wrote {len(data)} fingerprints to {GOLDEN}")


def test_keys_are_typed_and_their_flat_form_is_the_old_tuple():
    from symgraph.graph import ConvSettings, EdgeKey, NodeKey

    g = symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 4, 4))
    assert all(isinstance(k, EdgeKey) for k in g.edge_color_keys)
    assert all(isinstance(k, NodeKey) for k in g.node_color_keys)
    conv = next(k for k in g.edge_color_keys if k.family == "conv")
    assert isinstance(conv.settings, ConvSettings) and conv.settings.groups == 1 and conv.kernel[0] == (3, 3)
    assert conv.flat() == ("conv", "conv2d", (3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros", conv.kernel[1])
    lin = next(k for k in g.edge_color_keys if k.family == "linear")
    assert lin.position == (4, lin.flat()[3]) and lin.after[0][0] == "adaptive_avg_pool2d"
    hidden = next(k for k in g.node_color_keys if k.role == "hidden" and k.activations)
    assert hidden.activations[0].name == "relu" and hidden.flat()[2] == ("relu",)


def test_every_emitted_kind_is_declared_and_known_to_the_vocabularies():
    """Encoders declare the edge families and node kinds they emit (symgraph.graph.declare_vocabulary); every
    key of the registry models uses a declared one, and each declared one has its own vocabulary entry except
    the ones listed here (they share the "other" bucket, told apart by the key hash)."""
    from symgraph.graph import declared_edge_kinds, declared_node_kinds
    from tests.strategies import build_arch

    edges, kinds = declared_edge_kinds(), declared_node_kinds()
    for name, kw in _golden_cases().values():
        g = symgraph.parameter_graph(build_arch(name, kw, seed=0))
        assert {k.family for k in g.edge_color_keys} <= edges.keys()
        assert {k.kind for k in g.node_color_keys if k.role not in ("bias", "position", "head", "group")} <= kinds
    other_edges, other_kinds = {"structural"}, {"structural", "output"}
    assert {f for f in edges if f not in D.EDGE_KIND_VOCAB} == other_edges
    assert {k for k in kinds if k not in D.LAYER_KIND_VOCAB} == other_kinds
    # negative control: an undeclared family is caught by the first check
    assert "weird_op" not in edges and D._edge_kind_id(("weird_op", 3)) == len(D.EDGE_KIND_VOCAB) - 1
