"""``nn.Linear`` (and ``F.linear``): one node per output unit, one bias node per layer (paper Sec. 2.1.2).

Edges: ``W[o, i]`` is the edge ``in_node(i) -> out_node(o)``; after a flatten, the columns of channel ``c``
at spatial position ``p`` come from channel node ``c`` and are coloured by ``p``. The colour also carries
the structural ops of the input (``Features.ops``: a pool, a slice ``x[:, 0]``, ...). Bias ``b[o]`` is the edge
``bias_node -> out_node(o)``.

Analytic symmetry: the output units may be permuted (S_out) when they are hidden.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError
from ..graph import EdgeKey, declare_vocabulary
from ..registry import register_encoder, register_function
from ..trace import ParamRef, split_kwargs

declare_vocabulary(edges={"linear": ("flat",), "bias": ()}, node_kinds=("linear",))


def add_bias(ctx, out_nodes: torch.Tensor, bias: torch.Tensor, name: str, kind: str) -> None:
    """One bias node for the layer; edge bias[o]: bias node -> out_nodes[o]."""
    b = ctx.builder
    bnode = b.add_nodes(1, "bias", kind, f"{name.rsplit('.', 1)[0] or name} bias", module=ctx.module_path())
    b.add_edges(bnode.expand(out_nodes.numel()), out_nodes, b.edge_color(("bias", kind)), bias, name)


def encode_dense(
    ctx, x: Features, weight: torch.Tensor, bias, wname: str, bname: str | None, kind: str = "linear"
) -> Features:
    b = ctx.builder
    n_out, n_in = weight.shape
    if x.size != n_in:
        raise ShapeMismatchError(f"{n_in} input features", f"{x.size}", ctx.where())
    out = ctx.new_hidden(n_out, kind, f"{ctx.module_path() or wname} outputs", x.nodes)
    if x.num_pos == 1:
        color = b.edge_color(EdgeKey("linear", after=x.ops))
    else:
        P = x.num_pos
        lut = b.edge_colors([EdgeKey("linear", "flat", position=(P, p), after=x.ops) for p in range(P)])
        color = lut[x.pos]
    b.add_dense(x.nodes, out, color, weight, wname)
    if bias is not None:
        add_bias(ctx, out, bias, bname, kind)
    b.declare(
        SymmetryDecl("perm", out, f"S_{n_out} on {ctx.module_path() or wname} output units", module=ctx.module_path())
    )
    shape = tuple(x.shape[:-1]) + (n_out,) if x.axis in (-1, len(x.shape) - 1) else None
    return Features(out, shape or (n_out,), axis=-1, owned=ctx.op.num_users == 1)


@register_encoder(nn.Linear, reads_ops=True)
def encode_linear(ctx, op, module: nn.Linear, args):
    x = ctx.features(args[0], axis=-1)
    if x.axis not in (-1, len(x.shape) - 1):
        raise ShapeMismatchError("features on the last axis for nn.Linear", f"axis {x.axis}", ctx.where())
    path = op.target
    return encode_dense(
        ctx, x, module.weight, module.bias, f"{path}.weight", f"{path}.bias" if module.bias is not None else None
    )


@register_function(F.linear, torch._C._nn.linear, reads_ops=True)
def encode_functional_linear(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = ctx.features(args[0], axis=-1)
    w = args[1] if len(args) > 1 else kw.get("weight")
    bias = args[2] if len(args) > 2 else kw.get("bias")
    if not isinstance(w, ParamRef) or (bias is not None and not isinstance(bias, ParamRef)):
        raise ShapeMismatchError("F.linear with parameters of the model", "computed weights", ctx.where())
    return encode_dense(
        ctx, x, w.tensor, None if bias is None else bias.tensor, w.name, None if bias is None else bias.name
    )
