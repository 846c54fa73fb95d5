"""Parameter-free reshaping: flatten, view/reshape to (batch, -1), dropout and identity, concatenation.

Flattening a channels-first value (B, C, *S) merges the spatial positions into the feature axis: feature
``c * P + p`` stays on channel node ``c`` with position ``p`` (P = prod(S)), so the linear layer that reads
it gets one edge colour per position. Concatenation along the feature axis concatenates the node lists.

Analytic symmetry: none of their own.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..registry import register_encoder, register_function
from ..trace import LazyInput, split_kwargs


def flatten_value(ctx, x, start_dim: int, end_dim: int, out_shape):
    if isinstance(x, LazyInput):
        return LazyInput(tuple(out_shape), x.name)
    if not isinstance(x, Features):
        raise ShapeMismatchError("a tensor to flatten", type(x).__name__, ctx.where())
    rank = len(x.shape)
    s, e = start_dim % rank, end_dim % rank
    ax = x.axis % rank
    if not (s <= ax <= e):
        # the feature axis is untouched: only the shape changes
        new_ax = ax if ax < s else ax - (e - s)
        return Features(x.nodes, tuple(out_shape), new_ax, x.pos, x.num_pos, x.owned)
    if ax != s:
        raise UnsupportedModuleError(ctx.where(), f"flatten of dims {s}..{e} with the features on axis {ax}")
    if x.num_pos != 1:
        raise UnsupportedModuleError(ctx.where(), "flattening an already flattened value")
    P = math.prod(x.shape[s + 1 : e + 1])
    new_ax = s
    if P == 1:
        return Features(x.nodes, tuple(out_shape), new_ax, None, 1, x.owned)
    C = x.size
    nodes = x.nodes.repeat_interleave(P)
    pos = torch.arange(P).repeat(C)
    return Features(nodes, tuple(out_shape), new_ax, pos, P, x.owned and ctx.op.num_users == 1)


@register_encoder(nn.Flatten)
def encode_flatten_module(ctx, op, module, args):
    return flatten_value(ctx, args[0], module.start_dim, module.end_dim, op.shape)


@register_function(torch.flatten, "flatten")
def encode_flatten(ctx, op, module, args):
    args, kw = split_kwargs(args)
    start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
    return flatten_value(ctx, args[0], start, end, op.shape)


@register_function("view", "reshape", torch.reshape)
def encode_view(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    in_shape = x.shape
    out = tuple(op.shape)
    if in_shape == out:
        return x
    # (B, d1, ..., dk) -> (B, d1*...*dk): a flatten from dim 1
    if len(out) == 2 and out[0] == in_shape[0] and out[1] == math.prod(in_shape[1:]):
        return flatten_value(ctx, x, 1, -1, out)
    if isinstance(x, LazyInput):
        return LazyInput(out, x.name)
    if isinstance(x, Features) and x.num_pos == 1:
        ax = x.axis % len(in_shape)
        # only dims after the feature axis change (e.g. a patch embedding's (B, D, h, w) -> (B, D, h*w))
        if tuple(in_shape[: ax + 1]) == out[: ax + 1]:
            return Features(x.nodes, out, ax, None, 1, x.owned and op.num_users == 1)
        # only dims before it change (e.g. merging batch and tokens in front of the features)
        tail = tuple(in_shape[ax:])
        if len(out) >= len(tail) and out[len(out) - len(tail) :] == tail:
            return Features(x.nodes, out, len(out) - len(tail), None, 1, x.owned and op.num_users == 1)
    raise UnsupportedModuleError(
        op.name,
        f"reshape {tuple(in_shape)} -> {out} is not a flatten; attention head reshapes are handled by "
        "the attention encoders",
    )


@register_encoder(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
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
)
def encode_identity_function(ctx, op, module, args):
    args, _ = split_kwargs(args)
    return _passthrough(ctx, op, args[0])


def _passthrough(ctx, op, x):
    if isinstance(x, Features):
        return Features(x.nodes, tuple(op.shape or x.shape), x.axis, x.pos, x.num_pos, x.owned and op.num_users == 1)
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape or x.shape), x.name)
    return x


@register_function(torch.cat, torch.concat, torch.concatenate)
def encode_cat(ctx, op, module, args):
    args, kw = split_kwargs(args)
    xs = list(args[0])
    dim = args[1] if len(args) > 1 else kw.get("dim", 0)
    feats = [ctx.features(v, axis=dim) for v in xs]
    rank = len(feats[0].shape)
    if any(f.axis % rank != dim % rank for f in feats):
        raise UnsupportedModuleError(op.name, "concatenation along a non-feature axis is not encoded yet")
    if any(f.num_pos != 1 for f in feats):
        raise UnsupportedModuleError(op.name, "concatenation of flattened values is not encoded yet")
    nodes = torch.cat([f.nodes for f in feats])
    return Features(nodes, tuple(op.shape), dim % rank, None, 1, owned=False)


@register_function("size", "dim")
def encode_size(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    shape = x.shape
    if op.target == "dim":
        return len(shape)
    d = args[1] if len(args) > 1 else kw.get("dim")
    return tuple(shape) if d is None else shape[d]


@register_function(getattr)
def encode_getattr(ctx, op, module, args):
    x, attr = args[0], args[1]
    if attr == "shape":
        return tuple(x.shape)
    raise UnsupportedModuleError(op.name, f"attribute '{attr}' of a traced value")


@register_function(operator.getitem)
def encode_getitem(ctx, op, module, args):
    x, idx = args[0], args[1]
    if isinstance(x, tuple | list):
        return x[idx]
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape), x.name)
    if isinstance(x, Features):
        return index_features(ctx, op, x, idx)
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
    return Features(x.nodes, tuple(op.shape), new_ax, None, 1, x.owned and op.num_users == 1)


def _moved_axis(ax: int, perm: list[int]) -> int:
    return perm.index(ax)


@register_function("transpose", torch.transpose, "permute", torch.permute, "movedim", torch.movedim, "t")
def encode_transpose(ctx, op, module, args):
    """Transposes and permutes move the feature axis (e.g. ViT's ``x.flatten(2).transpose(1, 2)``).

    Values other than plain features (attention heads) handle transposes in their own encoders.
    """
    args, kw = split_kwargs(args)
    x = args[0]
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape), x.name)
    if not isinstance(x, Features):
        move = getattr(x, "moved", None)
        if move is None:
            raise UnsupportedModuleError(op.name, f"transposing a {type(x).__name__}")
        return move(op, axis_permutation(op, len(x.shape), args, kw))
    perm = axis_permutation(op, len(x.shape), args, kw)
    return Features(
        x.nodes,
        tuple(op.shape),
        _moved_axis(x.axis % len(x.shape), perm),
        x.pos,
        x.num_pos,
        x.owned and op.num_users == 1,
    )


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


@register_function("expand", "expand_as", "repeat")
def encode_expand(ctx, op, module, args):
    """Broadcasting along non-feature axes (e.g. ``cls_token.expand(B, -1, -1)``) keeps the value's nodes."""
    args, _ = split_kwargs(args)
    x = args[0]
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape), x.name)
    if isinstance(x, Features):
        ax = x.axis % len(x.shape)
        shift = len(op.shape) - len(x.shape)
        if op.shape[ax + shift] != x.shape[ax]:
            raise UnsupportedModuleError(op.name, "expanding or repeating the feature axis")
        return Features(x.nodes, tuple(op.shape), ax + shift, x.pos, x.num_pos, False)
    return x  # a parameter broadcast over the batch: its consumer (cat, add) reads the parameter itself


_COMPARISONS = {
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
}


@register_function(*_COMPARISONS)
def encode_comparison(ctx, op, module, args):
    """Comparisons of shapes and constants (e.g. ``h == self.image_size`` before an assert) are evaluated."""
    args, _ = split_kwargs(args)
    a, b = args[0], args[1]
    if isinstance(a, Features | LazyInput) or isinstance(b, Features | LazyInput):
        raise UnsupportedModuleError(op.name, "comparing tensors (data-dependent) is not a parameter-graph op")
    return op.target(a, b)


@register_function(torch._assert)
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
    """True when no value is a traced tensor: the op is shape arithmetic that can be evaluated now."""
    from ..trace import ParamRef

    return not any(isinstance(v, Features | LazyInput | ParamRef) for v in values)


@register_function(operator.floordiv, operator.mod, operator.pow)
def encode_shape_arithmetic(ctx, op, module, args):
    """Arithmetic on shapes and constants (``h // patch``) is evaluated; on tensors it is not encoded."""
    args, _ = split_kwargs(args)
    if is_plain(*args[:2]):
        return op.target(args[0], args[1])
    raise UnsupportedModuleError(op.name, f"'{op.target.__name__}' on a tensor is not encoded")
