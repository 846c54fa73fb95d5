"""The built-in computation-graph lowerings (paper appendix C.1), registered by layer family.

Linear layers and convolutions make one neuron per output scalar (channel *and* position) and one bias node per
layer, with one edge per use of a weight (:meth:`LoweringContext.add_param_edges`); average pooling, means and
residual sums make parameter-free nodes with constant edges; elementwise ops are recorded in the node colours
(named by :mod:`symgraph.activations`, as in the parameter graph); reshapes, permutes and dropout only relabel.

Edge colours are *structural* (layer kind, kernel position, residual/pooling constant), the same keys as the
parameter graph's where the layer exists there. They deliberately do **not** encode the weight-sharing class: an
automorphism must map classes onto classes (C.2, property 3), not fix each class.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import ACTIVATION_MODULES, ACTIVATIONS, constant_op_key, module_activation_key
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..trace import ParamRef, split_kwargs
from .lowering import (
    UNSUPPORTED_HINT,
    LoweringContext,
    Neurons,
    register_lowering,
    register_lowering_function,
)


@dataclass(frozen=True)
class ConvSpec:
    """What a convolution lowering needs, from an ``nn.ConvNd`` or the arguments of ``F.convNd``."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_name: str
    bias_name: str | None


# ====================================================================== building blocks
def _linear(ctx: LoweringContext, x: Neurons, weight, bias, wname: str, bname: str | None, module: str) -> Neurons:
    n_out, n_in = weight.shape
    if x.nodes.dim() == 0 or x.nodes.shape[-1] != n_in:
        raise ShapeMismatchError(
            f"{n_in} input features on the last axis", f"shape {tuple(x.nodes.shape)}", ctx.where()
        )
    lead = tuple(x.nodes.shape[:-1])
    R = math.prod(lead)
    out = ctx.add_neurons(R * n_out, "hidden", "linear", f"{module or wname} outputs", module, x.nodes).view(R, n_out)
    src = x.nodes.reshape(R, 1, n_in).expand(R, n_out, n_in)
    dst = out.view(R, n_out, 1).expand(R, n_out, n_in)
    flat = torch.arange(n_out * n_in).view(1, n_out, n_in).expand(R, n_out, n_in)
    ctx.add_param_edges(src, dst, ctx.color(("linear",)), wname, weight, flat)
    if bias is not None:
        _bias(ctx, out, bias, bname, "linear", module, torch.arange(n_out).repeat(R))
    return ctx.result(out.reshape(*lead, n_out))


def _bias(
    ctx: LoweringContext, out: torch.Tensor, bias, bname: str, kind: str, module: str, flat: torch.Tensor
) -> None:
    """One bias node per layer (activation 1, Eq. 7) with an edge to every neuron of the layer."""
    bnode = ctx.add_neurons(1, "bias", kind, f"{module or bname} bias", module, None)
    ctx.add_param_edges(bnode.expand(out.numel()), out.reshape(-1), ctx.color(("bias", kind)), bname, bias, flat)


def _combine(coords: list[torch.Tensor], valid: list[torch.Tensor], in_sizes: tuple[int, ...]):
    """Per-dim [O_d, K_d] input coordinates and validity -> flat [O, K] input positions and validity.

    Position and kernel orders are row-major over the dims, which matches the flat order of a conv weight's
    kernel axes and of the output's spatial axes.
    """
    n = len(coords)
    strides = [math.prod(in_sizes[d + 1 :]) for d in range(n)]
    pos = torch.zeros([1] * (2 * n), dtype=torch.long)
    ok = torch.ones([1] * (2 * n), dtype=torch.bool)
    for d in range(n):
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = coords[d].shape
        pos = pos + coords[d].clamp(0, in_sizes[d] - 1).view(shape) * strides[d]
        ok = ok & valid[d].view(shape)
    O = math.prod(c.shape[0] for c in coords)
    K = math.prod(c.shape[1] for c in coords)
    pos, ok = torch.broadcast_tensors(pos, ok)
    return pos.reshape(O, K), ok.reshape(O, K)


