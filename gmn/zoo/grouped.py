"""Many same-shape CNNs as one network: grouped convolutions over stacked channels (``groups = networks``).

For ``M`` networks of one :mod:`symgraph.models.cnn` architecture (``cnn2d``, ``cnn1d``: conv -> norm -> ReLU ->
dropout blocks, global average pool, linear head) that see the same mini-batch, the activations of all
networks are kept side by side in the channel axis, ``[B, M * C, ...]`` (network ``m`` owns channels
``m * C .. (m + 1) * C``):

- the first convolution is one ordinary convolution with the ``M * C_out`` stacked filters (the input is
  shared), the others are grouped convolutions with ``groups = M``;
- BatchNorm over ``M * C`` channels is each network's BatchNorm (statistics are per channel; the stacked running
  statistics are updated in place), GroupNorm with ``M * g`` groups is each network's GroupNorm with ``g``;
- dropout draws one mask for all and compares it with each network's own rate;
- linear layers are one batched matmul ``[M, B, I] x [M, I, O]``.

The per-network losses are summed, so one backward pass gives every network its own gradient: the same
arithmetic as training them one by one (``tests/test_zoo.py`` checks it against the sequential loop).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["grouped_forward", "grouped_leaves"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def grouped_leaves(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The modules of a CNN in forward order (``None`` if the architecture is not supported)."""
    from symgraph.models.cnn import _CNN

    if not isinstance(model, _CNN):
        return None
    out = []
    for part in ("features", "head"):
        for name, mod in getattr(model, part).named_children():
            out.append((f"{part}.{name}", mod))
    for _, mod in out:
        ok = isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear | nn.ReLU | nn.Flatten | nn.Identity | nn.Dropout)
        ok = ok or isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d)
        ok = ok or type(mod).__name__ == "_BufferDropout"
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            ok = mod.momentum is not None and mod.track_running_stats and mod.affine
        elif isinstance(mod, nn.GroupNorm):
            ok = mod.affine
        if isinstance(mod, nn.Conv1d | nn.Conv2d):
            ok = mod.groups == 1 and mod.padding_mode == "zeros" and isinstance(mod.padding, tuple)
        if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d):
            ok = mod.output_size in (1, (1, 1))
        if not ok:
            return None
    return out


def _per_channel(values: Tensor, channels: int, ndim: int) -> Tensor:
    """``[M]`` per-network values as ``[1, M * C, 1, ...]`` for an activation of ``ndim`` dimensions."""
    return values.repeat_interleave(channels).view(1, -1, *([1] * (ndim - 2)))


def grouped_forward(
    leaves: list[tuple[str, nn.Module]],
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    training: bool,
    flatten_input: bool = False,
    channels_last: bool = False,
) -> Tensor:
    """Logits ``[B, M, classes]`` of the ``M`` stacked networks (``params``/``buffers``: ``[M, ...]`` each)."""
    m = next(iter(params.values())).shape[0]
    if flatten_input:  # cnn1d reads the image as a raster sequence
        x = x.flatten(2)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    shared = True  # the input is the same for all networks until the first layer with weights
    for name, mod in leaves:
        if isinstance(mod, nn.Conv1d | nn.Conv2d):
            w = params[f"{name}.weight"]
            w = w.reshape(m * w.shape[1], *w.shape[2:])
            if channels_last and w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            b = params.get(f"{name}.bias")
            b = b.reshape(-1) if b is not None else None
            conv = F.conv2d if isinstance(mod, nn.Conv2d) else F.conv1d
            x = conv(x, w, b, mod.stride, mod.padding, mod.dilation, 1 if shared else m)
            shared = False
        elif isinstance(mod, nn.Linear):
            w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
            if shared:
                x = F.linear(x, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1))
            else:
                xm = x.reshape(x.shape[0], m, -1).transpose(0, 1)  # [M, B, I]
                wt = w.transpose(1, 2)
                y = torch.bmm(xm, wt) if b is None else torch.baddbmm(b[:, None, :], xm, wt)
                x = y.transpose(0, 1).reshape(x.shape[0], -1)
            shared = False
        elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            rm, rv = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]
            w, b = params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1)
            x = F.batch_norm(x, rm.view(-1), rv.view(-1), w, b, training, mod.momentum, mod.eps)
            if training:
                buffers[f"{name}.num_batches_tracked"].add_(1)
        elif isinstance(mod, nn.GroupNorm):
            w, b = params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1)
            x = F.group_norm(x, m * mod.num_groups, w, b, mod.eps)
        elif isinstance(mod, nn.ReLU):
            x = F.relu(x)
        elif isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d):
            x = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        elif isinstance(mod, nn.Flatten):
            x = x.flatten(1)
        elif isinstance(mod, nn.Dropout) or type(mod).__name__ == "_BufferDropout":
            if training:
                p = buffers[f"{name}.p"] if f"{name}.p" in buffers else torch.full((m,), mod.p, device=x.device)
                keep = _per_channel(1.0 - p.to(x.dtype), x.shape[1] // m, x.dim())
                x = x * (torch.rand_like(x) < keep).to(x.dtype) / keep
    return x.reshape(x.shape[0], m, -1)
