"""Phi on real models: random automorphisms preserve the function (train and eval, float64, buffers too);
permutations outside the group do not."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import symgraph


class ResMLP(nn.Module):
    def __init__(self, d_in, width, hidden, blocks, d_out, norm=False):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden) if norm else nn.Identity(),
                nn.Tanh(),
                nn.Linear(hidden, width),
            )
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, d_out)

    def forward(self, x):
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.out(h)


@st.composite
def architectures(draw):
    """(model, example input): MLPs, CNNs (optionally BatchNorm, dropout) and residual MLPs."""
    kind = draw(st.sampled_from(["mlp", "cnn", "resmlp"]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if kind == "mlp":
        widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
        layers = []
        for a, b in itertools.pairwise([3] + widths):
            layers += [nn.Linear(a, b), draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU]))()]
        if draw(st.booleans()):
            layers.insert(1, nn.Dropout(0.3))
        return nn.Sequential(*layers[:-1]), torch.randn(5, 3)
    if kind == "cnn":
        chans = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        bn = draw(st.booleans())
        layers, c = [], 2
        for w in chans:
            k = draw(st.sampled_from([1, 3]))
            layers += [nn.Conv2d(c, w, k, padding=k // 2)] + ([nn.BatchNorm2d(w)] if bn else []) + [nn.ReLU()]
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2)]
        model = nn.Sequential(*layers)
        if bn:  # non-trivial running statistics and affine parameters
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.data.normal_()
                    m.bias.data.normal_()
        return model, torch.randn(4, 2, 5, 5)
    width, hidden, blocks = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    return ResMLP(3, width, hidden, blocks, 2, norm=draw(st.booleans())), torch.randn(6, 3)


@given(architectures(), st.integers(0, 2**16))
def test_random_automorphism_preserves_function_in_train_and_eval_mode(arch, seed):
    model, x = arch
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    perm = aut.random_element(torch.Generator().manual_seed(seed))
    assert aut.contains(perm)
    assert symgraph.check_function_preservation(model, perm, x) < 1e-10


def test_every_generator_preserves_a_batchnorm_cnn_function_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
    x = torch.randn(4, 2, 6, 6)
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == math.factorial(4) * math.factorial(3)
    for g in aut.generators:
        assert symgraph.check_function_preservation(model, g, x) < 1e-10


def test_permute_model_moves_parameters_and_running_stats_with_the_channels():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    model[1].running_mean.copy_(torch.tensor([10.0, 20.0, 30.0]))
    g = symgraph.parameter_graph(model, input_shape=(1, 1, 2, 2))
    ch = g.node_groups[1]  # conv 0 output channels
    bn = next(grp for grp in g.node_groups if "batchnorm" in grp.name)
    perm = torch.arange(g.num_nodes)
    cyc = torch.tensor([1, 2, 0])  # channel i -> channel cyc[i]
    perm[ch.start : ch.stop] = ch.start + cyc
    perm[bn.start : bn.stop] = bn.start + cyc
    new = symgraph.permute_model(model, perm, graph=g)
    assert torch.equal(new[1].running_mean, torch.tensor([30.0, 10.0, 20.0]))
    assert torch.equal(new[0].weight[cyc].flatten(), model[0].weight.flatten())
    assert not torch.equal(new[0].weight, model[0].weight)
    x = torch.randn(2, 1, 2, 2)
    model.eval()
    new.eval()
    assert torch.allclose(new(x), model(x), atol=1e-6)
    with pytest.raises(ValueError):  # permute_model refuses non-automorphisms by default
        bad = torch.arange(g.num_nodes)
        bad[0], bad[ch.start] = ch.start, 0
        symgraph.permute_model(model, bad, graph=g)


def test_non_automorphisms_change_the_function_negative_control():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    aut = symgraph.automorphism_group(model)
    n = aut.graph.num_nodes
    swap_inputs = torch.arange(n)
    swap_inputs[0], swap_inputs[1] = 1, 0  # edge set preserved, but input nodes are fixed points
    assert not aut.contains(swap_inputs)
    assert symgraph.check_function_preservation(model, swap_inputs, x) > 1e-3
    hid = aut.graph.role_mask("hidden").nonzero().flatten()
    mix = torch.arange(n)  # a unit of layer 1 with one of layer 2: not even the edge set is preserved
    mix[int(hid[0])], mix[int(hid[-1])] = int(hid[-1]), int(hid[0])
    assert not aut.contains(mix)
    assert symgraph.check_function_preservation(model, mix, x) == math.inf
    swap_out = torch.arange(n)
    out = aut.graph.output_nodes
    swap_out[int(out[0])], swap_out[int(out[1])] = int(out[1]), int(out[0])
    assert not aut.contains(swap_out)
    assert symgraph.check_function_preservation(model, swap_out, x) > 1e-3


def test_train_mode_check_sees_running_statistics():
    # a BN model whose permutation keeps outputs in eval mode but would desynchronise buffers if Phi
    # forgot them: check that the train-mode comparison includes the updated running statistics
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    aut = symgraph.automorphism_group(model)
    perm = aut.random_element(torch.Generator().manual_seed(3))
    assert symgraph.check_function_preservation(model, perm, x, modes=("train",)) < 1e-10
    original = copy.deepcopy(model)
    assert all(
        torch.equal(a, b) for a, b in zip(original.state_dict().values(), model.state_dict().values(), strict=True)
    )  # the checker works on copies


def test_float32_batchnorm_cnn_with_its_float32_graph_passes_in_train_mode_at_float64_precision():
    # regression: a graph built from a float32 model must not round the float64 comparison (the updated
    # running statistics used to be read back in the graph's float32 slot dtypes: ~3e-8 on a correct Phi)
    from symgraph.models import build_model

    torch.manual_seed(4)
    model = build_model("cnn2d:hidden=8,conv_layers=2,norm=batchnorm")
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics, so that rounding would show
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 1, 28, 28)
    g = symgraph.parameter_graph(model, example_input=x[:1])
    assert g.edge_weight.dtype == torch.float32
    assert any(s.is_buffer and s.dtype == torch.float32 for s in g.slots)
    aut = symgraph.automorphism_group(g)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        perm = aut.random_element(gen)
        assert symgraph.check_function_preservation(model, perm, x, graph=g, modes=("train",)) < 1e-10
        assert symgraph.check_function_preservation(model, perm, x, graph=g) < 1e-10
    # negative control: swapping two (fixed) output nodes keeps the edge set but changes the function
    swap_out = torch.arange(g.num_nodes)
    out = g.output_nodes
    swap_out[int(out[0])], swap_out[int(out[1])] = int(out[1]), int(out[0])
    assert not aut.contains(swap_out)
    assert symgraph.check_function_preservation(model, swap_out, x, graph=g, modes=("train",)) > 1e-3


# ---------------------------------------------------------------------------------------------- inferred inputs
def _flatten_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()


def test_permute_model_after_automorphism_group_needs_no_shape_again():
    """Issue 21 item 3: the input the group's graph was built with is remembered on the model."""
    cnn = _flatten_cnn()
    aut = symgraph.automorphism_group(cnn, input_shape=(1, 2, 6, 6))
    perm = aut.random_element(torch.Generator().manual_seed(1))
    x = torch.randn(3, 2, 6, 6)
    permuted = symgraph.permute_model(cnn, perm)
    with torch.no_grad():
        assert float((permuted(x) - cnn(x)).abs().max()) < 1e-5
    assert symgraph.check_function_preservation(cnn, perm, x) < 1e-12
    assert symgraph.check_function_preservation(cnn, perm, x, graph=aut) < 1e-12  # the group itself
    assert symgraph.permute_model(cnn, perm, graph=aut).state_dict().keys() == cnn.state_dict().keys()
    # negative control: a fresh model of the same architecture has no remembered input, and a flatten head
    # does not say its input size
    with pytest.raises(symgraph.ShapeMismatchError, match="input could not be inferred"):
        symgraph.permute_model(_flatten_cnn(), perm)