def _window_coords(S: int, O: int, k: int, stride: int, pad: int, dil: int, mode: str = "zeros"):
    c = torch.arange(O).view(O, 1) * stride - pad + torch.arange(k).view(1, k) * dil
    if mode == "zeros":
        return c, (c >= 0) & (c < S)
    if mode == "circular":
        return c.remainder(S), torch.ones_like(c, dtype=torch.bool)
    if mode == "replicate":
        return c.clamp(0, S - 1), torch.ones_like(c, dtype=torch.bool)
    if mode == "reflect":
        if S == 1:
            return torch.zeros_like(c), torch.ones_like(c, dtype=torch.bool)
        period = 2 * (S - 1)
        r = c.remainder(period)
        return torch.where(r < S, r, period - r), torch.ones_like(c, dtype=torch.bool)
    raise UnsupportedModuleError("", f"padding mode '{mode}'")


def _conv(ctx: LoweringContext, m: ConvSpec, x: Neurons, path: str) -> Neurons:
    """A convolution described by ``m`` (from an ``nn.ConvNd`` or the arguments of ``F.convNd``)."""
    nd = len(m.kernel_size)
    w = m.weight
    c_out, cin_g = w.shape[:2]
    G = m.groups
    if x.nodes.dim() != nd + 1 or x.nodes.shape[0] != cin_g * G:
        raise ShapeMismatchError(
            f"a ({cin_g * G}, <{nd} spatial dims>) input per sample", f"{tuple(x.nodes.shape)}", ctx.where()
        )
    S = tuple(x.nodes.shape[1:])
    O = ctx.out_shape()[1:]
    if isinstance(m.padding, str):
        pads = [0 if m.padding == "valid" else m.dilation[d] * (m.kernel_size[d] - 1) // 2 for d in range(nd)]
    else:
        pads = list(m.padding)
    coords, valid = zip(
        *[
            _window_coords(S[d], O[d], m.kernel_size[d], m.stride[d], pads[d], m.dilation[d], m.padding_mode)
            for d in range(nd)
        ],
        strict=True,
    )
    pos, ok = _combine(list(coords), list(valid), S)
    K = pos.shape[1]
    q_idx, k_idx = ok.nonzero(as_tuple=True)  # valid (output position, kernel tap) pairs
    V = q_idx.numel()
    nO = math.prod(O)
    kind = f"conv{nd}d"
    out = ctx.add_neurons(c_out * nO, "hidden", kind, f"{path} outputs", path, x.nodes).view(c_out, nO)
    opg = c_out // G
    oc = torch.arange(c_out).view(c_out, 1, 1)
    ic = torch.arange(cin_g).view(1, cin_g, 1)
    in_nodes = x.nodes.reshape(cin_g * G, -1)
    src = in_nodes[(oc // opg) * cin_g + ic, pos[q_idx, k_idx].view(1, 1, V)]
    dst = out[oc, q_idx.view(1, 1, V)].expand(c_out, cin_g, V)
    flat = (oc * cin_g + ic) * K + k_idx.view(1, 1, V)
    pad_key = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    key = (kind, tuple(m.kernel_size), tuple(m.stride), pad_key, tuple(m.dilation), G, m.padding_mode)
    kpos = torch.cartesian_prod(*[torch.arange(k) for k in m.kernel_size]).view(K, nd).tolist()
    lut = torch.tensor([ctx.color(("conv", *key, tuple(k))) for k in kpos], dtype=torch.int32)
    ctx.add_param_edges(src, dst, lut[k_idx].view(1, 1, V).expand(c_out, cin_g, V), m.weight_name, w, flat)
    if m.bias is not None:
        _bias(ctx, out, m.bias, m.bias_name, kind, path, torch.arange(c_out).repeat_interleave(nO))
    return ctx.result(out.view(c_out, *O))


def _average(
    ctx: LoweringContext, x: Neurons, nd: int, coords, valid, in_win, module: str, kind: str, divisor_override=None
) -> Neurons:
    """Windowed averaging over the last ``nd`` axes: constant edges of weight 1/divisor (per output position).

    ``in_win`` [O, K] marks window entries inside the padded input (they count in the divisor when padding is
    included), ``valid`` entries inside the input (they get an edge).
    """
    lead = tuple(x.nodes.shape[:-nd])
    S = tuple(x.nodes.shape[-nd:])
    pos, ok = _combine(list(coords), list(valid), S)
    O = ctx.out_shape()[len(lead) :]
    nO, R = math.prod(O), math.prod(lead)
    if divisor_override:
        div = torch.full((nO,), int(divisor_override), dtype=torch.long)
    else:
        div = in_win.sum(1)
    q_idx, k_idx = ok.nonzero(as_tuple=True)
    V = q_idx.numel()
    out = ctx.add_neurons(R * nO, "hidden", kind, f"{module or ctx.op.name} ({kind})", module, x.nodes).view(R, nO)
    src = x.nodes.reshape(R, -1)[:, pos[q_idx, k_idx]]
    dst = out[:, q_idx]
    d = div[q_idx].view(1, V).expand(R, V).reshape(-1)
    for dv in torch.unique(d).tolist():  # one colour per distinct constant (few)
        sel = d == dv
        ctx.add_const_edges(src.reshape(-1)[sel], dst.reshape(-1)[sel], ("avgpool", int(dv)), 1.0 / dv)
    return ctx.result(out.view(*lead, *O))


def _avg_pool(
    ctx: LoweringContext,
    x: Neurons,
    nd: int,
    kernel,
    stride,
    padding,
    ceil_mode,
    include_pad,
    divisor_override,
    module: str,
) -> Neurons:
    def tup(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    kernel, padding = tup(kernel), tup(padding)
    stride = tup(stride) if stride not in (None, (), []) else kernel
    S = tuple(x.nodes.shape[-nd:])
    O = ctx.out_shape()[-nd:]
    coords, valid, inwin = [], [], []
    for d in range(nd):
        c, v = _window_coords(S[d], O[d], kernel[d], stride[d], padding[d], 1)
        coords.append(c)
        valid.append(v)
        inwin.append(c < S[d] + padding[d])  # window entries past the padded input never count (ceil_mode)
    _, okp = _combine(coords, inwin, S)
    _, okv = _combine(coords, valid, S)
    return _average(ctx, x, nd, coords, valid, okp if include_pad else okv, module, "avgpool", divisor_override)


def _adaptive_avg_pool(ctx: LoweringContext, x: Neurons, nd: int, module: str) -> Neurons:
    S = tuple(x.nodes.shape[-nd:])
    O = ctx.out_shape()[-nd:]
    coords, valid = [], []
    for d in range(nd):
        o = torch.arange(O[d])
        start = (o * S[d]) // O[d]
        end = ((o + 1) * S[d] + O[d] - 1) // O[d]
        kmax = int((end - start).max())
        c = start.view(-1, 1) + torch.arange(kmax).view(1, -1)
        coords.append(c)
        valid.append(c < end.view(-1, 1))
    _, ok = _combine(coords, valid, S)
    return _average(ctx, x, nd, coords, valid, ok, module, "avgpool")


def _reduce(ctx: LoweringContext, x: Neurons, dims, keepdim: bool, mean: bool) -> Neurons:
    rank = x.nodes.dim() + 1
    if dims is None:
        raise UnsupportedModuleError(ctx.op.name, "a reduction over all dims (it would mix the batch)")
    dims = sorted({d % rank for d in ((dims,) if isinstance(dims, int) else tuple(dims))})
    if 0 in dims:
        raise UnsupportedModuleError(ctx.op.name, "a reduction over the batch dim")
    red = [d - 1 for d in dims]
    keep = [d for d in range(x.nodes.dim()) if d not in red]
    t = x.nodes.permute(*keep, *red)
    Kp = math.prod(x.nodes.shape[d] for d in keep)
    R = math.prod(x.nodes.shape[d] for d in red)
    t = t.reshape(Kp, R)
    kind = "mean" if mean else "sum"
    out = ctx.add_neurons(Kp, "hidden", kind, f"{ctx.op.name} ({kind})", "", x.nodes)
    ctx.add_const_edges(t, out.view(Kp, 1).expand(Kp, R), ("mean", R) if mean else ("sum",), 1.0 / R if mean else 1.0)
    return ctx.result(out.reshape(ctx.out_shape()))


def _elementwise(ctx: LoweringContext, x: Neurons, act: str) -> Neurons:
    """Record ``act`` on ``x``'s nodes in place when they are owned hidden nodes, else on new nodes."""
    b = ctx.builder
    if x.owned and all(b.role(i) == "hidden" for i in torch.unique(x.nodes).tolist()):
        b.add_activation(x.nodes, act)
        return ctx.result(x.nodes)
    uniq, inverse = torch.unique(x.nodes, return_inverse=True)
    new = ctx.add_neurons(uniq.numel(), "hidden", "act", f"{ctx.where()} {act}", "", uniq)
    ctx.add_const_edges(uniq, new, ("identity", "elementwise"), 1.0)
    b.add_activation(new, act)
    return ctx.result(new[inverse])


def _add(ctx: LoweringContext, a, c, sub: bool) -> Neurons:
    if isinstance(a, int | float) and isinstance(c, Neurons):
        return _elementwise(ctx, c, constant_op_key("rsub" if sub else "add", a))
    if isinstance(c, int | float) and isinstance(a, Neurons):
        return _elementwise(ctx, a, constant_op_key("sub" if sub else "add", c))
    if not (isinstance(a, Neurons) and isinstance(c, Neurons)):
        raise UnsupportedModuleError(ctx.op.name, "adding a parameter or buffer tensor (e.g. a positional embedding)")
    try:
        na, nc = torch.broadcast_tensors(a.nodes, c.nodes)
    except RuntimeError:
        raise ShapeMismatchError(
            f"operands that broadcast (got {tuple(a.nodes.shape)})", f"{tuple(c.nodes.shape)}", ctx.where()
        ) from None
    if tuple(na.shape) != ctx.out_shape():
        raise UnsupportedModuleError(ctx.op.name, "an addition that broadcasts over the batch dim")
    out = ctx.add_neurons(
        na.numel(),
        "hidden",
        "sum",
        f"{ctx.op.name} (residual sum)",
        "",
        torch.cat([a.nodes.reshape(-1), c.nodes.reshape(-1)]),
    )
    shared = bool(torch.isin(a.nodes, c.nodes).any())
    key_a = ("residual", 0) if shared else ("residual",)
    key_c = ("residual", "sub" if sub else 1) if (shared or sub) else ("residual",)
    ctx.add_const_edges(na, out, key_a, 1.0)
    ctx.add_const_edges(nc, out, key_c, -1.0 if sub else 1.0)
    return ctx.result(out.view(na.shape))


def _scale(ctx: LoweringContext, a, c, div: bool) -> Neurons:
    if isinstance(a, Neurons) and isinstance(c, int | float):
        return _elementwise(ctx, a, constant_op_key("div" if div else "mul", c))
    if isinstance(c, Neurons) and isinstance(a, int | float):
        return _elementwise(ctx, c, constant_op_key("rdiv" if div else "mul", a))
    raise UnsupportedModuleError(ctx.op.name, "a product of two tensors (gating, attention) in a computation graph")


def _reshape(ctx: LoweringContext, x: Neurons) -> Neurons:
    shape = ctx.op.shape
    if shape is None or shape[0] != ctx.batch or math.prod(shape[1:]) != x.nodes.numel():
        raise UnsupportedModuleError(ctx.op.name, f"a reshape to {shape} that does not keep the batch dim")
    return ctx.result(x.nodes.reshape(shape[1:]), owned=x.owned)


def _permute_dims(ctx: LoweringContext, x: Neurons, dims: list[int]) -> Neurons:
    rank = x.nodes.dim() + 1
    dims = [d % rank for d in dims]
    if dims[0] != 0:
        raise UnsupportedModuleError(ctx.op.name, "a permutation of dims that moves the batch dim")
    return ctx.result(x.nodes.permute(*[d - 1 for d in dims[1:]]), owned=x.owned)


def _first(args: tuple, kw: dict, name: str = "input"):
    return args[0] if args else kw.get(name)


# ====================================================================== linear and convolution
@register_lowering(nn.Linear)
def lower_linear(ctx, op, m: nn.Linear, args):
    args, kw = split_kwargs(args)
    has_bias = m.bias is not None
    path = op.target
    return _linear(
        ctx,
        ctx.neurons(_first(args, kw)),
        m.weight,
        m.bias,
        f"{path}.weight",
        f"{path}.bias" if has_bias else None,
        path,
    )


@register_lowering_function(F.linear, torch._C._nn.linear)
def lower_functional_linear(ctx, op, module, args):
    args, kw = split_kwargs(args)
    w = args[1] if len(args) > 1 else kw.get("weight")
    bias = args[2] if len(args) > 2 else kw.get("bias")
    if not isinstance(w, ParamRef) or (bias is not None and not isinstance(bias, ParamRef)):
        raise UnsupportedModuleError(op.name, "F.linear with computed weights")
    return _linear(
        ctx,
        ctx.neurons(args[0]),
        w.tensor,
        None if bias is None else bias.tensor,
        w.name,
        None if bias is None else bias.name,
        w.name.rsplit(".", 1)[0] if "." in w.name else "",
    )


@register_lowering(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def lower_conv(ctx, op, m, args):
    args, kw = split_kwargs(args)
    spec = ConvSpec(
        m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode, m.weight, m.bias,
        f"{op.target}.weight", f"{op.target}.bias",
    )  # fmt: skip
    return _conv(ctx, spec, ctx.neurons(_first(args, kw)), op.target)


_F_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@register_lowering_function(*_F_CONV)
def lower_functional_conv(ctx, op, module, args):
    args, kw = split_kwargs(args)
    names = ("weight", "bias", "stride", "padding", "dilation", "groups")
    vals = {
        "bias": None,
        "stride": 1,
        "padding": 0,
        "dilation": 1,
        "groups": 1,
        **dict(zip(names, args[1:], strict=False)),
        **{k: v for k, v in kw.items() if k in names},
    }
    w, bias = vals["weight"], vals["bias"]
    if not isinstance(w, ParamRef) or (bias is not None and not isinstance(bias, ParamRef)):
        raise UnsupportedModuleError(op.name, "a functional convolution with computed weights")
    nd = _F_CONV[op.target]

    def tup(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    spec = ConvSpec(
        kernel_size=tuple(w.tensor.shape[2:]),
        stride=tup(vals["stride"]),
        padding=vals["padding"] if isinstance(vals["padding"], str) else tup(vals["padding"]),
        dilation=tup(vals["dilation"]),
        groups=vals["groups"],
        padding_mode="zeros",
        weight=w.tensor,
        bias=None if bias is None else bias.tensor,
        weight_name=w.name,
        bias_name=None if bias is None else bias.name,
    )
    return _conv(ctx, spec, ctx.neurons(args[0]), w.name.rsplit(".", 1)[0] if "." in w.name else "")


# ====================================================================== pooling and reductions
_POOL_AVG = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_POOL_ADAPT = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_F_AVG = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_F_ADAPT = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}


def _pool_dims(table: dict, m: nn.Module) -> int:
    return next(nd for t, nd in table.items() if isinstance(m, t))


@register_lowering(*_POOL_AVG)
def lower_avg_pool(ctx, op, m, args):
    args, kw = split_kwargs(args)
    return _avg_pool(
        ctx,
        ctx.neurons(_first(args, kw)),
        _pool_dims(_POOL_AVG, m),
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        m.count_include_pad,
        getattr(m, "divisor_override", None),
        op.target,
    )


@register_lowering(*_POOL_ADAPT)
def lower_adaptive_avg_pool(ctx, op, m, args):
    args, kw = split_kwargs(args)
    return _adaptive_avg_pool(ctx, ctx.neurons(_first(args, kw)), _pool_dims(_POOL_ADAPT, m), op.target)


@register_lowering_function(*_F_AVG)
def lower_functional_avg_pool(ctx, op, module, args):
    args, kw = split_kwargs(args)
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    defaults = dict(zip(names, (None, None, 0, False, True, None), strict=True))
    vals = {**defaults, **dict(zip(names, args[1:], strict=False)), **{k: v for k, v in kw.items() if k in names}}
    return _avg_pool(ctx, ctx.neurons(args[0]), _F_AVG[op.target], *(vals[n] for n in names), "")


@register_lowering_function(*_F_ADAPT)
def lower_functional_adaptive_avg_pool(ctx, op, module, args):
    args, _ = split_kwargs(args)
    return _adaptive_avg_pool(ctx, ctx.neurons(args[0]), _F_ADAPT[op.target], "")


@register_lowering_function("mean", torch.mean, "sum", torch.sum)
def lower_reduction(ctx, op, module, args):
    args, kw = split_kwargs(args)
    dims = args[1] if len(args) > 1 else kw.get("dim")
    keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
    return _reduce(ctx, ctx.neurons(args[0]), dims, keep, op.target in ("mean", torch.mean))


# ====================================================================== elementwise ops and arithmetic
@register_lowering(*ACTIVATION_MODULES)
def lower_activation_module(ctx, op, m, args):
    args, kw = split_kwargs(args)
    return _elementwise(ctx, ctx.neurons(_first(args, kw)), module_activation_key(m))


def _functional_activation(act):
    def lower(ctx, op, module, args):
        args, kw = split_kwargs(args)
        return _elementwise(ctx, ctx.neurons(args[0]), act.key(tuple(args[1:]), kw))

    return lower


for _act in ACTIVATIONS.values():
    if _act.targets:
        register_lowering_function(*_act.targets)(_functional_activation(_act))

_SUB = (operator.sub, operator.isub, torch.sub, "sub")
_DIV = (operator.truediv, torch.div, "div")


@register_lowering_function(operator.add, operator.iadd, torch.add, "add", *_SUB)
def lower_add(ctx, op, module, args):
    args, kw = split_kwargs(args)
    if kw.get("alpha", 1) != 1:
        raise UnsupportedModuleError(op.name, "torch.add with alpha != 1")
    return _add(ctx, args[0], args[1] if len(args) > 1 else kw.get("other"), op.target in _SUB)


@register_lowering_function(operator.mul, operator.imul, torch.mul, "mul", *_DIV)
def lower_scale(ctx, op, module, args):
    args, kw = split_kwargs(args)
    return _scale(ctx, args[0], args[1] if len(args) > 1 else kw.get("other"), op.target in _DIV)


# ====================================================================== relabelling: identity, reshape, permute
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@register_lowering(*_IDENTITY_MODULES)
@register_lowering_function(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, "contiguous", "clone", "detach")
def lower_identity(ctx, op, module, args):
    args, kw = split_kwargs(args)
    x = ctx.neurons(_first(args, kw))
    return ctx.result(x.nodes, owned=x.owned)


@register_lowering(nn.Flatten)
@register_lowering_function(
    torch.flatten, "flatten", "view", "reshape", torch.reshape, "unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze
)
def lower_reshape(ctx, op, module, args):
    args, kw = split_kwargs(args)
    return _reshape(ctx, ctx.neurons(_first(args, kw)))


@register_lowering_function("permute", torch.permute)
def lower_permute(ctx, op, module, args):
    args, kw = split_kwargs(args)
    dims = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
    return _permute_dims(ctx, ctx.neurons(args[0]), list(kw.get("dims", dims)))


@register_lowering_function("transpose", torch.transpose)
def lower_transpose(ctx, op, module, args):
    args, _ = split_kwargs(args)
    x = ctx.neurons(args[0])
    rank = x.nodes.dim() + 1
    d0, d1 = args[1] % rank, args[2] % rank
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permute_dims(ctx, x, perm)


# ====================================================================== shape queries
@register_lowering_function("size", "dim")
def lower_size(ctx, op, module, args):
    args, kw = split_kwargs(args)
    shape = (ctx.batch, *ctx.neurons(args[0]).nodes.shape)
    if op.target == "dim":
        return len(shape)
    d = args[1] if len(args) > 1 else kw.get("dim")
    return shape if d is None else shape[d]


@register_lowering_function(getattr)
def lower_getattr(ctx, op, module, args):
    args, _ = split_kwargs(args)
    if args[1] != "shape":
        raise UnsupportedModuleError(
            op.name, f"no computation-graph lowering for the attribute '{args[1]}'", UNSUPPORTED_HINT
        )
    return (ctx.batch, *ctx.neurons(args[0]).nodes.shape)


@register_lowering_function(operator.getitem)
def lower_getitem(ctx, op, module, args):
    args, _ = split_kwargs(args)
    if not isinstance(args[0], tuple | list):
        raise UnsupportedModuleError(
            op.name,
            "no computation-graph lowering for the operation 'getitem' (call_function) on a tensor",
            UNSUPPORTED_HINT,
        )
    return args[0][args[1]]
