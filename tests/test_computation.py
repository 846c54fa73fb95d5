"""Computation graphs (paper Sec. 2.1.1, appendix C.1): Eq. 7 evaluation, sizes, weight sharing, the C.5 map.

Node and edge counts are checked against closed formulas:

* MLP with widths ``d_0, ..., d_L``: ``N = sum_l d_l + #bias layers``, ``E = sum_l d_{l-1} d_l + sum_{l biased} d_l``.
* ConvNd layer (``C_in -> C_out``, ``G`` groups, output positions ``O = prod_d O_d``): ``C_out * O`` neurons, one
  bias node, ``C_out * (C_in / G) * prod_d V_d`` weight edges where ``V_d`` counts the (output position, kernel
  tap) pairs of dim ``d`` that land inside the input (all ``O_d * K_d`` pairs for non-zero padding modes), and
  ``C_out * O`` bias edges. A mean / adaptive pooling head over ``P`` positions adds ``C`` nodes and ``C * P``
  constant edges.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import symgraph
from symgraph.computation import ComputationGraph, activation_function
from symgraph.errors import UnsupportedModuleError
from symgraph.graph import NeuralGraph


@pytest.fixture(autouse=True, scope="module")
def _float64_default():
    """float64 models throughout this module, restored afterwards (a module-level set would leak into every
    other test file, since pytest imports all test modules before running any)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


F64_TOL = 1e-10  # the conftest ``tol`` fixture's float64 value (fixtures cannot be used inside @given)

ACTS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, lambda: nn.LeakyReLU(0.2), nn.ELU, nn.Softplus, nn.SiLU]


class Siren(nn.Module):
    """sin(omega * x): a chain of two elementwise ops on one node ("mul(30)", "sin")."""

    def __init__(self, omega: float = 30.0):
        super().__init__()
        self.omega = omega

    def forward(self, x):
        return torch.sin(self.omega * x)


class MeanHead(nn.Module):
    def __init__(self, nd: int):
        super().__init__()
        self.nd = nd

    def forward(self, x):
        return x.mean(dim=tuple(range(2, 2 + self.nd)))


# ---------------------------------------------------------------------- strategies
@st.composite
def mlps(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))  # before any layer is made: examples must replay exactly
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 16)) for _ in range(depth + 1)]
    layers, biases = [], []
    for i in range(depth):
        bias = draw(st.booleans())
        biases.append(bias)
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < depth - 1:
            k = draw(st.integers(0, len(ACTS)))
            layers.append(Siren(draw(st.sampled_from([1.0, 30.0, 0.37]))) if k == len(ACTS) else ACTS[k]())
    return nn.Sequential(*layers).double().eval(), widths, biases


