"""The sharing graph of a computation graph: weight sharing made visible to nauty (paper appendix C.2).

A neural DAG automorphism of a computation graph must map weight-sharing classes onto classes (C.2, property 3),
which edge colours cannot say without fixing every weight. The sharing graph subdivides every edge of a class
used more than once (``src -> m_e -> dst``) and ties its subdivision node to one node per class, so that its
plain coloured-graph automorphisms, restricted to the original nodes, are exactly the neural DAG automorphisms.
``ComputationGraph.sharing_graph()`` and ``.lift_to_sharing_graph()`` call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..graph import NeuralGraph, NodeGroup

if TYPE_CHECKING:
    from ..computation import ComputationGraph

__all__ = ["SharingGraph", "sharing_graph", "lift_to_sharing_graph"]


@dataclass
class SharingGraph(NeuralGraph):
    """A :class:`~symgraph.graph.NeuralGraph` whose first ``num_original_nodes`` nodes are a computation
    graph's neurons, followed by the subdivision node of every shared edge (``edge_node[e]``, -1 for a direct
    edge) and one node per weight-sharing class (``class_node[k]`` for parameter scalar ``k``, -1 if unshared)."""

    num_original_nodes: int = 0
    edge_node: torch.Tensor | None = None
    class_node: torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "_built", True)  # frozen like a parameter graph


def sharing_graph(cg: ComputationGraph) -> SharingGraph:
    """A plain coloured graph whose automorphisms, restricted to the first ``num_nodes`` nodes, are the
    neural DAG automorphisms of the computation graph ``cg`` (weight sharing included), for nauty.

    Every edge of a class used more than once becomes a path ``src -> m_e -> dst`` through a new node
    ``m_e`` (role hidden, colour from the edge colour), and a class node (role ``group``, coloured by its
    parameter) points to the ``m_e`` of its edges: an automorphism must then map classes to classes.
    Edges of singleton classes and constant edges stay direct. The result's ``num_original_nodes`` is ``N``,
    ``edge_node`` [E] the subdivision node of each edge (-1 if direct), ``class_node`` [num_parameters] the
    class node of each parameter scalar (-1 if none).

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> cg = symgraph.computation_graph(nn.Sequential(nn.Conv1d(1, 2, 2)), torch.zeros(1, 1, 3))
    >>> sharing_graph(cg).num_nodes   # 8 neurons; 6 shared classes (4 weights, 2 biases) on 12 edges
    26
    """
    N, E = cg.num_nodes, cg.num_edges
    sizes = cg.class_sizes()
    cls = cg.edge_class
    shared = (cls >= 0) & (sizes[cls.clamp(min=0)] > 1)
    shared_classes = (sizes > 1).nonzero().flatten()
    n_edge_nodes, n_class = int(shared.sum()), int(shared_classes.numel())
    edge_node = torch.full((E,), -1, dtype=torch.long)
    edge_node[shared] = N + torch.arange(n_edge_nodes)
    class_node = torch.full((cg.num_parameters,), -1, dtype=torch.long)
    class_node[shared_classes] = N + n_edge_nodes + torch.arange(n_class)
    # node colours: originals keep theirs; edge nodes by edge colour; class nodes by parameter name
    ncol_keys = list(cg.node_color_keys)
    ecol_keys = list(cg.edge_color_keys)
    ecol = cg.edge_color.long()
    used_ecols = torch.unique(ecol[shared]).tolist()
    lut = torch.full((len(ecol_keys),), -1, dtype=torch.long)
    for c in used_ecols:
        lut[c] = len(ncol_keys)
        ncol_keys.append(("hidden", "shared edge", (), ecol_keys[c]))
    slot_lut = torch.full((len(cg.edge_param.slots),), -1, dtype=torch.long)
    cls_slot = torch.zeros(cg.num_parameters, dtype=torch.long)
    for i, s in enumerate(cg.edge_param.slots):
        cls_slot[s.start : s.start + s.numel] = i
    for i in torch.unique(cls_slot[shared_classes]).tolist():
        slot_lut[i] = len(ncol_keys)
        ncol_keys.append(("group", "weight class", (), cg.edge_param.slots[i].name))
    node_color = torch.cat([cg.node_color, lut[ecol[shared]], slot_lut[cls_slot[shared_classes]]])
    k_in, k_out, k_cls = (len(ecol_keys), len(ecol_keys) + 1, len(ecol_keys) + 2)
    ecol_keys += [("shared", "in"), ("shared", "out"), ("shared", "class")]
    src, dst = cg.edge_index
    m = edge_node[shared]
    edge_index = torch.cat(
        [
            cg.edge_index[:, ~shared],
            torch.stack([src[shared], m]),
            torch.stack([m, dst[shared]]),
            torch.stack([class_node[cls[shared]], m]),
        ],
        1,
    )
    ones = torch.ones(n_edge_nodes, dtype=torch.int32)
    edge_color = torch.cat([cg.edge_color[~shared], ones * k_in, ones * k_out, ones * k_cls])
    edge_weight = torch.cat(
        [
            cg.edge_weight[~shared],
            cg.edge_weight[shared],
            torch.ones(2 * n_edge_nodes, dtype=cg.edge_weight.dtype),
        ]
    )
    lvl = cg.node_layer
    node_layer = torch.cat([lvl, lvl[src[shared]], torch.zeros(n_class, dtype=torch.long)])
    groups = tuple(cg.node_groups)
    if n_edge_nodes:
        groups += (NodeGroup("shared edge nodes", "hidden", N, n_edge_nodes, "", "shared edge"),)
    if n_class:
        groups += (NodeGroup("weight-sharing classes", "group", N + n_edge_nodes, n_class, "", "weight class"),)
    total = N + n_edge_nodes + n_class
    sg = SharingGraph(
        edge_index=edge_index,
        edge_weight=edge_weight,
        edge_color=edge_color,
        node_color=node_color,
        node_weight=torch.zeros((total, 1), dtype=cg.node_weight.dtype),
        node_layer=node_layer,
        edge_color_keys=tuple(ecol_keys),
        node_color_keys=tuple(ncol_keys),
        node_groups=groups,
        slots=(),
        state_keys=(),
        kind="computation-sharing",
        num_original_nodes=N,
        edge_node=edge_node,
        class_node=class_node,
    )
    return sg


def lift_to_sharing_graph(cg: ComputationGraph, perm: torch.Tensor) -> torch.Tensor:
    """Extend a neural DAG automorphism ``perm`` of ``cg`` to its :func:`sharing_graph` (edge and class nodes).

    Raises ``ValueError`` if ``perm`` is not an automorphism (weight sharing included).
    """
    perm = torch.as_tensor(perm, dtype=torch.long)
    if not cg.is_automorphism(perm):
        raise ValueError("not a neural DAG automorphism of this computation graph")
    sg = cg.sharing_graph()
    edge_node, class_node = sg.edge_node, sg.class_node
    eperm = cg.edge_permutation(perm)
    total = cg.num_nodes + int((edge_node >= 0).sum()) + int((class_node >= 0).sum())
    out = torch.arange(total)
    out[: cg.num_nodes] = perm
    sh = edge_node >= 0
    out[edge_node[sh]] = edge_node[eperm[sh]]
    out[class_node[cg.edge_class[sh]]] = class_node[cg.edge_class[eperm[sh]]]
    return out
