"""Learned embeddings: ``nn.Embedding``, class tokens concatenated to a token sequence, and parameters added
to a value (learned positional embeddings), as in a ViT (paper Sec. 4.1, "Diverse Architectures").

Encoding: **each embedding entry is one edge** from a fixed node to a feature node (never a node feature).

- ``nn.Embedding(V, D)``: one fixed node per vocabulary entry (role ``input``, kind ``token``: permuting
  vocabulary rows changes the function, so these nodes must be fixed), edge ``weight[v, d]``:
  ``token v -> embedding feature d``.
- ``nn.Embedding(P, D)`` read at ids that are not a model input, as Hugging Face models read their position
  and token-type tables: a constant (an ``arange``/zeros buffer sliced to the length, folded by the export
  front end; an integer buffer) or ids computed from the inputs without parameters (RoBERTa's padding-aware
  positions, one :func:`input_index` op). One fixed node per table *row* (role ``position``, kind
  ``embedding``), edge ``weight[p, d]``: ``row p -> embedding feature d``, whether the row is read at one
  position, at many (BERT's token type 0 at every position: still one node and D edges) or never (rows past
  the sequence length keep their edges, so ``to_state_dict()`` is exact). Token positions are not nodes in
  this toolkit (a ``[B, T, D]`` value is its D feature nodes, shared by all T positions), and the lookup is
  the same linear map of the one-hot id at every position, so the features may be permuted (the table's
  columns with them) for whatever ids the model reads, while the rows stay fixed: permuting two rows read
  at different positions changes the function (``tests/test_hf_embeddings.py``). Ids computed *with*
  parameters are refused.
- Learned positional embedding ``x + pos`` (``pos`` of shape ``[1, T, D]``): one fixed node per token position
  (role ``position``), edge ``pos[0, t, d]``: ``position t -> sum feature d``, and parameter-free residual
  edges ``x[d] -> sum feature d``.
- Class token ``cat([cls.expand(B, -1, -1), x], dim=1)``: concatenation along the token axis. The result's
  feature nodes are new nodes with parameter-free edges from ``x``'s nodes, and the class token's entries are
  edges from its own fixed position node(s) (role ``position``) to those nodes.
- A constant (a non-persistent buffer, e.g. DeepSets' pixel coordinates) concatenated along the feature axis
  becomes fixed input nodes (kind ``constant``).

Analytic symmetry: feature permutations act on the embedding's feature axis (a ``"perm"`` for
``nn.Embedding``; a ``"tie"`` between the value and the new nodes for the sum and the concatenation).

Example
-------
>>> import symgraph
>>> from symgraph.models import ViT
>>> g = symgraph.parameter_graph(ViT(in_shape=(1, 4, 4), patch=2, dim=4, depth=1, heads=2))
>>> int(g.role_mask("position").sum())  # the class token's node and 5 token positions
6
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..builder import Features, SymmetryDecl, with_ops
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import encoder_for_function, register_encoder, register_function
from ..trace import LazyInput, ParamRef, split_kwargs
from . import shape as _shape  # noqa: F401  (registered first: the concatenation below extends its encoder)

declare_vocabulary(
    edges={"embedding": ("token", "add", "row"), "residual": ("embedding",), "token_cat": ()},
    node_kinds=("embedding", "token", "tokens", "add", "constant"),
)

__all__ = ["encode_embedding", "add_parameter", "encode_cat_tokens", "InputIndex", "input_index"]


@dataclass(frozen=True)
class InputIndex:
    """An integer index computed from model inputs and constants only, never from a parameter (RoBERTa's
    position ids: ``cumsum(input_ids != pad) * (input_ids != pad) + pad``); the torch.export front end
    records the computation as one :func:`input_index` op (see ``symgraph.export``)."""

    shape: tuple[int, ...]
    name: str


def input_index(*inputs):
    """Marker op of the torch.export front end: an index computed from ``inputs`` without parameters."""
    raise TypeError("input_index is a marker of symgraph's torch.export front end; it is never called")


@register_function(input_index)
def encode_input_index(ctx, op, module, args):
    return InputIndex(tuple(op.shape), op.name)


def _is_constant_index(ctx, idx) -> bool:
    """An integer tensor that no automorphism changes: a folded constant, or a buffer (an integer tensor is
    never a parameter of an edge or node)."""
    return isinstance(idx, ParamRef) and not (idx.tensor.is_floating_point() or idx.tensor.is_complex())


@register_encoder(nn.Embedding)
def encode_embedding(ctx, op, module: nn.Embedding, args):
    """``nn.Embedding``: fixed row nodes -> D embedding nodes, one edge per table entry.

    The rows are the vocabulary (role ``input``, kind ``token``) when the index is a model input; otherwise
    (a constant index or one computed from inputs without parameters, e.g. position or token-type ids) they
    are fixed nodes of role ``position``, kind ``embedding``, one per table row whether it is read once, at
    several positions or never. Either way ``out[..., d] = weight[idx[...], d]`` is one linear map of the
    one-hot index, the same at every position, so permuting the D features (and the table's columns with
    them) preserves it for every index the model may compute.
    """
    if module.max_norm is not None:
        raise UnsupportedModuleError(
            op.target, "nn.Embedding with max_norm (it rewrites its weights in the forward pass)"
        )
    idx = args[0]
    b = ctx.builder
    V, D = module.weight.shape
    if isinstance(idx, LazyInput):
        rows = b.add_nodes(V, "input", "token", f"{op.target} vocabulary", module=op.target, level=0)
        role = "token"
    elif isinstance(idx, InputIndex) or _is_constant_index(ctx, idx):
        what = "rows read at constant indices" if isinstance(idx, ParamRef) else "rows read at input-computed indices"
        rows = b.add_nodes(V, "position", "embedding", f"{op.target} {what}", module=op.target, level=0)
        role = "row"
    else:
        raise UnsupportedModuleError(
            op.target,
            "nn.Embedding of a value computed with parameters (its index must be a model input, a constant or "
            f"computed from inputs without parameters; got {type(idx).__name__})",
        )
    out = ctx.new_hidden(D, "embedding", f"{op.target} features", rows)
    # weight[v, d] in flat order is the edge row v -> feature d
    color = b.edge_color(("embedding", role, module.padding_idx))

    def fill(s, d, c):
        s.view(V, D).copy_(rows.view(V, 1).expand(V, D))
        d.view(V, D).copy_(out.view(1, D).expand(V, D))
        c.fill_(color)

    b.add_edge_block(V * D, fill, module.weight, f"{op.target}.weight")
    b.declare(SymmetryDecl("perm", out, f"S_{D} on {op.target} features", module=op.target))
    return Features(out, tuple(op.shape), len(op.shape) - 1, None, 1, owned=op.num_users == 1)


def _param_layout(p: torch.Tensor, feature_axis: int, where: str) -> tuple[int, torch.Tensor]:
    """(positions P, flat index [P, D]) of a parameter whose axis ``feature_axis`` is the feature axis."""
    D = p.shape[feature_axis]
    P = p.numel() // max(D, 1)
    flat = torch.arange(p.numel()).reshape(p.shape).movedim(feature_axis, -1).reshape(P, D)
    return P, flat


def _param_edges(ctx, p: ParamRef, feature_axis: int, dst: torch.Tensor, kind: str) -> None:
    """Edges ``position(k) -> dst[d]`` for every entry of ``p``, in ``p``'s flat order."""
    b = ctx.builder
    P, flat = _param_layout(p.tensor, feature_axis, ctx.where())
    D = dst.numel()
    pos = b.add_nodes(P, "position", kind, f"{p.name} positions", module=p.name.rsplit(".", 1)[0], level=0)
    src_flat = torch.empty(p.tensor.numel(), dtype=torch.long)
    dst_flat = torch.empty(p.tensor.numel(), dtype=torch.long)
    src_flat[flat.reshape(-1)] = pos.view(P, 1).expand(P, D).reshape(-1)
    dst_flat[flat.reshape(-1)] = dst.view(1, D).expand(P, D).reshape(-1)
    b.add_edges(src_flat, dst_flat, b.edge_color(("embedding", kind)), p.stored, p.name)


