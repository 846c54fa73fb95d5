"""Channel LayerNorm (ConvNeXt's LayerNorm2d and the permute pattern), RMS norms (nn.RMSNorm, F.rms_norm,
Hugging Face's LlamaRMSNorm/T5LayerNorm) and F.normalize: nauty's order equals the declared analytic one and
random automorphisms keep the function (float64), under both front ends; negative controls below."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double

F64 = torch.float64


class LN2d(nn.LayerNorm):  # torchvision's LayerNorm2d, written out (matched by its qualified name below)
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Channel(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv, self.ln, self.head = nn.Conv2d(2, 4, 1), norm, nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.ln(self.conv(x)))


class Tokens(nn.Module):
    def __init__(self, norm=None, fn=None):
        super().__init__()
        self.a, self.n, self.b = nn.Linear(3, 4), norm, nn.Linear(4, 2)
        self.fn = fn

    def forward(self, x):
        h = self.a(x)
        return self.b(self.fn(h) if self.fn is not None else self.n(h))


def _prep(model, seed=0):
    return perturbed_double(model, seed, scale=0.3)


def _llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return LlamaRMSNorm(4)


def _t5():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    return T5LayerNorm(4)


CASES = {
    "channel_ln_subclass_traced": (lambda: Channel(LN2d(4)), (3, 2, 3, 3), 1e-10),
    "rmsnorm": (lambda: Tokens(nn.RMSNorm(4)), (5, 3), 1e-10),
    "rms_norm_function": (lambda: Tokens(fn=lambda h: F.rms_norm(h, (4,), eps=1e-6)), (5, 3), 1e-10),
    "normalize": (lambda: Tokens(fn=lambda h: F.normalize(h, dim=-1)), (5, 3), 1e-10),
    # Hugging Face computes the statistics in float32 (by design): the function is defined to float32 precision
    "llama_rmsnorm": (lambda: Tokens(_llama()), (5, 3), 1e-5),
    "t5_layernorm": (lambda: Tokens(_t5()), (5, 3), 1e-5),
}


@pytest.mark.parametrize("tracer", ["fx", "export"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_norms_are_sound_and_complete(name, tracer):
    build, shape, tol = CASES[name]
    model = _prep(build())
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    if tracer == "fx" and name.startswith(("llama", "t5")):
        tracer = "auto"
    g = symgraph.parameter_graph(model, example_input=x[:1], tracer=tracer)
    aut = symgraph.automorphism_group(g)
    assert aut.order == analytic_order(g) == math.factorial(4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        assert symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) < tol
    sd = g.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_negative_control_normalize_over_a_non_feature_axis_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.normalize(self.a(x), dim=1))  # over the tokens, not the features

    with pytest.raises(UnsupportedModuleError, match="normalize"):
        symgraph.parameter_graph(_prep(Bad()), input_shape=(1, 5, 3), tracer="fx")


def test_negative_control_an_unrecognised_hand_written_rms_norm_is_refused():
    class MyRMS(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, h):
            return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))

    with pytest.raises(UnsupportedModuleError, match="rsqrt"):
        symgraph.parameter_graph(_prep(Tokens(MyRMS())), input_shape=(1, 3), tracer="export")
