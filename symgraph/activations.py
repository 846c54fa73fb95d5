"""Elementwise activations: the one place that names them (node colours) and evaluates them (Eq. 7).

Both graphs record an elementwise op as a *name* on the nodes it acts on, and the computation graph's
evaluator turns that name back into the function. A name is ``base`` for an activation without arguments
(``"relu"``) or ``base(a1,a2,...)`` listing *every* argument of a parametrised one, defaults included, in the
order of its signature (``"leaky_relu(0.01)"``, ``"softplus(1,20)"``, ``"gelu(none)"``). So the module form
(``nn.LeakyReLU(0.2)``), the functional form (``F.leaky_relu(x, 0.2)``, ``F.leaky_relu(x, negative_slope=0.2)``)
and both graphs give one name for one function, and different arguments give different names.

Numbers are written by :func:`format_arg`: the short ``%g`` form when it reads back as the same float
(``30``, ``0.01``, ``-1``), else ``repr`` (``0.1234567``), so that a name is exact and the evaluator reproduces
the model to float precision.

Constant arithmetic (SIREN's ``omega_0 * x``, ``x - 1``) is named the same way by :func:`constant_op_key`:
``mul(c)``, ``div(c)`` (``x / c``), ``rdiv(c)`` (``c / x``), ``add(c)``, ``sub(c)`` (``x - c``), ``rsub(c)``
(``c - x``), ``pow(c)`` (``x ** c``).

Example
-------
>>> import torch, torch.nn as nn, torch.nn.functional as F
>>> module_activation_key(nn.LeakyReLU(0.2)) == function_activation_key(F.leaky_relu, (0.2,), {})
True
>>> module_activation_key(nn.Hardtanh(-2, 2)), constant_op_key("mul", 30.0)
('hardtanh(-2,2)', 'mul(30)')
>>> activation_function("leaky_relu(0.5)")(torch.tensor([-2.0, 3.0]))
tensor([-1.,  3.])
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ShapeMismatchError, UnsupportedModuleError
from .registry import function_lookup, module_lookup

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "ACTIVATION_MODULES",
    "CONSTANT_OPS",
    "format_arg",
    "activation_key",
    "module_activation_key",
    "function_activation_key",
    "activation_for_target",
    "constant_op_key",
    "activation_function",
]

#: Arguments a functional form accepts that do not change the function (left out of names).
_IGNORED = ("inplace",)


@dataclass(frozen=True)
class Activation:
    """One elementwise function and its forms.

    ``fn(x, *args)`` evaluates it with the arguments ``params`` (name, default) in signature order;
    ``signature`` lists every argument the functional form takes after the input (``params`` plus ignored
    ones such as ``inplace``), to bind positional arguments; ``modules`` are its ``nn.Module`` classes (their
    attributes are named like ``params``), ``targets`` its functional targets (callables, or method names as
    strings).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[tuple[str, Any], ...] = ()
    signature: tuple[str, ...] = ()
    modules: tuple[type, ...] = ()
    targets: tuple = ()

    def key(self, args: tuple = (), kwargs: dict | None = None) -> str:
        """The canonical name for a call with ``args`` (after the input) and ``kwargs``."""
        sig = self.signature or tuple(n for n, _ in self.params)
        if len(args) > len(sig):
            raise ShapeMismatchError(f"at most {len(sig)} arguments for {self.name}", f"{len(args)}: {args!r}")
        bound = dict(zip(sig, args, strict=False))
        for k, v in (kwargs or {}).items():
            if k not in sig:
                raise ShapeMismatchError(f"an argument of {self.name} ({', '.join(sig) or 'none'})", repr(k))
            bound[k] = v
        if not self.params:
            return self.name
        vals = [bound.get(n, default) for n, default in self.params]
        return f"{self.name}({','.join(format_arg(v) for v in vals)})"

    def module_key(self, module: nn.Module) -> str:
        return self.key(tuple(getattr(module, n) for n, _ in self.params))