def _feature_axis_of_param(ctx, p: ParamRef, out_rank: int, x_axis: int, size: int) -> int:
    fa = x_axis - (out_rank - p.tensor.dim())
    if fa < 0 or p.tensor.shape[fa] != size:
        raise ShapeMismatchError(
            f"a parameter with {size} entries along the feature axis",
            f"'{p.name}' of shape {tuple(p.tensor.shape)}",
            ctx.where(),
        )
    return fa


def parameter_operand(ctx, op, x, p: ParamRef, constant_what: str, flattened_what: str):
    """``(x's features, x's feature axis in the output, p's feature axis)`` for an elementwise op of a value
    ``x`` with a learned parameter ``p``; refuses constants outside the state_dict and flattened values."""
    if p.name not in ctx.spec.state_keys:
        raise UnsupportedModuleError(op.name, f"{constant_what} (not in the state_dict)")
    x = ctx.features(x, axis=-1)
    if x.num_pos != 1:
        raise UnsupportedModuleError(op.name, flattened_what)
    rank = len(op.shape)
    ax = x.axis % len(x.shape) + (rank - len(x.shape))
    return x, ax, _feature_axis_of_param(ctx, p, rank, ax, x.size)


def add_parameter(ctx, op, x, p: ParamRef) -> Features:
    """``x + p`` for a learned parameter ``p`` (e.g. a positional embedding): see the module docstring; a scalar
    ``p`` (one entry for every unit) is :func:`symgraph.encoders.scalar.scalar_parameter_op`."""
    from .scalar import is_scalar_parameter, scalar_parameter_op

    if is_scalar_parameter(p) and not (isinstance(x, Features) and x.size == 1):
        return scalar_parameter_op(ctx, op, x, p, "add")
    x, ax, fa = parameter_operand(
        ctx, op, x, p, f"adding the constant tensor '{p.name}'", "adding a parameter to a flattened value"
    )
    out = ctx.new_hidden(x.size, "sum", f"{op.name} (+ {p.name})", x.nodes)
    ctx.identity_edges(x.nodes, out, with_ops(("residual", "embedding"), x.ops))
    _param_edges(ctx, p, fa, out, "add")
    ctx.builder.declare(SymmetryDecl("tie", x.nodes, f"{p.name} added at {op.name}", other=out))
    return Features(out, tuple(op.shape), ax, None, 1, owned=op.num_users == 1)


