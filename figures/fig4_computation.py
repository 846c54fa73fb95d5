"""Figure 4: the computation graph beside the parameter graph of the same tiny CNN (paper appendix C.1).

The computation graph has a node per activation (channel × pixel) and an edge per use of a weight, so one
convolution weight appears on many edges (weight sharing); the parameter graph has a node per channel and an
edge per weight. Needs :func:`symgraph.computation_graph`.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig4_computation
>>> fig4_computation.make([]).axes[0].get_title() != ""
True
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import symgraph
from symgraph.draw import draw

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "model", "example_input"]

NAME, STEM = "fig4", "fig4_computation_vs_parameter"
TITLE = "computation graph vs parameter graph of a tiny CNN"


def model() -> nn.Module:
    with seeded(4):
        return nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))


def example_input() -> torch.Tensor:
    with seeded(4):
        return torch.randn(1, 1, 3, 3)


def make(notes: list[str]) -> plt.Figure:
    net, x = model(), example_input()
    comp = symgraph.computation_graph(net, x)
    par = symgraph.parameter_graph(net, example_input=x)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.0), gridspec_kw={"width_ratios": [1.5, 1.0]})
    draw(
        comp,
        ax=axes[0],
        arrows=False,
        title=f"(a) computation graph: a node per activation, {comp.num_edges} edges for "
        f"{sum(p.numel() for p in net.parameters())} parameters (shared)",
    )
    draw(par, ax=axes[1], title=f"(b) parameter graph: a node per channel, {par.num_edges} edges, one per parameter")
    fig.suptitle("Conv2d(1→2, 2×2) → ReLU → flatten → Linear(8→2) on a 3×3 input", fontsize=11)
    fig.tight_layout()
    return fig
