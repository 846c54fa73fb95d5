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

from ..activations import ACTIVATION_MODULES, ACTIVATIONS, Activation, constant_op_key, module_activation_key
from ..builder import Features
from ..registry import register_encoder, register_encoder_by_name, register_function
from ..trace import split_kwargs
from . import shape as _shape  # (registered first: ``x ** c`` on a tensor extends its shape arithmetic)


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
    """The canonical name of an activation module (:func:`symgraph.activations.module_activation_key`)."""
    return module_activation_key(module)


@register_encoder(*ACTIVATION_MODULES)
def encode_activation_module(ctx, op, module, args):
    return apply_elementwise(
        ctx, ctx.features(args[0], axis=-1) if not _is_feat(args[0]) else args[0], _module_act(module)
    )


def _is_feat(v) -> bool:
    return isinstance(v, Features)


#: Functional activations: canonical name -> call_function/call_method targets (from symgraph.activations,
#: which the computation graph uses too, so that both graphs accept the same set and name it the same way).
ACTIVATION_FUNCTIONS = {name: act.targets for name, act in ACTIVATIONS.items() if act.targets}


def _make_fn_encoder(act: Activation):
    def enc(ctx, op, module, args):
        args, kw = split_kwargs(args)
        x = args[0] if _is_feat(args[0]) else ctx.features(args[0], axis=-1)
        return apply_elementwise(ctx, x, act.key(tuple(args[1:]), kw))

    return enc


for _act in ACTIVATIONS.values():
    if _act.targets:
        register_function(*_act.targets)(_make_fn_encoder(_act))


@register_function(operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div")
def encode_scale(ctx, op, module, args):
    """x * c or x / c with a constant c: recorded as an elementwise op carrying c."""
    args, _ = split_kwargs(args)
    a, c = args[0], args[1]
    from .shape import is_plain

    if is_plain(a, c) and callable(op.target):  # shape arithmetic (e.g. n_h * n_w): evaluate it
        return op.target(a, c)
    swapped = isinstance(a, int | float) and not isinstance(c, int | float)
    if swapped:
        a, c = c, a
    if not isinstance(c, int | float):
        if op.target in (operator.truediv, torch.div, "div"):
            from ..errors import UnsupportedModuleError

            raise UnsupportedModuleError(op.name, "division by a tensor is not encoded yet")
        from .gating import encode_product

        return encode_product(ctx, op, a, c)
    x = a if _is_feat(a) else ctx.features(a, axis=-1)
    is_div = op.target in (operator.truediv, torch.div, "div")
    return apply_elementwise(ctx, x, constant_op_key(("rdiv" if swapped else "div") if is_div else "mul", c))


#: Hugging Face's tanh-approximated GELU modules (GPT-2's ``gelu_new``), by class name: exactly
#: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, i.e. ``F.gelu(x, approximate="tanh")``
HF_TANH_GELUS = ("transformers.activations.NewGELUActivation", "transformers.activations.GELUTanh")


@register_encoder_by_name(*HF_TANH_GELUS)
def encode_hf_tanh_gelu(ctx, op, module, args):
    x = args[0] if _is_feat(args[0]) else ctx.features(args[0], axis=-1)
    return apply_elementwise(ctx, x, ACTIVATIONS["gelu"].key(("tanh",), {}))


@register_function(operator.pow, torch.pow, "pow")
def encode_pow(ctx, op, module, args):
    """``x ** c`` with a constant exponent ``c`` (StarReLU's ``relu(x) ** 2``): an elementwise op carrying ``c``;
    shape arithmetic is evaluated."""
    args, kw = split_kwargs(args)
    base, c = args[0], args[1] if len(args) > 1 else kw.get("exponent")
    if _shape.is_plain(base, c) and callable(op.target):
        return op.target(base, c)
    if isinstance(c, bool) or not isinstance(c, int | float) or isinstance(base, int | float):
        from ..errors import UnsupportedModuleError

        raise UnsupportedModuleError(op.name, "'pow' with a tensor exponent is not encoded (a constant one is)")
    x = base if _is_feat(base) else ctx.features(base, axis=-1)
    return apply_elementwise(ctx, x, constant_op_key("pow", c))


@register_function(torch.square, "square")
def encode_square(ctx, op, module, args):
    """``torch.square(x)`` (timm's SquaredReLU): ``x ** 2``."""
    args, _ = split_kwargs(args)
    x = args[0] if _is_feat(args[0]) else ctx.features(args[0], axis=-1)
    return apply_elementwise(ctx, x, constant_op_key("pow", 2))
