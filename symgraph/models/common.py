"""Small pieces shared by the model families: norm-layer factory and argument checks."""

from __future__ import annotations

import torch.nn as nn

from ..errors import SymgraphError

__all__ = ["NORMS", "make_norm", "check_positive"]

NORMS = ("batchnorm", "groupnorm", "layernorm", "instancenorm", "none")


def make_norm(norm: str, channels: int, dims: int, groups: int = 4) -> nn.Module:
    """A norm layer for ``channels`` channels of a ``dims``-D (0 = tokens/sets, 1, 2, 3) channels-first tensor.

    ``"layernorm"`` on channels-first tensors is ``GroupNorm(1, C)`` (LayerNorm over channels and positions);
    on token tensors (``dims=0``) it is ``nn.LayerNorm(C)``. ``"groupnorm"`` uses the largest divisor of
    ``channels`` that is at most ``groups``.
    """
    if norm not in NORMS:
        raise SymgraphError(f"Expected a norm in {NORMS} (got {norm!r})")
    if norm == "none":
        return nn.Identity()
    if norm == "batchnorm":
        return (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims](channels)
    if norm == "instancenorm":
        return (nn.InstanceNorm1d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims](
            channels, affine=True, track_running_stats=True
        )
    if norm == "layernorm":
        return nn.LayerNorm(channels) if dims == 0 else nn.GroupNorm(1, channels)
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


def check_positive(**values) -> None:
    """Raise 'Expected ...' for non-positive sizes."""
    for k, v in values.items():
        vals = v if isinstance(v, tuple | list) else (v,)
        if any(int(x) < 1 for x in vals):
            raise SymgraphError(f"Expected positive {k} (got {v!r})")
