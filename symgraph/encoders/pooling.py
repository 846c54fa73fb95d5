"""Pooling over spatial or token positions (global average pooling, max/avg pooling, ``mean``).

Pooling acts on each channel alone: it keeps the channel nodes and changes only the spatial shape that a
later flatten sees. Pooling over the feature axis is not a per-channel op and is refused.

Analytic symmetry: none of its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features
from ..errors import UnsupportedModuleError
from ..registry import register_encoder, register_function
from ..trace import LazyInput, split_kwargs

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
)


def _pooled(ctx, op, x):
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape), x.name)
    x = ctx.features(x, axis=1)
    if x.num_pos != 1:
        raise UnsupportedModuleError(ctx.where(), "pooling a flattened value")
    return Features(
        x.nodes,
        tuple(op.shape),
        x.axis if len(op.shape) > 2 else len(op.shape) - 1,
        None,
        1,
        x.owned and op.num_users == 1,
    )


@register_encoder(*POOL_MODULES)
def encode_pool_module(ctx, op, module, args):
    return _pooled(ctx, op, args[0])


@register_function(
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
)
def encode_pool_function(ctx, op, module, args):
    args, _ = split_kwargs(args)
    return _pooled(ctx, op, args[0])


@register_function("mean", torch.mean, "amax", torch.amax, "sum", torch.sum)
def encode_mean(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = args[0]
    dims = args[1] if len(args) > 1 else kw.get("dim")
    if isinstance(x, LazyInput):
        return LazyInput(tuple(op.shape), x.name)
    if not isinstance(x, Features) or dims is None:
        raise UnsupportedModuleError(op.name, "reduction over all dims is not a per-feature op")
    rank = len(x.shape)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = {d % rank for d in dims}
    ax = x.axis % rank
    if ax in dims:
        raise UnsupportedModuleError(op.name, "reduction over the feature axis")
    keep = kw.get("keepdim", args[2] if len(args) > 2 else False)
    new_ax = ax if keep else ax - sum(1 for d in dims if d < ax)
    return Features(x.nodes, tuple(op.shape), new_ax, x.pos, x.num_pos, x.owned and op.num_users == 1)
