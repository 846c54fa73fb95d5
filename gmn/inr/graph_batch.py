"""Many networks of one architecture as a metanet batch: build the parameter graph once, swap edge weights.

``graph_to_data`` is called once; for a batch of ``B`` networks the template
:class:`~gmn.weight_space.WeightSpaceBatch` (``B`` copies, with its chain groups computed once) is cached per
``B`` and only column 0 of ``edge_attr`` (the weight value, on the forward edge and its reverse copy) is
replaced. This is exact: every other feature depends on the architecture only.

Example
-------
>>> import torch, symgraph
>>> from symgraph.models.siren import SIREN
>>> from gmn.inr.graph_batch import WeightGraphBatcher
>>> net = SIREN(1, (4, 4), 1)
>>> wb = WeightGraphBatcher(symgraph.parameter_graph(net))
>>> params = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in net.state_dict().items()}
>>> w = wb.edge_weights(params)
>>> w.shape, bool((wb.params_from_edges(w)["layers.1.weight"] == params["layers.1.weight"]).all())
(torch.Size([3, 33]), True)
"""

from __future__ import annotations

import torch

from symgraph.graph import NeuralGraph

from ..data import graph_to_data
from ..weight_space import WeightSpaceBatch

__all__ = ["WeightGraphBatcher"]


class WeightGraphBatcher:
    """Stacked parameters <-> per-edge weights <-> ``torch_geometric`` batches, for one architecture.

    Parameters
    ----------
    graph : NeuralGraph
        The parameter graph of one network of the architecture (its weights are not used).
    device : torch.device or str
        Where cached template batches live.
    """

    def __init__(self, graph: NeuralGraph, device: torch.device | str = "cpu"):
        self.graph = graph
        self.device = torch.device(device)
        self.data = graph_to_data(graph)
        self.num_edges = graph.num_edges
        self.edge_slots = [s for s in graph.slots if s.location == "edge" and not s.is_buffer]
        if any(s.location == "node" and not s.is_buffer for s in graph.slots):
            raise ValueError("Expected an architecture whose parameters all live on edges (got node-stored ones)")
        self._cache: dict[int, WeightSpaceBatch] = {}

    def edge_weights(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, E]`` edge values from stacked parameters (parameter-free edges get 1.0)."""
        first = next(iter(params.values()))
        out = torch.ones(first.shape[0], self.num_edges, dtype=first.dtype, device=first.device)
        for s in self.edge_slots:
            out[:, s.start : s.start + s.numel] = params[s.name].reshape(first.shape[0], -1)
        return out

    def params_from_edges(self, edge_w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`edge_weights`: stacked parameters (state_dict keys) from ``[B, E]``."""
        b = edge_w.shape[0]
        return {s.name: edge_w[:, s.start : s.start + s.numel].reshape(b, *s.shape) for s in self.edge_slots}

    def template(self, b: int) -> WeightSpaceBatch:
        """The batch of ``b`` copies of the architecture (cached; its chain groups, if any, computed once)."""
        if b not in self._cache:
            tpl = WeightSpaceBatch.from_data_list([self.data] * b).to(self.device)
            if self.data.chain.is_chain:
                tpl.chain_groups()  # cached on the template, shared by every batch cloned from it
            self._cache[b] = tpl
        return self._cache[b]

    def batch(self, edge_w: torch.Tensor) -> WeightSpaceBatch:
        """A batch of ``B`` graphs whose edge values are the rows of ``edge_w`` ``[B, E]`` (differentiable)."""
        b, e = edge_w.shape
        if e != self.num_edges:
            raise ValueError(f"Expected edge weights [B, {self.num_edges}] (got {tuple(edge_w.shape)})")
        tpl = self.template(b)
        out = tpl.clone()
        vals = torch.cat([edge_w, edge_w], dim=1).reshape(-1, 1).to(tpl.edge_attr.dtype)
        out.edge_attr = torch.cat([vals, tpl.edge_attr[:, 1:]], dim=1)
        return out
