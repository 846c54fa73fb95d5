"""Parameter-free reshaping: flatten, view/reshape to (batch, -1), dropout and identity, concatenation,
indexing, transposes, broadcasting.

Flattening a channels-first value (B, C, *S) merges the spatial positions into the feature axis: feature
``c * P + p`` stays on channel node ``c`` with position ``p`` (P = prod(S)), so the linear layer that reads
it gets one edge colour per position. Concatenation along the feature axis concatenates the node lists.

Which of these change what a later layer sees (see :class:`symgraph.builder.Features` ``ops``; the same
value read with and without them must never look alike):

- recorded (appended to ``ops``): indexing or slicing positions (``x[:, 0]``, crops), reshapes that change
  the grid of positions (``(B, C, 4, 4) -> (B, C, 16)``: a later conv or pool sees other neighbours),
  transposes that reorder the position axes (``(B, C, H, W) -> (B, C, W, H)``), broadcasting a size-1 axis
  (``expand``/``repeat``);
- not recorded, because no encoder can read the two forms differently: moving the feature axis with the
  position axes kept in order (ViT's ``flatten(2).transpose(1, 2)`` keeps every token where it was; every
  encoder reads the feature axis from ``Features.axis``), adding or removing size-1 axes, identities
  (dropout, ``contiguous``, dtype casts: they only round), and flattening positions *into* the feature axis
  (encoded by the flatten positions ``pos``).

Model inputs record every op (their feature axis is not known yet; see ``then``).

Analytic symmetry: none of their own.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features, structural_op
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import register_encoder, register_function
from ..trace import LazyInput, ParamRef, split_kwargs

# values on nodes of their own after structural ops (EncodeContext.materialize), model inputs and outputs
declare_vocabulary(edges={"structural": (), "identity": ("output",)}, node_kinds=("structural", "input", "output"))


def op_name(op) -> str:
    t = op.target
    return t if isinstance(t, str) else getattr(t, "__name__", type(t).__name__)


def then(ctx, op, x, record: tuple | None, axis: int | None = None, lazy: bool = True, **changes):
    """``x`` after a parameter-free op: same nodes, the op's output shape, ``record`` appended to its ops.

    ``record=None``: the op changes nothing a later layer can see. Model inputs (``LazyInput``) get a record
    in either case (``lazy=False`` for identities): their feature axis is not known yet, so every op counts,
    and an input read through other ops gets input nodes of its own.
    """
    shape = tuple(op.shape) if op.shape is not None else tuple(x.shape)
    if isinstance(x, LazyInput):
        if record is None and not lazy:
            return dataclasses.replace(x, shape=shape)
        rec = record or structural_op(op_name(op), x.shape, shape)
        return dataclasses.replace(x, shape=shape, ops=x.ops + (rec,))
    if not isinstance(x, Features):
        return x
    ops = x.ops + (record,) if record is not None else x.ops
    owned = changes.pop("owned", x.owned and op.num_users == 1)
    new_axis = x.axis if axis is None else axis
    return dataclasses.replace(x, shape=shape, axis=new_axis, ops=ops, owned=owned, **changes)


def _grid(shape, axis: int) -> tuple[int, ...]:
    """The position axes of a value (its shape without the feature axis and without size-1 axes)."""
    ax = axis % len(shape)
    return tuple(s for i, s in enumerate(shape) if i != ax and s != 1)


def relayout(ctx, op, x: Features, out_shape, new_ax: int) -> Features:
    """``x`` reshaped with the feature axis whole: recorded when the grid of positions changes."""
    rec = None
    if _grid(x.shape, x.axis) != _grid(out_shape, new_ax):
        rec = structural_op("reshape", x.shape, out_shape, x.axis % len(x.shape), new_ax)
    return then(ctx, op, x, rec, axis=new_ax)


def flatten_value(ctx, x, start_dim: int, end_dim: int, out_shape):
    op = ctx.op
    if isinstance(x, LazyInput):
        return then(ctx, op, x, structural_op("flatten", x.shape, out_shape, start_dim, end_dim))
    if not isinstance(x, Features):
        raise ShapeMismatchError("a tensor to flatten", type(x).__name__, ctx.where())
    rank = len(x.shape)
    s, e = start_dim % rank, end_dim % rank
    ax = x.axis % rank
    if not (s <= ax <= e):
        # the feature axis is untouched: only the grid of positions changes
        if x.num_pos != 1:
            raise UnsupportedModuleError(ctx.where(), "reshaping a flattened value")
        return relayout(ctx, op, x, tuple(out_shape), ax if ax < s else ax - (e - s))
    if ax != s:
        raise UnsupportedModuleError(ctx.where(), f"flatten of dims {s}..{e} with the features on axis {ax}")
    if x.num_pos != 1:
        raise UnsupportedModuleError(ctx.where(), "flattening an already flattened value")
    P = math.prod(x.shape[s + 1 : e + 1])
    new_ax = s
    if P == 1:
        return then(ctx, op, x, None, axis=new_ax, owned=x.owned)
    C = x.size
    nodes = x.nodes.repeat_interleave(P)
    pos = torch.arange(P).repeat(C)
    return then(ctx, op, x, None, axis=new_ax, nodes=nodes, pos=pos, num_pos=P)


@register_encoder(nn.Flatten, reads_ops=True)
def encode_flatten_module(ctx, op, module, args):
    return flatten_value(ctx, args[0], module.start_dim, module.end_dim, op.shape)


@register_function(torch.flatten, "flatten", reads_ops=True)
def encode_flatten(ctx, op, module, args):
    args, kw = split_kwargs(args)
    start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
    return flatten_value(ctx, args[0], start, end, op.shape)


@register_function("view", "reshape", torch.reshape, reads_ops=True)
def encode_view(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    if isinstance(x, ParamRef):  # a parameter reshaped to broadcast (layer scale, per-channel offsets)
        view = x.reshaped(tuple(op.shape))
        if view is None:
            raise UnsupportedModuleError(
                op.name, f"reshape of the parameter '{x.name}' {tuple(x.tensor.shape)} -> {tuple(op.shape)}"
            )
        return view
    in_shape = x.shape
    out = tuple(op.shape)
    if tuple(in_shape) == out:
        return x
    # (B, d1, ..., dk) -> (B, d1*...*dk): a flatten from dim 1
    if len(out) == 2 and out[0] == in_shape[0] and out[1] == math.prod(in_shape[1:]):
        return flatten_value(ctx, x, 1, -1, out)
    if isinstance(x, LazyInput):
        return then(ctx, op, x, structural_op("reshape", in_shape, out))
    if isinstance(x, Features) and x.num_pos == 1:
        ax = x.axis % len(in_shape)
        # only dims after the feature axis change (e.g. a patch embedding's (B, D, h, w) -> (B, D, h*w))
        if tuple(in_shape[: ax + 1]) == out[: ax + 1]:
            return relayout(ctx, op, x, out, ax)
        # only dims before it change (e.g. merging batch and tokens in front of the features)
        tail = tuple(in_shape[ax:])
        if len(out) >= len(tail) and out[len(out) - len(tail) :] == tail:
            return relayout(ctx, op, x, out, len(out) - len(tail))
    raise UnsupportedModuleError(
        op.name,
        f"reshape {tuple(in_shape)} -> {out} is not a flatten; attention head reshapes are handled by "
        "the attention encoders",
    )


@register_function("reshape_as", reads_ops=True)
def encode_reshape_as(ctx, op, module, args):
    """``x.reshape_as(other)``: the reshape to ``other``'s shape (timm LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``),
    by whichever encoder handles ``reshape`` of ``x``."""
    from ..registry import encoder_for_function

    args, _ = split_kwargs(args)
    return encoder_for_function("reshape")(ctx, dataclasses.replace(op, target="reshape"), module, (args[0],))


@register_encoder(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, reads_ops=True)
def encode_identity_module(ctx, op, module, args):
    return _passthrough(ctx, op, args[0])


@register_function(
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "type_as",
    reads_ops=True,
)
def encode_identity_function(ctx, op, module, args):
    args, _ = split_kwargs(args)
    return _passthrough(ctx, op, args[0])


def _passthrough(ctx, op, x):
    if isinstance(x, Features | LazyInput):
        return then(ctx, op, x, None, lazy=False)
    return x


@register_function(torch.cat, torch.concat, torch.concatenate, reads_ops=True)
def encode_cat(ctx, op, module, args):
    """Concatenation along the feature axis; pieces that carry structural ops get nodes of their own."""
    args, kw = split_kwargs(args)
    xs = list(args[0])
    dim = args[1] if len(args) > 1 else kw.get("dim", 0)
    feats = [ctx.materialize(ctx.features(v, axis=dim)) for v in xs]
    rank = len(feats[0].shape)
    if any(f.axis % rank != dim % rank for f in feats):
        raise UnsupportedModuleError(op.name, "concatenation along a non-feature axis is not encoded yet")
    if any(f.num_pos != 1 for f in feats):
        raise UnsupportedModuleError(op.name, "concatenation of flattened values is not encoded yet")
    nodes = torch.cat([f.nodes for f in feats])
    return Features(nodes, tuple(op.shape), dim % rank, None, 1, owned=False)


@register_function("size", "dim", reads_ops=True)
def encode_size(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    shape = x.shape
    if op.target == "dim":
        return len(shape)
    d = args[1] if len(args) > 1 else kw.get("dim")
    return tuple(shape) if d is None else shape[d]


@register_function(getattr, reads_ops=True)
def encode_getattr(ctx, op, module, args):
    x, attr = args[0], args[1]
    if attr == "shape":
        return tuple(x.shape)
    if attr == "device":  # where a value lives, not what it holds (timm LeViT's get_attention_biases(x.device))
        return torch.device("cpu")
    raise UnsupportedModuleError(op.name, f"attribute '{attr}' of a traced value")


@register_function(operator.getitem, reads_ops=True)
def encode_getitem(ctx, op, module, args):
    x, idx = args[0], args[1]
    if isinstance(x, tuple | list):
        return x[idx]
    if isinstance(x, LazyInput):
        return then(ctx, op, x, structural_op("getitem", x.shape, op.shape, _canon_index(x.shape, idx)))
    if isinstance(x, Features):
        return index_features(ctx, op, x, idx)
    if isinstance(x, ParamRef) and not (x.tensor.is_floating_point() or x.tensor.is_complex()):
        # an integer buffer sliced (position ids cut to the sequence length): a constant, never permuted
        return ParamRef(f"{x.name}[{op.name}]", x.tensor[idx])
    raise UnsupportedModuleError(op.name, "indexing a tensor is not encoded yet")


def index_features(ctx, op, x: Features, idx) -> Features:
    """``x[idx]`` that leaves the feature axis whole (e.g. the cls token readout ``x[:, 0]``).

    Integers drop an axis, slices keep it, ``None`` adds one; the feature axis itself must be ``:``.
    """
    idx = idx if isinstance(idx, tuple) else (idx,)
    rank = len(x.shape)
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (rank - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (rank - sum(1 for i in expanded if i is not None)))
    ax = x.axis % rank
    dim, new_ax = 0, 0
    for i in expanded:
        if i is None:
            new_ax += 1
            continue
        if dim == ax:
            if not (isinstance(i, slice) and i == slice(None)):
                raise UnsupportedModuleError(op.name, f"indexing the feature axis ({i!r}) is not encoded")
            break
        if isinstance(i, slice):
            new_ax += 1
        elif not isinstance(i, int):
            raise UnsupportedModuleError(op.name, f"indexing with {type(i).__name__} (only int, slice, None)")
        dim += 1
    if x.num_pos != 1:
        raise UnsupportedModuleError(op.name, "indexing a flattened value")
    canon = _canon_index(x.shape, expanded)
    if all(c == "new" or (c[0] == "slice" and c[1:] == (0, n, 1)) for c, n in _with_sizes(canon, x.shape)):
        return relayout(ctx, op, x, tuple(op.shape), new_ax)  # only new size-1 axes: nothing changes
    return then(ctx, op, x, structural_op("getitem", x.shape, op.shape, canon), axis=new_ax)


def _canon_index(shape, idx) -> tuple:
    """An index in canonical form: ``"new"`` for None, ``("int", i)``, ``("slice", start, stop, step)``."""
    idx = idx if isinstance(idx, tuple | list) else (idx,)
    rank = len(shape)
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out: list = []
    dim = 0
    for i in idx:
        if i is Ellipsis:
            for _ in range(rank - n_real):
                out.append(("slice", 0, shape[dim], 1))
                dim += 1
        elif i is None:
            out.append("new")
        elif isinstance(i, int):
            out.append(("int", i % shape[dim]))
            dim += 1
        elif isinstance(i, slice):
            if not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
                raise UnsupportedModuleError("getitem", "a slice with computed bounds")
            out.append(("slice", *i.indices(shape[dim])))
            dim += 1
        else:
            raise UnsupportedModuleError("getitem", f"indexing with {type(i).__name__} (only int, slice, None)")
    while dim < rank:
        out.append(("slice", 0, shape[dim], 1))
        dim += 1
    return tuple(out)


def _with_sizes(canon, shape):
    dim = 0
    for c in canon:
        if c == "new":
            yield c, 1
        else:
            yield c, shape[dim]
            dim += 1


def _moved_axis(ax: int, perm: list[int]) -> int:
    return perm.index(ax)


@register_function(
    "transpose", torch.transpose, "permute", torch.permute, "movedim", torch.movedim, "t", reads_ops=True
)
def encode_transpose(ctx, op, module, args):
    """Transposes and permutes move the feature axis (e.g. ViT's ``x.flatten(2).transpose(1, 2)``).

    Values other than plain features (attention heads) handle transposes in their own encoders.
    """
    args, kw = split_kwargs(args)
    x = args[0]
    if isinstance(x, LazyInput):
        perm = axis_permutation(op, len(x.shape), args, kw)
        return then(ctx, op, x, structural_op("permute", x.shape, op.shape, tuple(perm)))
    if not isinstance(x, Features):
        move = getattr(x, "moved", None)
        if move is None:
            raise UnsupportedModuleError(op.name, f"transposing a {type(x).__name__}")
        return move(op, axis_permutation(op, len(x.shape), args, kw))
    perm = axis_permutation(op, len(x.shape), args, kw)
    ax = x.axis % len(x.shape)
    # position axes (of size > 1) in their new order: a transpose that keeps them in order only moves the
    # feature axis, which no encoder can tell from the original layout
    order = [p for p in perm if p != ax and x.shape[p] != 1]
    rec = None if order == sorted(order) else structural_op("permute", x.shape, op.shape, tuple(perm), ax)
    return then(ctx, op, x, rec, axis=_moved_axis(ax, perm))


def axis_permutation(op, rank: int, args: tuple, kw: dict) -> list[int]:
    """``perm`` such that output axis ``k`` is input axis ``perm[k]``, for transpose/permute/movedim/t."""
    target = op.target
    name = target if isinstance(target, str) else target.__name__
    if name == "t":
        return list(range(rank))[::-1]
    if name == "transpose":
        d0 = args[1] if len(args) > 1 else kw.get("dim0")
        d1 = args[2] if len(args) > 2 else kw.get("dim1")
        perm = list(range(rank))
        perm[d0 % rank], perm[d1 % rank] = perm[d1 % rank], perm[d0 % rank]
        return perm
    if name == "permute":
        dims = args[1:] if len(args) > 1 else kw.get("dims")
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = dims[0]
        return [d % rank for d in dims]
    src = args[1] if len(args) > 1 else kw.get("source")
    dst = args[2] if len(args) > 2 else kw.get("destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    perm = [None] * rank
    for s_, d_ in zip(src, dst):
        perm[d_ % rank] = s_ % rank
    rest = iter(d for d in range(rank) if d not in {s_ % rank for s_ in src})
    return [p if p is not None else next(rest) for p in perm]


@register_function("expand", "expand_as", "repeat", reads_ops=True)
def encode_expand(ctx, op, module, args):
    """Broadcasting along non-feature axes (e.g. ``cls_token.expand(B, -1, -1)``) keeps the value's nodes;
    copying a value to more positions is recorded."""
    args, _ = split_kwargs(args)
    x = args[0]
    if isinstance(x, LazyInput):
        return then(ctx, op, x, structural_op(op_name(op), x.shape, op.shape))
    if isinstance(x, Features):
        ax = x.axis % len(x.shape)
        shift = len(op.shape) - len(x.shape)
        if op.shape[ax + shift] != x.shape[ax]:
            raise UnsupportedModuleError(op.name, "expanding or repeating the feature axis")
        if x.num_pos != 1 and tuple(op.shape) != tuple(x.shape):
            raise UnsupportedModuleError(op.name, "expanding or repeating a flattened value")
        rec = None
        if _grid(x.shape, ax) != _grid(op.shape, ax + shift):
            rec = structural_op(op_name(op), x.shape, op.shape, ax + shift)
        return then(ctx, op, x, rec, axis=ax + shift, owned=False)
    return x  # a parameter broadcast over the batch: its consumer (cat, add) reads the parameter itself


_COMPARISONS = {
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
}


@register_function(*_COMPARISONS, reads_ops=True)
def encode_comparison(ctx, op, module, args):
    """Comparisons of shapes and constants (e.g. ``h == self.image_size`` before an assert) are evaluated."""
    args, _ = split_kwargs(args)
    a, b = args[0], args[1]
    if isinstance(a, Features | LazyInput) or isinstance(b, Features | LazyInput):
        raise UnsupportedModuleError(op.name, "comparing tensors (data-dependent) is not a parameter-graph op")
    return op.target(a, b)


@register_function(torch._assert, reads_ops=True)
def encode_assert(ctx, op, module, args):
    """``torch._assert(cond, msg)`` on shapes: checked now (the example input decides), no graph content."""
    args, kw = split_kwargs(args)
    cond = args[0] if args else kw.get("condition")
    msg = args[1] if len(args) > 1 else kw.get("message", "")
    if isinstance(cond, Features | LazyInput):
        raise UnsupportedModuleError(op.name, "an assert on tensor values (data-dependent)")
    if not cond:
        raise ShapeMismatchError("an input that passes the model's own check", str(msg), ctx.where())
    return None


def is_plain(*values) -> bool:
    """True when no value is a traced tensor: the op is shape arithmetic that can be evaluated now.

    Encoders' own values (attention heads, scores, split channels: frozen dataclasses) are traced tensors too.
    """
    from dataclasses import is_dataclass

    from ..trace import ParamRef

    return not any(isinstance(v, Features | LazyInput | ParamRef) or is_dataclass(v) for v in values)


@register_function(operator.floordiv, operator.mod, operator.pow, reads_ops=True)
def encode_shape_arithmetic(ctx, op, module, args):
    """Arithmetic on shapes and constants (``h // patch``) is evaluated; on tensors it is not encoded."""
    args, _ = split_kwargs(args)
    if is_plain(*args[:2]):
        return op.target(args[0], args[1])
    raise UnsupportedModuleError(op.name, f"'{op.target.__name__}' on a tensor is not encoded")
