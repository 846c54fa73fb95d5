"""Figure 1: a small network, its parameter graph, and a graph metanetwork reading that graph.

Panel (a) shows the network's weight matrices and bias vectors as they are (heat maps of the real values);
panel (b) is :func:`symgraph.draw` of its parameter graph (one edge per weight, width by |weight|, a bias node
per layer); panel (c) is the GMN pipeline applied to that graph, with the sizes taken from
:func:`gmn.graph_to_data` and the prediction of an untrained :class:`gmn.GMN`.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig1_overview
>>> fig = fig1_overview.make([])
>>> len(fig.axes) >= 3
True
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

import gmn
import symgraph
from symgraph.draw import draw

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "model"]

NAME, STEM = "fig1", "fig1_overview"
TITLE = "network -> parameter graph -> graph metanetwork"


def model() -> nn.Module:
    with seeded(1):
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _weights_panel(ax, net: nn.Module) -> None:
    """The parameters as the network stores them: one heat map per [W | b] block, real values."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    vmax = max(float(torch.cat([p.detach().abs().reshape(-1) for p in net.parameters()]).max()), 1e-6)
    x0 = 0.0
    for i, lin in enumerate(layers):
        wb = torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], dim=1).numpy()
        h, w = wb.shape
        ax.imshow(wb, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(x0, x0 + w, -h, 0), interpolation="nearest")
        ax.plot([x0 + w - 1, x0 + w - 1], [-h, 0], color="white", lw=2)  # separates W from b
        ax.text(x0 + (w - 1) / 2, 0.35, f"$W_{i + 1}$", ha="center", va="bottom", fontsize=9)
        ax.text(x0 + w - 0.5, 0.35, f"$b_{i + 1}$", ha="center", va="bottom", fontsize=9)
        ax.text(
            x0 + w / 2,
            -h - 0.35,
            f"Linear({lin.in_features}→{lin.out_features})",
            ha="center",
            va="top",
            fontsize=8,
            color="#444444",
        )
        if i + 1 < len(layers):
            ax.annotate(
                "",
                xy=(x0 + w + 1.1, -1.5),
                xytext=(x0 + w + 0.2, -1.5),
                arrowprops=dict(arrowstyle="-|>", color="#666666"),
            )
            ax.text(x0 + w + 0.65, -1.1, "ReLU", ha="center", va="bottom", fontsize=7, color="#666666")
        x0 += w + 1.3
    ax.set_xlim(-0.3, x0 - 1.0)
    ax.set_ylim(-max(m.out_features for m in layers) - 1.3, 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("(a) a neural network: its parameters", fontsize=10)


def _gmn_panel(ax, graph) -> None:
    """The metanetwork's pipeline on this graph, with the real sizes (and output, when gmn has GMN)."""
    from torch_geometric.data import Batch  # heavy: loaded when the figure is drawn

    data = gmn.graph_to_data(graph)
    dv = int(data.x.shape[1])
    de = int(data.edge_attr.shape[1])
    with seeded(0), torch.no_grad():
        pred = float(gmn.GMN(hidden_dim=16, num_layers=2, out_dim=1)(Batch.from_data_list([data]))[0, 0])
    n_dir = 2 * graph.num_edges  # messages flow both ways along every edge
    steps = [
        ("parameter graph", f"{graph.num_nodes} nodes, {graph.num_edges} edges"),
        (
            "features",
            f"nodes [{graph.num_nodes}×{dv}] (role, layer, I/O position)\n"
            f"edges [{n_dir}×{de}] (weight, colour, direction)",
        ),
        ("GMN layers × L", "edges: eᵢⱼ ← φₑ(vᵢ, vⱼ, eᵢⱼ)\nnodes: vᵢ ← φᵥ(vᵢ, Σⱼ eᵢⱼ)"),
        ("pool + MLP", "Σᵢ vᵢ → MLP"),
        ("prediction", f"e.g. test accuracy\nuntrained GMN: ŷ = {pred:+.3f}"),
    ]
    colours = ["#EDF2F8", "#FDF0E1", "#F4E8F1", "#E7F3E5", "#FBE6E6"]
    ys = np.linspace(0.9, 0.1, len(steps))
    for (head, body), y, c in zip(steps, ys, colours):
        ax.add_patch(
            FancyBboxPatch(
                (0.06, y - 0.075),
                0.88,
                0.15,
                boxstyle="round,pad=0.0,rounding_size=0.02",
                fc=c,
                ec="#555555",
                lw=0.8,
                transform=ax.transAxes,
            )
        )
        ax.text(0.5, y + 0.035, head, ha="center", va="center", fontsize=9, weight="bold", transform=ax.transAxes)
        ax.text(0.5, y - 0.025, body, ha="center", va="center", fontsize=7.5, transform=ax.transAxes, linespacing=1.3)
    for y0, y1 in zip(ys[:-1], ys[1:]):
        ax.add_patch(
            FancyArrowPatch(
                (0.5, y0 - 0.077),
                (0.5, y1 + 0.077),
                arrowstyle="-|>",
                mutation_scale=10,
                color="#555555",
                transform=ax.transAxes,
            )
        )
    ax.axis("off")
    ax.set_title("(c) a graph metanetwork reads it", fontsize=10)


def make(notes: list[str]) -> plt.Figure:
    net = model()
    graph = symgraph.parameter_graph(net)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.0, 1.5, 0.95]})
    _weights_panel(axes[0], net)
    draw(graph, ax=axes[1], title="(b) its parameter graph: an edge per weight")
    _gmn_panel(axes[2], graph)
    fig.tight_layout()
    return fig