def _out_size(S, k, s, p, d):
    return (S + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def cnns(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))
    nd = draw(st.sampled_from([1, 2, 3]))
    S = draw(st.integers(3, 12) if nd == 1 else st.integers(3, 6) if nd == 2 else st.integers(2, 4))
    kmax = 5 if nd < 3 else 3
    c_in = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 3))
    layers, info = [], []
    size = S
    for i in range(depth):
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        if c_in % groups:
            groups = 1
        c_out = groups * draw(st.integers(1, 6 // groups))
        pad = draw(st.integers(0, 2))
        dil = draw(st.integers(1, 2))
        k_lim = max(1, min(kmax, (size + 2 * pad - 1) // dil + 1))
        k = draw(st.integers(1, k_lim))
        stride = draw(st.integers(1, 3))
        modes = ["zeros"] + (["circular", "replicate"] if pad <= size else []) + (["reflect"] if pad < size else [])
        mode = draw(st.sampled_from(modes)) if pad > 0 else "zeros"
        bias = draw(st.booleans())
        conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][nd - 1](
            c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias, padding_mode=mode
        )
        layers.append(conv)
        info.append(dict(c_in=c_in, c_out=c_out, k=k, s=stride, p=pad, d=dil, g=groups, bias=bias, mode=mode, S=size))
        size = _out_size(size, k, stride, pad, dil)
        c_in = c_out
        if i < depth - 1:
            layers.append(ACTS[draw(st.integers(0, len(ACTS) - 1))]())
    head = draw(st.sampled_from(["none", "mean", "adaptive", "flatten"]))
    n_out = draw(st.integers(1, 4))
    if head != "none":
        layers.append(nn.ReLU())
        if head == "mean":
            layers += [MeanHead(nd), nn.Linear(c_in, n_out)]
        elif head == "adaptive":
            layers += [
                [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d][nd - 1](1),
                nn.Flatten(),
                nn.Linear(c_in, n_out),
            ]
        else:
            layers += [nn.Flatten(), nn.Linear(c_in * size**nd, n_out)]
    model = nn.Sequential(*layers).double().eval()
    shape = (2, info[0]["c_in"], *([S] * nd))
    return model, shape, dict(nd=nd, layers=info, head=head, n_out=n_out, final=(c_in, size))


# ---------------------------------------------------------------------- helpers
def _max_diff(a, b) -> float:
    return float((a - b).detach().abs().max())


def _valid_pairs(S, O, k, s, p, d, mode) -> int:
    """V_d by brute force: (output position, tap) pairs whose input coordinate lies inside the input."""
    if mode != "zeros":
        return O * k
    return sum(1 for o in range(O) for t in range(k) if 0 <= o * s - p + t * d < S)


def _expected_counts(model, shape, meta) -> tuple[int, int]:
    nd = meta["nd"]
    n = math.prod(shape[1:])
    e = 0
    for L in meta["layers"]:
        O = _out_size(L["S"], L["k"], L["s"], L["p"], L["d"])
        n += L["c_out"] * O**nd + (1 if L["bias"] else 0)
        V = _valid_pairs(L["S"], O, L["k"], L["s"], L["p"], L["d"], L["mode"]) ** nd
        e += L["c_out"] * (L["c_in"] // L["g"]) * V + (L["c_out"] * O**nd if L["bias"] else 0)
    C, size = meta["final"]
    head = meta["head"]
    if head in ("mean", "adaptive"):
        n += C
        e += C * size**nd
    if head != "none":
        lin = model[-1]
        n += lin.out_features + 1
        e += lin.in_features * lin.out_features + lin.out_features
    return n, e


def _used_scalars(model, x) -> set[tuple[str, int]]:
    """Independent oracle of the parameter scalars the function uses: d(sum of conv(1))/dW != 0 with all ones."""
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, key=name: shapes.__setitem__(key, inp[0].shape))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    used = set()
    for name, p in model.named_parameters():
        mod_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        mod = model.get_submodule(mod_name)
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d) and attr == "weight":
            m1 = copy.deepcopy(mod)
            m1.weight = nn.Parameter(torch.ones_like(mod.weight))
            m1(torch.ones(shapes[mod_name])).sum().backward()
            flat = (m1.weight.grad.reshape(-1) != 0).nonzero().flatten().tolist()
        else:
            flat = range(p.numel())
        used |= {(name, i) for i in flat}
    return used


def _classes(cg: ComputationGraph) -> set[tuple[str, int]]:
    slot, flat = cg.edge_param.lookup(torch.arange(cg.num_edges))
    names = cg.edge_param.names
    return {(names[s], f) for s, f in zip(slot.tolist(), flat.tolist(), strict=True) if s >= 0}


def _group(cg: ComputationGraph, module: str, role: str = "hidden"):
    return next(
        g
        for g in cg.node_groups
        if g.module == module and g.kind != "" and g.role in (role, "output") and "bias" not in g.name
    )


# ---------------------------------------------------------------------- Eq. 7 and sizes
@given(case=mlps())
def test_eq7_evaluator_reproduces_random_mlp_and_sizes_follow_formula(case):
    model, widths, biases = case
    x = torch.randn(5, widths[0])
    cg = symgraph.computation_graph(model, x)
    assert isinstance(cg, NeuralGraph) and cg.kind == "computation"
    out = cg(x)
    assert out.shape == model(x).shape
    assert _max_diff(out, model(x)) <= F64_TOL
    assert cg.num_nodes == sum(widths) + sum(biases)
    assert cg.num_edges == sum(a * b for a, b in zip(widths, widths[1:])) + sum(
        w for w, b in zip(widths[1:], biases, strict=True) if b
    )
    # one class per parameter scalar, each on exactly one edge (an MLP's computation graph is its parameter graph)
    assert cg.num_classes == cg.num_parameters == sum(p.numel() for p in model.parameters())
    assert bool((cg.class_sizes() == 1).all())
    assert torch.equal(cg.input_nodes, torch.arange(widths[0]))
    assert cg.role_mask("output").sum() == widths[-1]


@given(case=cnns())
def test_eq7_evaluator_reproduces_random_cnn_and_sizes_follow_formula(case):
    model, shape, meta = case
    x = torch.randn(*shape)
    cg = symgraph.computation_graph(model, x)
    ref = model(x)
    out = cg(x)
    assert out.shape == ref.shape
    assert _max_diff(out, ref) <= F64_TOL
    assert (cg.num_nodes, cg.num_edges) == _expected_counts(model, shape, meta)
    # weight sharing: the distinct (parameter, flat index) classes are exactly the scalars the function uses
    assert _classes(cg) == _used_scalars(model, x)
    assert cg.num_parameters == sum(p.numel() for p in model.parameters())
    # one input node per input scalar, every edge goes up a level (the evaluator's invariant)
    assert cg.role_mask("input").sum() == math.prod(shape[1:])
    assert torch.equal(cg.output_nodes, cg.output_index.reshape(-1))  # output nodes in id order = output order
    assert bool((cg.node_layer[cg.edge_index[0]] < cg.node_layer[cg.edge_index[1]]).all())


@given(case=cnns())
def test_parameter_map_is_homomorphism_onto_parameter_graph(case):
    model, shape, meta = case
    x = torch.randn(*shape)
    cg = symgraph.computation_graph(model, x)
    param_node, param_edge, pg = cg.to_parameter_graph_map()
    assert cg.is_parameter_graph_homomorphism()
    assert bool((param_node >= 0).all())
    # every computation edge with a parameter maps onto the parameter-graph edge holding the same scalar
    has = cg.edge_class >= 0
    pslot, pflat = pg.edge_param.lookup(param_edge[has])
    cslot, cflat = cg.edge_param.lookup(has.nonzero().flatten())
    assert [pg.edge_param.slots[i].name for i in pslot.tolist()] == [
        cg.edge_param.slots[i].name for i in cslot.tolist()
    ]
    assert torch.equal(pflat, cflat)
    assert torch.equal(pg.edge_index[:, param_edge[has]], param_node[cg.edge_index[:, has]])
    # conv edges keep their colour key (kernel position) under the map
    ck = [cg.edge_color_keys[c] for c in cg.edge_color[has].tolist()]
    pk = [pg.edge_color_keys[c] for c in pg.edge_color[param_edge[has]].tolist()]
    assert all(a == b for a, b in zip(ck, pk, strict=True) if a[0] == "conv")
    # roles: inputs -> input nodes, bias -> bias nodes; neuron (c, p) of a conv layer -> channel node c
    assert bool(pg.role_mask("input")[param_node[cg.role_mask("input")]].all())
    assert bool(pg.role_mask("bias")[param_node[cg.role_mask("bias")]].all())
    for L, name in zip(
        meta["layers"],
        [n for n, m in model.named_children() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)],
        strict=True,
    ):
        g = _group(cg, name)
        img = param_node[g.start : g.stop].view(L["c_out"], -1)
        assert bool((img == img[:, :1]).all()) and torch.unique(img[:, 0]).numel() == L["c_out"]
    # the parameter graph built alongside is symgraph.parameter_graph's
    ref = symgraph.parameter_graph(model, example_input=x)
    assert torch.equal(ref.edge_index, pg.edge_index) and ref.edge_color_keys == pg.edge_color_keys


def test_corrupted_parameter_map_is_not_a_homomorphism():
    """Negative control: swapping the images of two hidden channels breaks the homomorphism check."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1)).double()
    cg = symgraph.computation_graph(model, torch.randn(1, 2, 4, 4))
    assert cg.is_parameter_graph_homomorphism()
    g = _group(cg, "0")
    bad = cg.param_node.clone()
    block = bad[g.start : g.stop].view(3, 16)
    block[[0, 1]] = block[[1, 0]].clone()
    assert not cg.is_parameter_graph_homomorphism(bad)
    bad2 = cg.param_node.clone()
    bad2[g.start] = bad2[g.start + 16]  # one neuron (channel 0, position 0) sent to channel 1
    assert not cg.is_parameter_graph_homomorphism(bad2)


class _SharedTwice(nn.Module):
    """One hidden layer applied twice (weight sharing): one parameter, two edge sets in the parameter graph."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(torch.relu(self.b(h)))))


@pytest.mark.parametrize(
    "model_fn", [_SharedTwice, lambda: (lambda lin: nn.Sequential(lin, nn.Tanh(), lin))(nn.Linear(3, 3))]
)
def test_shared_module_uses_map_onto_their_own_edge_sets(model_fn, tol):
    """C.5 with weight sharing: the k-th use's computation edges map onto the parameter graph's k-th edge set
    of that parameter; mapping every use onto the first edge set is not a homomorphism (negative control)."""
    torch.manual_seed(0)
    model = model_fn().double().eval()
    x = torch.randn(2, 3)
    cg = symgraph.computation_graph(model, x)
    assert _max_diff(cg(x), model(x)) <= tol[torch.float64]
    param_node, param_edge, pg = cg.to_parameter_graph_map()
    assert cg.is_parameter_graph_homomorphism()
    has = cg.edge_class >= 0
    assert torch.equal(pg.edge_index[:, param_edge[has]], param_node[cg.edge_index[:, has]])
    # every use's edge set is hit: the images cover both copies of the shared weight
    shared = [s for s in pg.slots if s.location == "edge" and sum(t.name == s.name for t in pg.slots) > 1]
    assert shared
    hit = set(param_edge[has].tolist())
    assert all(any(i in hit for i in range(s.start, s.start + s.numel)) for s in shared)
    # negative control: the second use's output neurons sent to the first use's output nodes
    name = shared[0].name
    first, second = [s for s in pg.slots if s.name == name][:2]
    e1, e2 = pg.edge_index[1, first.start], pg.edge_index[1, second.start]
    bad = param_node.clone()
    bad[param_node == e2] = e1
    assert not cg.is_parameter_graph_homomorphism(bad)


# ---------------------------------------------------------------------- negative controls of the evaluator
@given(case=cnns())
def test_one_perturbed_edge_weight_changes_output(case):
    model, shape, _ = case
    x = torch.randn(*shape)
    cg = symgraph.computation_graph(model, x, parameter_map=False)
    h = cg.activations(x)
    src, dst = cg.edge_index
    into_out = cg.role_mask("output")[dst].nonzero().flatten()
    active = h[:, src[into_out]].abs().max(0).values
    assume(float(active.max()) > 1e-6)  # a network dead before its output (all ReLUs off) has no such edge
    pick = into_out[active.argmax()]  # an edge whose sender is active
    bad = cg.edge_weight.clone()
    bad[pick] += 0.5
    assert _max_diff(cg.evaluate(x, bad), model(x)) > 1e-3
    with pytest.raises(ValueError, match="weight-sharing class"):
        if cg.class_sizes()[cg.edge_class[pick]] > 1:
            cg.to_state_dict(bad)
        else:
            raise ValueError("weight-sharing class of size 1: nothing to disagree with")


@pytest.mark.parametrize("wrong", ["tanh", "sigmoid", "leaky_relu(0.5)"])
def test_wrong_activation_breaks_equality(wrong, tol):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 2)).double()
    x = torch.randn(3, 1, 8)
    cg = symgraph.computation_graph(model, x)
    assert _max_diff(cg(x), model(x)) <= tol[torch.float64]
    keys = tuple((k[0], k[1], tuple(wrong if a == "relu" else a for a in k[2])) for k in cg.node_color_keys)
    assert keys != cg.node_color_keys
    broken = ComputationGraph(**{f: getattr(cg, f) for f in cg.__dataclass_fields__} | {"node_color_keys": keys})
    assert _max_diff(broken(x), model(x)) > 1e-3


