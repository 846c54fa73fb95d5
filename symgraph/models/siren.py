"""SIREN: a sine-activated MLP (Sitzmann et al., 2020), the implicit neural representation of paper Sec. 4.2/4.3.

The forward pass is written so that ``torch.fx`` sees ``Linear -> omega0 * x -> torch.sin -> ... -> Linear``;
:func:`symgraph.parameter_graph` then records ``mul(omega0)`` and ``sin`` on the hidden neurons, so the
frequency is part of the graph's node colours.

Example
-------
>>> import symgraph
>>> from symgraph.models.siren import SIREN
>>> net = SIREN(1, (32, 32), 1, omega0=30.0)
>>> g = symgraph.parameter_graph(net)
>>> g.num_edges == sum(p.numel() for p in net.parameters())
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .registry import register_model

__all__ = ["SIREN", "siren_init_"]


def siren_init_(linear: nn.Linear, omega0: float, first: bool) -> None:
    """Sitzmann et al.'s initialisation, in place.

    First layer: weights ~ U(-1/fan_in, 1/fan_in). Later layers: U(-sqrt(6/fan_in)/omega0, +sqrt(6/fan_in)/omega0),
    so that ``sin(omega0 * W x)`` keeps unit-scale pre-activations. Biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (PyTorch's default, as in the reference implementation).
    """
    fan_in = linear.in_features
    bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / omega0
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)
        if linear.bias is not None:
            b = 1.0 / math.sqrt(fan_in)
            linear.bias.uniform_(-b, b)


@register_model("siren")
class SIREN(nn.Module):
    """Sine-activated MLP: ``Linear -> sin(omega0 * .) -> ... -> Linear``.

    Parameters
    ----------
    in_dim : int
        Coordinate dimension (1 for sine waves, 2 for images).
    hidden : sequence of int
        Hidden widths, e.g. ``(32, 32)``.
    out_dim : int
        Output channels (1 for a sine wave or a grey image, 3 for RGB).
    omega0 : float
        Frequency factor applied before every ``sin``.

    Attributes
    ----------
    layers : nn.ModuleList
        The linear layers; state_dict keys are ``layers.{i}.weight`` / ``layers.{i}.bias``.
    """

    def __init__(self, in_dim: int = 1, hidden: Sequence[int] = (32, 32), out_dim: int = 1, omega0: float = 30.0):
        super().__init__()
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"Expected positive widths (got in_dim={in_dim}, hidden={tuple(hidden)}, out={out_dim})")
        self.in_dim, self.hidden, self.out_dim = int(in_dim), tuple(int(h) for h in hidden), int(out_dim)
        self.omega0 = float(omega0)
        dims = (self.in_dim, *self.hidden, self.out_dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.reset_parameters()

    @property
    def example_input_shape(self) -> tuple[int, int]:
        """Shape of a batch of one coordinate, for :func:`symgraph.parameter_graph`'s ``input_shape``."""
        return (1, self.in_dim)

    def reset_parameters(self) -> None:
        for i, lin in enumerate(self.layers):
            siren_init_(lin, self.omega0, first=i == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers[:-1]:
            x = torch.sin(self.omega0 * lin(x))
        return self.layers[-1](x)

    def __repr__(self) -> str:
        return f"SIREN(in_dim={self.in_dim}, hidden={self.hidden}, out_dim={self.out_dim}, omega0={self.omega0:g})"
