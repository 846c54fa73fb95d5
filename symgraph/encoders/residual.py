"""Residual additions: parameter-free edges of weight 1 into new 'sum' nodes (paper Sec. 2.1.2, Fig. 3).

``a + b`` of two encoded values with the same feature nodes layout makes one new node per feature and
edges ``a[f] -> sum[f]`` and ``b[f] -> sum[f]`` coloured 'residual'. An automorphism must then permute
``a``, ``b`` and the sum by the same permutation: the stream's neurons are tied. Adding a constant is an
elementwise op.

An operand that went through structural ops (``Features.ops``: ``x + pool(x)``, ``x + y[:, :, 1:]``) or is
broadcast to the sum's shape (``x + x.mean((2, 3), keepdim=True)``) has those in its edge colour, so the
two operands of ``a + pool(b)`` are never interchangeable; operands with equal ops still are (the sum is
symmetric and a per-channel op commutes with channel permutations).

Analytic symmetry: a tie between the operands' nodes and the sum nodes.
"""

from __future__ import annotations

import operator

import torch

from ..activations import constant_op_key
from ..builder import Features, SymmetryDecl, with_ops
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import register_function
from ..trace import LazyInput, ParamRef, split_kwargs
from .activation import apply_elementwise

declare_vocabulary(edges={"residual": ("sub",)}, node_kinds=("sum",))


@register_function(operator.add, torch.add, "add", operator.iadd, operator.sub, torch.sub, "sub", reads_ops=True)
def encode_add(ctx, op, module, args):
    args, kw = split_kwargs(args)
    a, b = args[0], args[1]
    from .shape import is_plain

    if is_plain(a, b) and callable(op.target):  # shape arithmetic: evaluate it
        return op.target(a, b)
    sub = op.target in (operator.sub, torch.sub, "sub")
    if isinstance(a, int | float) or isinstance(b, int | float):
        x, c = (a, b) if not isinstance(a, int | float) else (b, a)
        x = ctx.materialize(x if isinstance(x, Features) else ctx.features(x, axis=-1))
        return apply_elementwise(
            ctx, x, constant_op_key(("rsub" if isinstance(a, int | float) else "sub") if sub else "add", c)
        )
    if isinstance(a, ParamRef) or isinstance(b, ParamRef):
        if isinstance(a, ParamRef) and isinstance(b, ParamRef) or sub:
            raise UnsupportedModuleError(op.name, "adding or subtracting two parameter tensors")
        from .embedding import add_parameter  # a learned positional embedding: one edge per entry

        return add_parameter(ctx, op, b if isinstance(a, ParamRef) else a, a if isinstance(a, ParamRef) else b)
    if isinstance(a, LazyInput) and isinstance(b, Features):
        a = ctx.features(a, axis=b.axis)
    if isinstance(b, LazyInput) and isinstance(a, Features):
        b = ctx.features(b, axis=a.axis)
    a = ctx.features(a, axis=-1)
    b = ctx.features(b, axis=a.axis)
    if a.size != b.size or a.num_pos != b.num_pos:
        raise ShapeMismatchError(f"operands with {a.size} features", f"{b.size}", ctx.where())
    if a.num_pos != 1:
        raise UnsupportedModuleError(op.name, "residual addition of flattened values is not encoded yet")
    out = ctx.new_hidden(a.size, "sum", f"{op.name} (residual sum)", torch.cat([a.nodes, b.nodes]))
    bld = ctx.builder
    shared = bool(torch.isin(a.nodes, b.nodes).any())
    key_a = ("residual", 0) if shared else ("residual",)
    key_b = ("residual", "sub" if sub else 1) if (shared or sub) else ("residual",)
    ctx.identity_edges(a.nodes, out, _operand_key(key_a, a, op.shape))
    ctx.identity_edges(b.nodes, out, _operand_key(key_b, b, op.shape))
    bld.declare(SymmetryDecl("tie", a.nodes, f"residual tie at {op.name}", other=b.nodes))
    bld.declare(SymmetryDecl("tie", a.nodes, f"residual tie at {op.name}", other=out))
    axis = a.axis if len(op.shape) == len(a.shape) else -1
    return Features(out, tuple(op.shape), axis, None, 1, owned=op.num_users == 1)


def _operand_key(key: tuple, x: Features, out_shape) -> tuple:
    """The colour of an operand's edges: its structural ops, and its shape when it is broadcast."""
    if tuple(x.shape) != tuple(out_shape):
        key = (*key, ("broadcast", tuple(x.shape)))
    return with_ops(key, x.ops)
