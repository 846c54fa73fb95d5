"""Multiplicative interactions (squeeze-and-excitation, GLU/SwiGLU, gated residuals, layer scale) and drop path:
random elements of the computed group keep the function (float64, train and eval), nauty's order equals the
declared analytic one, and negative controls show the checks catch an encoding without the operand ties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double, randomize_buffers

F64 = torch.float64


class SE(nn.Module):
    """conv -> BN -> ReLU, then squeeze-and-excitation (torchvision's layout: pool, fc1, act, fc2, sigmoid)."""

    def __init__(self, c_in=2, c=4, squeeze=2, act=nn.Sigmoid):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.gate = act()
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        s = self.gate(self.fc2(torch.relu(self.fc1(self.pool(x)))))
        y = s * x
        return self.head(y.mean((2, 3)))


class SwiGLU(nn.Module):
    def __init__(self, d=3, h=4, out=2):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, out)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GLU(nn.Module):
    """Two branches alike but for one sigmoid; and a symmetric product of two identical-looking branches."""

    def __init__(self, d=3, h=3, symmetric=False):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, 1)
        self.symmetric = symmetric

    def forward(self, x):
        b = self.b(x) if self.symmetric else torch.sigmoid(self.b(x))
        return self.out(self.a(x) * b)


class LayerScaleBlock(nn.Module):
    """x + gamma * mlp(x) (timm's LayerScale) and ConvNeXt's [C, 1, 1] layer scale."""

    def __init__(self, d=4, conv=False, reshape=False):
        super().__init__()
        self.conv, self.reshape = conv, reshape
        if conv:
            self.stem, self.dw = nn.Conv2d(2, d, 1), nn.Conv2d(d, d, 3, padding=1, groups=d)
            # timm's ConvNeXt stores gamma as [C] and reshapes it in forward
            self.gamma = nn.Parameter(torch.randn(d) if reshape else torch.randn(d, 1, 1))
            self.head = nn.Linear(d, 2)
        else:
            self.stem, self.fc1, self.fc2 = nn.Linear(3, d), nn.Linear(d, 5), nn.Linear(5, d)
            self.gamma = nn.Parameter(torch.randn(d))
            self.head = nn.Linear(d, 2)

    def forward(self, x):
        x = self.stem(x)
        if self.conv:
            gamma = self.gamma.reshape(1, -1, 1, 1) if self.reshape else self.gamma
            x = x + self.dw(x).mul(gamma)
            return self.head(x.mean((2, 3)))
        x = x + self.gamma * self.fc2(torch.relu(self.fc1(x)))
        return self.head(x)


class GatedResidual(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.stem, self.f, self.g, self.head = nn.Linear(3, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 2)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + torch.sigmoid(self.g(x)) * torch.tanh(self.f(x)))


def _prep(model, seed=0):
    return randomize_buffers(perturbed_double(model, seed), torch.Generator().manual_seed(seed))


CASES = {
    # the conv's 4 channels are free but tied to the gate's (fc2's) outputs; fc1's 2 squeeze units are free
    "se": (lambda: SE(), (3, 2, 5, 5), math.factorial(4) * math.factorial(2)),
    "se_hardsigmoid": (lambda: SE(act=nn.Hardsigmoid), (3, 2, 5, 5), math.factorial(4) * math.factorial(2)),
    "swiglu": (lambda: SwiGLU(), (3, 5, 3), math.factorial(4)),
    "glu": (lambda: GLU(), (4, 3), math.factorial(3)),
    "layer_scale": (lambda: LayerScaleBlock(), (4, 3), math.factorial(4) * math.factorial(5)),  # stream, fc1
    "layer_scale_conv": (lambda: LayerScaleBlock(conv=True), (2, 2, 4, 4), math.factorial(4)),
    "layer_scale_reshaped": (lambda: LayerScaleBlock(conv=True, reshape=True), (2, 2, 4, 4), math.factorial(4)),
    "gated_residual": (lambda: GatedResidual(), (4, 3), math.factorial(4)),  # the stream ties f and g
}


def _max_diff(a, b, x):
    worst = 0.0
    for train in (True, False):
        a.train(train)
        b.train(train)
        with torch.no_grad():
            worst = max(worst, float((a(x) - b(x)).abs().max()))
    return worst


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_automorphisms_of_products_keep_the_function_and_the_order_is_analytic(name):
    build, shape, _ = CASES[name]
    model = _prep(build())
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        perm = aut.random_element(generator=gen)
        assert symgraph.check_function_preservation(model, perm, x, graph=aut) < 1e-10
    assert aut.order == analytic_order(aut.graph)


