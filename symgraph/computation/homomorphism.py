"""The map of a computation graph onto the parameter graph (paper appendix C.5).

Every neuron (channel ``c`` at spatial position ``p``) maps to its channel node ``c`` in the parameter graph,
a bias node to the layer's bias node, an input scalar to its input node. Then every parameter edge maps onto the
parameter-graph edge holding the same parameter scalar, every residual/identity edge onto an edge of the same
colour key, and every averaging edge is contracted onto one node: a graph homomorphism. Both graphs are made
from one trace; the map is read off the values both walks give each op (:func:`provisional_node_map`).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch

from ..builder import Features
from ..graph import NeuralGraph
from ..trace import ModelSpec

if TYPE_CHECKING:
    from .graph import ComputationGraph

__all__ = [
    "is_parameter_graph_homomorphism",
    "provisional_node_map",
    "attach_parameter_map",
    "param_graph_edge_of_class",
    "find_edges",
]

#: Edge kinds whose constant edges are contracted onto one parameter-graph node (averaging, reductions).
CONTRACTED_KINDS = ("avgpool", "mean", "sum")


def param_graph_edge_of_class(
    cg: ComputationGraph, pg: NeuralGraph, param_node: torch.Tensor | None = None
) -> torch.Tensor:
    """For every computation edge, the parameter-graph edge holding the same parameter scalar (or -1).

    A module applied several times (weight sharing) has one edge set per use in the parameter graph (one slot
    per use, under the same name) but one parameter in the computation graph. Each computation edge then maps
    to the use whose edge joins the images of its endpoints under ``param_node`` (endpoints still unmapped,
    -1, match any use); without ``param_node``, or when no use matches, to the first use.
    """
    out = torch.full((cg.num_edges,), -1, dtype=torch.long)
    uses: dict[str, list[int]] = {}
    for s in pg.slots:
        if s.location == "edge":
            uses.setdefault(s.name, []).append(s.start)
    slot, flat = cg.edge_param.lookup(torch.arange(cg.num_edges))
    names = [s.name for s in cg.edge_param.slots]
    starts = torch.tensor([uses[n][0] if n in uses else -1 for n in names] + [-1], dtype=torch.long)
    st = starts[slot]  # slot -1 -> the trailing -1
    ok = (slot >= 0) & (st >= 0)
    out[ok] = st[ok] + flat[ok]
    if param_node is None:
        return out
    pn = torch.as_tensor(param_node, dtype=torch.long)
    for i, n in enumerate(names):
        if len(uses.get(n, ())) < 2:
            continue
        sel = (slot == i).nonzero().flatten()
        want_s, want_d = pn[cg.edge_index[0, sel]], pn[cg.edge_index[1, sel]]
        chosen = torch.full((sel.numel(),), -1, dtype=torch.long)
        for start in uses[n]:
            cand = start + flat[sel]
            hit = (chosen < 0) & ((want_s < 0) | (pg.edge_index[0, cand] == want_s))
            hit &= (want_d < 0) | (pg.edge_index[1, cand] == want_d)
            chosen[hit] = cand[hit]
        out[sel] = torch.where(chosen >= 0, chosen, out[sel])
    return out


def find_edges(pg: NeuralGraph, src: torch.Tensor, dst: torch.Tensor, keys: list[tuple]) -> torch.Tensor:
    """Ids of parameter-graph edges (src, dst, colour key), -1 where there is none."""
    out = torch.full((src.numel(),), -1, dtype=torch.long)
    if src.numel() == 0:
        return out
    key_id = {k: i for i, k in enumerate(pg.edge_color_keys)}
    col = torch.tensor([key_id.get(k, -1) for k in keys], dtype=torch.long)
    n, c = pg.num_nodes, max(len(pg.edge_color_keys), 1)
    pkeys = pg.edge_keys()
    order = torch.argsort(pkeys)
    sk = pkeys[order]
    q = (src * n + dst) * c + col.clamp(min=0)
    pos = torch.searchsorted(sk, q).clamp(max=max(sk.numel() - 1, 0))
    hit = (col >= 0) & (src >= 0) & (dst >= 0) & (sk.numel() > 0) & (sk[pos] == q)
    out[hit] = order[pos[hit]]
    return out


def provisional_node_map(
    neurons: dict[str, torch.Tensor], encoded: dict, spec: ModelSpec, num_nodes: int
) -> torch.Tensor:
    """Node map computation -> parameter graph (in the lowering's node ids; -1 where unmapped) from the values
    both walks gave each op: ``neurons[op]`` the neuron ids of one sample, ``encoded[op]`` the parameter graph's
    :class:`~symgraph.builder.Features` (one node per feature along its axis)."""
    pmap = torch.full((num_nodes,), -1, dtype=torch.long)
    for op in spec.ops:
        mine, theirs = neurons.get(op.name), encoded.get(op.name)
        if mine is None or not isinstance(theirs, Features) or op.shape is None:
            continue
        ax = theirs.axis % len(op.shape) - 1  # per-sample axis of the features
        if ax < 0 or mine.dim() <= ax or theirs.nodes.numel() != mine.shape[ax]:
            continue
        view = [1] * mine.dim()
        view[ax] = -1
        img = theirs.nodes.view(view).expand_as(mine).reshape(-1)
        n = mine.reshape(-1)
        free = pmap[n] < 0
        pmap[n[free]] = img[free]
    return pmap


def _input_map(pg: NeuralGraph, shape: tuple[int, ...]) -> torch.Tensor:
    """Input scalar -> parameter-graph input node, from the parameter graph's input group (-1 if unclear).

    The parameter graph makes one input node per feature along the axis its first reader uses: channels
    (axis 1, convolutions), the last axis (linear layers), or every scalar (a flatten came first).
    """
    n_in = math.prod(shape)
    out = torch.full(tuple(shape), -1, dtype=torch.long)
    groups = [g for g in pg.node_groups if g.role == "input" and g.kind == "input"]
    if len(groups) != 1:
        return out.reshape(-1)
    g = groups[0]
    m = re.search(r"\[axis (\d+)\]$", g.name)
    ax = int(m.group(1)) - 1 if m else -2
    if g.count == n_in and (ax == len(shape) - 1 or ax < 0 or len(shape) == 1):
        return torch.arange(g.start, g.start + n_in)
    if 0 <= ax < len(shape) and g.count == shape[ax]:
        view = [1] * len(shape)
        view[ax] = -1
        return (g.start + torch.arange(g.count)).view(view).expand(tuple(shape)).reshape(-1)
    return out.reshape(-1)


def attach_parameter_map(cg: ComputationGraph, pg: NeuralGraph, pmap: torch.Tensor, new_id: torch.Tensor) -> None:
    """Set ``cg.param_node``, ``cg.param_edge`` and ``cg.parameter_graph`` from the provisional map ``pmap``
    (lowering ids; ``new_id`` relabels them to ``cg``'s)."""
    param_node = torch.full((cg.num_nodes,), -1, dtype=torch.long)
    param_node[new_id] = pmap
    param_node[cg.input_index.reshape(-1)] = _input_map(pg, cg.input_index.shape)
    # input scalars (and any node the op values did not reach) take the image forced by their parameter edges:
    # the parameter graph has exactly one edge per parameter scalar
    pe = param_graph_edge_of_class(cg, pg, param_node)
    for end in (0, 1):
        n = cg.edge_index[end]
        sel = (pe >= 0) & (param_node[n] < 0)
        param_node[n[sel]] = pg.edge_index[end, pe[sel]]
    param_edge = pe.clone()
    const = pe < 0
    if bool(const.any()):
        s, d = param_node[cg.edge_index[0, const]], param_node[cg.edge_index[1, const]]
        keys_c = [cg.edge_color_keys[c] for c in cg.edge_color[const].tolist()]
        param_edge[const] = find_edges(pg, s, d, keys_c)
    cg.param_node, cg.param_edge, cg.parameter_graph = param_node, param_edge, pg


def is_parameter_graph_homomorphism(cg: ComputationGraph, param_node: torch.Tensor | None = None) -> bool:
    """Does ``param_node`` (default: the stored map) map every parameter edge onto the parameter-graph edge
    holding the same parameter scalar, every residual/identity edge onto an edge of the same colour key, and
    every averaging edge (contracted) onto a single node?

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> cg = symgraph.computation_graph(nn.Sequential(nn.Conv1d(1, 2, 2), nn.ReLU()), torch.zeros(1, 1, 4))
    >>> is_parameter_graph_homomorphism(cg), is_parameter_graph_homomorphism(cg, cg.param_node.flip(0))
    (True, False)
    """
    pn = cg.param_node if param_node is None else torch.as_tensor(param_node, dtype=torch.long)
    pg = cg.parameter_graph
    if pn is None or pg is None or pn.shape != (cg.num_nodes,) or bool((pn < 0).any()):
        return False
    src, dst = pn[cg.edge_index[0]], pn[cg.edge_index[1]]
    has = cg.edge_class >= 0
    pe = param_graph_edge_of_class(cg, pg, pn)
    ok_param = (
        (pe[has] >= 0).all()
        and torch.equal(pg.edge_index[0, pe[has]], src[has])
        and torch.equal(pg.edge_index[1, pe[has]], dst[has])
    )
    if not ok_param:
        return False
    const = ~has
    kinds = [k[0] for k in cg.edge_color_keys]
    pooled = torch.tensor([k in CONTRACTED_KINDS for k in kinds], dtype=torch.bool)
    pooled = pooled[cg.edge_color.long()]
    contracted = const & pooled
    if not torch.equal(src[contracted], dst[contracted]):
        return False
    rest = const & ~pooled
    img = find_edges(pg, src[rest], dst[rest], [cg.edge_color_keys[c] for c in cg.edge_color[rest].tolist()])
    return bool((img >= 0).all())
