"""Attention features of Llama/Mistral/GPT-2-style models (issue 20 item 4): so far SDPA's dropout in train mode."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph.permute import permute_model


class SdpaDropout(nn.Module):
    """Two-head self-attention calling SDPA with attention-probability dropout in train mode (as HF does)."""

    def __init__(self, dim: int = 8, heads: int = 2, p: float = 0.5):
        super().__init__()
        self.heads, self.p = heads, p
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), dropout_p=self.p if self.training else 0.0
        )
        return self.o(a.transpose(1, 2).reshape(b, t, d))


def _head_swap(model, x):
    aut = symgraph.automorphism_group(model, example_input=x)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        perm = aut.random_element(generator=gen)
        if not torch.equal(perm, torch.arange(perm.numel())):
            return aut, perm
    raise AssertionError("no non-trivial automorphism drawn")


def test_random_automorphism_preserves_sdpa_dropout_model_in_train_mode():
    torch.manual_seed(0)
    m = SdpaDropout()
    x = torch.randn(1, 5, 8)
    aut, perm = _head_swap(m, x)
    assert aut.order == 2 * (24 * 24) ** 2  # S_2 on heads, S_4 q/k and S_4 v dims per head
    xs = torch.randn(3, 5, 8)
    assert symgraph.check_function_preservation(m, perm, xs, modes=("train",), graph=aut) < 1e-10


def test_sdpa_dropout_left_on_would_fail_the_train_mode_check():
    # negative control: with SDPA's dropout left on, identical seeds give the permuted heads different
    # masks, so the same automorphism would look like it changes the function
    torch.manual_seed(0)
    m = SdpaDropout()
    x = torch.randn(1, 5, 8)
    aut, perm = _head_swap(m, x)
    a = copy.deepcopy(m).double().train()
    b = permute_model(a, perm, graph=aut.graph, check=False).train()
    xs = torch.randn(3, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(1)
        ya = a(xs)
        torch.manual_seed(1)
        yb = b(xs)
    assert float((ya - yb).abs().max()) > 1e-3
    # ... and the check itself still catches a permutation that is not an automorphism (inputs swapped)
    g = aut.graph
    inputs = torch.nonzero(g.role_mask("input")).view(-1)
    bad = torch.arange(g.num_nodes)
    bad[inputs[0]], bad[inputs[1]] = inputs[1], inputs[0]
    assert symgraph.check_function_preservation(m, bad, xs.float(), modes=("train",), graph=aut) > 1e-6