@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_order_of_products(name):
    build, shape, expected = CASES[name]
    g = symgraph.parameter_graph(_prep(build()), input_shape=(1, *shape[1:]))
    assert analytic_order(g) == expected


@pytest.mark.parametrize("reshape", [False, True])
def test_layer_scale_is_one_edge_per_entry_and_the_state_dict_round_trips(reshape):
    model = _prep(LayerScaleBlock(conv=True, reshape=reshape))
    g = symgraph.parameter_graph(model, input_shape=(1, 2, 4, 4))
    slot = next(s for s in g.slots if s.name == "gamma")
    assert slot.location == "edge" and slot.numel == 4 and slot.shape == tuple(model.gamma.shape)
    sd = g.to_state_dict()
    assert all(torch.equal(sd[k], v) and sd[k].shape == v.shape for k, v in model.state_dict().items())


class _ReshapedBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.b = nn.Conv2d(2, 3, 1), nn.Parameter(torch.randn(6))

    def forward(self, x):
        return self.conv(x) * self.b.reshape(1, 3, 2, 1)  # not a per-channel view: must be refused


def test_a_reshape_of_a_parameter_that_moves_entries_is_refused_by_name():
    with pytest.raises(UnsupportedModuleError, match="reshape of the parameter 'b'"):
        symgraph.parameter_graph(_ReshapedBias(), input_shape=(1, 2, 2, 1))


def test_gate_and_gated_map_get_different_colours_and_alike_operands_the_same():
    g = symgraph.parameter_graph(_prep(SE()), input_shape=(1, 2, 5, 5))
    keys = {k for k in g.edge_color_keys if k[0] == "product"}
    assert keys == {("product", "broadcast"), ("product", "broadcast", 2, 3)}
    g = symgraph.parameter_graph(_prep(SwiGLU()), input_shape=(1, 5, 3))
    assert {k for k in g.edge_color_keys if k[0] == "product"} == {("product", "broadcast")}


def test_a_product_of_two_alike_branches_keeps_the_function_under_its_group():
    # a * b with both operands broadcast alike: one edge colour for both (the product commutes)
    model = _prep(GLU(symmetric=True))
    x = torch.randn(4, 3, dtype=F64)
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order >= analytic_order(aut.graph) == math.factorial(3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        assert symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) < 1e-10


def test_negative_control_a_product_without_the_gate_tie_is_caught(monkeypatch):
    # drop the gate's edges into the product nodes: the gate's channels become free, nauty permutes them
    # independently of the stream, and the function check must see it
    calls = []

    def identity_edges(self, src, dst, key):
        if key[0] == "product" and len(key) == 2:  # the gate (broadcast over the pixels has len 4)
            calls.append(key)
            return
        return orig(self, src, dst, key)

    from symgraph.trace import EncodeContext

    orig = EncodeContext.identity_edges
    monkeypatch.setattr(EncodeContext, "identity_edges", identity_edges)
    model = _prep(SE())
    x = torch.randn(3, 2, 5, 5, dtype=F64)
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert calls
    gen = torch.Generator().manual_seed(0)
    worst = max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(6)
    )
    assert worst > 1e-6


def test_drop_path_is_the_identity_in_eval_and_commutes_with_permutations_in_train():
    class StochasticDepth(nn.Module):  # matched by name like torchvision's
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            if not self.training:
                return x
            keep = torch.rand(x.shape[0], 1, dtype=x.dtype) >= self.p
            return x * keep / (1 - self.p)

    StochasticDepth.__module__, StochasticDepth.__qualname__ = "torchvision.ops.stochastic_depth", "StochasticDepth"

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.sd = nn.Linear(3, 4), nn.Linear(4, 4), StochasticDepth(0.5)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.head(h + self.sd(self.b(h)))

    model = _prep(Block())
    x = torch.randn(6, 3, dtype=F64)
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph) == math.factorial(4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) < 1e-10


def test_products_that_cannot_be_encoded_are_refused_naming_the_op():
    class Spatial(nn.Module):  # a one-channel spatial attention map broadcast across the channels
        def __init__(self):
            super().__init__()
            self.conv, self.att = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 1, 1)

        def forward(self, x):
            x = self.conv(x)
            return x * torch.sigmoid(self.att(x))

    with pytest.raises(UnsupportedModuleError, match="feature axes do not line up"):
        symgraph.parameter_graph(Spatial(), input_shape=(1, 2, 3, 3))

    class Div(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(2, 3)

        def forward(self, x):
            return self.a(x) / self.b(x)

    with pytest.raises(UnsupportedModuleError, match="division by a tensor"):
        symgraph.parameter_graph(Div())