# ---------------------------------------------------------------------- more layers
class ResMLP(nn.Module):
    def __init__(self, d=5):
        super().__init__()
        self.a = nn.Linear(3, d)
        self.b = nn.Linear(d, d)
        self.c = nn.Linear(d, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + torch.tanh(self.b(h))
        h = h - 0.5 * h
        return self.c(h / 3.0 + 1.0)


class ResCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding="same", dilation=2, padding_mode="circular")
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = h + F.leaky_relu(self.conv(h), 0.1)
        h = self.pool(h + h)
        h = F.avg_pool2d(h, 2, ceil_mode=True)
        h = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
        return self.head(h)


class Tokens(nn.Module):
    """Linear on (B, T, d) tokens (weights shared over T), a transpose and mean/sum reductions."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Conv1d(4, 2, 2)
        self.c = nn.Linear(2, 1)

    def forward(self, x):
        h = F.gelu(self.a(x))  # (B, 5, 4)
        h = self.b(h.transpose(1, 2))  # (B, 2, 4)
        h = h.permute(0, 2, 1).sum(dim=1, keepdim=True) + h.mean(-1).unsqueeze(1)
        return self.c(h).view(x.shape[0], -1)


@pytest.mark.parametrize(
    "model_fn,shape,has_map",
    [
        (ResMLP, (4, 3), True),
        (ResCNN, (2, 2, 7, 6), True),
        (Tokens, (3, 5, 3), False),  # the parameter graph has no encoder for unsqueeze: no C.5 map, said in meta
        (
            lambda: nn.Sequential(
                nn.Conv3d(2, 4, 2, groups=2, stride=(1, 2, 1)),
                nn.Hardtanh(-0.5, 0.5),
                nn.AdaptiveAvgPool3d((2, 1, 2)),
                nn.Flatten(),
                nn.Dropout(0.3),
                nn.Linear(16, 2),
            ),
            (2, 2, 4, 5, 3),
            True,
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), Siren(30.0), nn.Linear(4, 4), Siren(30.0), nn.Linear(4, 1)),
            (6, 3),
            True,
        ),
    ],
)
def test_eq7_reproduces_models_with_residuals_pooling_and_reshapes(model_fn, shape, has_map, tol):
    torch.manual_seed(3)
    model = model_fn().double().eval()
    x = torch.randn(*shape)
    cg = symgraph.computation_graph(model, x)
    assert _max_diff(cg(x), model(x)) <= tol[torch.float64]
    assert cg.is_parameter_graph_homomorphism() == has_map, cg.meta
    assert (cg.meta["parameter_map_error"] is None) == has_map
    sd = cg.to_state_dict()
    assert list(sd) == list(model.state_dict()) and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    # constant edges: residual +-1, identity 1, pooling 1/P, and they carry no parameter
    const = cg.edge_class < 0
    kinds = {cg.edge_color_keys[c][0] for c in cg.edge_color[const].tolist()}
    assert kinds <= {"residual", "identity", "avgpool", "mean", "sum"}
    assert not any(cg.edge_color_keys[c][0] in {"residual", "avgpool"} for c in cg.edge_color[~const].tolist())


def test_siren_nodes_carry_the_activation_chain(tol):
    model = nn.Sequential(nn.Linear(2, 3), Siren(30.0), nn.Linear(3, 1)).double()
    cg = symgraph.computation_graph(model, torch.zeros(1, 2))
    assert ("hidden", "linear", ("mul(30)", "sin")) in cg.node_color_keys
    assert ("mul(30)", "sin") in {k[2] for k in cg.parameter_graph.node_color_keys}  # the same name in both graphs
    assert cg.num_nodes == 2 + 3 + 1 + 2  # the chain is recorded in place: no extra nodes
    assert float(activation_function("mul(30)")(torch.tensor(2.0))) == 60.0


def test_shared_edge_param_index_and_state_dict_roundtrip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 2, stride=2), nn.Flatten(), nn.Linear(4, 1)).double()
    cg = symgraph.computation_graph(model, torch.zeros(1, 1, 4))
    assert cg.edge_param[0] == ("0.weight", 0)
    assert torch.equal(cg.class_sizes()[:4], torch.full((4,), 2))  # each tap used at 2 positions
    e = cg.edge_param.edges_of("0.weight")
    assert e.numel() == 2 * 2 * 2 and torch.equal(
        cg.edge_weight[e].sort().values, model[0].weight.detach().reshape(-1).repeat(2).sort().values
    )
    sd = cg.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_unsupported_ops_raise_typed_errors_naming_the_op():
    with pytest.raises(UnsupportedModuleError, match="MaxPool2d"):
        symgraph.computation_graph(nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2)), torch.zeros(1, 1, 4, 4))
    with pytest.raises(UnsupportedModuleError, match="BatchNorm1d"):
        symgraph.computation_graph(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), torch.zeros(2, 2))

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) * x

    with pytest.raises(UnsupportedModuleError, match="product of two tensors"):
        symgraph.computation_graph(Gate(), torch.zeros(1, 2))


# ---------------------------------------------------------------------- automorphisms and weight sharing
def _cnn_and_channel_perm():
    torch.manual_seed(4)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, 2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 2)
        )
        .double()
        .eval()
    )
    x = torch.randn(4, 2, 3, 3)
    cg = symgraph.computation_graph(model, x)
    g0 = _group(cg, "0")
    return model, x, cg, g0


def test_hidden_channel_permutation_is_automorphism_and_preserves_function(tol):
    """Prop. 6 and Prop. 7 (Eq. 9) on a CNN computation graph, and Phi read back as a permuted state dict."""
    model, x, cg, g0 = _cnn_and_channel_perm()
    sigma = torch.tensor([2, 0, 1])
    perm = torch.arange(cg.num_nodes)
    block = torch.arange(g0.start, g0.stop).view(3, 9)
    perm[block.reshape(-1)] = block[sigma].reshape(-1)  # neuron (c, p) -> (sigma(c), p)
    assert cg.respects_weight_sharing(perm) and cg.is_automorphism(perm)
    pcg = cg.permute(perm)
    assert _max_diff(pcg(x), model(x)) <= tol[torch.float64]
    h, hp = cg.activations(x), pcg.activations(x)
    assert _max_diff(hp[:, perm], h) <= tol[torch.float64]  # Eq. 9: h_v(theta) = h_phi(v)(Phi theta)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(pcg.to_state_dict())
    assert _max_diff(permuted(x), model(x)) <= tol[torch.float64]
    assert not torch.equal(permuted[0].weight, model[0].weight)
    # the lift to the sharing graph is an automorphism of it
    sg = cg.sharing_graph()
    assert sg.is_automorphism(cg.lift_to_sharing_graph(perm))


def test_position_dependent_channel_swap_is_rejected_for_breaking_weight_sharing():
    """Negative control: swapping two channels at a single position preserves edges and colours (1x1 conv)
    but maps a weight-sharing class onto two classes; it is not a neural DAG automorphism."""
    model, x, cg, g0 = _cnn_and_channel_perm()
    perm = torch.arange(cg.num_nodes)
    block = torch.arange(g0.start, g0.stop).view(3, 9)
    perm[block[0, 4]], perm[block[1, 4]] = block[1, 4], block[0, 4]
    assert NeuralGraph.is_automorphism(cg, perm)  # edges, colours, fixed nodes: fine
    assert not cg.respects_weight_sharing(perm)
    assert not cg.is_automorphism(perm)
    with pytest.raises(ValueError):
        cg.lift_to_sharing_graph(perm)
    # Phi of it is still a function-preserving edge relabelling of the DAG (Prop. 7 needs no sharing) but is
    # no longer a valid tied parameter vector: the state dict cannot be read back
    bad = cg.permute(perm, check=False)
    with pytest.raises(ValueError, match="weight-sharing class"):
        bad.to_state_dict()


def test_sharing_graph_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1)).double()
    cg = symgraph.computation_graph(model, torch.zeros(1, 1, 3))
    sg = cg.sharing_graph()
    sizes = cg.class_sizes()
    n_shared_edges = int(sizes[sizes > 1].sum())
    assert sg.num_nodes == cg.num_nodes + n_shared_edges + int((sizes > 1).sum())
    assert sg.num_edges == cg.num_edges + 2 * n_shared_edges
    assert sg.num_original_nodes == cg.num_nodes and sg.edge_node.numel() == cg.num_edges
    with pytest.raises(AttributeError):  # frozen like a parameter graph
        sg.num_original_nodes = 0
    # the identity and a channel swap lift; a swap of two output units (fixed nodes) does not
    assert sg.is_automorphism(cg.lift_to_sharing_graph(torch.arange(cg.num_nodes)))


def test_activation_names_parse_and_match_functions():
    xs = torch.linspace(-3, 3, 13)
    for name, fn in [
        ("relu", F.relu),
        ("gelu(tanh)", lambda t: F.gelu(t, approximate="tanh")),
        ("softplus(2.0,20.0)", lambda t: F.softplus(t, 2.0, 20.0)),
        ("rsub(1.5)", lambda t: 1.5 - t),
        ("hardtanh(-0.5,0.5)", lambda t: F.hardtanh(t, -0.5, 0.5)),
    ]:
        assert torch.equal(activation_function(name)(xs), fn(xs))
    with pytest.raises(UnsupportedModuleError):
        activation_function("softmax")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_every_kernel_tap_combination_enumerated(nd, tol):
    """Exhaustive small grid of conv hyper-parameters (stride, padding, dilation, mode) per dimension."""
    torch.manual_seed(nd)
    S = {1: 6, 2: 4, 3: 3}[nd]
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][nd - 1]
    for k, s, p, d, mode in itertools.product([1, 2, 3], [1, 2], [0, 1], [1, 2], ["zeros", "reflect"]):
        if _out_size(S, k, s, p, d) < 1 or (mode == "reflect" and p == 0):
            continue
        model = nn.Sequential(conv(2, 2, k, stride=s, padding=p, dilation=d, padding_mode=mode)).double()
        x = torch.randn(2, 2, *([S] * nd))
        cg = symgraph.computation_graph(model, x, parameter_map=False)
        assert _max_diff(cg(x), model(x)) <= tol[torch.float64], (k, s, p, d, mode)


def _vf2_automorphisms(g: NeuralGraph, n_keep: int) -> set[tuple[int, ...]]:
    """Brute-force oracle (networkx VF2): all node- and edge-colour-preserving automorphisms that fix the fixed
    nodes, restricted to the first ``n_keep`` nodes."""
    import networkx as nx
    from networkx.algorithms.isomorphism import DiGraphMatcher

    fixed = g.fixed_mask.tolist()
    h = nx.DiGraph()
    for i, c in enumerate(g.node_color.tolist()):
        h.add_node(i, c=(c, i if fixed[i] else -1))
    for s, d, c in zip(*g.edge_index.tolist(), g.edge_color.tolist(), strict=True):
        assert not h.has_edge(s, d)
        h.add_edge(s, d, c=c)
    m = DiGraphMatcher(h, h, node_match=lambda a, b: a["c"] == b["c"], edge_match=lambda a, b: a["c"] == b["c"])
    return {tuple(iso[i] for i in range(n_keep)) for iso in m.isomorphisms_iter()}


def test_sharing_graph_automorphisms_are_exactly_the_weight_sharing_ones_by_brute_force():
    """Oracle: on a 1x1-conv CNN the coloured computation graph alone allows a channel swap per position (2^3),
    the sharing graph only the analytic 2! (one swap at all positions); is_automorphism agrees with both."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 1), nn.ReLU(), nn.Conv1d(2, 1, 1)).double()
    cg = symgraph.computation_graph(model, torch.zeros(1, 1, 3))
    plain = _vf2_automorphisms(cg, cg.num_nodes)
    shared = _vf2_automorphisms(cg.sharing_graph(), cg.num_nodes)
    assert len(plain) == 2**3 and len(shared) == 2 and shared < plain
    for p in plain:
        assert cg.is_automorphism(torch.tensor(p)) == (p in shared)


