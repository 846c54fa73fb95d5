"""Elementwise activations, recorded as node colours (ReLU, GELU, Tanh, Sigmoid, SiLU, sin, ...).

An activation is recorded on the nodes of its input when those nodes were made for that value alone;
otherwise (the pre-activation value is used elsewhere too, or the nodes are inputs) it gets new nodes joined
by parameter-free identity edges, so that both values stay visible. Scaling by a constant (SIREN's
``omega_0 * x``) is recorded the same way, with the constant in the colour.

Analytic symmetry: none of its own (elementwise ops commute with every permutation of their nodes).
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..builder import Features
from ..registry import register_encoder, register_function
from ..trace import split_kwargs


def apply_elementwise(ctx, x: Features, act: str) -> Features:
    """Record the elementwise op ``act`` on ``x``'s nodes (in place when they are owned, else new nodes)."""
    b = ctx.builder
    nodes = x.unique_nodes()
    if x.owned and all(b.role(i) == "hidden" for i in nodes.tolist()):
        b.add_activation(nodes, act)
        return Features(x.nodes, ctx.op.shape or x.shape, x.axis, x.pos, x.num_pos, owned=ctx.op.num_users == 1)
    uniq, inverse = torch.unique(x.nodes, return_inverse=True)
    new = ctx.new_hidden(uniq.numel(), "act", f"{ctx.where()} {act}", uniq)
    ctx.identity_edges(uniq, new, ("identity", "elementwise"))
    b.add_activation(new, act)
    return Features(new[inverse], ctx.op.shape or x.shape, x.axis, x.pos, x.num_pos, owned=ctx.op.num_users == 1)


def _module_act(module: nn.Module) -> str:
    name = type(module).__name__.lower()
    if isinstance(module, nn.LeakyReLU):
        return f"leaky_relu({module.negative_slope:g})"
    if isinstance(module, nn.ELU | nn.CELU):
        return f"{name}({module.alpha:g})"
    if isinstance(module, nn.Softplus):
        return f"softplus({module.beta:g},{module.threshold:g})"
    if isinstance(module, nn.GELU):
        return f"gelu({module.approximate})"
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return f"hardtanh({module.min_val:g},{module.max_val:g})"
    return name


ACTIVATION_MODULES = (
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanhshrink,
    nn.Softsign,
    nn.LogSigmoid,
)


@register_encoder(*ACTIVATION_MODULES)
def encode_activation_module(ctx, op, module, args):
    return apply_elementwise(
        ctx, ctx.features(args[0], axis=-1) if not _is_feat(args[0]) else args[0], _module_act(module)
    )


def _is_feat(v) -> bool:
    return isinstance(v, Features)


#: Functional activations: canonical name -> call_function/call_method targets. Shared with the computation
#: graph (symgraph/computation.py) so that both graphs accept the same set.
ACTIVATION_FUNCTIONS = {
    "relu": (F.relu, torch.relu, "relu"),
    "gelu": (F.gelu, "gelu"),
    "tanh": (torch.tanh, F.tanh, "tanh"),
    "sigmoid": (torch.sigmoid, F.sigmoid, "sigmoid"),
    "silu": (F.silu, "silu"),
    "sin": (torch.sin, "sin"),
    "cos": (torch.cos, "cos"),
    "exp": (torch.exp, "exp"),
    "elu": (F.elu,),
    "celu": (F.celu,),
    "leaky_relu": (F.leaky_relu,),
    "softplus": (F.softplus,),
    "mish": (F.mish,),
    "relu6": (F.relu6,),
    "hardtanh": (F.hardtanh,),
    "selu": (F.selu,),
    "hardswish": (F.hardswish,),
    "hardsigmoid": (F.hardsigmoid,),
    "softsign": (F.softsign,),
    "tanhshrink": (F.tanhshrink,),
    "logsigmoid": (F.logsigmoid,),
    "neg": (operator.neg, torch.neg, "neg"),
}


def _make_fn_encoder(act: str):
    def enc(ctx, op, module, args):
        args, kw = split_kwargs(args)
        x = args[0] if _is_feat(args[0]) else ctx.features(args[0], axis=-1)
        extra = [a for a in args[1:] if isinstance(a, int | float)] + [
            v for k, v in sorted(kw.items()) if k not in ("inplace",) and isinstance(v, int | float | str)
        ]
        name = act if not extra else f"{act}({','.join(str(e) for e in extra)})"
        if act == "gelu" and not extra:
            name = "gelu(none)"
        return apply_elementwise(ctx, x, name)

    return enc


for _act, _targets in ACTIVATION_FUNCTIONS.items():
    register_function(*_targets)(_make_fn_encoder(_act))


@register_function(operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div")
def encode_scale(ctx, op, module, args):
    """x * c or x / c with a constant c: recorded as an elementwise op carrying c."""
    args, _ = split_kwargs(args)
    a, c = args[0], args[1]
    from .shape import is_plain

    if is_plain(a, c) and callable(op.target):  # shape arithmetic (e.g. n_h * n_w): evaluate it
        return op.target(a, c)
    if isinstance(a, int | float) and not isinstance(c, int | float):
        a, c = c, a
    if not isinstance(c, int | float):
        if op.target in (operator.truediv, torch.div, "div"):
            from ..errors import UnsupportedModuleError

            raise UnsupportedModuleError(op.name, "division by a tensor is not encoded yet")
        from .gating import encode_product

        return encode_product(ctx, op, a, c)
    x = a if _is_feat(a) else ctx.features(a, axis=-1)
    is_div = op.target in (operator.truediv, torch.div, "div")
    return apply_elementwise(ctx, x, f"{'div' if is_div else 'mul'}({float(c):g})")
