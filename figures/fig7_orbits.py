"""Figure 7: nodes coloured by automorphism orbit (nauty), on an MLP, a CNN and a residual network.

Nodes in one orbit can be mapped onto each other by a neural DAG automorphism (a parameter symmetry); input,
output and bias nodes are fixed (grey). The group order is printed above each panel. Needs
:func:`symgraph.automorphism_group`.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig7_orbits
>>> len(fig7_orbits.models()) >= 2
True
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import symgraph
from symgraph.draw import draw

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "models"]

NAME, STEM = "fig7", "fig7_orbits"
TITLE = "nodes coloured by automorphism orbit"


class _Residual(nn.Module):
    """x -> a -> (a + relu(b(a))) -> c: the residual stream ties a's units to the sum's."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + torch.relu(self.b(h)))


def models() -> list[tuple[str, nn.Module, tuple[int, ...] | None]]:
    with seeded(7):
        return [
            (
                "MLP 2→3→3→2",
                nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)),
                None,
            ),
            (
                "CNN 1→3→2 channels",
                nn.Sequential(
                    nn.Conv2d(1, 3, 2),
                    nn.ReLU(),
                    nn.Conv2d(3, 2, 2),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(2, 2),
                ),
                (1, 1, 5, 5),
            ),
            ("residual block", _Residual(), None),
        ]


def make(notes: list[str]) -> plt.Figure:
    specs = models()
    fig, axes = plt.subplots(1, len(specs), figsize=(6.0 * len(specs), 4.8))
    for ax, (label, net, shape) in zip(axes, specs):
        g = symgraph.parameter_graph(net, input_shape=shape)
        aut = symgraph.automorphism_group(g)
        order = getattr(aut, "order", None)
        draw(g, ax=ax, orbits=aut, title=f"{label}: |Aut| = {order}, {len(aut.orbits)} orbits")
    fig.tight_layout()
    return fig
