"""A grid-based implicit neural representation (paper appendix B, Fig. 7 right): a 2-D grid of feature
vectors, bilinearly interpolated at the input coordinates, concatenated with the coordinates, then an MLP."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_positive
from .registry import register_model

__all__ = ["GridLookup", "GridINR"]


class GridLookup(nn.Module):
    """Features ``grid`` of shape (F, H, W) over [-1, 1]^2, read by bilinear interpolation at (x, y) coords.

    Example
    -------
    >>> g = GridLookup(2, (2, 2))
    >>> torch.allclose(g(torch.tensor([[-1.0, -1.0]])), g.grid[:, 0, 0][None])
    True
    """

    def __init__(self, features: int = 2, resolution: tuple[int, int] = (2, 2), align_corners: bool = True):
        super().__init__()
        check_positive(features=features, resolution=resolution)
        self.align_corners = bool(align_corners)
        self.grid = nn.Parameter(torch.empty(features, *resolution))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.grid, std=0.1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        g = F.grid_sample(
            self.grid[None],
            coords.reshape(1, -1, 1, 2).to(self.grid.dtype),
            mode="bilinear",
            align_corners=self.align_corners,
        )  # (1, F, B, 1)
        return g[0, :, :, 0].t()

    def __repr__(self) -> str:
        f, h, w = self.grid.shape
        return f"GridLookup(features={f}, resolution=({h}, {w}))"


@register_model("grid_inr")
class GridINR(nn.Module):
    """``cat([GridLookup(coords), coords]) -> (Linear -> ReLU) * len(hidden) -> Linear``.

    Example
    -------
    >>> GridINR(features=2, resolution=(2, 2), hidden=(8,))(torch.zeros(5, 2)).shape
    torch.Size([5, 1])
    """

    def __init__(
        self, features: int = 2, resolution: tuple[int, int] = (4, 4), hidden: tuple[int, ...] = (16,), out_dim: int = 1
    ):
        super().__init__()
        hidden = tuple(hidden) if isinstance(hidden, tuple | list) else (int(hidden),)
        check_positive(hidden=hidden, out_dim=out_dim)
        self.example_input_shape = (1, 2)
        self.grid = GridLookup(features, tuple(resolution))
        layers: list[nn.Module] = []
        d = features + 2
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.grid(coords), coords], dim=-1))
