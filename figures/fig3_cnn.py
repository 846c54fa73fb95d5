"""Figure 3: the parameter graph of a CNN: one node per channel, one parallel edge per kernel position.

``W[o, i, u, v]`` is an edge ``channel i -> channel o`` coloured by its kernel position ``(u, v)``, so a
pair of channels is joined by ``k × k`` parallel edges (drawn as arcs of different curvature). The inset
maps the kernel positions to their colours; the global pooling before the linear head keeps the channel
nodes, so the head's weights are single edges again.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig3_cnn
>>> fig = fig3_cnn.make([])
>>> fig.axes[0]._symgraph_artists["mode"]
'full'
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch.nn as nn

import symgraph
from symgraph.draw import draw, edge_styles

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "model", "INPUT_SHAPE"]

NAME, STEM = "fig3", "fig3_cnn_parameter_graph"
TITLE = "CNN parameter graph: channels, parallel edges per kernel position"
INPUT_SHAPE = (1, 2, 6, 6)


def model() -> nn.Module:
    with seeded(3):
        return nn.Sequential(
            nn.Conv2d(2, 3, 2),
            nn.ReLU(),
            nn.Conv2d(3, 2, 2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2, 2),
        )


def _kernel_inset(ax, g, kernel: tuple[int, int]) -> None:
    """A k×k grid coloured like the edges of each kernel position, taken from the graph's edge colours."""
    styles = edge_styles(g.edge_color_keys)
    grid = np.ones((*kernel, 4))
    for key, st in zip(g.edge_color_keys, styles):
        if key[0] == "conv":
            u, v = key[-1]
            grid[u, v] = plt.matplotlib.colors.to_rgba(st["color"])
    ins = ax.inset_axes([0.0, 0.0, 0.14, 0.26])
    ins.imshow(grid, interpolation="nearest")
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            ins.text(v, u, f"({u},{v})", ha="center", va="center", fontsize=7, color="white", weight="bold")
    ins.set_xticks([])
    ins.set_yticks([])
    ins.set_title("kernel position", fontsize=7)


def make(notes: list[str]) -> plt.Figure:
    net = model()
    g = symgraph.parameter_graph(net, input_shape=INPUT_SHAPE)
    fig, ax = plt.subplots(figsize=(10, 5.2))
    draw(
        g,
        ax=ax,
        title=f"CNN parameter graph: Conv2d(2→3, 2×2) → Conv2d(3→2, 2×2) → pool → Linear(2→2); "
        f"{g.num_nodes} nodes, {g.num_edges} edges",
    )
    _kernel_inset(ax, g, tuple(net[0].kernel_size))
    fig.tight_layout()
    return fig
