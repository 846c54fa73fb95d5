"""Multiplicative interactions: products of two streams (gating) and products with a parameter (layer scale).

- **Gating** ``a * b`` of two encoded values whose feature axes line up (squeeze-and-excitation
  ``x * sigmoid(s)``, GLU ``a * sigmoid(b)``, SwiGLU ``silu(W1 x) * W3 x``, gated residuals): one new node per
  feature (kind ``product``) and parameter-free edges ``a[f] -> prod[f]`` and ``b[f] -> prod[f]``. Each
  operand's edges are coloured by how it is broadcast (which non-feature axes it spans): the SE gate, one value
  per channel, and the gated feature map, one value per pixel, get different colours, so no automorphism can
  swap the gate with the gated input. Two operands broadcast alike get the same colour: the product is
  commutative, so mapping one operand's subgraph onto the other's keeps the function.
- **Layer scale** ``x * gamma`` with a learned per-feature ``gamma`` (LayerScale, ConvNeXt's ``layer_scale``):
  a diagonal layer, one edge ``x[f] -> scaled[f]`` carrying ``gamma[f]`` (every parameter is an edge).
- **Stochastic depth / drop path** (torchvision ``StochasticDepth``, timm ``DropPath``): the identity in eval
  mode; in train mode it zeroes whole samples, which commutes with every feature permutation.

Refused with :class:`~symgraph.errors.UnsupportedModuleError`: a product that broadcasts one operand across the
feature axis (spatial attention maps ``x * sigmoid(conv(x))`` with one channel), products of flattened values,
division by a tensor, products with a constant tensor that is not in the state_dict, and per-position scales.

Analytic symmetry: ties between both operands' nodes and the product nodes (the SE bottleneck's hidden units
stay free, declared by their own layers); a tie between ``x`` and the scaled nodes for layer scale.

Example
-------
>>> import torch, torch.nn as nn, symgraph
>>> class SE(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv = nn.Conv2d(3, 4, 1)
...         self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
...     def forward(self, x):
...         x = self.conv(x)
...         s = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
...         return x * torch.sigmoid(s)
>>> g = symgraph.parameter_graph(SE(), input_shape=(1, 3, 4, 4))
>>> sorted(k for k in g.edge_color_keys if k[0] == "product")  # the gate spans no pixels, the map does
[('product', 'broadcast'), ('product', 'broadcast', 2, 3)]
"""

from __future__ import annotations

import torch

from ..activations import constant_op_key
from ..builder import Features, SymmetryDecl
from ..errors import UnsupportedModuleError
from ..registry import register_encoder_by_name, register_function
from ..trace import LazyInput, ParamRef, split_kwargs
from .embedding import _param_layout, parameter_operand
from .scalar import is_scalar_parameter, scalar_parameter_op
from .shape import _passthrough

__all__ = ["encode_product", "scale_by_parameter"]


def _aligned_axis(x: Features, rank: int) -> int:
    return x.axis % len(x.shape) + (rank - len(x.shape))


def _broadcast_axes(x: Features, out_shape: tuple[int, ...], ax: int) -> tuple[int, ...]:
    """Non-batch, non-feature axes of the output that ``x`` is broadcast along (size 1 in ``x``)."""
    rank = len(out_shape)
    padded = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    return tuple(i for i in range(1, rank) if i != ax and padded[i] == 1 and out_shape[i] != 1)


