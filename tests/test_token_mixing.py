"""Token mixing (MLP-Mixer, ResMLP), addcmul (ResMLP's Affine) and scalar parameters (StarReLU): random elements
of the computed group keep the function (float64, train and eval), nauty's order equals the analytic one,
``to_state_dict()`` is exact, and negative controls show the checks catch broken encodings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double

F64 = torch.float64


class MixerBlock(nn.Module):
    """embed -> [token MLP over T, channel MLP] x depth -> mean over tokens -> head."""

    def __init__(self, d_in=3, c=3, t=4, h=5, depth=2):
        super().__init__()
        self.embed = nn.Linear(d_in, c)
        self.tok1 = nn.ModuleList(nn.Linear(t, h) for _ in range(depth))
        self.tok2 = nn.ModuleList(nn.Linear(h, t) for _ in range(depth))
        self.act = nn.GELU()
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.embed(x)
        for f1, f2 in zip(self.tok1, self.tok2):
            x = x + f2(self.act(f1(x.transpose(1, 2)))).transpose(1, 2)
        return self.head(x.mean(1))


class ResMLPBlock(nn.Module):
    """Affine (addcmul) -> linear over tokens -> layer scale, residual."""

    def __init__(self, d_in=3, c=3, t=4):
        super().__init__()
        self.embed = nn.Linear(d_in, c)
        self.alpha, self.beta = nn.Parameter(torch.randn(1, 1, c)), nn.Parameter(torch.randn(1, 1, c))
        self.tokens = nn.Linear(t, t)
        self.ls = nn.Parameter(torch.randn(c))
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.ls * self.tokens(torch.addcmul(self.beta, self.alpha, x).transpose(1, 2)).transpose(1, 2)
        return self.head(x.mean(1))


class StarReLUMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)
        self.scale, self.bias = nn.Parameter(torch.ones(1) * 1.3), nn.Parameter(torch.ones(1) * 0.2)

    def forward(self, x):
        return self.fc2(self.scale * torch.relu(self.fc1(x)) ** 2 + self.bias)


CASES = {
    # channels (3, tied along the stream, head inputs) and each layer's 5 hidden token units
    "mixer": (MixerBlock, (3, 4, 3), math.factorial(3) * math.factorial(5) ** 2),
    "resmlp": (ResMLPBlock, (3, 4, 3), math.factorial(3)),
    "starrelu": (StarReLUMLP, (4, 3), math.factorial(5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_automorphisms_keep_the_function_and_the_order_is_analytic(name):
    build, shape, expected = CASES[name]
    model = perturbed_double(build(), 0)
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph) == expected
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) < 1e-10
    sd = aut.graph.to_state_dict()
    assert all(torch.equal(sd[k], v) and sd[k].shape == v.shape for k, v in model.state_dict().items())


def _mixer():
    model = perturbed_double(MixerBlock(), 0)
    x = torch.randn(3, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    return model, x, symgraph.parameter_graph(model, example_input=x[:1])


def _group_nodes(g, fragment):
    return [torch.arange(gr.start, gr.start + gr.count) for gr in g.node_groups if fragment in gr.name]


def test_negative_control_swapping_two_layers_hidden_token_units_is_caught():
    model, x, g = _mixer()
    h0, h1 = _group_nodes(g, "hidden token units")
    perm = torch.arange(g.num_nodes)
    perm[h0], perm[h1] = h1, h0
    assert not g.is_automorphism(perm)
    assert symgraph.check_function_preservation(model, perm, x, graph=g) > 1e-6


def test_negative_control_permuting_token_positions_is_caught():
    model, x, g = _mixer()
    pos = _group_nodes(g, "input token positions")[0]
    perm = torch.arange(g.num_nodes)
    perm[pos[0]], perm[pos[1]] = pos[1], pos[0]
    assert not g.is_automorphism(perm)  # positions are fixed
    assert symgraph.check_function_preservation(model, perm, x, graph=g) > 1e-6


def test_negative_control_hidden_units_whose_second_weights_do_not_move_are_caught(monkeypatch):
    # broken variant: fc2 reads fresh fixed positions instead of fc1's hidden units, so nauty permutes those
    # units moving W1's rows but not W2's columns; the function check must see it
    from symgraph.encoders import token_mixing as tm

    orig = tm._token_sources

    def broken(ctx, x):
        if isinstance(x, tm.TokenHidden):
            x = symgraph.builder.Features(x.stream.nodes, x.shape, x.stream.axis)
        return orig(ctx, x)

    monkeypatch.setattr(tm, "_token_sources", broken)
    model, x, _ = _mixer()
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    gen = torch.Generator().manual_seed(0)
    worst = max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(6)
    )
    assert worst > 1e-6


def test_scalar_parameters_sit_on_one_fixed_node_each():
    g = symgraph.parameter_graph(perturbed_double(StarReLUMLP(), 0), input_shape=(1, 3))
    slots = {s.name: s for s in g.slots}
    assert slots["scale"].location == slots["bias"].location == "node" and slots["scale"].numel == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixer_s32_224", "resmlp_12_224", "caformer_s18"])
def test_timm_token_mixing_models_are_sound_and_complete(name):
    timm = pytest.importorskip("timm", reason="the models environment (make test-models) has timm")
    kw = {} if "former" in name else {"img_size": 64}
    model = perturbed_double(timm.create_model(name, pretrained=False, num_classes=10, **kw), 0)
    x = torch.randn(2, 3, 64, 64, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    assert symgraph.check_function_preservation(model, aut.random_element(), x, graph=aut) < 1e-9
    sd = aut.graph.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
