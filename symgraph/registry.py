"""Encoder registries: module types and functional targets -> encoder functions.

An encoder has the signature ``encode(ctx, op, module, args) -> value`` where ``ctx`` is the
:class:`symgraph.trace.EncodeContext`, ``op`` the :class:`symgraph.trace.OpSpec`, ``module`` the
``nn.Module`` for ``call_module`` ops (else ``None``) and ``args`` the already-encoded input values
(:class:`symgraph.builder.Features`, :class:`symgraph.trace.LazyInput`, :class:`symgraph.trace.ParamRef`
or plain Python constants). It returns the encoded output value.

Users add their own with::

    @symgraph.register_encoder(MyLayer)
    def encode_my_layer(ctx, op, module, args):
        x = ctx.features(args[0], axis=-1)
        ...

Structural ops. A value can carry parameter-free structural ops applied since its nodes were made
(``Features.ops``: a pool, a pad, a slice, ...). Unless an encoder is registered with ``reads_ops=True``
(it then puts ``Features.ops`` into its colour keys itself, or passes them on), the encoding walk first gives
every such input new nodes joined by edges coloured with the ops
(:meth:`symgraph.trace.EncodeContext.materialize`), so an encoder that ignores ``ops`` is still sound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

__all__ = [
    "register_encoder",
    "register_function",
    "register_encoder_by_name",
    "encoder_for_module",
    "encoder_for_function",
    "registered_module_types",
    "reads_ops",
    "module_lookup",
    "function_lookup",
]

_MODULE_ENCODERS: dict[type, Callable] = {}
_FUNCTION_ENCODERS: dict[Any, Callable] = {}
_NAMED_MODULE_ENCODERS: dict[str, Callable] = {}
#: module types and function targets whose encoders read ``Features.ops`` themselves
_READS_OPS: set = set()


def _mark(targets, flag: bool | None) -> None:
    if flag is None:
        return
    for t in targets:
        try:
            (_READS_OPS.add if flag else _READS_OPS.discard)(t)
        except TypeError:  # unhashable target: never looked up either
            pass


def register_encoder(*module_types: type, leaf: bool = True, reads_ops: bool | None = None):
    """Decorator registering an encoder for one or more ``nn.Module`` types.

    Registered modules are traced as leaves: fx does not look inside them, the encoder sees the module.
    ``reads_ops=True`` declares that the encoder handles ``Features.ops`` itself (module docstring);
    ``None`` keeps what an earlier registration of the type declared (default: it does not).
    """
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"Expected an nn.Module subclass (got {t!r})")

    def deco(fn: Callable) -> Callable:
        for t in module_types:
            _MODULE_ENCODERS[t] = fn
        _mark(module_types, reads_ops)
        fn.leaf = leaf
        return fn

    return deco


def register_function(*targets: Any, reads_ops: bool | None = None):
    """Decorator registering an encoder for ``call_function``/``call_method`` targets.

    Targets are callables (``torch.relu``, ``operator.add``) or method names as strings (``"relu"``).
    ``reads_ops`` as for :func:`register_encoder`.
    """

    def deco(fn: Callable) -> Callable:
        for t in targets:
            _FUNCTION_ENCODERS[t] = fn
        _mark(targets, reads_ops)
        return fn

    return deco


def register_encoder_by_name(*qualified_names: str, leaf: bool = True):
    """Decorator registering an encoder for module classes named ``"package.module.Class"``.

    For layers of optional libraries (torchvision, timm) that symgraph must not import: the class is matched
    by its ``__module__`` and ``__qualname__`` when a model containing it is traced.
    """

    def deco(fn: Callable) -> Callable:
        for name in qualified_names:
            _NAMED_MODULE_ENCODERS[name] = fn
        fn.leaf = leaf
        return fn

    return deco


def encoder_for_module(module: nn.Module) -> Callable | None:
    return module_lookup(_MODULE_ENCODERS, module, _NAMED_MODULE_ENCODERS)


def encoder_for_function(target: Any) -> Callable | None:
    return function_lookup(_FUNCTION_ENCODERS, target)


def reads_ops(module: nn.Module | None, target: Any) -> bool:
    """Whether the encoder of ``module`` (a ``call_module`` op) or of ``target`` handles ``Features.ops``."""
    if module is not None:
        t = next((t for t in type(module).__mro__ if t in _MODULE_ENCODERS), None)
        return t in _READS_OPS
    try:
        return target in _READS_OPS
    except TypeError:
        return False


def registered_module_types() -> list[type]:
    return list(_MODULE_ENCODERS)


def module_lookup(table: dict[type, Any], module: nn.Module, named: dict[str, Any] | None = None) -> Any | None:
    """``table``'s entry for ``module``: its class or the nearest registered base class along the MRO, else (in
    ``named``) by ``"package.module.Class"``. The lookup :func:`encoder_for_module` makes, for other registries
    keyed the same way (the computation-graph lowerings, :mod:`symgraph.computation.lowering`)."""
    for t in type(module).__mro__:
        entry = table.get(t)
        if entry is None and named:
            entry = named.get(f"{t.__module__}.{t.__qualname__}")
        if entry is not None:
            return entry
    return None


def function_lookup(table: dict[Any, Any], target: Any) -> Any | None:
    """``table``'s entry for a ``call_function``/``call_method`` target (a callable or a method name), the lookup
    :func:`encoder_for_function` makes; ``None`` for unregistered or unhashable targets."""
    try:
        return table.get(target)
    except TypeError:  # unhashable target
        return None