def format_arg(v: Any) -> str:
    """An activation argument as written in names: exact, and short where that stays exact.

    >>> format_arg(30.0), format_arg(0.01), format_arg(0.1234567), format_arg(-2), format_arg("tanh")
    ('30', '0.01', '0.1234567', '-2', 'tanh')
    """
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    f = float(v)
    short = f"{f:g}"
    return short if float(short) == f else repr(f)


def _act(name, fn, params=(), signature=None, modules=(), targets=()) -> Activation:
    sig = tuple(n for n, _ in params) + _IGNORED if signature is None else signature
    return Activation(name, fn, tuple(params), sig, tuple(modules), tuple(targets))


_LIST = [
    _act("relu", F.relu, modules=(nn.ReLU,), targets=(F.relu, torch.relu, "relu")),
    _act("relu6", F.relu6, modules=(nn.ReLU6,), targets=(F.relu6,)),
    _act(
        "gelu",
        lambda x, a: F.gelu(x, approximate=a),
        params=(("approximate", "none"),),
        signature=("approximate",),
        modules=(nn.GELU,),
        targets=(F.gelu,),
    ),
    _act("tanh", torch.tanh, signature=(), modules=(nn.Tanh,), targets=(torch.tanh, F.tanh, "tanh")),
    _act("sigmoid", torch.sigmoid, signature=(), modules=(nn.Sigmoid,), targets=(torch.sigmoid, F.sigmoid, "sigmoid")),
    _act("silu", F.silu, modules=(nn.SiLU,), targets=(F.silu,)),
    _act("sin", torch.sin, signature=(), targets=(torch.sin, "sin")),
    _act("cos", torch.cos, signature=(), targets=(torch.cos, "cos")),
    _act("exp", torch.exp, signature=(), targets=(torch.exp, "exp")),
    _act("neg", torch.neg, signature=(), targets=(operator.neg, torch.neg, "neg")),
    _act("elu", lambda x, a: F.elu(x, a), params=(("alpha", 1.0),), modules=(nn.ELU,), targets=(F.elu,)),
    _act("celu", lambda x, a: F.celu(x, a), params=(("alpha", 1.0),), modules=(nn.CELU,), targets=(F.celu,)),
    _act("selu", F.selu, modules=(nn.SELU,), targets=(F.selu,)),
    _act(
        "leaky_relu",
        lambda x, s: F.leaky_relu(x, s),
        params=(("negative_slope", 0.01),),
        modules=(nn.LeakyReLU,),
        targets=(F.leaky_relu,),
    ),
    _act(
        "softplus",
        lambda x, b, t: F.softplus(x, b, t),
        params=(("beta", 1.0), ("threshold", 20.0)),
        signature=("beta", "threshold"),
        modules=(nn.Softplus,),
        targets=(F.softplus,),
    ),
    _act(
        "hardtanh",
        lambda x, lo, hi: F.hardtanh(x, lo, hi),
        params=(("min_val", -1.0), ("max_val", 1.0)),
        modules=(nn.Hardtanh,),
        targets=(F.hardtanh,),
    ),
    _act("mish", F.mish, modules=(nn.Mish,), targets=(F.mish,)),
    _act("hardswish", F.hardswish, modules=(nn.Hardswish,), targets=(F.hardswish,)),
    _act("hardsigmoid", F.hardsigmoid, modules=(nn.Hardsigmoid,), targets=(F.hardsigmoid,)),
    _act("tanhshrink", F.tanhshrink, signature=(), modules=(nn.Tanhshrink,), targets=(F.tanhshrink,)),
    _act("softsign", F.softsign, signature=(), modules=(nn.Softsign,), targets=(F.softsign,)),
    _act("logsigmoid", F.logsigmoid, signature=(), modules=(nn.LogSigmoid,), targets=(F.logsigmoid,)),
]