def encode_product(ctx, op, a, b) -> Features:
    """``a * b`` of two tensors: gating, or layer scale when one of them is a parameter."""
    if isinstance(a, ParamRef) and isinstance(b, ParamRef):
        raise UnsupportedModuleError(op.name, "product of two parameter tensors")
    if isinstance(a, ParamRef) or isinstance(b, ParamRef):
        x, p = (b, a) if isinstance(a, ParamRef) else (a, b)
        return scale_by_parameter(ctx, op, x, p)
    out_shape = tuple(op.shape)
    rank = len(out_shape)
    if isinstance(a, LazyInput) and isinstance(b, Features):
        a = ctx.features(a, axis=b.axis % len(b.shape) - len(b.shape))
    if isinstance(b, LazyInput) and isinstance(a, Features):
        b = ctx.features(b, axis=a.axis % len(a.shape) - len(a.shape))
    a = ctx.features(a, axis=-1)
    b = ctx.features(b, axis=-1)
    if a.num_pos != 1 or b.num_pos != 1:
        raise UnsupportedModuleError(op.name, "product of flattened values is not encoded yet")
    ax_a, ax_b = _aligned_axis(a, rank), _aligned_axis(b, rank)
    if ax_a != ax_b or a.size != b.size:
        raise UnsupportedModuleError(
            op.name,
            f"product whose operands' feature axes do not line up ({a.size} features on axis {ax_a} and "
            f"{b.size} on axis {ax_b}; e.g. a spatial attention map broadcast across channels) is not encoded yet",
        )
    sig_a, sig_b = _broadcast_axes(a, out_shape, ax_a), _broadcast_axes(b, out_shape, ax_b)
    key_a, key_b = ("product", "broadcast", *sig_a), ("product", "broadcast", *sig_b)
    out = ctx.new_hidden(a.size, "product", f"{op.name} (product)", torch.cat([a.nodes, b.nodes]))
    ctx.identity_edges(a.nodes, out, key_a)
    ctx.identity_edges(b.nodes, out, key_b)
    bld = ctx.builder
    bld.declare(SymmetryDecl("tie", a.nodes, f"product tie at {op.name}", other=b.nodes))
    bld.declare(SymmetryDecl("tie", a.nodes, f"product tie at {op.name}", other=out))
    return Features(out, out_shape, ax_a, None, 1, owned=op.num_users == 1)


def scale_by_parameter(ctx, op, x, p: ParamRef) -> Features:
    """``x * gamma`` for a learned per-feature ``gamma``: one edge per entry (see the module docstring); a scalar
    ``gamma`` (one entry for every unit) is :func:`symgraph.encoders.scalar.scalar_parameter_op`."""
    if is_scalar_parameter(p) and not (isinstance(x, Features) and x.size == 1):
        return scalar_parameter_op(ctx, op, x, p, "mul")
    x, ax, fa = parameter_operand(
        ctx, op, x, p, f"product with the constant tensor '{p.name}'", "scaling a flattened value by a parameter"
    )
    positions, flat = _param_layout(p.tensor, fa, ctx.where())
    if positions != 1:
        raise UnsupportedModuleError(
            op.name, f"scaling by '{p.name}' of shape {tuple(p.tensor.shape)} (one value per feature expected)"
        )
    out = ctx.new_hidden(x.size, "scale", f"{op.name} (* {p.name})", x.nodes)
    src = torch.empty(p.tensor.numel(), dtype=torch.long)
    dst = torch.empty(p.tensor.numel(), dtype=torch.long)
    src[flat.reshape(-1)] = x.nodes
    dst[flat.reshape(-1)] = out
    bld = ctx.builder
    bld.add_edges(src, dst, bld.edge_color(("scale", "parameter")), p.stored, p.name)
    bld.declare(SymmetryDecl("tie", x.nodes, f"{p.name} scales at {op.name}", other=out))
    return Features(out, tuple(op.shape), ax, None, 1, owned=op.num_users == 1)


@register_function(torch.addcmul, "addcmul")
def encode_addcmul(ctx, op, module, args):
    """``torch.addcmul(input, t1, t2, value=v)`` = ``input + v * t1 * t2`` (timm's ResMLP ``Affine``: a per-feature
    scale and bias): the product (:func:`encode_product`), a constant factor, then the sum, each as encoded alone."""
    from .activation import apply_elementwise
    from .residual import encode_add

    args, kw = split_kwargs(args)
    if len(args) != 3 or set(kw) - {"value"}:
        raise UnsupportedModuleError(op.name, "addcmul with arguments other than (input, tensor1, tensor2, value=)")
    base, t1, t2 = args
    prod = encode_product(ctx, op, t1, t2)
    value = kw.get("value", 1)
    if value != 1:
        prod = apply_elementwise(ctx, prod, constant_op_key("mul", value))
    return encode_add(ctx, op, None, (base, prod))


@register_encoder_by_name("torchvision.ops.stochastic_depth.StochasticDepth", "timm.layers.drop.DropPath")
def encode_drop_path(ctx, op, module, args):
    """Stochastic depth: the identity in eval mode, whole samples zeroed in train mode (see the docstring)."""
    return _passthrough(ctx, op, args[0])
