"""Pooling over spatial or token positions (max/avg/LP/adaptive pooling, ``mean``/``sum``/``amax``) and the
other parameter-free ops on positions: interpolation (``F.interpolate``, ``nn.Upsample``), padding (``F.pad``,
``nn.*Pad*d``), ``roll`` and ``flip``.

Each of them acts on every channel alone and in the same way, so it keeps the channel nodes; but it changes
what a later layer sees, so it is part of the value: the op, its arguments and the shapes before and after
are appended to ``Features.ops`` (:func:`symgraph.builder.structural_op`), and the layer that consumes the
value colours its edges with them. Without this, GoogLeNet's branch 1 (a 1x1 conv of the block input) and
branch 4 (a 3x3 max-pool, then a 1x1 conv of the same input) look identical and nauty swaps their channels,
which changes the function. Ops on the feature axis itself (pooling or padding over channels, rolling or
flipping channels) are not per-channel and are refused.

Analytic symmetry: none of their own (they commute with every permutation of the channels).

Example
-------
>>> import torch.nn as nn, symgraph
>>> g = symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.Conv2d(2, 1, 1)),
...                              input_shape=(1, 1, 4, 4))
>>> [k[-1][1][0] for k in g.edge_color_keys if k[0] == "conv" and isinstance(k[-1], tuple) and k[-1][0] == "after"]
['max_pool2d']
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features, structural_op
from ..errors import UnsupportedModuleError
from ..registry import register_encoder, register_function
from ..trace import LazyInput, split_kwargs
from .shape import op_name as _name
from .shape import then

__all__ = ["POOL_MODULES"]

POOL_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.LPPool3d,
)

#: per pooling family: (argument, default) in the functional's order; ``None`` stride means the kernel size
_POOL_ARGS = {
    "max_pool": (
        ("kernel_size", None),
        ("stride", None),
        ("padding", 0),
        ("dilation", 1),
        ("ceil_mode", False),
        ("return_indices", False),
    ),
    "avg_pool": (
        ("kernel_size", None),
        ("stride", None),
        ("padding", 0),
        ("ceil_mode", False),
        ("count_include_pad", True),
        ("divisor_override", None),
    ),
    "lp_pool": (("norm_type", None), ("kernel_size", None), ("stride", None), ("ceil_mode", False)),
    # the output size is in the record's output shape
    "adaptive_avg_pool": (("output_size", None),),
    "adaptive_max_pool": (("output_size", None), ("return_indices", False)),
}
_TUPLE_ARGS = ("kernel_size", "stride", "padding", "dilation")


def _family(name: str) -> tuple[str, int]:
    """``("max_pool", 2)`` for ``max_pool2d`` / ``MaxPool2d``."""
    low = name.lower().replace("_", "")
    for fam in ("adaptiveavgpool", "adaptivemaxpool", "maxpool", "avgpool", "lppool"):
        if low.startswith(fam):
            nd = int(low[len(fam)]) if low[len(fam) :][:1].isdigit() else 1
            pretty = {"adaptiveavgpool": "adaptive_avg_pool", "adaptivemaxpool": "adaptive_max_pool"}
            return pretty.get(fam, fam[:-4] + "_pool"), nd
    raise UnsupportedModuleError(name, "an unknown pooling op")


def _pool_args(family: str, nd: int, values: dict) -> tuple:
    out = []
    spec = _POOL_ARGS[family]
    for name, default in spec:
        if name == "output_size":
            continue
        v = values.get(name, default)
        if name == "stride" and (v is None or v == () or v == []):
            v = values.get("kernel_size")
        if name in _TUPLE_ARGS and v is not None:
            v = tuple(v) if isinstance(v, tuple | list) else (v,) * nd
        if name == "norm_type":
            v = float(v)
        out.append((name, v))
    if dict(out).get("return_indices"):
        raise UnsupportedModuleError(family, "pooling with return_indices (the indices are data-dependent)")
    return tuple(out)


def _pooled(ctx, op, x, family: str, nd: int, values: dict):
    rec = structural_op(f"{family}{nd}d", x.shape, op.shape, *_pool_args(family, nd, values))
    if isinstance(x, LazyInput):
        return then(ctx, op, x, rec)
    x = ctx.features(x, axis=1)
    rank = len(x.shape)
    if x.num_pos != 1:
        raise UnsupportedModuleError(ctx.where(), "pooling a flattened value")
    if x.axis % rank >= rank - nd:
        raise UnsupportedModuleError(ctx.where(), "pooling over the feature axis (only positions are pooled)")
    if tuple(op.shape) == tuple(x.shape) and _is_identity_pool(family, values):
        rec = None  # e.g. adaptive pooling to the size the value already has
    return then(ctx, op, x, rec)


def _is_identity_pool(family: str, values: dict) -> bool:
    if family.startswith("adaptive"):
        return True  # same output size as input: every window is one position
    k = values.get("kernel_size")
    ks = k if isinstance(k, tuple | list) else (k,)
    pad = values.get("padding", 0)
    pads = pad if isinstance(pad, tuple | list) else (pad,)
    return all(v == 1 for v in ks) and all(p == 0 for p in pads) and family != "lp_pool"


@register_encoder(*POOL_MODULES, reads_ops=True)
def encode_pool_module(ctx, op, module, args):
    family, nd = _family(type(module).__name__)
    values = {name: getattr(module, name, default) for name, default in _POOL_ARGS[family]}
    return _pooled(ctx, op, args[0], family, nd, values)


_POOL_FUNCTIONS = (
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.lp_pool1d,
    F.lp_pool2d,
    F.lp_pool3d,
)


@register_function(*_POOL_FUNCTIONS, reads_ops=True)
def encode_pool_function(ctx, op, module, args):
    args, kw = split_kwargs(args)
    family, nd = _family(_name(op))
    names = [n for n, _ in _POOL_ARGS[family]]
    values = dict(zip(names, args[1:]))
    values.update({k: v for k, v in kw.items() if k in names})
    return _pooled(ctx, op, args[0], family, nd, values)


@register_function("mean", torch.mean, "amax", torch.amax, "sum", torch.sum, "amin", torch.amin, reads_ops=True)
def encode_mean(ctx, op, module, args):
    """Reductions over positions (a token mean, a global pool written as ``x.mean((2, 3))``)."""
    args, kw = split_kwargs(args)
    x = args[0]
    dims = args[1] if len(args) > 1 else kw.get("dim")
    keep = kw.get("keepdim", args[2] if len(args) > 2 else False)
    name = _name(op)
    if dims is None:
        raise UnsupportedModuleError(op.name, "reduction over all dims is not a per-feature op")
    rank = len(x.shape)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(sorted({d % rank for d in dims}))
    if kw.get("dtype") is not None:
        raise UnsupportedModuleError(op.name, f"'{name}' with a dtype argument")
    if isinstance(x, LazyInput):
        return then(ctx, op, x, structural_op(name, x.shape, op.shape, dims, bool(keep)))
    if not isinstance(x, Features):
        raise UnsupportedModuleError(op.name, f"'{name}' of a {type(x).__name__}")
    ax = x.axis % rank
    if ax in dims:
        raise UnsupportedModuleError(op.name, "reduction over the feature axis")
    new_ax = ax if keep else ax - sum(1 for d in dims if d < ax)
    if all(x.shape[d] == 1 for d in dims):  # mean/sum/max over size-1 axes: the values are unchanged
        rec = None
    else:
        rec = structural_op(name, x.shape, op.shape, dims, bool(keep))
    return then(ctx, op, x, rec, axis=new_ax)


# ---------------------------------------------------------------------------------------------- interpolation
_INTERP_ARGS = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")


def _interpolated(ctx, op, x, values: dict):
    if isinstance(x, Features):
        if x.num_pos != 1 or x.axis % len(x.shape) != 1:
            raise UnsupportedModuleError(ctx.where(), "interpolation of a value whose channels are not on axis 1")
    sf = values.get("scale_factor")
    if sf is not None:
        sf = tuple(float(s) for s in sf) if isinstance(sf, tuple | list) else (float(sf),) * (len(x.shape) - 2)
    args = (
        values.get("mode", "nearest"),
        values.get("align_corners"),
        sf if not values.get("recompute_scale_factor") else None,
        bool(values.get("antialias", False)),
    )
    return then(ctx, op, x, structural_op("interpolate", x.shape, op.shape, *args))


@register_encoder(nn.Upsample, reads_ops=True)
def encode_upsample_module(ctx, op, module, args):
    values = {n: getattr(module, n, None) for n in _INTERP_ARGS}
    return _interpolated(ctx, op, args[0], values)


@register_function(F.interpolate, F.upsample, reads_ops=True)
def encode_interpolate(ctx, op, module, args):
    args, kw = split_kwargs(args)
    values = dict(zip(_INTERP_ARGS, args[1:]))
    values.update({k: v for k, v in kw.items() if k in _INTERP_ARGS})
    return _interpolated(ctx, op, args[0], values)


# ---------------------------------------------------------------------------------------------- padding
_PAD_MODES = (
    (nn.modules.padding._ConstantPadNd, "constant"),
    (nn.modules.padding._ReflectionPadNd, "reflect"),
    (nn.modules.padding._ReplicationPadNd, "replicate"),
    (nn.modules.padding._CircularPadNd, "circular"),
)


def _padded(ctx, op, x, pad, mode: str, value):
    pad = tuple(int(p) for p in pad)
    rank = len(x.shape)
    if isinstance(x, Features):
        ax = x.axis % rank
        if x.num_pos != 1:
            raise UnsupportedModuleError(ctx.where(), "padding a flattened value")
        for i in range(len(pad) // 2):
            dim = rank - 1 - i
            if dim == ax and (pad[2 * i] or pad[2 * i + 1]):
                raise UnsupportedModuleError(ctx.where(), "padding the feature axis (only positions are padded)")
    if not any(pad):
        return then(ctx, op, x, None) if isinstance(x, Features) else x
    value = 0.0 if value is None else float(value)
    rec = structural_op("pad", x.shape, op.shape, pad, mode, value if mode == "constant" else None)
    return then(ctx, op, x, rec)


@register_encoder(*(cls for cls, _ in _PAD_MODES), reads_ops=True)
def encode_pad_module(ctx, op, module, args):
    mode = next(m for cls, m in _PAD_MODES if isinstance(module, cls))
    return _padded(ctx, op, args[0], module.padding, mode, getattr(module, "value", None))


@register_function(F.pad, torch._C._nn.pad, reads_ops=True)
def encode_pad(ctx, op, module, args):
    args, kw = split_kwargs(args)
    pad = args[1] if len(args) > 1 else kw["pad"]
    mode = args[2] if len(args) > 2 else kw.get("mode", "constant")
    value = args[3] if len(args) > 3 else kw.get("value")
    return _padded(ctx, op, args[0], pad, mode, value)


# ---------------------------------------------------------------------------------------------- roll and flip
@register_function(torch.roll, "roll", reads_ops=True)
def encode_roll(ctx, op, module, args):
    """``torch.roll`` along positions: a cyclic shift of every channel (the feature axis must stay)."""
    args, kw = split_kwargs(args)
    x = args[0]
    shifts = args[1] if len(args) > 1 else kw["shifts"]
    dims = args[2] if len(args) > 2 else kw.get("dims")
    rank = len(x.shape)
    if dims is None:
        raise UnsupportedModuleError(op.name, "roll of the flattened tensor (it mixes channels)")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    total: dict[int, int] = {}
    for s, d in zip(shifts, dims, strict=True):
        d %= rank
        total[d] = (total.get(d, 0) + int(s)) % max(int(x.shape[d]), 1)
    canon = tuple(sorted((d, s) for d, s in total.items() if s))
    if isinstance(x, Features) and any(d == x.axis % rank for d, _ in canon):
        raise UnsupportedModuleError(op.name, "roll along the feature axis (a fixed permutation of features)")
    if not canon:
        return then(ctx, op, x, None) if isinstance(x, Features) else x
    return then(ctx, op, x, structural_op("roll", x.shape, op.shape, canon))


@register_function(torch.flip, "flip", reads_ops=True)
def encode_flip(ctx, op, module, args):
    """``torch.flip`` along positions (the feature axis must stay)."""
    args, kw = split_kwargs(args)
    x = args[0]
    dims = args[1:] if len(args) > 1 else (kw["dims"],)
    if len(dims) == 1 and isinstance(dims[0], tuple | list):
        dims = tuple(dims[0])
    rank = len(x.shape)
    dims = tuple(sorted({int(d) % rank for d in dims if x.shape[int(d) % rank] > 1}))
    if isinstance(x, Features) and x.axis % rank in dims:
        raise UnsupportedModuleError(op.name, "flip of the feature axis (a fixed permutation of features)")
    if not dims:
        return then(ctx, op, x, None) if isinstance(x, Features) else x
    return then(ctx, op, x, structural_op("flip", x.shape, op.shape, dims))
