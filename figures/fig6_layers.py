"""Figure 6: parameter graphs of other layer types: normalisation, residual, attention, DeepSets, spatial grid.

One panel per layer family, each the parameter graph symgraph builds for a tiny model using that layer (paper
Fig. 6, Fig. 7 and appendix A). A panel whose model has a parameter left out of its graph raises (nothing is
dropped silently).

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig6_layers
>>> notes = []
>>> fig = fig6_layers.make(notes)
>>> len(fig.axes) >= len(fig6_layers.PANELS)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import symgraph
from symgraph.draw import draw
from symgraph.errors import SymgraphError
from symgraph.models.deepsets import DeepSetsLayer
from symgraph.models.grid import GridINR

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "Panel", "PANELS", "panel_graphs"]

NAME, STEM = "fig6", "fig6_layer_encodings"
TITLE = "normalisation, residual, attention, DeepSets and spatial-grid parameter graphs"


@dataclass(frozen=True)
class Panel:
    """One layer family: ``build()`` gives (model, input shape, the module whose encoder the panel shows)."""

    key: str
    title: str
    build: Callable[[], tuple[nn.Module, tuple[int, ...] | None, nn.Module | None]]


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + torch.relu(self.b(h)))


class _Attention(nn.Module):
    """Self-attention with 2 heads of dimension 2 over 3 tokens of width 4."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _layernorm():
    net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    return net, None, net[1]


def _groupnorm():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    return net, (1, 1, 3, 3), net[1]


def _residual():
    return _Residual(), None, None


def _attention():
    net = _Attention()
    return net, (1, 3, 4), net.attn


def _deepsets():
    layer = DeepSetsLayer(2, 3)  # R^{n x 2} -> R^{n x 3}, as in the paper's Fig. 6
    return layer, (1, 4, 2), layer


def _grid():
    net = GridINR(features=2, resolution=(2, 2), hidden=(3,))  # the paper's Fig. 7 (right): 2x2 grid, 2 channels
    return net, (1, 2), net.grid


PANELS: tuple[Panel, ...] = (
    Panel("layernorm", "LayerNorm", _layernorm),
    Panel("groupnorm", "GroupNorm (2 groups of 2 channels)", _groupnorm),
    Panel("residual", "residual connection", _residual),
    Panel("attention", "multi-head attention (2 heads)", _attention),
    Panel("deepsets", "DeepSets layer (n×2 → n×3)", _deepsets),
    Panel("grid", "spatial grid (2×2, 2 channels) + MLP", _grid),
)


def _encoded(panel: Panel):
    """The panel's parameter graph; every parameter of the panel's model must be in it."""
    with seeded(6):
        net, shape, _ = panel.build()
    g = symgraph.parameter_graph(net, input_shape=shape)
    unencoded = g.meta.get("unencoded") or []
    if unencoded:
        raise SymgraphError(f"panel {panel.key}: parameters {unencoded} left out of the graph")
    return g


def panel_graphs(notes: list[str]) -> list[tuple[Panel, object]]:
    """(panel, graph) for every panel."""
    return [(panel, _encoded(panel)) for panel in PANELS]


def make(notes: list[str]) -> plt.Figure:
    drawn = panel_graphs(notes)
    cols = min(3, max(len(drawn), 1))
    rows = math.ceil(len(drawn) / cols) if drawn else 1
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    for ax, (panel, g) in zip(axes.flat, drawn):
        draw(g, ax=ax, title=f"{panel.title}: {g.num_nodes} nodes, {g.num_edges} edges")
    for ax in list(axes.flat)[len(drawn) :]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig
