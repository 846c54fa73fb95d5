"""Scalar parameters shared by every unit they act on: ``x * s`` and ``x + s`` with a learned ``s`` of one entry
(timm's StarReLU ``scale * relu(x) ** 2 + bias``, ReZero's residual gate).

Encoding: one fixed node per use of the scalar (role ``bias``, kind ``scalar``) that stores ``s`` as a node
parameter (column ``scale`` for a product, ``shift`` for a sum: ``to_state_dict()`` reads it back exactly,
one place per entry), new nodes ``out[f]`` (kind ``act`` for the product, ``sum`` for the sum) and
parameter-free edges ``x[f] -> out[f]`` (colour ``("identity", "scalar_mul")`` / ``("identity",
"scalar_add")``) and ``scalar -> out[f]`` (colour ``("bias", "scalar_mul")`` / ``("bias", "scalar_add")``).

Why not one edge per unit carrying ``s``: that would put one parameter in many places (``to_state_dict`` would
have to choose one, and a GMN would see copies that no permutation keeps equal by construction). A node
feature on every unit has the same problem. One fixed node keeps the entry in one place, and since it is
fixed and joined to all the units alike, it commutes with every permutation of them: the units stay free
(or tied to whatever they are tied to), as they are in the model.

Analytic symmetry: a tie between ``x`` and ``out``; the scalar node is fixed.
"""

from __future__ import annotations

import torch

from ..builder import Features, SymmetryDecl, with_ops
from ..errors import UnsupportedModuleError
from ..graph import declare_vocabulary
from ..trace import ParamRef

declare_vocabulary(
    edges={"identity": ("scalar_mul", "scalar_add"), "bias": ("scalar_mul", "scalar_add")},
    node_kinds=("act", "sum"),
)

__all__ = ["is_scalar_parameter", "scalar_parameter_op"]


def is_scalar_parameter(p) -> bool:
    """A learned parameter of one entry (any shape of size-1 axes), broadcast over the value it acts on."""
    return isinstance(p, ParamRef) and p.tensor.numel() == 1


def scalar_parameter_op(ctx, op, x, p: ParamRef, kind: str) -> Features:
    """``x * p`` (``kind="mul"``) or ``x + p`` (``kind="add"``) for a scalar parameter ``p`` (module docstring)."""
    if p.name not in ctx.spec.state_keys:
        raise UnsupportedModuleError(op.name, f"{kind} with the constant tensor '{p.name}' (not in the state_dict)")
    x = x if isinstance(x, Features) else ctx.features(x, axis=-1)
    if x.num_pos != 1:
        raise UnsupportedModuleError(op.name, f"{kind} of a flattened value with the scalar '{p.name}'")
    b = ctx.builder
    role = f"scalar_{kind}"
    node = b.add_nodes(1, "bias", "scalar", f"{p.name} (scalar)", module=p.name.rsplit(".", 1)[0], level=0)
    b.add_node_param(node, "scale" if kind == "mul" else "shift", p.stored, p.name)
    uniq, inverse = torch.unique(x.nodes, return_inverse=True)
    out = ctx.new_hidden(uniq.numel(), "act" if kind == "mul" else "sum", f"{op.name} ({kind} {p.name})", uniq)
    ctx.identity_edges(uniq, out, with_ops(("identity", role), x.ops))
    ctx.identity_edges(node.expand(uniq.numel()), out, ("bias", role))
    b.declare(SymmetryDecl("tie", uniq, f"scalar {p.name} at {op.name}", other=out))
    rank = len(op.shape)
    axis = x.axis % len(x.shape) + (rank - len(x.shape))
    return Features(out[inverse], tuple(op.shape), axis, None, 1, owned=op.num_users == 1)
