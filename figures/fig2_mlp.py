"""Figure 2: the parameter graph of an MLP, with one bias node per layer (paper Sec. 2.1.2).

Every weight ``W_l[o, i]`` is the edge ``neuron i -> neuron o``, every bias ``b_l[o]`` the edge ``bias node of
layer l -> neuron o``; edge width grows with |weight|. Bias nodes are squares, half a column before the layer
they feed.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig2_mlp
>>> fig = fig2_mlp.make([])
>>> fig.axes[0]._symgraph_artists["edges"] == sum(p.numel() for p in fig2_mlp.model().parameters())
True
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch.nn as nn

import symgraph
from symgraph.draw import draw

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "model"]

NAME, STEM = "fig2", "fig2_mlp_parameter_graph"
TITLE = "MLP parameter graph with bias nodes"


def model() -> nn.Module:
    with seeded(2):
        return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))


def make(notes: list[str]) -> plt.Figure:
    net = model()
    g = symgraph.parameter_graph(net)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    sizes = " → ".join([str(net[0].in_features)] + [str(m.out_features) for m in net if isinstance(m, nn.Linear)])
    draw(
        g,
        ax=ax,
        title=f"MLP {sizes}: parameter graph, {g.num_nodes} nodes (3 bias nodes), "
        f"{g.num_edges} edges = {g.num_edges} parameters",
    )
    fig.tight_layout()
    return fig
