"""``nn.Linear`` (and ``F.linear``): one node per output unit, one bias node per layer (paper Sec. 2.1.2).

Edges: ``W[o, i]`` is the edge ``in_node(i) -> out_node(o)``; after a flatten, the columns of channel ``c``
at spatial position ``p`` come from channel node ``c`` and are coloured by ``p``. The colour also carries
the structural ops of the input (``Features.ops``: a pool, a slice ``x[:, 0]``, ...). Bias ``b[o]`` is the edge
``bias_node -> out_node(o)``.

Hugging Face's ``Conv1D`` (GPT-2's projections, ``y = x @ W + b`` with ``W`` stored ``[in, out]``) is the same
layer with its weight transposed: the edge ``in_node(i) -> out_node(o)`` carries ``W[i, o]``, in ``W``'s own flat
order, so ``to_state_dict()`` gives back the stored ``[in, out]`` tensor.

Analytic symmetry: the output units may be permuted (S_out) when they are hidden.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import EdgeKey, declare_vocabulary
from ..registry import register_encoder, register_encoder_by_name, register_function
from ..trace import ParamRef, split_kwargs

declare_vocabulary(edges={"linear": ("flat",), "bias": ()}, node_kinds=("linear",))


def add_bias(ctx, out_nodes: torch.Tensor, bias: torch.Tensor, name: str, kind: str) -> None:
    """One bias node for the layer; edge bias[o]: bias node -> out_nodes[o]."""
    b = ctx.builder
    bnode = b.add_nodes(1, "bias", kind, f"{name.rsplit('.', 1)[0] or name} bias", module=ctx.module_path())
    b.add_edges(bnode.expand(out_nodes.numel()), out_nodes, b.edge_color(("bias", kind)), bias, name)


def encode_dense(
    ctx,
    x: Features,
    weight: torch.Tensor,
    bias,
    wname: str,
    bname: str | None,
    kind: str = "linear",
    transposed: bool = False,
) -> Features:
    """A dense layer on ``x``'s feature axis: ``weight`` is ``[out, in]`` (``[in, out]`` when ``transposed``)."""
    b = ctx.builder
    n_out, n_in = weight.shape[::-1] if transposed else weight.shape
    if x.size != n_in:
        raise ShapeMismatchError(f"{n_in} input features", f"{x.size}", ctx.where())
    out = ctx.new_hidden(n_out, kind, f"{ctx.module_path() or wname} outputs", x.nodes)
    if x.num_pos == 1:
        color = b.edge_color(EdgeKey("linear", after=x.ops))
    else:
        P = x.num_pos
        lut = b.edge_colors([EdgeKey("linear", "flat", position=(P, p), after=x.ops) for p in range(P)])
        color = lut[x.pos]
    if transposed:  # flat order of an [in, out] weight: edge (i, o) at i * n_out + o
        col = color if isinstance(color, int) else color.repeat_interleave(n_out)
        b.add_edges(x.nodes.repeat_interleave(n_out), out.repeat(n_in), col, weight, wname)
    else:
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


#: Hugging Face's transposed linear layer (GPT-2, OpenAI GPT), by class name: transformers is not imported
HF_CONV1D = ("transformers.pytorch_utils.Conv1D",)


@register_encoder_by_name(*HF_CONV1D)
def encode_hf_conv1d(ctx, op, module, args):
    """``transformers.pytorch_utils.Conv1D``: ``x @ weight + bias`` with ``weight`` of shape ``[in, out]``."""
    if type(module).forward is not _hf_conv1d_forward(module):
        raise UnsupportedModuleError(
            op.target,
            f"{type(module).__qualname__} overrides the forward of transformers' Conv1D: not encoded as one",
            "Register an encoder for it with @symgraph.register_encoder(YourModuleType).",
        )
    x = ctx.features(args[0], axis=-1)
    if x.axis not in (-1, len(x.shape) - 1):
        raise ShapeMismatchError("features on the last axis for Conv1D", f"axis {x.axis}", ctx.where())
    path = op.target
    w, bias = module.weight, module.bias
    if w.dim() != 2:
        raise ShapeMismatchError(f"a 2-D [in, out] weight for Conv1D '{path}'", f"shape {tuple(w.shape)}", ctx.where())
    return encode_dense(
        ctx, x, w, bias, f"{path}.weight", f"{path}.bias" if bias is not None else None, transposed=True
    )


def _hf_conv1d_forward(module):
    """The forward of the class in :data:`HF_CONV1D` that ``module`` derives from."""
    for cls in type(module).__mro__:
        if f"{cls.__module__}.{cls.__qualname__}" in HF_CONV1D:
            return cls.forward
    return None


encode_hf_conv1d.leaf = lambda m: type(m).forward is _hf_conv1d_forward(m)  # a subclass's own forward: traced
