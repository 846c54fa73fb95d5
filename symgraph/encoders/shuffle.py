"""Fixed routings of channels: channel shuffle (ShuffleNet) and splits of the channel axis (``chunk``/``split``).

**Channel shuffle** (torchvision's ShuffleNetV2, timm's ``channel_shuffle``)::

    x.view(B, g, C // g, H, W).transpose(1, 2).reshape(B, C, H, W)

is a fixed permutation of the channels: output channel ``j * g + i`` is input channel ``i * (C // g) + j``.
It has no parameters, so it is encoded by *re-indexing* the value's nodes: the shuffled value's feature ``f``
is the node that carried input feature ``perm[f]``. Every later encoder reads a value through its node list
(a convolution's edge for input channel ``f`` starts at ``nodes[f]``), so the graph computes exactly what the
model computes, and an automorphism of it moves channels only together with the fixed routing.

The view that splits the channel axis of a channels-first value (positions after it) gives a
:class:`GroupedChannels` value, which tracks the full permutation of its axes through transposes; the view
that merges the split axes back is accepted only when the split axes are adjacent and every other axis is in
its original order (then the result is the re-indexed value), and anything else applied to a
:class:`GroupedChannels` value raises :class:`~symgraph.errors.UnsupportedModuleError`. Splits of a
channels-last value (no positions after the feature axis) are attention heads
(:class:`~symgraph.encoders.attention.SplitFeatures`); a merge of those with their split axes permuted (a
channel shuffle of tokens) is accepted here when at most one other axis has more than one entry (so no
transpose among the other axes can have gone unseen), and is refused otherwise.

**Splits of the channel axis.** ``x1, x2 = x.chunk(2, dim=1)`` sends the two halves to different places, so a
channel of one half is never interchangeable with one of the other (unless a later symmetric op, e.g.
``x1 + x2``, ties them again: a residual tie then joins their classes). The pieces themselves are produced by
the split encoder of :mod:`symgraph.encoders.attention`; this module adds the analytic declaration.

Analytic symmetry: a channel shuffle declares none (it only relabels); every piece of a ``chunk``/``split`` of
the feature axis declares a ``"perm"`` of its nodes, which cuts the symmetric group its producer declared into
the pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..builder import Features, SymmetryDecl
from ..errors import UnsupportedModuleError
from ..registry import encoder_for_function, register_function
from ..trace import split_kwargs
from .attention import SplitFeatures  # registered first: the encoders below extend its targets

__all__ = ["GroupedChannels", "shuffle_permutation"]


def shuffle_permutation(channels: int, groups: int) -> torch.Tensor:
    """``perm`` with ``shuffled[:, f] = x[:, perm[f]]`` for ShuffleNet's channel shuffle of ``groups`` groups.

    >>> shuffle_permutation(6, 2).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


@dataclass(frozen=True)
class GroupedChannels:
    """A channels-first value whose channel axis a view split into several axes (``view(B, g, C // g, H, W)``).

    ``nodes`` is the channel nodes in the split's shape (row-major, e.g. [g, C // g]); the *split view* is the
    tensor right after that view, whose axes ``first .. first + nodes.dim() - 1`` index ``nodes``; ``order[k]``
    is the split-view axis that the current tensor's axis ``k`` is (every transpose since is tracked).
    """

    nodes: torch.Tensor
    shape: tuple[int, ...]
    first: int
    order: tuple[int, ...]

    def moved(self, op, perm: list[int]) -> GroupedChannels:
        """The value after a transpose/permute with ``perm`` (output axis k = input axis perm[k])."""
        return replace(self, shape=tuple(op.shape), order=tuple(self.order[p] for p in perm))

    def merged(self, op, out: tuple[int, ...]) -> Features:
        """The value after a view that merges the split axes back into one channel axis (see the module doc)."""
        n = self.nodes.dim()
        split = set(range(self.first, self.first + n))
        at = [k for k, a in enumerate(self.order) if a in split]
        rest = [a for a in self.order if a not in split]
        j = at[0]
        merged_shape = self.shape[:j] + (math.prod(self.shape[j : j + n]),) + self.shape[j + n :]
        if at != list(range(j, j + n)) or rest != sorted(rest) or tuple(out) != merged_shape:
            raise UnsupportedModuleError(
                op.name,
                f"reshape {self.shape} -> {tuple(out)} of a split channel axis (axes now in split-view order "
                f"{self.order}): only merging the split axes back, with the other axes in their order, is encoded",
            )
        nodes = self.nodes.permute([self.order[k] - self.first for k in at]).reshape(-1)
        return Features(nodes, tuple(out), j, None, 1, owned=False)


