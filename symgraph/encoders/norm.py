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
import torch.nn.functional as F

from ..builder import Features, SymmetryDecl, with_ops
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import register_encoder, register_encoder_by_name, register_function
from ..trace import ParamRef, split_kwargs

declare_vocabulary(
    edges={"norm": ("batchnorm", "instancenorm", "layernorm", "groupnorm", "rmsnorm", "l2norm")},
    node_kinds=("batchnorm", "instancenorm", "layernorm", "groupnorm", "norm"),
)

__all__ = [
    "encode_batchnorm",
    "encode_layernorm",
    "encode_channel_layernorm",
    "encode_groupnorm",
    "encode_rmsnorm",
    "encode_rmsnorm_by_name",
    "encode_normalize",
    "norm_nodes",
    "HF_RMS_NORMS",
]

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def norm_nodes(ctx, x: Features, kind: str, key: tuple, path: str, node_kind: str | None = None) -> torch.Tensor:
    """One norm node per channel of ``x``, with identity edges coloured ``("norm", kind, *key)`` (plus the
    structural ops of ``x``, ``Features.ops``) and a tie. ``node_kind`` (default ``kind``) is the nodes'
    layer kind; their colour is ``(node_kind, *extra)`` with ``extra = key``, or ``(kind, *key)`` when the
    kind is a generic one (``"norm"``)."""
    if x.num_pos != 1:
        raise UnsupportedModuleError(path, f"{kind} of a flattened value")
    extra = key if node_kind is None else (kind, *key)
    out = ctx.new_hidden(x.size, node_kind or kind, f"{path} {kind} nodes", x.nodes, extra=extra)
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


#: ``nn.LayerNorm`` subclasses with their own ``forward`` whose forward is LayerNorm over the last axis
LAST_AXIS_LAYERNORMS = ("timm.layers.norm.LayerNorm", "timm.layers.norm.LayerNormFp32")
#: ... and those that normalise over the channels (axis 1) of an NCHW tensor at each position (permute to
#: NHWC, LayerNorm over the last axis, permute back)
CHANNEL_LAYERNORMS = (
    "torchvision.models.convnext.LayerNorm2d",
    "timm.layers.norm.LayerNorm2d",
    "timm.layers.norm.LayerNorm2dFp32",
)
_HF_CONVNEXT_LAYERNORM = "transformers.models.convnext.modeling_convnext.ConvNextLayerNorm"


def _forward_owner(module: nn.Module) -> type:
    """The class whose ``forward`` ``module`` runs (the first along the MRO that defines one)."""
    return next(t for t in type(module).__mro__ if "forward" in t.__dict__)


