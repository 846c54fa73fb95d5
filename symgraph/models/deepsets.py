"""DeepSets (Zaheer et al., 2017): the permutation-equivariant layer and a classifier that reads an image as
the set of its pixels, each with its (x, y) position appended (paper Sec. 4.1)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import SymgraphError
from .common import check_positive, make_norm
from .registry import register_model

__all__ = ["DeepSetsLayer", "DeepSets"]

POOLS = ("mean", "sum", "max")


class DeepSetsLayer(nn.Module):
    """Equivariant linear layer on sets, ``y = x W1^T + pool(x) W2^T + b`` for x of shape (..., n, d_in).

    Example
    -------
    >>> layer = DeepSetsLayer(2, 3)
    >>> x = torch.randn(4, 5, 2)
    >>> torch.allclose(layer(x[:, [4, 0, 1, 2, 3]]), layer(x)[:, [4, 0, 1, 2, 3]], atol=1e-6)
    True
    """

    def __init__(self, in_dim: int, out_dim: int, pool: str = "mean", bias: bool = True):
        super().__init__()
        if pool not in POOLS:
            raise SymgraphError(f"Expected pool in {POOLS} (got {pool!r})")
        self.in_dim, self.out_dim, self.pool = in_dim, out_dim, pool
        self.lin = nn.Linear(in_dim, out_dim, bias=bias)  # W1 (and the bias b)
        self.pool_lin = nn.Linear(in_dim, out_dim, bias=False)  # W2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        self.pool_lin.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            pooled = x.mean(dim=-2, keepdim=True)
        elif self.pool == "sum":
            pooled = x.sum(dim=-2, keepdim=True)
        else:
            pooled = x.amax(dim=-2, keepdim=True)
        return self.lin(x) + self.pool_lin(pooled)

    def __repr__(self) -> str:
        return f"DeepSetsLayer({self.in_dim}, {self.out_dim}, pool={self.pool!r})"


@register_model("deepsets")
class DeepSets(nn.Module):
    """Pixels (value, x, y) as a set -> (DeepSetsLayer -> norm -> ReLU -> Dropout) * layers -> mean over the
    set -> (Linear -> ReLU) * (linear_layers - 1) -> Linear.

    ``norm`` acts per channel over the set (BatchNorm1d / GroupNorm / LayerNorm / none).

    Example
    -------
    >>> DeepSets(hidden=8, layers=2)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 32,
        layers: int = 2,
        linear_layers: int = 1,
        norm: str = "none",
        dropout: float = 0.0,
        out_dim: int = 10,
        pool: str = "mean",
    ):
        super().__init__()
        check_positive(hidden=hidden, layers=layers, linear_layers=linear_layers, out_dim=out_dim)
        C, H, W = in_shape
        self.example_input_shape = (1, *in_shape)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
        # pixel positions are constants, not parameters: a non-persistent buffer stays out of the state_dict
        self.register_buffer("coords", torch.stack([xs, ys], -1).reshape(1, H * W, 2), persistent=False)
        self.norm_kind = norm
        d = C + 2
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(DeepSetsLayer(d, hidden, pool))
            self.norms.append(make_norm(norm, hidden, 0 if norm == "layernorm" else 1))
            d = hidden
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        head: list[nn.Module] = []
        for _ in range(linear_layers - 1):
            head += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        head.append(nn.Linear(d, out_dim))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1)], dim=-1)
        for layer, norm in zip(self.layers, self.norms):
            x = layer(x)
            if self.norm_kind in ("batchnorm", "groupnorm", "instancenorm"):  # channels-first norms
                x = norm(x.transpose(1, 2)).transpose(1, 2)
            else:
                x = norm(x)
            x = self.drop(self.act(x))
        return self.head(x.mean(dim=1))