# ---------------------------------------------------------------------- one compiler: the lowering registry
def test_every_lowered_module_type_has_an_encoder_so_both_graphs_share_one_trace():
    """A module type with a lowering but no encoder would not be a leaf of the trace both graphs are made from."""
    from symgraph.computation import lowering
    from symgraph.registry import registered_module_types

    encoded = registered_module_types()
    missing = [t.__name__ for t in lowering._MODULE_LOWERINGS if not any(issubclass(t, e) for e in encoded)]
    assert not missing


def test_user_lowering_is_dispatched_like_an_encoder_and_keeps_the_parameter_map(tol):
    """A user layer with an encoder and a lowering gives both graphs and the C.5 map; without the lowering the
    computation graph refuses it by name (negative control); subclasses dispatch along the MRO, as encoders do."""
    from symgraph.builder import Features
    from symgraph.computation import lowering, register_lowering

    class Doubler(nn.Module):
        def forward(self, x):
            return 2.0 * x

    @symgraph.register_encoder(Doubler)
    def encode_doubler(ctx, op, module, args):
        x = ctx.features(args[0], axis=-1)
        out = ctx.new_hidden(x.size, "doubler", f"{op.target} outputs", x.nodes)
        ctx.identity_edges(x.nodes, out, ("doubler",))
        return Features(out, tuple(op.shape), -1, owned=op.num_users == 1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Doubler(), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3)
    with pytest.raises(UnsupportedModuleError, match="no computation-graph lowering for .*Doubler"):
        symgraph.computation_graph(model, x)

    class LinearSubclass(nn.Linear):
        pass

    try:

        @register_lowering(Doubler)
        def lower_doubler(ctx, op, module, args):
            v = ctx.neurons(args[0])
            new = ctx.add_neurons(v.nodes.numel(), "hidden", "doubler", f"{op.target} outputs", op.target, v.nodes)
            ctx.add_const_edges(v.nodes, new, ("doubler",), 2.0)
            return ctx.result(new.view(v.nodes.shape))

        cg = symgraph.computation_graph(model, x)
        assert _max_diff(cg(x), model(x)) <= tol[torch.float64]
        assert cg.is_parameter_graph_homomorphism()
        sub = nn.Sequential(LinearSubclass(3, 2)).double()
        assert _max_diff(symgraph.computation_graph(sub, x)(x), sub(x)) <= tol[torch.float64]
    finally:
        lowering._MODULE_LOWERINGS.pop(Doubler, None)