def test_cnn_with_adaptive_pooling_gets_an_inferred_input_and_larger_ones_when_too_small():
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert symgraph.parameter_graph(small).spec.input_shape == (1, 3, 64, 64)
    strided = nn.Sequential(
        *[nn.Conv2d(3, 3, 3, stride=4) for _ in range(3)], nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1)
    )
    assert symgraph.parameter_graph(strided).spec.input_shape == (1, 3, 224, 224)  # 64 and 128 are too small
    with pytest.raises(symgraph.ShapeMismatchError, match="could not be inferred"):
        symgraph.parameter_graph(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 62 * 62, 2)))


def test_a_computation_graph_group_is_refused_by_permute_model():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    aut = symgraph.automorphism_group(m, graph="computation", input_shape=(1, 2))
    with pytest.raises(symgraph.ShapeMismatchError, match="parameter graph"):
        symgraph.permute_model(m, aut.random_element(), graph=aut)


class _FunctionalDropout(nn.Module):
    """Dropout called as a function (as torchvision's Inception auxiliary heads do)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.nn.functional.dropout(torch.relu(self.a(x)), 0.5, training=self.training))


def test_functional_dropout_is_switched_off_in_train_mode_comparisons(monkeypatch):
    import contextlib

    import symgraph.permute as permute

    original = torch.nn.functional.dropout
    m = _FunctionalDropout().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    aut = symgraph.automorphism_group(m)
    gen = torch.Generator().manual_seed(0)
    perm = aut.random_element(generator=gen)
    while torch.equal(perm, torch.arange(perm.numel())):  # the identity would prove nothing below
        perm = aut.random_element(generator=gen)
    assert symgraph.check_function_preservation(m, perm, x, modes=("train",), graph=aut) < 1e-12
    assert torch.nn.functional.dropout is original  # restored after the comparison
    # negative control: with F.dropout left on, the same seed gives the permuted units other masks
    monkeypatch.setattr(permute, "_functional_dropout_off", contextlib.nullcontext)
    assert symgraph.check_function_preservation(m, perm, x, modes=("train",), graph=aut) > 1e-3


class _Versioned(nn.Module):
    """A module whose loader needs its state version (as torchvision's MNASNet does)."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise ValueError("version should be 2")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def test_permuted_state_keeps_the_modules_state_versions():
    # without the state dict's metadata such a module refuses the permuted state (and the check said "inf")
    m = _Versioned().double()
    aut = symgraph.automorphism_group(m)
    perm = aut.random_element(generator=torch.Generator().manual_seed(0))
    assert symgraph.check_function_preservation(m, perm, torch.randn(4, 2, dtype=torch.float64), graph=aut) < 1e-12
