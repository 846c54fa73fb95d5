"""Swin Transformer (torchvision ``swin_t``/``swin_s``/``swin_b``): shifted-window attention with a learned
relative position bias, and patch merging.

torchvision hides both behind ``torch.fx.wrap`` (``shifted_window_attention``, ``_get_relative_position_bias``,
``_patch_merging_pad``), so fx cannot see into them; their modules are encoded as leaves, matched by class name
(symgraph does not import torchvision): ``torchvision.models.swin_transformer.ShiftedWindowAttention``,
``PatchMerging`` and ``PatchMergingV2``.

**Window attention.** Within each window of ``W_h x W_w`` tokens, head ``h`` computes
``softmax(q_h k_h^T / sqrt(d) + B[idx(i, j), h] + mask) v_h``, where ``B`` is the table
``relative_position_bias_table`` [(2 W_h - 1)(2 W_w - 1), heads] and ``idx`` the fixed relative offset of tokens
``i`` and ``j``. The graph is the sound multi-head attention encoding of :mod:`symgraph.encoders.attention`
(one ``qk`` node per head and dimension receiving the q rows (colour ``q``) and the k rows (colour ``k``) of
``qkv.weight``; one ``v`` node per head and dimension; one ``head`` node per head with parameter-free edges to
its ``qk`` and ``v`` nodes; ``proj`` reads the ``v`` nodes), plus one fixed ``position`` node per relative offset
``r`` with an edge ``offset r -> head h`` carrying ``B[r, h]``. So a head moves only together with its bias
column, and offsets (hence token positions) never move. The window partition, the cyclic shift (``roll``), the
shifted-window mask, the padding and the scale have no parameters: they are the same for every head and every
channel, and they are part of the ``qk``/``v`` node colour (window size, shift size, scale, dropout rates), so
attention layers that differ in them never look alike.

**Patch merging.** ``_patch_merging_pad`` concatenates the four 2x2 sub-grids ``x[..., i::2, j::2, :]`` along the
channels: feature ``k * C + c`` is channel ``c`` at sub-grid ``k``. Each sub-grid is a structural op
(:meth:`~symgraph.trace.EncodeContext.materialize`): new nodes per channel with an edge from the channel coloured
by the sub-grid, tied to the channel; the norm and the reduction are the LayerNorm and linear encoders'.

**Swin V2** (``ShiftedWindowAttentionV2``). Head ``h`` computes
``softmax(exp(min(s_h, log 100)) * cos(q_h, k_h) + 16 sigmoid(P[idx(i, j), h]) + mask) v_h`` with ``s_h`` the
parameter ``logit_scale[h]`` and ``P = cpb_mlp(c)`` the continuous position bias: the MLP
``Linear(2, n) -> ReLU -> Linear(n, heads, no bias)`` applied to the fixed (log-spaced) coordinates ``c`` of
every relative offset. Normalising q and k over the dims of a head commutes with permuting those dims (jointly
for q and k, as the q/k pairing already ties them), so the ``qk``/``v``/``head`` nodes are V1's (their colour
says "cosine" instead of the scale). ``logit_scale`` is one edge ``logit-scale node -> head h`` per head from a
fixed node; the MLP is its parameters: two fixed ``position`` nodes (the two coordinates, told apart),
``n`` hidden nodes (ReLU) reading them through ``cpb_mlp.0.weight`` and a fixed bias node through
``cpb_mlp.0.bias``, and edges ``hidden j -> head h`` carrying ``cpb_mlp.2.weight``. The head colour records the
``16 sigmoid`` and the window (which fixes the coordinates). So a head moves with its logit scale, its row of
the last layer and its q/k/v, and the hidden units of each ``cpb_mlp`` are free (S_n: a true symmetry of the
function, as for any MLP). The forward zeroes the k third of ``qkv.bias`` on a copy (the parameter keeps its
values, zero from initialisation): those entries are encoded like the q and v biases (bias edges on the ``qk``
nodes), which is sound (it can only forbid permutations) and loses nothing, since the q/k dims of a head move
jointly anyway and nauty's order does not depend on the weights.

Analytic symmetry: as multi-head attention (heads as blocks, each with its q/k dims jointly and its v dims; the
offsets fixed; in V2 also S_n on each ``cpb_mlp``'s hidden units); the output projection's units (tied to the
residual stream by the residual encoder); patch merging: none of its own (ties), the reduction's output units.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..builder import Features, SymmetryDecl, structural_op
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import register_encoder_by_name
from .attention import declare_attention
from .linear import encode_dense
from .norm import layernorm_features

# the bias edges are an attention role (gmn buckets them with attention, told apart by the key hash); offsets are
# position nodes
declare_vocabulary(edges={"attention": ("rel_bias", "logit_scale", "cpb_in", "cpb_out")}, node_kinds=("position",))

__all__ = [
    "encode_shifted_window_attention",
    "encode_patch_merging",
    "relative_position_bias_edges",
    "logit_scale_edges",
    "continuous_position_bias_edges",
]

_TV = "torchvision.models.swin_transformer"


def _channels_last(ctx, value, what: str) -> Features:
    x = ctx.features(value, axis=-1)
    rank = len(x.shape)
    if rank < 3 or x.axis % rank != rank - 1 or x.num_pos != 1:
        raise ShapeMismatchError(
            f"[..., H, W, C] features for {what}", f"shape {tuple(x.shape)}, axis {x.axis}", ctx.where()
        )
    return x


def relative_position_bias_edges(ctx, path: str, table: torch.Tensor, heads: torch.Tensor, ws: tuple) -> None:
    """The bias table [R, H] as edges ``offset r -> head h`` (entry [r, h], flat order r-major) from ``R`` fixed
    ``position`` nodes, one per relative offset of two tokens in a window."""
    b = ctx.builder
    R, H = table.shape
    offsets = b.add_nodes(R, "position", "position", f"{path} relative offsets", module=path, level=0)
    name = f"{path}.relative_position_bias_table" if path else "relative_position_bias_table"
    b.add_edges(offsets.repeat_interleave(H), heads.repeat(R), b.edge_color(("attention", "rel_bias", ws)), table, name)


def logit_scale_edges(ctx, path: str, logit_scale: torch.Tensor, heads: torch.Tensor) -> None:
    """Swin V2's ``logit_scale`` [H, 1, 1] as edges ``fixed node -> head h`` (the head's cosine-score scale)."""
    b = ctx.builder
    node = b.add_nodes(1, "bias", "attention", f"{path} logit scale", module=path)
    name = f"{path}.logit_scale" if path else "logit_scale"
    b.add_edges(node.expand(heads.numel()), heads, b.edge_color(("attention", "logit_scale")), logit_scale, name)


def continuous_position_bias_edges(ctx, path: str, mlp: nn.Module, heads: torch.Tensor, ws: tuple) -> None:
    """Swin V2's ``cpb_mlp`` (Linear(2, n) -> ReLU -> Linear(n, H, no bias)) of fixed coordinates: two fixed
    coordinate nodes, ``n`` free hidden nodes, edges ``hidden j -> head h`` (see the module docstring)."""
    b = ctx.builder
    p = f"{path}.cpb_mlp." if path else "cpb_mlp."
    fc1, act, fc2 = (list(mlp) + [None] * 3)[:3] if isinstance(mlp, nn.Sequential) and len(mlp) == 3 else [None] * 3
    H = heads.numel()
    if (
        not isinstance(fc1, nn.Linear)
        or not isinstance(act, nn.ReLU)
        or not isinstance(fc2, nn.Linear)
        or fc1.in_features != 2
        or fc2.bias is not None
        or fc2.in_features != fc1.out_features
        or fc2.out_features != H
    ):
        raise UnsupportedModuleError(path, "a cpb_mlp other than Linear(2, n) -> ReLU -> Linear(n, heads, no bias)")
    n = fc1.out_features
    coords = torch.cat(
        [b.add_nodes(1, "position", "position", f"{path} coordinate {a}", module=path, extra=(a,)) for a in "hw"]
    )
    hidden = b.add_nodes(n, "hidden", "linear", f"{path} cpb_mlp hidden", module=path, level=1, extra=("cpb", *ws))
    b.add_activation(hidden, "relu")
    b.add_dense(coords, hidden, b.edge_color(("attention", "cpb_in")), fc1.weight, f"{p}0.weight")
    if fc1.bias is not None:
        bnode = b.add_nodes(1, "bias", "attention", f"{path} cpb_mlp bias", module=path)
        b.add_edges(bnode.expand(n), hidden, b.edge_color(("bias", "attention", "cpb")), fc1.bias, f"{p}0.bias")
    b.add_dense(hidden, heads, b.edge_color(("attention", "cpb_out")), fc2.weight, f"{p}2.weight")
    b.declare(SymmetryDecl("perm", hidden, f"S_{n} on the cpb_mlp hidden units of {path}", module=path))


@register_encoder_by_name(f"{_TV}.ShiftedWindowAttention", f"{_TV}.ShiftedWindowAttentionV2")
def encode_shifted_window_attention(ctx, op, module: nn.Module, args):
    """torchvision's ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2`` as leaves (see the module
    docstring)."""
    path = op.target
    v2 = type(module).__qualname__ == "ShiftedWindowAttentionV2"
    if not v2 and type(module).__qualname__ != "ShiftedWindowAttention":
        raise UnsupportedModuleError(path, f"{type(module).__name__}: a window attention other than Swin V1/V2")
    if v2 and not (isinstance(getattr(module, "logit_scale", None), torch.Tensor) and hasattr(module, "cpb_mlp")):
        raise UnsupportedModuleError(path, "ShiftedWindowAttentionV2 without a logit_scale parameter and a cpb_mlp")
    b = ctx.builder
    if b.encoding == "paper":
        raise UnsupportedModuleError(path, "Swin window attention in the paper's encoding (no head nodes)")
    x = _channels_last(ctx, args[0], "ShiftedWindowAttention")
    qkv, proj = module.qkv, module.proj
    table = None if v2 else module.relative_position_bias_table
    C, H = qkv.in_features, int(module.num_heads)
    d = C // H
    ws, shift = tuple(int(s) for s in module.window_size), tuple(int(s) for s in module.shift_size)
    R = (2 * ws[0] - 1) * (2 * ws[1] - 1)
    if x.size != C or qkv.weight.shape != (3 * C, C) or proj.weight.shape != (C, C) or C % H:
        raise ShapeMismatchError(
            f"{C} features with qkv [{3 * C}, {C}] and proj [{C}, {C}] over {H} heads",
            f"{x.size} features, qkv {tuple(qkv.weight.shape)}, proj {tuple(proj.weight.shape)}",
            ctx.where(),
        )
    if v2 and tuple(module.logit_scale.shape) != (H, 1, 1):
        raise ShapeMismatchError(f"logit_scale [{H}, 1, 1]", f"{tuple(module.logit_scale.shape)}", ctx.where())
    if not v2 and tuple(table.shape) != (R, H):
        raise ShapeMismatchError(f"a relative position bias table [{R}, {H}]", f"{tuple(table.shape)}", ctx.where())
    p = f"{path}." if path else ""
    # what the parameter-free parts do (window, shift, mask, scale, dropout): in the node colour
    scale = ("cosine",) if v2 else float(d**-0.5)
    extra = (("window", *ws), ("shift", *shift), scale, float(module.attention_dropout), float(module.dropout))
    qk = ctx.new_hidden(C, "qk", f"{path} q.k nodes", x.nodes, extra=extra)
    v = ctx.new_hidden(C, "attention_v", f"{path} v nodes", x.nodes, extra=extra)
    dsts = (qk, qk, v)
    cols = [b.edge_color(("attention", r)) for r in "qkv"]
    # qkv.weight flat order (o, i): row o = role o // C, unit o % C; column i = input feature i
    src = x.nodes.view(1, 1, C).expand(3, C, C).reshape(-1)
    dst = torch.stack(dsts).view(3, C, 1).expand(3, C, C).reshape(-1)
    col = torch.tensor(cols, dtype=torch.int32).view(3, 1, 1).expand(3, C, C).reshape(-1)
    b.add_edges(src, dst, col, qkv.weight, f"{p}qkv.weight")
    if qkv.bias is not None:
        bnode = b.add_nodes(1, "bias", "attention", f"{path} qkv bias", module=path)
        bcol = torch.tensor([b.edge_color(("bias", "attention", r)) for r in "qkv"], dtype=torch.int32)
        b.add_edges(bnode.expand(3 * C), torch.cat(dsts), bcol.repeat_interleave(C), qkv.bias, f"{p}qkv.bias")
    hextra = (("cpb", "16sigmoid", *ws),) if v2 else ()
    heads = b.add_nodes(H, "head", "attention", f"{path} heads", module=path, level=0, extra=hextra)
    ctx.identity_edges(heads.repeat_interleave(d), qk, ("attention", "head", "qk"))
    ctx.identity_edges(heads.repeat_interleave(d), v, ("attention", "head", "v"))
    if v2:
        logit_scale_edges(ctx, path, module.logit_scale, heads)
        continuous_position_bias_edges(ctx, path, module.cpb_mlp, heads, ws)
    else:
        relative_position_bias_edges(ctx, path, table, heads, ws)
    declare_attention(ctx, qk.view(H, d), qk.view(H, d), v.view(H, d), heads, path)
    vfeat = Features(v, tuple(x.shape), len(x.shape) - 1, None, 1)
    return encode_dense(
        ctx, vfeat, proj.weight, proj.bias, f"{p}proj.weight", f"{p}proj.bias" if proj.bias is not None else None
    )


def _space_to_depth(ctx, op, x: Features) -> Features:
    """``_patch_merging_pad``: pad H and W to even sizes, concatenate the sub-grids (0,0), (1,0), (0,1), (1,1)."""
    shape = tuple(x.shape)
    h, w = shape[-3], shape[-2]
    out = shape[:-3] + ((h + 1) // 2, (w + 1) // 2, x.size)
    pieces = []
    for i, j in ((0, 0), (1, 0), (0, 1), (1, 1)):
        rec = structural_op("patch_merging_subgrid", shape, out, (i, j))
        piece = Features(x.nodes, out, len(out) - 1, None, 1, owned=False, ops=x.ops + (rec,))
        pieces.append(ctx.materialize(piece).nodes)
    return Features(torch.cat(pieces), out[:-1] + (4 * x.size,), len(out) - 1, None, 1, owned=True)


@register_encoder_by_name(f"{_TV}.PatchMerging", f"{_TV}.PatchMergingV2")
def encode_patch_merging(ctx, op, module: nn.Module, args):
    """torchvision's ``PatchMerging`` (norm, then reduction) and ``PatchMergingV2`` (reduction, then norm)."""
    path = op.target
    if not isinstance(module.norm, nn.LayerNorm):
        raise UnsupportedModuleError(path, f"patch merging with a {type(module.norm).__name__} norm")
    x = _space_to_depth(ctx, op, _channels_last(ctx, args[0], type(module).__name__))
    p = f"{path}." if path else ""
    red, norm_first = module.reduction, type(module).__qualname__ == "PatchMerging"

    def norm(v: Features) -> Features:
        return layernorm_features(ctx, v, module.norm, f"{p}norm", tuple(v.shape), True)

    if norm_first:
        x = norm(x)
    y = encode_dense(
        ctx, x, red.weight, red.bias, f"{p}reduction.weight", f"{p}reduction.bias" if red.bias is not None else None
    )
    y = Features(y.nodes, tuple(op.shape), len(op.shape) - 1, None, 1, owned=op.num_users == 1)
    return y if norm_first else norm(y)