def _chain(*targets):
    """Register ``fn`` for ``targets`` in front of their current encoders (called when ``fn`` returns
    ``NotImplemented``); the current encoders' ``reads_ops`` flags are kept."""
    previous = {t: encoder_for_function(t) for t in targets}

    def deco(fn):
        def encoder(ctx, op, module, args):
            out = fn(ctx, op, module, args, previous[op.target])
            if out is not NotImplemented:
                return out
            return previous[op.target](ctx, op, module, args)

        register_function(*targets)(encoder)
        return fn

    return deco


def _split_of_channels(x: Features, out: tuple[int, ...]) -> tuple[int, ...] | None:
    """The split shape when the view ``x -> out`` splits the feature axis of a channels-first ``x`` into
    several axes and keeps the axes before and the (non-empty) positions after it."""
    a = x.axis % len(x.shape)
    pre, post = tuple(x.shape[:a]), tuple(x.shape[a + 1 :])
    if not post or tuple(out[:a]) != pre or tuple(out[len(out) - len(post) :]) != post:
        return None
    split = tuple(out[a : len(out) - len(post)])
    return split if len(split) > 1 and math.prod(split) == x.size else None


@_chain("view", "reshape", torch.reshape)
def encode_channel_view(ctx, op, module, args, previous):
    args_, _ = split_kwargs(args)
    x, out = args_[0], tuple(op.shape)
    if isinstance(x, GroupedChannels):
        return x.merged(op, out)
    if isinstance(x, Features) and x.num_pos == 1 and tuple(x.shape) != out:
        split = _split_of_channels(x, out)
        if split is not None:
            x = ctx.materialize(x)  # the routing is of nodes: structural ops get nodes of their own first
            a = x.axis % len(x.shape)
            return GroupedChannels(x.nodes.reshape(split), out, a, tuple(range(len(out))))
    if isinstance(x, SplitFeatures):
        return _merge_permuted_heads(op, x, out)
    return NotImplemented


def _merge_permuted_heads(op, x: SplitFeatures, out: tuple[int, ...]):
    """A merge of split feature axes that a transpose reordered (a shuffle of channels-last features)."""
    axes = list(x.axes)
    if axes == sorted(axes):
        return NotImplemented  # in order: the attention encoder's merge of heads
    lo = min(axes)
    if sorted(axes) != list(range(lo, lo + len(axes))):
        return NotImplemented  # not adjacent: the attention encoder names the problem
    others = [s for i, s in enumerate(x.shape) if i not in axes and s != 1]
    merged_shape = tuple(x.shape[:lo]) + (x.nodes.numel(),) + tuple(x.shape[lo + len(axes) :])
    if len(others) > 1 or tuple(out) != merged_shape:
        raise UnsupportedModuleError(
            op.name,
            f"reshape {tuple(x.shape)} -> {tuple(out)} merging split feature axes {tuple(axes)} out of order "
            "while other axes could have been transposed unseen",
        )
    # nodes' dim k sits on tensor axis axes[k]: order the dims by tensor axis, then flatten row-major
    order = sorted(range(len(axes)), key=lambda k: axes[k])
    return Features(x.nodes.permute(order).reshape(-1), tuple(out), lo, None, 1, owned=False)


@_chain(torch.flatten, "flatten")
def encode_grouped_flatten(ctx, op, module, args, previous):
    args_, _ = split_kwargs(args)
    if isinstance(args_[0], GroupedChannels):
        return args_[0].merged(op, tuple(op.shape))
    return NotImplemented


@_chain("chunk", torch.chunk, "split", torch.split)
def encode_channel_split(ctx, op, module, args, previous):
    """The pieces (from the attention encoder's split), each declared a ``"perm"`` of its own nodes."""
    args_, _ = split_kwargs(args)
    if isinstance(args_[0], GroupedChannels):
        raise UnsupportedModuleError(op.name, "chunk/split of a split channel axis")
    pieces = previous(ctx, op, module, args)
    where = ctx.where()
    for i, p in enumerate(pieces):
        if isinstance(p, Features) and p.size > 0:
            ctx.builder.declare(
                SymmetryDecl("perm", p.nodes, f"piece {i} of {where}", module=ctx.module_path() or op.name)
            )
    return pieces
