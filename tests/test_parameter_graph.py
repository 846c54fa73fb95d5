"""Parameter graphs of MLPs and CNNs: counts, exact inverse, relabel-and-recover, perturb-and-reject, errors.

Count formulas (every parameter appears exactly once, on one edge):
  MLP with widths d_0, ..., d_L:  nodes = sum_l d_l + (#layers with bias)
                                  edges = sum_l d_{l-1} d_l + sum_{l with bias} d_l
  CNN (conv layers c_0 -> ... -> c_L, kernel k_l, groups g_l, then flatten + linear to n_out):
                                  nodes = c_0 + sum_l c_l + n_out + (#layers with bias)
                                  edges = sum_l c_l (c_{l-1}/g_l) prod(k_l) + sum_{bias} c_l
                                          + c_L P n_out + n_out [linear bias]
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import symgraph
from symgraph.errors import ShapeMismatchError, TraceError, UnsupportedModuleError

ACTS = [nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU]


@st.composite
def mlps(draw, max_depth=5, max_width=64):
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    biases = [draw(st.booleans()) for _ in range(depth)]
    act = draw(st.sampled_from(ACTS))
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=biases[i]))
        if i < depth - 1:
            layers.append(act())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return model.double(), widths, biases


@st.composite
def cnns(draw, max_depth=4):
    ndim = draw(st.integers(1, 3))
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
    size = {1: 12, 2: 9, 3: 6}[ndim]
    depth = draw(st.integers(1, max_depth))
    chans = [draw(st.integers(1, 6))]
    layers: list[nn.Module] = []
    spatial = size
    desc = []
    for _ in range(depth):
        k = draw(st.integers(1, min(5, spatial)))
        stride = draw(st.integers(1, 2))
        pad = draw(st.integers(0, k // 2))
        dil = draw(st.integers(1, 2)) if (k - 1) * 2 + 1 <= spatial + 2 * pad else 1
        eff = dil * (k - 1) + 1
        if eff > spatial + 2 * pad:
            dil, eff = 1, k
        g_choices = [g for g in (1, 2, 3) if chans[-1] % g == 0]
        groups = draw(st.sampled_from(g_choices))
        c_out = groups * draw(st.integers(1, 4))
        bias = draw(st.booleans())
        layers += [
            conv(chans[-1], c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias),
            nn.ReLU(),
        ]
        desc.append((chans[-1], c_out, k, groups, bias))
        chans.append(c_out)
        spatial = (spatial + 2 * pad - eff) // stride + 1
    n_out = draw(st.integers(1, 5))
    P = spatial**ndim
    layers += [nn.Flatten(), nn.Linear(chans[-1] * P, n_out)]
    model = nn.Sequential(*layers).double()
    shape = (2, chans[0]) + (size,) * ndim
    return model, shape, desc, n_out, P, ndim


def _state_equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


# ----------------------------------------------------------------------------------------------- counts
@given(mlps())
def test_mlp_node_and_edge_counts_match_formula(arg):
    model, widths, biases = arg
    g = symgraph.parameter_graph(model)
    assert g.num_nodes == sum(widths) + sum(biases)
    assert g.num_edges == sum(a * b for a, b in zip(widths[:-1], widths[1:])) + sum(
        w for w, b in zip(widths[1:], biases) if b
    )
    assert int(g.edge_param.has_param().sum()) == sum(p.numel() for p in model.parameters())
    assert len(g.input_nodes) == widths[0] and len(g.output_nodes) == widths[-1]


@given(cnns())
def test_cnn_node_and_edge_counts_match_formula(arg):
    model, shape, desc, n_out, P, ndim = arg
    g = symgraph.parameter_graph(model, input_shape=shape)
    n_bias = sum(d[4] for d in desc) + 1
    assert g.num_nodes == shape[1] + sum(d[1] for d in desc) + n_out + n_bias
    conv_edges = sum(c_out * (c_in // gr) * k**ndim + (c_out if b else 0) for c_in, c_out, k, gr, b in desc)
    assert g.num_edges == conv_edges + desc[-1][1] * P * n_out + n_out
    assert int(g.edge_param.has_param().sum()) == sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- inverse
@given(mlps())
def test_mlp_round_trip_is_bit_identical(arg):
    model = arg[0]
    assert _state_equal(symgraph.parameter_graph(model).to_state_dict(), model.state_dict())


@given(cnns())
def test_cnn_round_trip_is_bit_identical(arg):
    model, shape = arg[0], arg[1]
    assert _state_equal(symgraph.parameter_graph(model, input_shape=shape).to_state_dict(), model.state_dict())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_round_trip_keeps_dtype_bits(dtype):
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(dtype)
    g = symgraph.parameter_graph(model)
    assert _state_equal(g.to_state_dict(), model.state_dict())


def test_mixed_precision_round_trip_is_exact():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 7).to(torch.bfloat16)
            self.b = nn.Linear(7, 3).double()

        def forward(self, x):
            return self.b(torch.relu(self.a(x.bfloat16())).double())

    model = Mixed()
    g = symgraph.parameter_graph(model, input_shape=(1, 5))
    assert g.edge_weight.dtype == torch.float64
    assert _state_equal(g.to_state_dict(), model.state_dict())


def test_edge_param_maps_each_edge_to_its_parameter_entry():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = symgraph.parameter_graph(model)
    sd = model.state_dict()
    for e in range(g.num_edges):
        name, flat = g.edge_param[e]
        assert g.edge_weight[e] == sd[name].flatten()[flat]
    # the forward-direction convention: edge for W[o, i] goes from input i to unit o
    e = g.edge_param.edges_of("0.weight")[1 * 3 + 2]  # W[1, 2]
    src, dst = g.edge_index[:, e].tolist()
    assert g.input_nodes.tolist().index(src) == 2
    assert g.edge_param.nbytes < 1000  # offsets, not a per-edge object


def test_graph_tensors_take_24_bytes_per_edge_for_float32():
    g = symgraph.parameter_graph(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    b = g.nbytes()
    assert (b["edge_index"] + b["edge_weight"] + b["edge_color"]) / g.num_edges == 24


# ----------------------------------------------------------------------------------------------- relabel and recover
def _permute_hidden_by_hand(model: nn.Sequential, layer: int, perm: torch.Tensor) -> nn.Sequential:
    """Permute the output units of linear layer index ``layer`` (rows of W_l, b_l, columns of W_{l+1})."""
    new = copy.deepcopy(model)
    lins = [m for m in new if isinstance(m, nn.Linear)]
    with torch.no_grad():
        lins[layer].weight.copy_(lins[layer].weight[perm])
        if lins[layer].bias is not None:
            lins[layer].bias.copy_(lins[layer].bias[perm])
        lins[layer + 1].weight.copy_(lins[layer + 1].weight[:, perm])
    return new


@given(mlps(), st.data())
def test_permuting_hidden_units_by_hand_gives_isomorphic_graph_and_same_function(arg, data):
    model, widths, _ = arg
    if len(widths) < 3:
        return
    layer = data.draw(st.integers(0, len(widths) - 3))
    n = widths[layer + 1]
    perm = torch.tensor(data.draw(st.permutations(list(range(n)))), dtype=torch.long)
    permuted = _permute_hidden_by_hand(model, layer, perm)
    g, g2 = symgraph.parameter_graph(model), symgraph.parameter_graph(permuted)
    # node permutation of the graph: hidden unit perm[k] of the original becomes unit k
    group = [grp for grp in g.node_groups if grp.role == "hidden"][layer]
    phi = torch.arange(g.num_nodes)
    phi[group.start + perm] = group.start + torch.arange(n)
    assert g.is_automorphism(phi)
    assert torch.equal(g.permute(phi).edge_weight, g2.edge_weight)
    assert torch.equal(g.edge_index, g2.edge_index) and torch.equal(g.edge_color, g2.edge_color)
    x = torch.randn(4, widths[0], dtype=torch.float64)
    assert torch.allclose(model(x), permuted(x), atol=1e-10, rtol=0)


def test_permuting_cnn_channels_by_hand_is_an_automorphism_and_preserves_function():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()
    g = symgraph.parameter_graph(model, input_shape=(1, 2, 6, 6))
    grp = [x for x in g.node_groups if x.role == "hidden"][1]  # second conv's output channels
    perm = torch.tensor([2, 0, 3, 1])
    phi = torch.arange(g.num_nodes)
    phi[grp.start + torch.arange(4)] = grp.start + perm
    assert g.is_automorphism(phi)
    new = copy.deepcopy(model)
    new.load_state_dict(g.permute(phi).to_state_dict())
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(model(x), new(x), atol=1e-10, rtol=0)
    assert not torch.equal(model[2].weight, new[2].weight)  # it really moved weights (whole channel blocks)


# ----------------------------------------------------------------------------------------------- perturb and reject
def test_permutation_mixing_two_layers_is_rejected_and_changes_function():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    g = symgraph.parameter_graph(model)
    h1, h2 = [grp for grp in g.node_groups if grp.role == "hidden"]
    phi = torch.arange(g.num_nodes)
    phi[h1.start], phi[h2.start] = h2.start, h1.start
    assert not g.is_automorphism(phi)
    with pytest.raises(ValueError):
        g.permute(phi)
    # forcing the move anyway (no check) cannot be expressed as a permuted model: the edge set is not preserved
    with pytest.raises(ValueError):
        g.edge_permutation(phi)


def test_swapping_two_input_nodes_is_not_an_automorphism():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = symgraph.parameter_graph(model)
    phi = torch.arange(g.num_nodes)
    a, b = g.input_nodes[:2].tolist()
    phi[a], phi[b] = b, a
    assert g.edge_permutation(phi) is not None  # structurally the edges map onto edges...
    assert not g.is_automorphism(phi)  # ...but input nodes are fixed by definition (paper C.2)


@pytest.mark.parametrize(
    "a,b",
    [
        (dict(stride=1), dict(stride=2)),
        (dict(groups=1), dict(groups=2)),
        (dict(padding=0), dict(padding=1)),
        (dict(dilation=1), dict(dilation=2)),
        (dict(padding_mode="zeros", padding=1), dict(padding_mode="circular", padding=1)),
    ],
)
def test_convolutions_differing_in_one_hyperparameter_give_different_coloured_graphs(a, b):
    def graph(kw):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(4, 4, 3, **kw))
        return symgraph.parameter_graph(m, input_shape=(1, 4, 9, 9))

    ga, gb = graph(a), graph(b)
    same_structure = torch.equal(ga.edge_index, gb.edge_index) if ga.num_edges == gb.num_edges else False
    assert ga.edge_color_keys != gb.edge_color_keys or not same_structure
    # negative control: identical settings give identical coloured graphs
    gc = graph(a)
    assert ga.edge_color_keys == gc.edge_color_keys and torch.equal(ga.edge_index, gc.edge_index)


def test_grouped_convolution_only_connects_channels_within_a_group():
    m = nn.Sequential(nn.Conv2d(4, 6, 1, groups=2, bias=False))
    g = symgraph.parameter_graph(m, input_shape=(1, 4, 3, 3))
    src, dst = g.edge_index
    in_local = src  # input nodes are 0..3
    out_local = dst - 4
    assert torch.equal(in_local // 2, out_local // 3)


def test_flatten_then_linear_colours_columns_by_spatial_position():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 4, 3))
    g = symgraph.parameter_graph(m, input_shape=(1, 1, 2, 2))
    edges = list(g.edge_param.edges_of("2.weight"))
    keys = [g.edge_color_keys[int(c)] for c in g.edge_color[edges]]
    assert {k[-1] for k in keys} == {0, 1, 2, 3}
    # the 4 columns of channel 0 all start at channel node 0's node; different positions, different colours
    src = g.edge_index[0, edges].view(3, 8)
    assert torch.equal(src[0, :4], src[0, :1].expand(4)) and not torch.equal(src[0, :4], src[0, 4:])


def test_global_average_pooling_feeds_channels_straight_to_linear():
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    g = symgraph.parameter_graph(m, input_shape=(1, 3, 8, 8))
    keys = {g.edge_color_keys[int(c)] for c in g.edge_color}
    pooled = ("adaptive_avg_pool2d", (1, 5, 6, 6), (1, 5, 1, 1))
    assert any(k[0] == "linear" and k[1][0] == "after" and k[1][1] == pooled for k in keys)  # the pool is visible
    assert not any(k[:2] == ("linear", "flat") for k in keys)


def test_activations_are_recorded_as_node_colours():
    m = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 1))
    g = symgraph.parameter_graph(m)
    acts = {k[2] for k in g.node_color_keys if k[0] == "hidden"}
    assert acts == {("tanh",), ("gelu(none)",)}


def test_custom_module_with_chained_forward_is_traced():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = Net()
    g = symgraph.parameter_graph(net)
    assert g.num_edges == 4 * 8 + 8 + 8 * 2 + 2
    assert _state_equal(g.to_state_dict(), net.state_dict())


def test_exports_to_pyg_and_networkx_keep_counts():
    g = symgraph.parameter_graph(
        nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Conv1d(3, 2, 2)), input_shape=(1, 2, 8)
    )
    d = g.to_pyg()
    assert d.num_nodes == g.num_nodes and d.edge_index.shape[1] == g.num_edges
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == g.num_nodes and nxg.number_of_edges() == g.num_edges
    # parallel edges between the same channel pair are kept (kernel positions)
    assert nxg.number_of_edges(0, 2) == 3


# ----------------------------------------------------------------------------------------------- errors
def test_unsupported_module_error_names_path_type_and_how_to_register():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return x * self.w

    symgraph.registry._MODULE_ENCODERS.pop(Weird, None)
    model = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 3))
    with pytest.raises(UnsupportedModuleError) as exc:
        symgraph.parameter_graph(model, input_shape=(1, 3))
    msg = str(exc.value)
    assert "'1'" in msg and "LSTM" in msg and "register_encoder" in msg


def test_model_without_parameters_is_rejected_with_expected_got_message():
    with pytest.raises(ShapeMismatchError, match=r"^Expected a model with parameters \(got Sequential"):
        symgraph.parameter_graph(nn.Sequential(nn.ReLU()), input_shape=(1, 3))


def test_shape_mismatch_is_reported_as_expected_got():
    with pytest.raises(ShapeMismatchError, match=r"Expected .*\(got"):
        symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4)), input_shape=(1, 5))


def test_conv_model_without_input_shape_asks_for_one():
    with pytest.raises(ShapeMismatchError, match="example input or input_shape"):
        symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_data_dependent_control_flow_gives_trace_error_with_hint():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return x

    with pytest.raises(TraceError, match="register_encoder"):
        symgraph.parameter_graph(Branchy(), input_shape=(1, 3))


def test_user_registered_encoder_is_used():
    class Scale(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.s = nn.Parameter(torch.randn(n))

        def forward(self, x):
            return x * self.s

    @symgraph.register_encoder(Scale)
    def encode_scale(ctx, op, module, args):
        x = ctx.features(args[0], axis=-1)
        out = ctx.new_hidden(x.size, "scale", f"{op.target} outputs", x.nodes)
        ctx.builder.add_edges(x.nodes, out, ctx.builder.edge_color(("scale",)), module.s, f"{op.target}.s")
        return symgraph.Features(out, op.shape, axis=-1, owned=op.num_users == 1)

    try:
        model = nn.Sequential(nn.Linear(2, 3), Scale(3), nn.Linear(3, 1))
        g = symgraph.parameter_graph(model)
        assert g.num_edges == 2 * 3 + 3 + 3 + 3 + 1
        assert _state_equal(g.to_state_dict(), model.state_dict())
    finally:
        symgraph.registry._MODULE_ENCODERS.pop(Scale, None)


def test_register_encoder_rejects_non_module_types():
    with pytest.raises(TypeError, match="Expected an nn.Module subclass"):
        symgraph.register_encoder(int)


def test_unused_parameters_are_kept_and_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.unused = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.fc(x)

    net = Net()
    g = symgraph.parameter_graph(net)
    assert g.meta["unencoded"] == ["unused"]
    assert _state_equal(g.to_state_dict(), net.state_dict())


def test_factorial_order_helper_is_consistent():
    # guard for the MLP formula used across tests: prod n_l! over hidden layers
    assert math.prod(math.factorial(n) for n in (3, 4)) == 144


class _PatchTokens(nn.Module):
    """A ViT-style stem written like torchvision's: shape arithmetic, an assert, a reshape of spatial dims."""

    def __init__(self, size=8):
        super().__init__()
        self.size = size
        self.proj = nn.Conv2d(1, 4, 4, stride=4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        n, c, h, w = x.shape
        torch._assert(h == self.size, f"Wrong image height! Expected {self.size} but got {h}!")
        n_h = h // 4
        x = self.proj(x).reshape(n, 4, n_h * (w // 4)).permute(0, 2, 1)
        return self.head(x.mean(1))


def test_shape_arithmetic_and_asserts_are_evaluated_on_the_example_input():
    m = _PatchTokens()
    g = symgraph.parameter_graph(m, input_shape=(1, 1, 8, 8))
    assert _state_equal(g.to_state_dict(), m.state_dict())
    assert int(g.edge_param.has_param().sum()) == sum(p.numel() for p in m.parameters())
    # negative control: an input the model's own assert rejects is reported, not silently encoded
    with pytest.raises(ShapeMismatchError, match="Wrong image height"):
        symgraph.parameter_graph(_PatchTokens(size=12), input_shape=(1, 1, 8, 8))