_previous_cat = {t: encoder_for_function(t) for t in (torch.cat, torch.concat, torch.concatenate)}


@register_function(torch.cat, torch.concat, torch.concatenate, reads_ops=True)
def encode_cat_tokens(ctx, op, module, args):
    """``torch.cat`` with parameters or constants among the pieces, or along a non-feature (token) axis.

    A piece that went through structural ops (``Features.ops``) has them in its edge colour; regridding
    records (``reshape``, e.g. ViT's ``flatten(2)`` of the patch grid) are left out when the result is a
    token sequence ``(B, T, D)`` concatenated along ``T``: it keeps only the row-major order of a piece's
    positions, which a regridding does not change.
    """
    args_, kw = split_kwargs(args)
    pieces = list(args_[0])
    rank = len(op.shape)
    dim = (args_[1] if len(args_) > 1 else kw.get("dim", 0)) % rank
    feats = [v for v in pieces if isinstance(v, Features)]
    has_param = any(isinstance(v, ParamRef) for v in pieces)
    if feats:
        f_ax = feats[0].axis % len(feats[0].shape)
    elif not any(isinstance(v, LazyInput) for v in pieces):
        raise UnsupportedModuleError(op.name, "concatenating parameters without a traced value")
    elif any(isinstance(v, ParamRef) and v.name in ctx.spec.state_keys for v in pieces):
        f_ax = rank - 1  # a learned token (e.g. a class token) prepended to raw input tokens
    else:
        f_ax = dim  # raw input features and constants (e.g. pixel coordinates) side by side
    if dim == f_ax and not has_param:
        return _previous_cat[op.target](ctx, op, module, args)
    if dim == f_ax:
        # feature-axis concatenation with constants: constants are fixed input features
        out = []
        for v in pieces:
            if isinstance(v, ParamRef):
                if v.name in ctx.spec.state_keys:
                    raise UnsupportedModuleError(
                        op.name, f"concatenating the parameter '{v.name}' along the feature axis"
                    )
                n = v.tensor.shape[dim - (rank - v.tensor.dim())]
                nodes = ctx.builder.add_nodes(n, "input", "constant", f"constant {v.name}", level=0)
                out.append(Features(nodes, tuple(v.tensor.shape), dim))
            else:
                out.append(ctx.materialize(ctx.features(v, axis=dim)))
        if any(f.num_pos != 1 for f in out):
            raise UnsupportedModuleError(op.name, "concatenation of flattened values is not encoded yet")
        return Features(torch.cat([f.nodes for f in out]), tuple(op.shape), dim, None, 1, owned=False)
    # token-axis concatenation: the feature nodes of all pieces flow into one set of new nodes
    if any(isinstance(v, LazyInput) for v in pieces):
        feats = [ctx.features(v, axis=f_ax) if isinstance(v, LazyInput) else v for v in pieces]
        feats = [v for v in feats if isinstance(v, Features)]
    D = feats[0].size
    if any(f.size != D or f.num_pos != 1 for f in feats):
        raise ShapeMismatchError(f"pieces with {D} features each", f"{[f.size for f in feats]}", ctx.where())
    src = torch.cat([f.nodes for f in feats])
    out = ctx.new_hidden(D, "tokens", f"{op.name} (token concatenation)", src)
    b = ctx.builder
    k = 0
    for v in pieces:
        if isinstance(v, ParamRef):
            if v.name not in ctx.spec.state_keys:
                raise UnsupportedModuleError(op.name, f"concatenating the constant '{v.name}' along tokens")
            fa = _feature_axis_of_param(ctx, v, rank, f_ax, D)
            _param_edges(ctx, v, fa, out, "token")
        else:
            f = v if isinstance(v, Features) else ctx.features(v, axis=f_ax)
            ops = f.ops
            if rank == 3 and dim == 1 and f_ax == 2 and len(f.shape) == 3:
                ops = tuple(o for o in ops if o[0] != "reshape")
            ctx.identity_edges(f.nodes, out, with_ops(("token_cat", k), ops))
            b.declare(SymmetryDecl("tie", f.nodes, f"token concatenation at {op.name}", other=out))
        k += 1
    return Features(out, tuple(op.shape), f_ax, None, 1, owned=op.num_users == 1)
