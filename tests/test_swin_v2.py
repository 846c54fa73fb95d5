"""Swin V2 (torchvision's ``ShiftedWindowAttentionV2``: cosine attention with a per-head ``logit_scale``, a
position bias from the MLP ``cpb_mlp`` of fixed coordinates; post-norm blocks; ``PatchMergingV2``): random
elements of the computed group keep the function (float64, eval and train), nauty's order equals the declared
one, ``to_state_dict`` gives the parameters back bit for bit, and negative controls (a logit scale or a position
bias MLP not tied to the heads) are caught. Needs torchvision (the models environment)."""

from __future__ import annotations

import pytest
import torch

import symgraph
from symgraph.encoders import swin
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double, randomize_buffers

F64 = torch.float64
pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tvs():
    tv = pytest.importorskip("torchvision", reason="the models environment (make test-models) has torchvision")
    return tv.models.swin_transformer


def _tiny(tvs, seed=0, depths=(2, 2), heads=(2, 4)):
    """Patch 4, 8 channels, two stages (window 2, shifted blocks), V2 blocks and merging, 3 classes."""
    model = tvs.SwinTransformer(
        [4, 4],
        8,
        list(depths),
        list(heads),
        [2, 2],
        stochastic_depth_prob=0.0,
        num_classes=3,
        block=tvs.SwinTransformerBlockV2,
        downsample_layer=tvs.PatchMergingV2,
    )
    return randomize_buffers(perturbed_double(model, seed), torch.Generator().manual_seed(seed))


def _input(n=2):
    return torch.randn(n, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(1))


def _worst(model, aut, x, n=3):
    gen = torch.Generator().manual_seed(0)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(n)
    )


def test_swin_v2_order_is_analytic_automorphisms_keep_the_function_and_the_state_dict_round_trips(tvs):
    model, x = _tiny(tvs), _input()
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert _worst(model, aut, x) < 1e-10
    sd = aut.graph.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items() if k in sd)
    assert {k for k, _ in model.named_parameters()} <= set(sd)


def test_the_cpb_mlp_hidden_units_are_free_and_its_outputs_read_by_the_heads(tvs):
    model = _tiny(tvs, depths=(1, 1))
    g = symgraph.parameter_graph(model, input_shape=(1, 3, 32, 32))
    attn = model.features[1][0].attn
    w2 = attn.cpb_mlp[2].weight
    slot = next(s for s in g.slots if s.name == "features.1.0.attn.cpb_mlp.2.weight")
    ids = torch.arange(slot.start, slot.start + w2.numel())
    src, dst = g.edge_index[:, ids]
    assert torch.equal(g.edge_weight[ids], w2.detach().reshape(-1))
    assert src.unique().numel() == w2.shape[1] and not bool(g.fixed_mask[src].any())
    assert dst.unique().numel() == w2.shape[0] and bool(g.role_mask("head")[dst].all())
    slot = next(s for s in g.slots if s.name == "features.1.0.attn.logit_scale")
    ids = torch.arange(slot.start, slot.start + attn.logit_scale.numel())
    src, dst = g.edge_index[:, ids]
    assert bool(g.fixed_mask[src].all()) and bool(g.role_mask("head")[dst].all())


def test_swapping_two_cpb_mlp_outputs_without_their_heads_changes_the_function(tvs):
    model, x = _tiny(tvs, depths=(1, 1)).eval(), _input()
    before = model(x)
    w = model.features[1][0].attn.cpb_mlp[2].weight
    with torch.no_grad():
        w.copy_(w[[1, 0]])
    assert (model(x) - before).abs().max() > 1e-6


def _untied_logit_scale(ctx, path, logit_scale, heads):
    """Negative control: the logit scale on columns of its own, not joined to the heads (free to move alone)."""
    b = ctx.builder
    node = b.add_nodes(1, "bias", "attention", f"{path} logit scale", module=path)
    cols = b.add_nodes(heads.numel(), "head", "attention", f"{path} scale columns", module=path)
    b.add_edges(
        node.expand(heads.numel()), cols, b.edge_color(("attention", "logit_scale")), logit_scale, f"{path}.logit_scale"
    )


def _untied_cpb(ctx, path, mlp, heads, ws):
    """Negative control: the position bias MLP's outputs on columns of their own, not the heads."""
    cols = ctx.builder.add_nodes(heads.numel(), "head", "attention", f"{path} cpb columns", module=path, level=0)
    real_cpb(ctx, path, mlp, cols, ws)


real_cpb = swin.continuous_position_bias_edges


@pytest.mark.parametrize(
    "name,broken", [("logit_scale_edges", _untied_logit_scale), ("continuous_position_bias_edges", _untied_cpb)]
)
def test_negative_control_a_logit_scale_or_cpb_mlp_not_tied_to_the_heads_is_caught(tvs, monkeypatch, name, broken):
    monkeypatch.setattr(swin, name, broken)
    model, x = _tiny(tvs, depths=(1, 1)).eval(), _input()
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert _worst(model, aut, x, n=6) > 1e-6
