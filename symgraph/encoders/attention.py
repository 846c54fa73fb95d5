"""Multi-head attention: ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``/``nn.TransformerEncoder``
(leaf encoders) and hand-written attention traced by fx (``view`` into heads, ``transpose``, ``q @ k^T``,
scaling, ``softmax``, ``@ v``, merge of heads, or ``F.scaled_dot_product_attention``).

Sound encoding (``encoding="sound"``, the default). The symmetries of attention are exactly: permutations of
the heads, a *joint* permutation of the q and k dimensions within a head (the scores ``q_h . k_h`` only see
matched pairs), and a permutation of the v dimensions within a head. The graph has

- for ``nn.MultiheadAttention``: one ``qk`` node per head and dimension, receiving both the q-row edges
  (colour ``q``) and the k-row edges (colour ``k``) of the input projection, so that ``q_hj`` and ``k_hj``
  can only move together; one ``v`` node per head and dimension (colour ``v``); one ``head`` node per head
  (role ``head``) with parameter-free edges to its ``qk`` and ``v`` nodes; the output projection reads the
  ``v`` nodes;
- for traced attention: the q, k and v projections are ordinary linear layers; at ``softmax(q k^T) v`` one
  ``qk`` node per head and dimension gets parameter-free edges from ``q_hj`` (colour ``q``) and ``k_hj``
  (colour ``k``), and ``head`` nodes get edges to the ``qk`` and ``v`` nodes of their head.

Paper encoding (``encoding="paper"``, paper Fig. 3 middle): q, k and v are one middle layer of identically
coloured edges and there are no head nodes. Then swapping a q row with a k row, or dimensions across heads,
is an automorphism that changes the function: the paper's drawing is unsound for attention.

Analytic symmetry (declared in both encodings): ``"tie"`` q with k; per head a ``"perm"`` of its q (=k)
dimensions and one of its v dimensions; ``"blocks"`` over the heads, each row holding the head's q, v (and
head) nodes.

Decoder attention (Llama, Mistral, GPT-2):

- **causal** attention (``is_causal=True``, or a constant lower-triangular mask that the export front end
  folds into it) carries ``causal`` in the ``qk`` nodes' colour; other masks are refused;
- **grouped-query attention** (``repeat_kv``'s ``[:, :, None].expand(...).reshape(...)``, or SDPA's
  ``enable_gqa=True``): H query heads read Hk = H/r key/value heads. Each query head gets output nodes of its
  own (its attention weights differ from its group's other heads); see :func:`_attend_grouped`. Order
  ``Hk! (r!)^Hk (d_qk!)^Hk (d_v!)^Hk``, the query heads of a group declared as ``"copies"``;
- **rotary position embeddings** (``x * cos + rotate_half(x) * sin``, fused by the export front end into
  :func:`rotary_embedding`): dimension ``j`` is paired with ``j + d/2`` and rotated at its own frequency, so the
  q/k dimensions of a head only permute as pairs of equal cos/sin columns (none for Llama's distinct
  frequencies); the v dimensions keep S_dv and the heads still permute.

Per-head score biases (T5's relative position bias, :func:`score_bias`): ``softmax(q k^T * s + b) v`` where
``b`` is a value with one feature per head on the scores' head axis (``scores + b`` before the softmax, or SDPA's
float ``attn_mask``). T5 computes ``b = relative_attention_bias(buckets).permute(2, 0, 1)`` once, from constant
integer buckets (the embedding encoder: one fixed ``position`` node per bucket with an edge ``B[r, h]`` to bias
feature ``h``), and every layer reads it. Each attention op that reads ``b`` gets a parameter-free edge ``b_h ->
head h`` (colour ``rel_bias``) and ties ``b`` to its head nodes, so a head moves only with its bias column, and
the heads of all layers that read one bias permute jointly: one ``S_H`` for all of them (tests/test_t5.py).
Masks that mask something (a padding mask, any non-causal constant), biases that are not per head, subtractions
and biases after the softmax are refused. Not with grouped-query attention or ``encoding="paper"``.

Example
-------
>>> import torch.nn as nn, symgraph
>>> from symgraph.symmetry import analytic_order
>>> class Tiny(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
...     def forward(self, x):
...         return self.mha(x, x, x, need_weights=False)[0]
>>> g = symgraph.parameter_graph(Tiny(), input_shape=(1, 3, 4))
>>> int(g.role_mask("head").sum()), analytic_order(g) == 2 * (2 * 2) ** 2  # S_2 on heads, q/k and v dims
(2, True)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features, SymmetryDecl, with_ops
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import encoder_for_function, register_encoder, register_function
from ..trace import ParamRef, split_kwargs
from . import residual as _residual_encoders  # noqa: F401  (registered first, like shape)
from . import shape as _shape  # noqa: F401  (registered first: the encoders below extend its targets)
from .activation import apply_elementwise
from .linear import encode_dense
from .norm import layernorm_features

declare_vocabulary(
    edges={"attention": ("q", "k", "v", "head", "in_proj", "bias_k", "bias_v", "rel_bias"), "bias": ("attention",)},
    node_kinds=("qk", "attention", "attention_v", "attention_kv"),
)

__all__ = [
    "SplitFeatures",
    "Scores",
    "declare_attention",
    "rotary_embedding",
    "encode_multihead_attention",
    "encode_transformer_encoder_layer",
]


# ---------------------------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class SplitFeatures:
    """A value whose feature axis was split into several tensor axes (``view(B, T, H, d)``).

    ``nodes`` has one dimension per split axis (e.g. [H, d]); ``axes[k]`` is the tensor axis that indexes
    ``nodes``' dimension ``k``.
    """

    nodes: torch.Tensor
    shape: tuple[int, ...]
    axes: tuple[int, ...]

    def moved(self, op, perm: list[int]) -> SplitFeatures:
        """The value after a transpose/permute with ``perm`` (output axis k = input axis perm[k])."""
        return SplitFeatures(self.nodes, tuple(op.shape), tuple(perm.index(a) for a in self.axes))


@dataclass(frozen=True)
class ScoreBias:
    """A per-head value added to attention scores: ``nodes[h]`` (one feature node per head) is added to the
    scores of head ``h`` (T5's relative position bias), after the structural ops ``ops``, times ``factor``
    (the scaling applied to the scores after the addition)."""

    nodes: torch.Tensor
    ops: tuple = ()
    factor: float = 1.0


@dataclass(frozen=True)
class Scores:
    """Attention scores ``q k^T`` (optionally scaled, with per-head biases added, and soft-maxed) of [H, d] q
    and k nodes."""

    q: torch.Tensor
    k: torch.Tensor
    shape: tuple[int, ...]
    head_axis: int | None
    scale: float = 1.0
    softmax: bool = False
    bias: tuple[ScoreBias, ...] = ()

    def moved(self, op, perm):
        raise UnsupportedModuleError(op.name, "transposing attention scores")


def _chain(*targets):
    """Register an encoder that handles attention values and falls back to the previous encoder otherwise."""
    previous = {t: encoder_for_function(t) for t in targets}

    def deco(fn):
        def encoder(ctx, op, module, args):
            out = fn(ctx, op, module, args)
            if out is not NotImplemented:
                return out
            prev = previous.get(op.target)
            if prev is None:
                name = op.target if isinstance(op.target, str) else op.target.__name__
                kinds = ", ".join(type(a).__name__ for a in args)
                raise UnsupportedModuleError(op.name, f"'{name}' of these operands ({kinds})")
            return prev(ctx, op, module, args)

        register_function(*targets)(encoder)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- reshapes
@_chain("view", "reshape", torch.reshape)
def encode_head_reshape(ctx, op, module, args):
    args, _ = split_kwargs(args)
    x = args[0]
    out = tuple(op.shape)
    if isinstance(x, Features) and x.num_pos == 1 and tuple(x.shape) != out:
        a = x.axis % len(x.shape)
        pre, post = tuple(x.shape[:a]), tuple(x.shape[a + 1 :])
        if out[:a] == pre and (not post or out[-len(post) :] == post):
            split = out[a : len(out) - len(post)]
            if len(split) > 1 and torch.Size(split).numel() == x.size:
                x = ctx.materialize(x)  # heads carry no structural ops: give them nodes of their own first
                return SplitFeatures(x.nodes.view(split), out, tuple(range(a, a + len(split))))
    if isinstance(x, SplitFeatures):
        y = _reshape_split(x, out)
        return y if y is not None else _merge(ctx, op, x, out)
    return NotImplemented


def _reshape_split(x: SplitFeatures, out: tuple) -> SplitFeatures | None:
    """Reshapes of split heads that keep them split: a no-op, inserting a size-1 axis (after a split axis it is
    split too, to be expanded: ``repeat_kv``'s ``[:, :, None]``), or merging two consecutive split axes
    (``(kv heads, copies) -> heads``). None for anything else."""
    shape, axes = tuple(x.shape), list(x.axes)
    if out == shape:
        return x
    if axes != sorted(axes):
        return None
    if len(out) == len(shape) + 1:
        for p in range(len(out)):
            if out[p] == 1 and out[:p] == shape[:p] and out[p + 1 :] == shape[p:]:
                new_axes = [a + (a >= p) for a in axes]
                nodes = x.nodes
                if p - 1 in axes:
                    k = axes.index(p - 1) + 1
                    nodes = nodes.unsqueeze(k)
                    new_axes.insert(k, p)
                return SplitFeatures(nodes, out, tuple(new_axes))
    if len(out) == len(shape) - 1 and len(axes) > 2:
        for k in range(len(axes) - 1):
            a = axes[k]
            if axes[k + 1] == a + 1 and out == shape[:a] + (shape[a] * shape[a + 1],) + shape[a + 2 :]:
                nodes = x.nodes.reshape(*x.nodes.shape[:k], -1, *x.nodes.shape[k + 2 :])
                return SplitFeatures(nodes, out, tuple(axes[: k + 1] + [b - 1 for b in axes[k + 2 :]]))
    return None


@_chain("expand")
def encode_split_expand(ctx, op, module, args):
    """Broadcasting a size-1 split axis: the same nodes for each copy (``repeat_kv`` of grouped-query attention)."""
    args, _ = split_kwargs(args)
    x = args[0]
    if not isinstance(x, SplitFeatures):
        return NotImplemented
    out = tuple(op.shape)
    if len(out) != len(x.shape):
        raise UnsupportedModuleError(op.name, f"expanding split heads {tuple(x.shape)} -> {out}")
    sizes = list(x.nodes.shape)
    for k, a in enumerate(x.axes):
        if out[a] != x.shape[a]:
            if x.shape[a] != 1:
                raise UnsupportedModuleError(op.name, "expanding a split feature axis of size > 1")
            sizes[k] = out[a]
    return SplitFeatures(x.nodes.expand(*sizes), out, x.axes)


def _merge(ctx, op, x: SplitFeatures, out: tuple) -> Features | SplitFeatures:
    """Merge consecutive split axes back (``transpose(1, 2).reshape(B, T, D)``)."""
    axes = list(x.axes)
    if axes != sorted(axes) or axes != list(range(axes[0], axes[0] + len(axes))):
        raise UnsupportedModuleError(
            op.name,
            f"merging attention heads whose axes {tuple(axes)} are not "
            "consecutive and in order (transpose the heads back first)",
        )
    a = axes[0]
    pre, post = tuple(x.shape[:a]), tuple(x.shape[axes[-1] + 1 :])
    if out[:a] != pre or (post and out[-len(post) :] != post) or len(out) != len(pre) + len(post) + 1:
        raise UnsupportedModuleError(op.name, f"reshape {tuple(x.shape)} -> {out} of attention heads")
    return Features(x.nodes.reshape(-1), out, a, None, 1, owned=False)


@_chain(torch.flatten, "flatten")
def encode_head_flatten(ctx, op, module, args):
    args, kw = split_kwargs(args)
    if not isinstance(args[0], SplitFeatures):
        return NotImplemented
    return _merge(ctx, op, args[0], tuple(op.shape))


@_chain(operator.getitem)
def encode_split_getitem(ctx, op, module, args):
    x, idx = args[0], args[1]
    if not isinstance(x, SplitFeatures):
        return NotImplemented
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is None for i in idx) and all(i is None or i == slice(None) for i in idx):
        y = _reshape_split(x, tuple(op.shape))  # x[:, :, None]: a new size-1 axis (repeat_kv)
        if y is not None:
            return y
    if any(i is Ellipsis or i is None for i in idx):
        raise UnsupportedModuleError(op.name, "indexing split heads with ... or None")
    nodes, axes = x.nodes, list(x.axes)
    sel = [slice(None)] * nodes.dim()
    removed = []
    for dim, i in enumerate(idx):
        if dim in axes:
            k = axes.index(dim)
            if isinstance(i, int):
                sel[k] = i
                removed.append(dim)
            elif i != slice(None):
                raise UnsupportedModuleError(op.name, "slicing a split feature axis")
        elif isinstance(i, int):
            removed.append(dim)
        elif i != slice(None):
            raise UnsupportedModuleError(op.name, "slicing a non-feature axis of split heads")
    new_nodes = nodes[tuple(sel)]
    new_axes = [a - sum(1 for r in removed if r < a) for k, a in enumerate(axes) if not isinstance(sel[k], int)]
    return _wrap(new_nodes, tuple(op.shape), tuple(new_axes))


def _wrap(nodes: torch.Tensor, shape, axes):
    if nodes.dim() == 1:
        return Features(nodes, shape, axes[0], None, 1, owned=False)
    return SplitFeatures(nodes, shape, axes)


@_chain("unbind", torch.unbind)
def encode_unbind(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    dim = args[1] if len(args) > 1 else kw.get("dim", 0)
    if not isinstance(x, SplitFeatures):
        raise UnsupportedModuleError(op.name, "unbinding a value other than a split feature axis")
    dim %= len(x.shape)
    if dim not in x.axes:
        raise UnsupportedModuleError(op.name, "unbinding a non-feature axis")
    k = x.axes.index(dim)
    shape = tuple(s for i, s in enumerate(x.shape) if i != dim)
    axes = tuple(a - (a > dim) for j, a in enumerate(x.axes) if j != k)
    return tuple(_wrap(x.nodes.select(k, i), shape, axes) for i in range(x.nodes.shape[k]))


@_chain("chunk", torch.chunk, "split", torch.split)
def encode_chunk(ctx, op, module, args):
    """``qkv.chunk(3, dim=-1)``: contiguous pieces of the feature axis."""
    args, kw = split_kwargs(args)
    x = args[0]
    if isinstance(x, SplitFeatures):
        return _chunk_split(op, x, args, kw)
    if not isinstance(x, Features) or x.num_pos != 1:
        raise UnsupportedModuleError(op.name, "chunk/split of a value other than plain features")
    dim = (args[2] if len(args) > 2 else kw.get("dim", 0)) % len(x.shape)
    if dim != x.axis % len(x.shape):
        raise UnsupportedModuleError(op.name, "chunk/split along a non-feature axis")
    n = args[1] if len(args) > 1 else kw.get("chunks", kw.get("split_size_or_sections"))
    name = op.target if isinstance(op.target, str) else op.target.__name__
    pieces = x.nodes.chunk(n) if name == "chunk" else x.nodes.split(n)
    out = []
    for p in pieces:
        shape = list(x.shape)
        shape[dim] = p.numel()
        out.append(Features(p, tuple(shape), dim, None, 1, owned=False))
    return tuple(out)


def _chunk_split(op, x: SplitFeatures, args, kw) -> tuple:
    """Pieces of a split feature axis (timm LeViT's ``view(B, N, H, -1).split([dk, dk, dv], dim=3)``: each head's
    q, k and v dimensions side by side): the same nodes, sliced along that axis."""
    dim = (args[2] if len(args) > 2 else kw.get("dim", 0)) % len(x.shape)
    if dim not in x.axes:
        raise UnsupportedModuleError(op.name, "chunk/split of split heads along a non-feature axis")
    k = x.axes.index(dim)
    n = args[1] if len(args) > 1 else kw.get("chunks", kw.get("split_size_or_sections"))
    name = op.target if isinstance(op.target, str) else op.target.__name__
    pieces = x.nodes.chunk(n, dim=k) if name == "chunk" else x.nodes.split(n, dim=k)
    out = []
    for p in pieces:
        shape = list(x.shape)
        shape[dim] = p.shape[k]
        out.append(_wrap(p, tuple(shape), x.axes))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- attention core
def _heads(x, where: str) -> tuple[torch.Tensor, int | None, int]:
    """([H, d] nodes, head axis or None, dim axis) of a q/k/v value."""
    if isinstance(x, Features):
        if x.num_pos != 1:
            raise UnsupportedModuleError(where, "attention over a flattened value")
        return x.nodes.view(1, -1), None, x.axis % len(x.shape)
    if isinstance(x, SplitFeatures) and x.nodes.dim() == 2:
        return x.nodes, x.axes[0], x.axes[1]
    raise UnsupportedModuleError(
        where, f"attention operand {type(x).__name__} (expected features split into [heads, dims])"
    )


def declare_attention(
    ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: torch.Tensor | None, label: str
) -> None:
    """Declare the analytic symmetry of attention over [H, d] q, k and v nodes (see the module docstring)."""
    b = ctx.builder
    H = q.shape[0]
    if not torch.equal(q, k):
        b.declare(SymmetryDecl("tie", q.reshape(-1), f"q with k in {label}", other=k.reshape(-1), module=label))
    for h in range(H):
        b.declare(SymmetryDecl("perm", q[h], f"S_{q.shape[1]} on q/k dims of head {h} of {label}", module=label))
        b.declare(SymmetryDecl("perm", v[h], f"S_{v.shape[1]} on v dims of head {h} of {label}", module=label))
    rows = [q, v] if heads is None else [q, v, heads.view(H, 1)]
    b.declare(SymmetryDecl("blocks", torch.cat(rows, dim=1), f"S_{H} on the heads of {label}", module=label))


def _kv_groups(where: str, kn: torch.Tensor, vn: torch.Tensor, H: int) -> int:
    """How many query heads read each key/value head: 1, or r > 1 when ``kn`` and ``vn`` ([H, d]) repeat each of
    H/r heads r times in a row (grouped-query attention's ``repeat_kv``, or SDPA's ``enable_gqa``)."""
    if kn.shape[0] != H or kn.numel() == 0:
        return 1
    n_unique = torch.unique(kn[:, 0]).numel()
    if n_unique == H:
        return 1
    r = H // n_unique
    ok = n_unique * r == H and vn.shape[0] == H
    for t in (kn, vn):
        if ok:
            g = t.reshape(n_unique, r, -1)
            ok = bool((g == g[:, :1]).all()) and torch.unique(g[:, 0]).numel() == g[:, 0].numel()
    if not ok:
        raise UnsupportedModuleError(
            where, "keys or values shared between heads in a pattern other than grouped-query attention"
        )
    return r


def _attend(
    ctx, op, q, k, v, scale: float | None, causal: bool, gqa: bool = False, bias: tuple[ScoreBias, ...] = ()
) -> SplitFeatures | Features:
    """softmax(q k^T * scale + biases) v of traced q, k (not transposed) and v values.

    A per-head bias (:func:`score_bias`) gets a parameter-free edge ``bias feature h -> head h`` (colour
    ``rel_bias`` with the bias's factor and structural ops) and is tied to the head nodes: the heads permute
    only together with their bias, in every layer that reads the same bias value (T5 reuses layer 0's relative
    position bias in all layers: one S_H for all of them)."""
    qn, qh, _ = _heads(q, op.name)
    kn, kh, _ = _heads(k, op.name)
    vn, vh, _ = _heads(v, op.name)
    H = qn.shape[0]
    if gqa and kn.shape[0] != H and kn.shape[0] and H % kn.shape[0] == 0 and vn.shape[0] == kn.shape[0]:
        kn, vn = kn.repeat_interleave(H // kn.shape[0], 0), vn.repeat_interleave(H // kn.shape[0], 0)
    r = _kv_groups(op.name, kn, vn, H)
    if r > 1 and bias:
        raise UnsupportedModuleError(op.name, "grouped-query attention with a per-head bias on the scores")
    if r > 1:
        return _attend_grouped(ctx, op, qn, kn, vn, qh, vh, r, scale, causal)
    if qn.shape != kn.shape or qn.shape[0] != vn.shape[0] or not (qh == kh == vh):
        raise ShapeMismatchError(
            f"q, k and v with the same heads (q {tuple(qn.shape)})",
            f"k {tuple(kn.shape)}, v {tuple(vn.shape)}",
            ctx.where(),
        )
    b = ctx.builder
    H, d = qn.shape
    label = op.name
    heads = None
    if b.encoding != "paper":
        extra = (float(scale) if scale is not None else None, bool(causal))
        qk = ctx.new_hidden(H * d, "qk", f"{label} q.k nodes", torch.cat([qn.reshape(-1), kn.reshape(-1)]), extra=extra)
        ctx.identity_edges(qn.reshape(-1), qk, ("attention", "q"))
        ctx.identity_edges(kn.reshape(-1), qk, ("attention", "k"))
        # head nodes are sources (no in-edges): depth 0, like bias and position nodes; after a per-head bias
        level = max((b.level_of(t.nodes) + 1 for t in bias), default=0)
        heads = b.add_nodes(H, "head", "attention", f"{label} heads", module=ctx.module_path(), level=level)
        ctx.identity_edges(heads.repeat_interleave(d), qk, ("attention", "head", "qk"))
        ctx.identity_edges(heads.repeat_interleave(vn.shape[1]), vn.reshape(-1), ("attention", "head", "v"))
        for t in bias:
            ctx.identity_edges(t.nodes, heads, with_ops(("attention", "rel_bias", float(t.factor)), t.ops))
            b.declare(SymmetryDecl("tie", t.nodes, f"per-head score bias of {label}", other=heads, module=label))
            for h in range(H):  # cuts the S_H its producer declared: a bias feature moves only with its head
                b.declare(SymmetryDecl("perm", t.nodes[h : h + 1], f"score bias of head {h} of {label}"))
        ties = qk.view(H, d)
        b.declare(SymmetryDecl("tie", qn.reshape(-1), f"q with q.k in {label}", other=qk, module=label))
        declare_attention(ctx, ties, kn, vn, heads, label)
    else:
        declare_attention(ctx, qn, kn, vn, None, label)
    rank = len(op.shape)
    if vh is None:
        return Features(vn.reshape(-1), tuple(op.shape), rank - 1, None, 1, owned=False)
    return SplitFeatures(vn, tuple(op.shape), (vh, rank - 1))


def _attend_grouped(ctx, op, qn, kn, vn, qh, vh, r: int, scale, causal) -> SplitFeatures | Features:
    """Grouped-query attention: each of the Hk = H/r key/value heads is read by r query heads in a row.

    Graph: ``qk`` nodes per query head and dimension with edges from ``q_hj`` (colour ``q``) and from the
    shared ``k_gj`` (colour ``k``); per query head an output node per value dimension with an edge from the
    shared ``v_gm`` (colour ``v``) -- the heads' outputs differ, so they are nodes of their own; one ``head``
    node per query head with edges to its ``qk`` and output nodes. Analytic symmetry: the kv groups permute as
    blocks (Hk!), the r query heads of a group permute among themselves (copies, (r!)^Hk), the q/k dimensions
    of a group permute jointly for its key head and all its query heads, and its value dimensions jointly for
    its value head and all its query heads' outputs: Hk! (r!)^Hk (d!)^Hk (dv!)^Hk.
    """
    b = ctx.builder
    H, d = qn.shape
    dv = vn.shape[1]
    Hk = H // r
    label = op.name
    if b.encoding == "paper":
        raise UnsupportedModuleError(label, "grouped-query attention with encoding='paper'")
    if kn.shape[1] != d:
        raise ShapeMismatchError(f"k heads of {d} dims like q", f"{kn.shape[1]}", ctx.where())
    K, V = kn.view(Hk, r, d)[:, 0], vn.view(Hk, r, dv)[:, 0]
    extra = (float(scale) if scale is not None else None, bool(causal), "gqa")
    qk = ctx.new_hidden(H * d, "qk", f"{label} q.k nodes", torch.cat([qn.reshape(-1), K.reshape(-1)]), extra=extra)
    ctx.identity_edges(qn.reshape(-1), qk, ("attention", "q"))
    ctx.identity_edges(kn.reshape(-1), qk, ("attention", "k"))
    out = ctx.new_hidden(H * dv, "attention", f"{label} head outputs", V.reshape(-1), extra=extra)
    ctx.identity_edges(vn.reshape(-1), out, ("attention", "v"))
    heads = b.add_nodes(H, "head", "attention", f"{label} heads", module=ctx.module_path(), level=0)
    ctx.identity_edges(heads.repeat_interleave(d), qk, ("attention", "head", "qk"))
    ctx.identity_edges(heads.repeat_interleave(dv), out, ("attention", "head", "v"))
    qk3, out3, q3, h2 = qk.view(Hk, r, d), out.view(Hk, r, dv), qn.reshape(Hk, r, d), heads.view(Hk, r)
    b.declare(SymmetryDecl("tie", qn.reshape(-1), f"q with q.k in {label}", other=qk, module=label))
    for i in range(r):
        b.declare(SymmetryDecl("tie", K.reshape(-1), f"k with q.k copy {i} in {label}", other=qk3[:, i], module=label))
        b.declare(SymmetryDecl("tie", V.reshape(-1), f"v with output copy {i} in {label}", other=out3[:, i]))
    for g in range(Hk):
        b.declare(SymmetryDecl("perm", K[g], f"S_{d} on q/k dims of kv group {g} of {label}", module=label))
        b.declare(SymmetryDecl("perm", V[g], f"S_{dv} on v dims of kv group {g} of {label}", module=label))
        rows = torch.cat([q3[g], qk3[g], out3[g], h2[g].view(r, 1)], dim=1)
        b.declare(SymmetryDecl("copies", rows, f"S_{r} on the query heads of kv group {g} of {label}", module=label))
    rows = torch.cat([K, V, qk3.reshape(Hk, -1), out3.reshape(Hk, -1), h2], dim=1)
    b.declare(SymmetryDecl("blocks", rows, f"S_{Hk} on the kv groups of {label}", module=label))
    rank = len(op.shape)
    if qh is None:
        return Features(out, tuple(op.shape), rank - 1, None, 1, owned=False)
    return SplitFeatures(out.view(H, dv), tuple(op.shape), (qh, rank - 1))


# ---------------------------------------------------------------------------------------------- rotary embeddings
def rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])`` (Llama's
    rotary position embedding). The torch.export front end fuses the decomposed pattern into this op."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


def _column_key(t: torch.Tensor, j: int) -> str:
    """A digest of column ``j`` of a rotary table: two dimensions share it exactly when their columns are equal."""
    import hashlib

    col = t[..., j].detach().to(torch.float64).contiguous().reshape(-1)
    return hashlib.sha1(col.numpy().tobytes()).hexdigest()[:16]


@register_function(rotary_embedding)
def encode_rotary_embedding(ctx, op, module, args):
    """Rotary position embedding of split heads: new nodes ``r_hj = x_hj cos_j + s_j x_h,p(j) sin_j`` with the
    partner ``p(j) = j +- d/2`` and sign ``s_j = -1`` in the first half, ``+1`` in the second.

    Graph: an edge ``x_hj -> r_hj`` coloured by the cos column of ``j`` and an edge ``x_h,p(j) -> r_hj``
    coloured by the sign and the sin column of ``j`` (columns by their exact values, over all positions).
    Analytic symmetry: the pairs ``(j, j + d/2)`` with identical cos/sin columns permute as pairs (the same in
    every head); Llama's frequencies are distinct, so the q/k dimensions of a head are then fixed (v keeps
    S_dv and the heads still permute). ``r`` is tied to ``x`` and ``r_j`` to ``r_{j+d/2}``.
    """
    args, kw = split_kwargs(args)
    x, cos, sin = (list(args) + [kw.get("cos"), kw.get("sin")])[:3]
    if not all(isinstance(t, ParamRef) for t in (cos, sin)):
        raise UnsupportedModuleError(op.name, "a rotary embedding whose cos/sin tables are not constants")
    if any(t.name in ctx.spec.state_keys for t in (cos, sin)):
        raise UnsupportedModuleError(op.name, "a rotary embedding with learned cos/sin tables (state_dict entries)")
    nodes, head_axis, dim_axis = _heads(x, op.name)
    shape = tuple(op.shape)
    rank = len(shape)
    H, d = nodes.shape
    if dim_axis != rank - 1 or d % 2:
        raise UnsupportedModuleError(op.name, "a rotary embedding over an axis other than an even last head axis")
    try:
        tables = [torch.broadcast_to(t.tensor, shape) for t in (cos, sin)]
    except RuntimeError:
        got = f"{tuple(cos.tensor.shape)}"
        raise ShapeMismatchError(f"cos/sin tables broadcastable to {shape}", got, ctx.where()) from None
    if head_axis is not None:
        for t in tables:
            if not bool((t == t.narrow(head_axis, 0, 1)).all()):
                raise UnsupportedModuleError(op.name, "a rotary embedding whose tables differ between heads")
        tables = [t.narrow(head_axis, 0, 1) for t in tables]
    b = ctx.builder
    h = d // 2
    ckey = [_column_key(tables[0], j) for j in range(d)]
    skey = [_column_key(tables[1], j) for j in range(d)]
    partner = torch.cat([torch.arange(h, d), torch.arange(0, h)])
    out = ctx.new_hidden(H * d, "attention", f"{op.name} rotary nodes", nodes.reshape(-1), extra=("rope",))
    r = out.view(H, d)
    c_cos = b.edge_colors([("attention", "q", "rope", "cos", ckey[j]) for j in range(d)])
    c_sin = b.edge_colors([("attention", "q", "rope", "sin", -1 if j < h else 1, skey[j]) for j in range(d)])
    b.add_edges(nodes.reshape(-1), out, c_cos.repeat(H))
    b.add_edges(nodes[:, partner].reshape(-1), out, c_sin.repeat(H))
    label = op.name
    b.declare(SymmetryDecl("tie", nodes.reshape(-1), f"rotary nodes of {label}", other=out, module=label))
    b.declare(SymmetryDecl("tie", r[:, :h].reshape(-1), f"rotary pairs of {label}", other=r[:, h:].reshape(-1)))
    classes: dict[tuple, list[int]] = {}
    for j in range(h):
        classes.setdefault((ckey[j], skey[j], ckey[j + h], skey[j + h]), []).append(j)
    for js in classes.values():
        for hh in range(H):
            b.declare(SymmetryDecl("perm", r[hh, js], f"S_{len(js)} on rotary pairs of head {hh} of {label}"))
    if head_axis is None:
        return Features(out, shape, rank - 1, None, 1, owned=False)
    return SplitFeatures(r, shape, (head_axis, rank - 1))


@_chain(operator.matmul, torch.matmul, "matmul")
def encode_matmul(ctx, op, module, args):
    args, _ = split_kwargs(args)
    a, c = args[0], args[1]
    if isinstance(a, Scores):
        if not a.softmax:
            raise UnsupportedModuleError(op.name, "attention scores used without softmax")
        q, k = _as_value(a.q, a.head_axis, a.shape), _as_value(a.k, a.head_axis, a.shape)
        return _attend(ctx, op, q, k, c, a.scale, False, bias=a.bias)
    if isinstance(a, Features | SplitFeatures) and isinstance(c, Features | SplitFeatures):
        qn, qh, qd = _heads(a, op.name)
        kn, kh, kd = _heads(c, op.name)
        rank = len(a.shape)
        if qd != rank - 1 or kd != rank - 2:
            raise UnsupportedModuleError(op.name, "a product of two traced values that is not q @ k^T")
        return Scores(qn, kn, tuple(op.shape), qh)
    return NotImplemented


def _as_value(nodes: torch.Tensor, head_axis, shape):
    if head_axis is None:
        return Features(nodes.reshape(-1), shape, len(shape) - 1, None, 1)
    return SplitFeatures(nodes, shape, (head_axis, len(shape) - 1))


@_chain(operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div")
def encode_scores_scale(ctx, op, module, args):
    args, _ = split_kwargs(args)
    a, c = args[0], args[1]
    if isinstance(c, Scores) and isinstance(a, int | float):
        a, c = c, a
    if not isinstance(a, Scores):
        return NotImplemented
    if not isinstance(c, int | float):
        raise UnsupportedModuleError(op.name, "scaling attention scores by a tensor")
    is_div = op.target in (operator.truediv, torch.div, "div")
    f = 1.0 / c if is_div else c
    bias = tuple(replace(t, factor=t.factor * f) for t in a.bias)
    return replace(a, scale=a.scale * f, bias=bias)


@_chain(operator.add, torch.add, "add", operator.iadd, operator.sub, torch.sub, "sub")
def encode_scores_add(ctx, op, module, args):
    """``scores + bias`` before the softmax, with ``bias`` one feature per head on the scores' head axis (T5's
    relative position bias): see :func:`score_bias`. Anything else added to attention scores (a tensor that
    is not per head, a mask other than a constant causal one, a subtraction) is refused, naming it."""
    args, _ = split_kwargs(args)
    a, c = args[0], args[1]
    if not isinstance(a, Scores) and not isinstance(c, Scores):
        return NotImplemented
    is_sub = op.target in (operator.sub, torch.sub, "sub")
    if isinstance(c, Scores):
        if is_sub:
            raise UnsupportedModuleError(op.name, "subtracting attention scores from a tensor: not encoded")
        a, c = c, a
    if is_sub or a.softmax or isinstance(c, Scores):
        what = "subtracting a tensor from" if is_sub else "adding a tensor to"
        raise UnsupportedModuleError(
            op.name,
            f"{what} attention scores {'after the softmax ' if a.softmax else ''}(not a per-head bias): not encoded",
        )
    return replace(a, bias=a.bias + (score_bias(ctx, op.name, c, a.head_axis, a.q.shape[0], len(a.shape)),))


def _unsplit(value):
    """A value whose feature axis a view split into axes of which only one has more than one entry (the export
    front end's ``unsqueeze(0)`` of T5's ``[H, Tq, Tk]`` bias is a view to ``[1, H, Tq, Tk]``, which reads as
    a split ``(1, H)``), with no axis moved since, as the plain features it is; anything else unchanged."""
    from .shuffle import GroupedChannels  # shuffle extends this module's encoders: imported after it

    if isinstance(value, GroupedChannels):
        n = value.nodes.dim()
        split = [value.first + k for k in range(n) if value.nodes.shape[k] != 1]
        if len(split) == 1 and list(value.order) == sorted(value.order):
            return Features(value.nodes.reshape(-1), value.shape, value.order.index(split[0]), None, 1, owned=False)
    if isinstance(value, SplitFeatures):
        axes = [a for k, a in enumerate(value.axes) if value.nodes.shape[k] != 1]
        if len(axes) == 1 and list(value.axes) == sorted(value.axes):
            return Features(value.nodes.reshape(-1), value.shape, axes[0], None, 1, owned=False)
    return value


def score_bias(ctx, where: str, value, head_axis: int | None, H: int, rank: int) -> ScoreBias:
    """``value`` (added to attention scores of rank ``rank`` with ``H`` heads on ``head_axis``) as a per-head
    bias: features whose feature axis is the heads' axis, one node per head, e.g. T5's relative position bias
    ``relative_attention_bias(buckets).permute(2, 0, 1)`` (an embedding of constant bucket ids: fixed row
    nodes, one per bucket, with edges ``B[r, h]`` to the bias feature ``h``, see
    :func:`~symgraph.encoders.embedding.encode_embedding`). Its head ``h`` may depend on the positions in any
    way and be computed once and read by several layers: the attention encoder joins feature ``h`` to head
    ``h``'s node, so that heads move only with their bias (jointly in all layers that read it).
    Anything else (a bias that is the same for all heads, a constant mask that masks something, a value
    with its features on another axis) raises :class:`~symgraph.errors.UnsupportedModuleError`.
    """
    what = "adding a tensor to attention scores (a mask other than a constant causal one, or a bias that is not"
    value = _unsplit(value)
    if not isinstance(value, Features) or value.num_pos != 1 or head_axis is None:
        raise UnsupportedModuleError(where, f"{what} one feature per head): not encoded")
    ax = value.axis % len(value.shape) + (rank - len(value.shape))
    if ax != head_axis or value.size != H or torch.unique(value.nodes).numel() != H:
        raise UnsupportedModuleError(
            where,
            f"{what} one feature per head; got {value.size} features on axis {ax}, the {H} heads are on axis "
            f"{head_axis}): not encoded",
        )
    if ctx.builder.encoding == "paper":
        raise UnsupportedModuleError(where, "a per-head attention bias with encoding='paper' (no head nodes)")
    return ScoreBias(value.nodes, tuple(value.ops))


@_chain("softmax", torch.softmax, F.softmax)
def encode_softmax(ctx, op, module, args):
    args, kw = split_kwargs(args)
    a = args[0]
    if not isinstance(a, Scores):
        return NotImplemented
    dim = args[1] if len(args) > 1 else kw.get("dim", -1)
    if dim % len(a.shape) != len(a.shape) - 1:
        raise UnsupportedModuleError(op.name, "softmax of attention scores over the query axis")
    return replace(a, softmax=True)


@register_encoder(nn.Softmax)
def encode_softmax_module(ctx, op, module, args):
    a = args[0]
    if not isinstance(a, Scores) or (module.dim is not None and module.dim % len(a.shape) != len(a.shape) - 1):
        raise UnsupportedModuleError(op.target, "nn.Softmax of a value other than attention scores (last dim)")
    return replace(a, softmax=True)


@register_function(F.scaled_dot_product_attention)
def encode_sdpa(ctx, op, module, args):
    args, kw = split_kwargs(args)
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else kw.get("attn_mask")
    causal = bool(args[5] if len(args) > 5 else kw.get("is_causal", False))
    scale = args[6] if len(args) > 6 else kw.get("scale")
    gqa = bool(kw.get("enable_gqa", False))
    qn, qh, _ = _heads(q, op.name)
    bias = ()
    if mask is not None:  # an additive float mask (a boolean one is a mask, never a per-head feature value)
        if not isinstance(_unsplit(mask), Features):
            raise UnsupportedModuleError(op.name, "scaled_dot_product_attention with an attention mask")
        bias = (score_bias(ctx, op.name, mask, qh, qn.shape[0], len(op.shape)),)
    d = qn.shape[1]
    return _attend(ctx, op, q, k, v, float(scale) if scale is not None else d**-0.5, causal, gqa, bias=bias)


# ---------------------------------------------------------------------------------------------- nn.MultiheadAttention
def encode_mha_core(
    ctx, module: nn.MultiheadAttention, path: str, xq: Features, xk: Features, xv: Features, shape: tuple
) -> Features:
    """Encode ``module`` (state names under ``path``) applied to query/key/value features; returns its output."""
    b = ctx.builder
    E, H = module.embed_dim, module.num_heads
    hd = E // H
    p = f"{path}." if path else ""
    paper = b.encoding == "paper"
    extra = (float(module.dropout), bool(module.add_zero_attn))
    src = torch.cat([xq.nodes, xk.nodes, xv.nodes])
    if paper:
        mid = ctx.new_hidden(3 * E, "attention", f"{path} q/k/v", src)
        qn, kn, vn = mid[:E], mid[E : 2 * E], mid[2 * E :]
        cols = [b.edge_color(("attention", "in_proj"))] * 3
        bcols = [b.edge_color(("bias", "attention"))] * 3
    else:
        qn = ctx.new_hidden(E, "qk", f"{path} q.k nodes", src, extra=extra)
        kn = qn
        vn = ctx.new_hidden(E, "attention_v", f"{path} v nodes", src, extra=extra)
        cols = [b.edge_color(("attention", r)) for r in "qkv"]
        bcols = [b.edge_color(("bias", "attention", r)) for r in "qkv"]
    xs = (xq, xk, xv)
    dsts = (qn, kn, vn)
    if module._qkv_same_embed_dim:
        w = module.in_proj_weight
        if not (xq.size == xk.size == xv.size == E):
            raise ShapeMismatchError(f"{E} query/key/value features", f"{xq.size}, {xk.size}, {xv.size}", ctx.where())
        srcs = torch.stack([x.nodes for x in xs])  # [3, E]
        s_all = srcs.view(3, 1, E).expand(3, E, E).reshape(-1)
        d_all = torch.stack(dsts).view(3, E, 1).expand(3, E, E).reshape(-1)
        c_all = torch.tensor(cols, dtype=torch.int32).view(3, 1, 1).expand(3, E, E).reshape(-1)
        b.add_edges(s_all, d_all, c_all, w, f"{p}in_proj_weight")
    else:
        for x, dst, col, r in zip(xs, dsts, cols, "qkv"):
            wt = getattr(module, f"{r}_proj_weight")
            if x.size != wt.shape[1]:
                raise ShapeMismatchError(f"{wt.shape[1]} {r} input features", f"{x.size}", ctx.where())
            b.add_dense(x.nodes, dst, col, wt, f"{p}{r}_proj_weight")
    if module.in_proj_bias is not None:
        bnode = b.add_nodes(1, "bias", "attention", f"{path} in_proj bias", module=path)
        d_all = torch.cat(dsts)
        c_all = torch.tensor(bcols, dtype=torch.int32).repeat_interleave(E)
        b.add_edges(bnode.expand(3 * E), d_all, c_all, module.in_proj_bias, f"{p}in_proj_bias")
    if module.bias_k is not None:
        kv = b.add_nodes(1, "bias", "attention_kv", f"{path} bias_k/bias_v", module=path)
        b.add_edges(kv.expand(E), kn, b.edge_color(("attention", "bias_k")), module.bias_k, f"{p}bias_k")
        b.add_edges(kv.expand(E), vn, b.edge_color(("attention", "bias_v")), module.bias_v, f"{p}bias_v")
    heads = None
    if not paper:
        heads = b.add_nodes(H, "head", "attention", f"{path} heads", module=path, level=0)  # sources: depth 0
        ctx.identity_edges(heads.repeat_interleave(hd), qn, ("attention", "head", "qk"))
        ctx.identity_edges(heads.repeat_interleave(hd), vn, ("attention", "head", "v"))
    declare_attention(ctx, qn.view(H, hd), kn.view(H, hd), vn.view(H, hd), heads, path)
    vfeat = Features(vn, shape, len(shape) - 1, None, 1)
    op_ = module.out_proj
    return encode_dense(
        ctx, vfeat, op_.weight, op_.bias, f"{p}out_proj.weight", f"{p}out_proj.bias" if op_.bias is not None else None
    )


def _mha_inputs(ctx, op, args):
    args, kw = split_kwargs(args)
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    vals = dict(zip(names, args))
    vals.update(kw)
    for m in ("key_padding_mask", "attn_mask"):
        if vals.get(m) is not None:
            raise UnsupportedModuleError(op.target, f"nn.MultiheadAttention with {m} (masks are not encoded)")
    q = vals["query"]
    xq = ctx.features(q, axis=-1)
    xk = ctx.features(vals.get("key", q), axis=-1)
    xv = ctx.features(vals.get("value", q), axis=-1)
    return xq, xk, xv


@register_encoder(nn.MultiheadAttention)
def encode_multihead_attention(ctx, op, module: nn.MultiheadAttention, args):
    """``nn.MultiheadAttention`` as a leaf; returns ``(output, None)`` like the module's tuple."""
    xq, xk, xv = _mha_inputs(ctx, op, args)
    out = encode_mha_core(ctx, module, op.target, xq, xk, xv, tuple(xq.shape))
    return (out, None)


# ---------------------------------------------------------------------------------------------- transformer layers
def _activation_name(act) -> str:
    if isinstance(act, str):
        return "gelu(none)" if act == "gelu" else act
    if isinstance(act, nn.Module):
        from .activation import _module_act

        return _module_act(act)
    name = getattr(act, "__name__", repr(act))
    return "gelu(none)" if name == "gelu" else name


def _residual(ctx, a: Features, b_: Features, label: str) -> Features:
    out = ctx.new_hidden(a.size, "sum", f"{label} (residual sum)", torch.cat([a.nodes, b_.nodes]))
    ctx.identity_edges(a.nodes, out, ("residual",))
    ctx.identity_edges(b_.nodes, out, ("residual",))
    ctx.builder.declare(SymmetryDecl("tie", a.nodes, f"residual tie at {label}", other=b_.nodes))
    ctx.builder.declare(SymmetryDecl("tie", a.nodes, f"residual tie at {label}", other=out))
    return Features(out, a.shape, a.axis, None, 1, owned=False)


def transformer_layer(ctx, layer: nn.TransformerEncoderLayer, path: str, x: Features) -> Features:
    """Encode one ``nn.TransformerEncoderLayer`` (post-norm or ``norm_first``) on ``x``."""
    p = f"{path}." if path else ""
    shape = tuple(x.shape)

    def attn(h):
        return encode_mha_core(ctx, layer.self_attn, f"{p}self_attn", h, h, h, shape)

    def ff(h):
        h1 = encode_dense(
            ctx,
            h,
            layer.linear1.weight,
            layer.linear1.bias,
            f"{p}linear1.weight",
            f"{p}linear1.bias" if layer.linear1.bias is not None else None,
        )
        h1 = Features(h1.nodes, h1.shape, h1.axis, None, 1, owned=True)
        h1 = apply_elementwise(ctx, h1, _activation_name(layer.activation))
        return encode_dense(
            ctx,
            h1,
            layer.linear2.weight,
            layer.linear2.bias,
            f"{p}linear2.weight",
            f"{p}linear2.bias" if layer.linear2.bias is not None else None,
        )

    def ln(h, name):
        return layernorm_features(ctx, h, getattr(layer, name), f"{p}{name}", shape, False)

    if layer.norm_first:
        x = _residual(ctx, x, attn(ln(x, "norm1")), f"{p}sa")
        x = _residual(ctx, x, ff(ln(x, "norm2")), f"{p}ff")
    else:
        x = ln(_residual(ctx, x, attn(x), f"{p}sa"), "norm1")
        x = ln(_residual(ctx, x, ff(x), f"{p}ff"), "norm2")
    return x


def _src(ctx, op, args) -> Features:
    args, kw = split_kwargs(args)
    for m in ("src_mask", "src_key_padding_mask", "mask"):
        if kw.get(m) is not None:
            raise UnsupportedModuleError(op.target, f"{m} (masks are not encoded)")
    if len(args) > 1 and args[1] is not None:
        raise UnsupportedModuleError(op.target, "an attention mask (masks are not encoded)")
    x = args[0]
    return ctx.features(x, axis=-1)


@register_encoder(nn.TransformerEncoderLayer)
def encode_transformer_encoder_layer(ctx, op, module, args):
    """``nn.TransformerEncoderLayer`` as a leaf (its forward has fast-path control flow fx cannot trace)."""
    x = _src(ctx, op, args)
    if x.axis % len(x.shape) != len(x.shape) - 1:
        raise ShapeMismatchError("features on the last axis", f"axis {x.axis}", ctx.where())
    return transformer_layer(ctx, module, op.target, x)


@register_encoder(nn.TransformerEncoder)
def encode_transformer_encoder(ctx, op, module: nn.TransformerEncoder, args):
    """``nn.TransformerEncoder``: its layers in order, then the optional final norm."""
    x = _src(ctx, op, args)
    for i, layer in enumerate(module.layers):
        x = transformer_layer(ctx, layer, f"{op.target}.layers.{i}", x)
    if module.norm is not None:
        if not isinstance(module.norm, nn.LayerNorm):
            raise UnsupportedModuleError(op.target, f"final norm {type(module.norm).__name__}")
        x = layernorm_features(ctx, x, module.norm, f"{op.target}.norm", tuple(x.shape), False)
    return x
