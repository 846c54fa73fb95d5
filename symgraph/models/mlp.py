"""A multilayer perceptron on flattened inputs (default: 8x8 digits, 10 classes)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_positive
from .registry import register_model

__all__ = ["MLP"]


@register_model("mlp")
class MLP(nn.Module):
    """``Flatten -> (Linear -> act -> Dropout) * len(hidden) -> Linear``.

    Example
    -------
    >>> import symgraph
    >>> m = MLP(in_shape=(1, 8, 8), hidden=(16,), out_dim=10)
    >>> symgraph.parameter_graph(m).num_edges == sum(p.numel() for p in m.parameters())
    True
    """

    def __init__(
        self,
        in_shape: tuple[int, ...] = (1, 8, 8),
        hidden: tuple[int, ...] = (32, 32),
        out_dim: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden = tuple(hidden) if isinstance(hidden, tuple | list) else (int(hidden),)
        check_positive(hidden=hidden, out_dim=out_dim)
        self.example_input_shape = (1, *in_shape)
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
        d = int(torch.Size(in_shape).numel())
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(d, h), acts[activation](), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
