"""Figure 9: big parameter graphs are summarised, never drawn as a hairball (ResNet per group, ViT per depth).

:func:`symgraph.draw` turns a graph with more than ``max_nodes`` nodes into boxes with node counts and arrows
with edge counts (and the number of structural edge colours they carry). The ResNet has few enough node
groups to get one box per group; the ViT has more than ``max_boxes``, so it gets one box per depth. Both
models come from :func:`symgraph.models.build_model` with their default sizes.

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> from figures import fig9_summaries
>>> from symgraph.models import list_models
>>> all(m in list_models() for m in fig9_summaries.MODELS)
True
"""

from __future__ import annotations

import matplotlib.pyplot as plt

import symgraph
from symgraph.draw import draw

from .common import seeded

__all__ = ["NAME", "STEM", "TITLE", "make", "MODELS"]

NAME, STEM = "fig9", "fig9_big_graph_summaries"
TITLE = "big graphs summarised per node group or per depth"
MODELS = ("resnet", "vit")


def make(notes: list[str]) -> plt.Figure:
    from symgraph.models import build_model

    graphs = []
    for name in MODELS:
        with seeded(9):
            net = build_model(name)
        graphs.append((name, symgraph.parameter_graph(net, input_shape=getattr(net, "example_input_shape", None))))
    fig, axes = plt.subplots(len(graphs), 1, figsize=(18, 15), gridspec_kw={"height_ratios": [2, 3]})
    for ax, (name, g) in zip(axes, graphs):
        n_params = sum(s.numel for s in g.slots if s.location != "extra" and not s.is_buffer)
        draw(g, ax=ax, title="")
        per = ax._symgraph_artists["per"]
        ax.set_title(
            f"{name} (build_model('{name}')): {g.num_nodes:,} nodes, {g.num_edges:,} edges, "
            f"{n_params:,} parameters: one box per {per}",
            fontsize=11,
        )
    fig.tight_layout()
    return fig
