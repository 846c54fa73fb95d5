"""What the baselines share: :class:`UnsupportedArchitectureError` and the parameters of a batch as a set.

:func:`param_elements` lists every parameter of every graph in a :func:`gmn.graph_to_data` batch (edge-stored
parameters in edge order, then node-stored ones), sorted by graph, with the structural features the
baselines may use (edge kind, depth, kernel/flatten position, tensor id).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from symgraph.errors import SymgraphError

from ..data import EDGE_FLOAT_DIM, EDGE_KIND_VOCAB, MAX_DEPTH

__all__ = ["UnsupportedArchitectureError", "ParamElements", "param_elements"]


class UnsupportedArchitectureError(SymgraphError):
    """A baseline cannot process this architecture (as the paper's tables mark with a dash).

    The message names the baseline, what it needs and what it got.
    """

    def __init__(self, baseline: str, needs: str, got: str):
        self.baseline, self.needs, self.got = baseline, needs, got
        super().__init__(f"{baseline} cannot process this architecture: expected {needs} (got {got})")


@dataclass(frozen=True)
class ParamElements:
    """Every parameter of a batch, sorted by graph (stable: edge-stored first, in edge order).

    ``value`` [M]; ``graph`` [M]; ``tensor`` [M] (``graph * max_tensors + local tensor index``);
    ``kind`` [M] (:data:`gmn.data.EDGE_KIND_VOCAB` id; ``"norm"`` for node-stored parameters); ``depth`` [M];
    ``attr`` [M, EDGE_FLOAT_DIM] (the edge's float features; for node-stored parameters zeros but the value);
    ``num_graphs``, ``max_tensors``.
    """

    value: Tensor
    graph: Tensor
    tensor: Tensor
    kind: Tensor
    depth: Tensor
    attr: Tensor
    num_graphs: int
    max_tensors: int


def _num_graphs(batch) -> int:
    return int(getattr(batch, "num_graphs", 1) or 1)


def _per_graph(value, num_graphs: int, device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device).long().view(-1)
    return torch.full((num_graphs,), int(value), dtype=torch.long, device=device)


def param_elements(batch) -> ParamElements:
    """The parameters of a batch as elements of a set (see :class:`ParamElements`)."""
    fwd = batch.edge_is_forward
    dev = batch.edge_attr.device
    G = _num_graphs(batch)
    node_batch = getattr(batch, "batch", None)
    if node_batch is None:
        node_batch = torch.zeros(batch.x.shape[0], dtype=torch.long, device=dev)
    pm = batch.edge_param_mask
    dst = batch.edge_index[1][fwd][pm]
    e_graph = node_batch[dst]
    e_attr = batch.edge_attr[fwd][pm]
    e_kind = batch.edge_cat[fwd][pm][:, 0].long()
    e_depth = batch.edge_cat[fwd][pm][:, 2].long()
    T = int(_per_graph(batch.num_param_tensors, G, dev).max()) if G else 0
    T = max(T, 1)
    e_tensor = e_graph * T + batch.param_slot[pm]
    # node-stored parameters
    n_counts = _per_graph(batch.num_node_params, G, dev)
    n_graph = torch.repeat_interleave(torch.arange(G, device=dev), n_counts)
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        ptr = torch.zeros(1, dtype=torch.long, device=dev)
    n_node = ptr[n_graph] + batch.node_param_node
    n_val = batch.node_param_values.to(e_attr.dtype)
    n_attr = torch.zeros(n_val.numel(), EDGE_FLOAT_DIM, dtype=e_attr.dtype, device=dev)
    n_attr[:, 0] = n_val
    n_kind = torch.full_like(n_graph, EDGE_KIND_VOCAB.index("norm"))
    n_depth = batch.x_cat[n_node, 4].clamp(max=MAX_DEPTH - 1) if n_val.numel() else n_graph
    graph = torch.cat([e_graph, n_graph])
    order = torch.argsort(graph, stable=True)
    return ParamElements(
        value=torch.cat([e_attr[:, 0], n_val])[order],
        graph=graph[order],
        tensor=torch.cat([e_tensor, n_graph * T + batch.node_param_slot])[order],
        kind=torch.cat([e_kind, n_kind])[order],
        depth=torch.cat([e_depth, n_depth])[order],
        attr=torch.cat([e_attr, n_attr])[order],
        num_graphs=G,
        max_tensors=T,
    )