def _qualified(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _layernorm_axis(module: nn.LayerNorm, path: str) -> str:
    """``"last"`` or ``"channel"``: the axis a LayerNorm (subclass) normalises; refuses unknown forwards."""
    owner = _forward_owner(module)
    name = _qualified(owner)
    if owner is nn.LayerNorm or name in LAST_AXIS_LAYERNORMS:
        return "last"
    if name in CHANNEL_LAYERNORMS:
        return "channel"
    if name == _HF_CONVNEXT_LAYERNORM and getattr(module, "data_format", None) in ("channels_last", "channels_first"):
        return "channel" if module.data_format == "channels_first" else "last"
    raise UnsupportedModuleError(
        path,
        f"{type(module).__qualname__}, an nn.LayerNorm subclass with its own forward ({name}), is not encoded as "
        "a LayerNorm (its forward may do more than normalise, e.g. add an activation)",
        "Register an encoder for it with @symgraph.register_encoder(YourModuleType).",
    )


@register_encoder(nn.LayerNorm, reads_ops=True)
def encode_layernorm(ctx, op, module, args):
    """LayerNorm over the last (feature) axis, or over the channels (axis 1) for the channel LayerNorms of
    ConvNeXt (:data:`CHANNEL_LAYERNORMS`): per-feature nodes holding gamma and beta."""
    path = op.target
    if _layernorm_axis(module, path) == "channel":
        return encode_channel_layernorm(ctx, op, module, args)
    x = ctx.features(args[0], axis=-1)
    rank = len(x.shape)
    _one_dim(module.normalized_shape, path, "LayerNorm")
    if x.axis % rank != rank - 1:
        raise ShapeMismatchError("features on the last axis for LayerNorm", f"axis {x.axis % rank}", ctx.where())
    if x.size != module.normalized_shape[0]:
        raise ShapeMismatchError(f"{module.normalized_shape[0]} features", f"{x.size}", ctx.where())
    return layernorm_features(ctx, x, module, path, tuple(op.shape), op.num_users == 1)


def _one_dim(normalized_shape, path: str, what: str) -> None:
    if len(normalized_shape) != 1:
        raise UnsupportedModuleError(
            path,
            f"{what} over {len(normalized_shape)} dims (only the last "
            "dim is encoded; use GroupNorm(1, C) for channels-first tensors)",
        )


def _is_known_layernorm(module: nn.Module) -> bool:
    """Leaf predicate: a LayerNorm whose forward is known is encoded whole; any other subclass is traced
    through (its forward's ``F.layer_norm``, permutes, activations are encoded one by one)."""
    name = _qualified(_forward_owner(module))
    return _forward_owner(module) is nn.LayerNorm or name in (
        *LAST_AXIS_LAYERNORMS,
        *CHANNEL_LAYERNORMS,
        _HF_CONVNEXT_LAYERNORM,
    )


encode_layernorm.leaf = _is_known_layernorm


def encode_channel_layernorm(ctx, op, module, args):
    """LayerNorm over the channels (axis 1) of an NCHW tensor at each position (ConvNeXt's ``LayerNorm2d``).

    It is the last-axis LayerNorm of the NHWC view, so it commutes with channel permutations jointly with
    gamma and beta: the same encoding as :func:`encode_layernorm` (same colour: the same function of each
    position's channel vector), on the channel nodes."""
    path = op.target
    x = ctx.features(args[0], axis=1)
    rank = len(x.shape)
    _one_dim(module.normalized_shape, path, "channel LayerNorm")
    if rank != 4 or x.axis % rank != 1:
        raise ShapeMismatchError(
            f"an NCHW input with channels on axis 1 for {type(module).__name__}",
            f"{rank}-D, axis {x.axis % rank}",
            ctx.where(),
        )
    if x.size != module.normalized_shape[0]:
        raise ShapeMismatchError(f"{module.normalized_shape[0]} channels", f"{x.size}", ctx.where())
    return layernorm_features(ctx, x, module, path, tuple(op.shape), op.num_users == 1)


def layernorm_features(ctx, x: Features, module: nn.LayerNorm, path: str, shape, owned: bool) -> Features:
    """Encode LayerNorm ``module`` (state names under ``path``) on ``x``; used by the transformer encoders."""
    key = (float(module.eps), bool(module.elementwise_affine), getattr(module, "bias", None) is not None)
    out = norm_nodes(ctx, x, "layernorm", key, path)
    _store(ctx, out, module, path, _AFFINE[:2])
    return Features(out, shape, x.axis, None, 1, owned=owned)


def _weight_operand(ctx, op, w, what: str):
    """A functional norm's weight/bias argument: None or a parameter of the state_dict."""
    if w is None:
        return None
    if not isinstance(w, ParamRef) or w.name not in ctx.spec.state_keys:
        raise UnsupportedModuleError(op.name, f"{what} whose {'weight' if what else ''} is not a parameter")
    return w


def _last_axis(ctx, op, x, normalized_shape, what: str) -> Features:
    x = ctx.features(x, axis=-1)
    rank = len(x.shape)
    _one_dim(tuple(normalized_shape), op.name, what)
    if x.axis % rank != rank - 1:
        raise ShapeMismatchError(f"features on the last axis for {what}", f"axis {x.axis % rank}", ctx.where())
    if x.size != int(normalized_shape[0]):
        raise ShapeMismatchError(f"{normalized_shape[0]} features", f"{x.size}", ctx.where())
    return x


def _functional_norm(ctx, op, kind: str, x: Features, key: tuple, params, node_kind=None) -> Features:
    out = norm_nodes(ctx, x, kind, key, op.name, node_kind=node_kind)
    for p, column in params:
        if p is not None:
            ctx.builder.add_node_param(out, column, p.tensor, p.name)
    return Features(out, tuple(op.shape), x.axis, None, 1, owned=op.num_users == 1)


@register_function(F.layer_norm, reads_ops=True)
def encode_layer_norm_function(ctx, op, module, args):
    """``F.layer_norm(x, (C,), weight, bias, eps)`` over the last axis, with parameters (or none) as weights."""
    a, kw = split_kwargs(args)
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    v = dict(zip(names, (None, None, None, None, 1e-5)))
    v.update(zip(names, a))
    v.update(kw)
    x = _last_axis(ctx, op, v["input"], v["normalized_shape"], "F.layer_norm")
    w = _weight_operand(ctx, op, v["weight"], "F.layer_norm")
    b = _weight_operand(ctx, op, v["bias"], "F.layer_norm")
    key = (float(v["eps"]), w is not None, b is not None)
    return _functional_norm(ctx, op, "layernorm", x, key, ((w, "norm_weight"), (b, "norm_bias")))


# ---------------------------------------------------------------------------------------------- RMS norms
#: Hugging Face RMS norms (``x * rsqrt(mean(x**2, -1) + eps) * weight``, statistics in float32), by class name
HF_RMS_NORMS = (
    "transformers.models.llama.modeling_llama.LlamaRMSNorm",
    "transformers.models.mistral.modeling_mistral.MistralRMSNorm",
    "transformers.models.t5.modeling_t5.T5LayerNorm",
)


def _rms_key(eps, affine: bool) -> tuple:
    return (None if eps is None else float(eps), bool(affine))


def rmsnorm_features(ctx, op, x: Features, eps, weight: ParamRef | None) -> Features:
    """RMS norm ``x / sqrt(mean(x**2) + eps) * weight`` over ``x``'s feature axis: one norm node per feature
    (colour ``("norm", "rmsnorm", eps, affine)``), ``weight`` in the ``norm_weight`` column."""
    key = _rms_key(eps, weight is not None)
    return _functional_norm(ctx, op, "rmsnorm", x, key, ((weight, "norm_weight"),), node_kind="norm")


def _module_weight(ctx, op, module) -> ParamRef | None:
    w = getattr(module, "weight", None)
    if w is None:
        return None
    return ParamRef(f"{op.target}.weight" if op.target else "weight", w)


@register_encoder(nn.RMSNorm, reads_ops=True)
def encode_rmsnorm(ctx, op, module: nn.RMSNorm, args):
    """``nn.RMSNorm`` over the last axis: per-feature nodes holding its weight."""
    if _forward_owner(module) is not nn.RMSNorm:
        raise UnsupportedModuleError(
            op.target,
            f"{type(module).__qualname__}, an nn.RMSNorm subclass with its own forward, is not encoded as RMSNorm",
            "Register an encoder for it with @symgraph.register_encoder(YourModuleType).",
        )
    x = _last_axis(ctx, op, args[0], module.normalized_shape, "RMSNorm")
    return rmsnorm_features(ctx, op, x, module.eps, _module_weight(ctx, op, module))


encode_rmsnorm.leaf = lambda m: _forward_owner(m) is nn.RMSNorm  # a subclass's own forward is traced through


@register_encoder_by_name(*HF_RMS_NORMS)
def encode_rmsnorm_by_name(ctx, op, module, args):
    """Hugging Face's hand-written RMS norms (:data:`HF_RMS_NORMS`): weight ``(C,)``, ``variance_epsilon``."""
    owner = _qualified(_forward_owner(module))
    if owner not in HF_RMS_NORMS:
        raise UnsupportedModuleError(
            op.target,
            f"{type(module).__qualname__} overrides the forward of an RMS norm ({owner}): not encoded as one",
            "Register an encoder for it with @symgraph.register_encoder(YourModuleType).",
        )
    w = module.weight
    x = _last_axis(ctx, op, args[0], tuple(w.shape), type(module).__name__)
    return rmsnorm_features(ctx, op, x, module.variance_epsilon, _module_weight(ctx, op, module))


encode_rmsnorm_by_name.leaf = lambda m: _qualified(_forward_owner(m)) in HF_RMS_NORMS


@register_function(F.rms_norm, reads_ops=True)
def encode_rms_norm_function(ctx, op, module, args):
    """``F.rms_norm(x, (C,), weight, eps)`` (and ``aten.rms_norm`` from torch.export) over the last axis."""
    a, kw = split_kwargs(args)
    names = ("input", "normalized_shape", "weight", "eps")
    v = dict(zip(names, (None, None, None, None)))
    v.update(zip(names, a))
    v.update(kw)
    x = _last_axis(ctx, op, v["input"], v["normalized_shape"], "F.rms_norm")
    return rmsnorm_features(ctx, op, x, v["eps"], _weight_operand(ctx, op, v["weight"], "F.rms_norm"))


# ---------------------------------------------------------------------------------------------- F.normalize
@register_function(F.normalize, reads_ops=True)
def encode_normalize(ctx, op, module, args):
    """``F.normalize(x, p, dim, eps)`` over the feature axis: ``x / max(||x||_p, eps)`` at each position.

    Parameter-free; it commutes with every permutation of the features along ``dim``, so it is a norm node
    layer (colour ``("norm", "l2norm", p, dim, eps)``) tied to its input. Over any other axis it is refused."""
    a, kw = split_kwargs(args)
    names = ("input", "p", "dim", "eps")
    v = dict(zip(names, (None, 2.0, 1, 1e-12)))
    v.update(zip(names, a))
    v.update(kw)
    if kw.get("out") is not None:
        raise UnsupportedModuleError(op.name, "F.normalize with out=")
    rank = len(op.shape)
    dim = int(v["dim"]) % rank
    x = ctx.features(v["input"], axis=dim)
    if x.axis % len(x.shape) != dim or len(x.shape) != rank:
        raise UnsupportedModuleError(
            op.name,
            f"F.normalize over axis {dim}, which is not the feature axis (axis {x.axis % len(x.shape)}) of its input",
        )
    key = (float(v["p"]), dim, float(v["eps"]))
    return _functional_norm(ctx, op, "l2norm", x, key, (), node_kind="norm")


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
