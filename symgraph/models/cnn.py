"""Plain CNNs of paper Table 5: ``cnn2d`` (kernel 3) and ``cnn1d`` (kernel 9, images as raster sequences)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_positive, make_norm
from .registry import register_model

__all__ = ["CNN2D", "CNN1D"]


class _CNN(nn.Module):
    dims = 2

    def __init__(self, in_shape, hidden, conv_layers, linear_layers, norm, dropout, kernel, out_dim, groups):
        super().__init__()
        check_positive(hidden=hidden, conv_layers=conv_layers, linear_layers=linear_layers, out_dim=out_dim)
        self.example_input_shape = (1, *in_shape)
        conv = nn.Conv2d if self.dims == 2 else nn.Conv1d
        layers: list[nn.Module] = []
        c = in_shape[0]
        for _ in range(conv_layers):
            layers += [
                conv(c, hidden, kernel, padding=kernel // 2),
                make_norm(norm, hidden, self.dims, groups),
                nn.ReLU(),
                nn.Dropout(dropout),
            ]
            c = hidden
        self.features = nn.Sequential(*layers)
        pool = nn.AdaptiveAvgPool2d(1) if self.dims == 2 else nn.AdaptiveAvgPool1d(1)
        head: list[nn.Module] = [pool, nn.Flatten()]
        for _ in range(linear_layers - 1):
            head += [nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(dropout)]
            c = hidden
        head.append(nn.Linear(c, out_dim))
        self.head = nn.Sequential(*head)


@register_model("cnn2d")
class CNN2D(_CNN):
    """``(Conv2d k -> norm -> ReLU -> Dropout) * conv_layers -> global avg pool -> (Linear -> ReLU) * ... -> Linear``.

    ``norm`` is one of batchnorm, groupnorm, layernorm, instancenorm, none (see ``make_norm``).

    Example
    -------
    >>> CNN2D(hidden=8, conv_layers=1)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    dims = 2

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 16,
        conv_layers: int = 2,
        linear_layers: int = 1,
        norm: str = "batchnorm",
        dropout: float = 0.0,
        kernel: int = 3,
        out_dim: int = 10,
        groups: int = 4,
    ):
        super().__init__(in_shape, hidden, conv_layers, linear_layers, norm, dropout, kernel, out_dim, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn1d")
class CNN1D(_CNN):
    """Like :class:`CNN2D` with ``Conv1d`` (kernel 9) on the image read as a raster sequence of pixels.

    Example
    -------
    >>> CNN1D(hidden=8, conv_layers=1)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    dims = 1

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 16,
        conv_layers: int = 2,
        linear_layers: int = 1,
        norm: str = "batchnorm",
        dropout: float = 0.0,
        kernel: int = 9,
        out_dim: int = 10,
        groups: int = 4,
    ):
        super().__init__(in_shape, hidden, conv_layers, linear_layers, norm, dropout, kernel, out_dim, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(2)))