#: Every supported activation by canonical name.
ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _LIST}
#: The module classes of :data:`ACTIVATIONS` (traced as leaves by the encoder registry).
ACTIVATION_MODULES: tuple[type, ...] = tuple(m for a in _LIST for m in a.modules)

_BY_MODULE: dict[type, Activation] = {m: a for a in _LIST for m in a.modules}
_BY_TARGET: dict[Any, Activation] = {t: a for a in _LIST for t in a.targets}

#: Arithmetic with one constant ``c``: name -> ``fn(x, c)``.
CONSTANT_OPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "mul": lambda x, c: x * c,
    "div": lambda x, c: x / c,
    "rdiv": lambda x, c: c / x,
    "add": lambda x, c: x + c,
    "sub": lambda x, c: x - c,
    "rsub": lambda x, c: c - x,
    "pow": lambda x, c: x**c,
}


def activation_key(name: str, args: tuple = (), kwargs: dict | None = None) -> str:
    """The canonical name of activation ``name`` called with ``args`` (after the input) and ``kwargs``.

    >>> activation_key("softplus", (2.0,)), activation_key("elu"), activation_key("relu", (), {"inplace": True})
    ('softplus(2,20)', 'elu(1)', 'relu')
    """
    act = ACTIVATIONS.get(name)
    if act is None:
        raise UnsupportedModuleError("", f"no elementwise activation named '{name}' (known: {', '.join(ACTIVATIONS)})")
    return act.key(tuple(args), kwargs)


def module_activation_key(module: nn.Module) -> str | None:
    """The canonical name of an activation module (``None`` if ``module`` is not one)."""
    act = module_lookup(_BY_MODULE, module)
    return None if act is None else act.module_key(module)


def activation_for_target(target: Any) -> Activation | None:
    """The activation a ``call_function``/``call_method`` target computes, or ``None``."""
    return function_lookup(_BY_TARGET, target)


def function_activation_key(target: Any, args: tuple = (), kwargs: dict | None = None) -> str | None:
    """The canonical name of a functional call ``target(x, *args, **kwargs)`` (``None`` if no activation)."""
    act = activation_for_target(target)
    return None if act is None else act.key(tuple(args), kwargs)


def constant_op_key(op: str, c: float) -> str:
    """The name of arithmetic with the constant ``c`` (``op`` one of :data:`CONSTANT_OPS`)."""
    if op not in CONSTANT_OPS:
        raise UnsupportedModuleError("", f"no constant operation '{op}' (known: {', '.join(CONSTANT_OPS)})")
    return f"{op}({format_arg(float(c))})"


_NAME_RE = re.compile(r"^([a-z_0-9]+)(?:\((.*)\))?$")


def _parse_arg(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function of a name as stored in node colours.

    Raises :class:`~symgraph.errors.UnsupportedModuleError` for a name that is not an elementwise function.

    Example
    -------
    >>> import torch
    >>> activation_function("mul(30)")(torch.tensor([0.5]))
    tensor([15.])
    """
    m = _NAME_RE.match(name)
    if m is None:
        raise ShapeMismatchError("an activation name like 'relu' or 'mul(30)'", repr(name))
    base, text = m.group(1), m.group(2)
    args = () if text is None else tuple(_parse_arg(a) for a in text.split(","))
    if base in CONSTANT_OPS and len(args) == 1 and isinstance(args[0], float):
        return lambda x, f=CONSTANT_OPS[base], c=args[0]: f(x, c)
    act = ACTIVATIONS.get(base)
    if act is None:
        raise UnsupportedModuleError("", f"no elementwise function for the activation '{name}'")
    if not args:
        args = tuple(default for _, default in act.params)
    if len(args) != len(act.params):
        raise ShapeMismatchError(f"{len(act.params)} arguments for {base}", f"{len(args)} in {name!r}")
    if not args:
        return act.fn
    return lambda x, f=act.fn, a=args: f(x, *a)
