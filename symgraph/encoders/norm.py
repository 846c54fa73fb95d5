"""Normalisation layers: BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, LayerNorm (last dim), GroupNorm.

Encoding (paper appendix B, Fig. 7 middle, made per channel). A norm gets one new node per channel, joined to
its input channel node by a parameter-free edge of weight 1 coloured by the norm's type and settings, so that
the normalisation is visible in the graph. Its per-channel parameters and buffers live on those nodes, in
``node_weight`` columns ``norm_weight`` (gamma), ``norm_bias`` (beta), ``running_mean`` and ``running_var``;
``num_batches_tracked`` is kept verbatim (``add_extra``). Moving a node moves its gamma, beta and running
statistics with it, so Phi permutes buffers too.

GroupNorm statistics couple the channels of a group, so a permutation may only permute channels within a
group and whole groups. With ``encoding="sound"`` each group gets a node (role ``group``) with
parameter-free edges to its channels' norm nodes; automorphisms must then respect the groups. With
``encoding="paper"`` the group nodes are left out (as in the paper), and channels of different groups become
interchangeable: unsound.

Analytic symmetry: a tie between input channels and norm nodes (the norm commutes with any channel
permutation); GroupNorm also declares ``"blocks"`` over its groups (with the group node in each row) and a
``"perm"`` within each group.

Example
-------
>>> import torch.nn as nn, symgraph
>>> g = symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 1, 1)),
...                              input_shape=(1, 1, 5, 5))
>>> int(g.role_mask("group").sum()), g.node_weight_columns
(2, ('norm_weight', 'norm_bias'))
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..builder import Features, SymmetryDecl, with_ops
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import register_encoder

declare_vocabulary(
    edges={"norm": ("batchnorm", "instancenorm", "layernorm", "groupnorm")},
    node_kinds=("batchnorm", "instancenorm", "layernorm", "groupnorm"),
)

__all__ = ["encode_batchnorm", "encode_layernorm", "encode_groupnorm", "norm_nodes"]

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def norm_nodes(ctx, x: Features, kind: str, key: tuple, path: str) -> torch.Tensor:
    """One norm node per channel of ``x``, with identity edges coloured ``("norm", kind, *key)`` (plus the
    structural ops of ``x``, ``Features.ops``) and a tie."""
    if x.num_pos != 1:
        raise UnsupportedModuleError(path, f"{kind} of a flattened value")
    out = ctx.new_hidden(x.size, kind, f"{path} {kind} nodes", x.nodes, extra=key)
    ctx.identity_edges(x.nodes, out, with_ops(("norm", kind, *key), x.ops))
    ctx.builder.declare(SymmetryDecl("tie", x.nodes, f"{kind} at {path}", other=out, module=path))
    return out


def _store(ctx, nodes: torch.Tensor, module: nn.Module, path: str, entries) -> None:
    b = ctx.builder
    for attr, column in entries:
        t = getattr(module, attr, None)
        if t is None:
            continue
        name = f"{path}.{attr}" if path else attr
        is_buffer = attr.startswith("running")
        b.add_node_param(nodes, column, t, name, is_buffer=is_buffer)
    nbt = getattr(module, "num_batches_tracked", None)
    if nbt is not None:
        b.add_extra(f"{path}.num_batches_tracked" if path else "num_batches_tracked", nbt)


_AFFINE = (
    ("weight", "norm_weight"),
    ("bias", "norm_bias"),
    ("running_mean", "running_mean"),
    ("running_var", "running_var"),
)


@register_encoder(*BATCH_NORMS, *INSTANCE_NORMS, reads_ops=True)
def encode_batchnorm(ctx, op, module, args):
    """BatchNorm/InstanceNorm over channels (axis 1): per-channel nodes holding gamma, beta, running stats."""
    x = ctx.features(args[0], axis=1)
    path = op.target
    rank = len(x.shape)
    if x.axis % rank != 1:
        raise ShapeMismatchError(
            f"channels on axis 1 for {type(module).__name__}", f"axis {x.axis % rank}", ctx.where()
        )
    if x.size != module.num_features:
        raise ShapeMismatchError(f"{module.num_features} channels", f"{x.size}", ctx.where())
    kind = "batchnorm" if isinstance(module, BATCH_NORMS) else "instancenorm"
    key = (
        float(module.eps),
        None if module.momentum is None else float(module.momentum),
        bool(module.affine),
        bool(module.track_running_stats),
    )
    out = norm_nodes(ctx, x, kind, key, path)
    _store(ctx, out, module, path, _AFFINE)
    return Features(out, tuple(op.shape), x.axis, None, 1, owned=op.num_users == 1)


@register_encoder(nn.LayerNorm, reads_ops=True)
def encode_layernorm(ctx, op, module, args):
    """LayerNorm over the last (feature) axis: per-feature nodes holding gamma and beta."""
    x = ctx.features(args[0], axis=-1)
    path = op.target
    rank = len(x.shape)
    if len(module.normalized_shape) != 1:
        raise UnsupportedModuleError(
            path,
            f"LayerNorm over {len(module.normalized_shape)} dims (only the last "
            "dim is encoded; use GroupNorm(1, C) for channels-first tensors)",
        )
    if x.axis % rank != rank - 1:
        raise ShapeMismatchError("features on the last axis for LayerNorm", f"axis {x.axis % rank}", ctx.where())
    if x.size != module.normalized_shape[0]:
        raise ShapeMismatchError(f"{module.normalized_shape[0]} features", f"{x.size}", ctx.where())
    return layernorm_features(ctx, x, module, path, tuple(op.shape), op.num_users == 1)


def layernorm_features(ctx, x: Features, module: nn.LayerNorm, path: str, shape, owned: bool) -> Features:
    """Encode LayerNorm ``module`` (state names under ``path``) on ``x``; used by the transformer encoders."""
    key = (float(module.eps), bool(module.elementwise_affine), getattr(module, "bias", None) is not None)
    out = norm_nodes(ctx, x, "layernorm", key, path)
    _store(ctx, out, module, path, _AFFINE[:2])
    return Features(out, shape, x.axis, None, 1, owned=owned)


@register_encoder(nn.GroupNorm, reads_ops=True)
def encode_groupnorm(ctx, op, module: nn.GroupNorm, args):
    """GroupNorm over channels (axis 1), with one group node per group (sound) or without (paper)."""
    x = ctx.features(args[0], axis=1)
    path = op.target
    rank = len(x.shape)
    if x.axis % rank != 1:
        raise ShapeMismatchError("channels on axis 1 for GroupNorm", f"axis {x.axis % rank}", ctx.where())
    C, G = module.num_channels, module.num_groups
    if x.size != C:
        raise ShapeMismatchError(f"{C} channels", f"{x.size}", ctx.where())
    key = (G, float(module.eps), bool(module.affine))
    out = norm_nodes(ctx, x, "groupnorm", key, path)
    _store(ctx, out, module, path, _AFFINE[:2])
    b = ctx.builder
    rows = out.view(G, C // G)
    if b.encoding != "paper":  # the paper's drawing has no group structure: channels of all groups look alike
        # group nodes are sources (no in-edges): depth 0, like bias nodes
        groups = b.add_nodes(G, "group", "groupnorm", f"{path} groups", module=path, level=0, extra=key)
        ctx.identity_edges(groups.repeat_interleave(C // G), out, ("norm", "groupnorm", "group", *key))
        rows = torch.cat([rows, groups.view(G, 1)], dim=1)
    # the true symmetry, in both encodings (so that nauty's larger group on the paper graph shows unsoundness)
    b.declare(SymmetryDecl("blocks", rows, f"S_{G} on the groups of {path}", module=path))
    for g in range(G):
        b.declare(
            SymmetryDecl(
                "perm", out[g * (C // G) : (g + 1) * (C // G)], f"S_{C // G} within group {g} of {path}", module=path
            )
        )
    return Features(out, tuple(op.shape), x.axis, None, 1, owned=op.num_users == 1)
