"""A learned table read at constant indices: timm LeViT's attention biases ``attention_biases[:, attention_bias_idxs]``
(and any ``table[idx]`` of a 2-D parameter with a constant integer index on one axis, e.g. a relative position bias
table ``table[index.view(-1)]``).

``P[:, idx]`` with ``P`` [H, R] and ``idx`` an integer buffer (or folded constant) [Nq, Nk] is ``out[h, i, j] =
P[h, idx[i, j]]``: for every head ``h`` the same fixed gather of the R table columns. The graph has R fixed
``position`` nodes (one per table column, the relative offsets) and H ``embedding`` feature nodes, with an edge
``offset r -> feature h`` carrying ``P[h, r]``; the edge colour holds a digest of ``idx`` (its shape and values),
so two gathers that read the table in different patterns never look alike. The result is a value whose feature
axis is the table's un-indexed axis (here the head axis 0 of ``[H, Nq, Nk]``); added to attention scores it is a
per-head score bias (:func:`symgraph.encoders.attention.score_bias`), which ties feature ``h`` to head ``h``.

Analytic symmetry: ``S_H`` on the features (as an embedding's), cut down by whatever reads them (a per-head bias
keeps each feature with its head). The offsets never move: their meaning is the index pattern.

LeViT's other parts are generic: ``LinearNorm``'s ``bn(x.flatten(0, 1)).reshape_as(x)`` (``reshape_as`` in
:mod:`~symgraph.encoders.shape`), each head's q, k and v dimensions side by side
``view(B, N, H, -1).split([dk, dk, dv], dim=3)`` (split heads in :mod:`~symgraph.encoders.attention`), and
``Downsample``'s strided token subsampling (a structural op on the positions).
"""

from __future__ import annotations

import hashlib
import operator

import torch

from ..builder import Features, SymmetryDecl
from ..errors import UnsupportedModuleError
from ..registry import encoder_for_function, register_function
from ..trace import ParamRef
from . import attention as _attention  # noqa: F401  (registered first: the getitem below extends its encoder)
from . import embedding as _embedding  # noqa: F401

__all__ = ["encode_table_gather", "gather_edges"]

_previous_getitem = encoder_for_function(operator.getitem)


def _digest(t: torch.Tensor) -> str:
    data = t.detach().to(torch.long).contiguous().reshape(-1).numpy().tobytes()
    return hashlib.sha1(repr(tuple(t.shape)).encode() + data).hexdigest()[:16]


def _gather_axis(idx) -> tuple[int, ParamRef] | None:
    """(indexed axis, index) of ``P[idx]`` with one constant integer index on one axis and ``:`` elsewhere."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    found = [
        (k, p)
        for k, p in enumerate(parts)
        if isinstance(p, ParamRef) and not (p.tensor.is_floating_point() or p.tensor.is_complex())
    ]
    rest_ok = all(p == slice(None) for k, p in enumerate(parts) if not (found and k == found[0][0]))
    return found[0] if len(found) == 1 and rest_ok else None


def gather_edges(ctx, where: str, x: ParamRef, gathered: int, digest: str) -> torch.Tensor:
    """The table ``x`` (2-D, read along axis ``gathered`` at an index whose digest is ``digest``) as edges from
    fixed offset nodes, one per entry of that axis, to new feature nodes, one per entry of the other; returns
    the feature nodes."""
    b = ctx.builder
    R, D = x.tensor.shape[gathered], x.tensor.shape[1 - gathered]
    path = x.name.rsplit(".", 1)[0] if "." in x.name else ""
    offsets = b.add_nodes(R, "position", "position", f"{x.name} offsets", module=path, level=0)
    out = ctx.new_hidden(D, "embedding", f"{where} ({x.name} gathered)", offsets)
    # flat order of the table: (r, d) when the gathered axis is 0, (d, r) when it is 1
    src = offsets.view(R, 1).expand(R, D) if gathered == 0 else offsets.view(1, R).expand(D, R)
    dst = out.view(1, D).expand(R, D) if gathered == 0 else out.view(D, 1).expand(D, R)
    color = b.edge_color(("embedding", "gather", digest, gathered))
    b.add_edges(src.reshape(-1), dst.reshape(-1), color, x.stored, x.name)
    b.declare(SymmetryDecl("perm", out, f"S_{D} on the features of {x.name} gathered at {where}", module=path))
    return out


@register_function(operator.getitem, reads_ops=True)
def encode_table_gather(ctx, op, module, args):
    """``P[:, idx]`` / ``P[idx]`` of a learned 2-D table at a constant integer index (see the module docstring)."""
    x, idx = args[0], args[1]
    if not (isinstance(x, ParamRef) and (x.tensor.is_floating_point() or x.tensor.is_complex())):
        return _previous_getitem(ctx, op, module, args)
    found = _gather_axis(idx)
    if found is None or x.tensor.dim() != 2:
        raise UnsupportedModuleError(
            op.name, f"indexing the tensor '{x.name}' other than a 2-D table read at one constant integer index"
        )
    if x.name not in ctx.spec.state_keys:
        raise UnsupportedModuleError(op.name, f"indexing the constant tensor '{x.name}' (not in the state_dict)")
    gathered, index = found
    R = x.tensor.shape[gathered]
    if index.tensor.numel() and (int(index.tensor.min()) < -R or int(index.tensor.max()) >= R):
        raise UnsupportedModuleError(op.name, f"an index out of range for the {R} entries of '{x.name}'")
    out = gather_edges(ctx, op.name, x, gathered, _digest(index.tensor))
    shape = tuple(op.shape)
    ax = index.tensor.dim() if gathered == 0 else 0
    return Features(out, shape, ax, None, 1, owned=op.num_users == 1)
