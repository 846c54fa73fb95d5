"""The DeepSets permutation-equivariant layer ``y = x W1^T + pool(x) W2^T + b`` (paper appendix B, Fig. 6).

Encoding: one node per input and per output channel, and *two* parallel edges from input channel ``i`` to
output channel ``o``: ``W1[o, i]`` (the identity basis map) and ``W2[o, i]`` (the pooling basis map), plus a
bias node. With ``encoding="sound"`` the two edges have different colours. With ``encoding="paper"`` they
share one colour, as in the paper's drawing: then nothing in the graph tells ``W1[o, i]`` from ``W2[o, i]``,
so a metanet cannot either, although swapping them changes the function.

Analytic symmetry: the output channels may be permuted (S_out), as for a linear layer.

Example
-------
>>> import torch.nn as nn, symgraph
>>> from symgraph.models import DeepSetsLayer
>>> g = symgraph.parameter_graph(nn.Sequential(DeepSetsLayer(2, 3), nn.ReLU(), DeepSetsLayer(3, 1)),
...                              input_shape=(1, 5, 2))
>>> sorted(k for k in g.edge_color_keys if k[0] == "deepsets")
[('deepsets', 'identity'), ('deepsets', 'pool', 'mean')]
"""

from __future__ import annotations

from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError
from ..graph import declare_vocabulary
from ..models.deepsets import DeepSetsLayer
from ..registry import register_encoder
from .linear import add_bias

declare_vocabulary(edges={"deepsets": ("identity", "pool")}, node_kinds=("deepsets",))

__all__ = ["encode_deepsets_layer"]


@register_encoder(DeepSetsLayer)
def encode_deepsets_layer(ctx, op, module: DeepSetsLayer, args):
    """Input (..., n, d_in) with features on the last axis -> d_out nodes, two coloured edges per pair."""
    x = ctx.features(args[0], axis=-1)
    rank = len(x.shape)
    if x.axis % rank != rank - 1 or x.num_pos != 1:
        raise ShapeMismatchError("set features on the last axis for DeepSetsLayer", f"axis {x.axis}", ctx.where())
    b = ctx.builder
    d_out, d_in = module.lin.weight.shape
    if x.size != d_in:
        raise ShapeMismatchError(f"{d_in} input features", f"{x.size}", ctx.where())
    out = ctx.new_hidden(d_out, "deepsets", f"{op.target} outputs", x.nodes, extra=(module.pool,))
    if b.encoding == "paper":
        c1 = c2 = b.edge_color(("deepsets",))
    else:
        c1 = b.edge_color(("deepsets", "identity"))
        c2 = b.edge_color(("deepsets", "pool", module.pool))
    b.add_dense(x.nodes, out, c1, module.lin.weight, f"{op.target}.lin.weight")
    b.add_dense(x.nodes, out, c2, module.pool_lin.weight, f"{op.target}.pool_lin.weight")
    if module.lin.bias is not None:
        add_bias(ctx, out, module.lin.bias, f"{op.target}.lin.bias", "deepsets")
    b.declare(SymmetryDecl("perm", out, f"S_{d_out} on {op.target} output channels", module=op.target))
    return Features(out, tuple(op.shape), rank - 1, None, 1, owned=op.num_users == 1)
