"""DeepSets baseline (Zaheer et al., 2017; paper Sec. 4.1): the parameters of a network as a set.

Every parameter is one set element with its value and structural features (edge kind, depth, kernel or
flatten position: :func:`~gmn.baselines.common.param_elements`); ``rho(mean_k phi(element_k))``. It is
invariant to parameter permutation symmetries, but also to every other permutation of the parameters
(hence its low expressive power).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..data import EDGE_FLOAT_DIM, EDGE_KIND_VOCAB, MAX_DEPTH
from ..layers import ConcatMLP, scatter_reduce
from ..weight_space import WeightSpaceBatch
from .common import no_edit_output

__all__ = ["DeepSetsBaseline"]


class DeepSetsBaseline(nn.Module):
    """``rho(pool_k phi(value_k, kind_k, depth_k, position_k))`` over all parameters of each graph.

    Parameters
    ----------
    hidden_dim : int
    phi_layers, rho_layers : int
        Linear layers of the element MLP and of the pooled MLP.
    out_dim : int
    reduce : {"mean", "sum"}

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> from torch_geometric.data import Batch
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> DeepSetsBaseline(hidden_dim=8)(Batch.from_data_list([gmn.graph_to_data(g)])).shape
    torch.Size([1, 1])
    """

    def __init__(
        self, hidden_dim: int = 64, phi_layers: int = 3, rho_layers: int = 2, out_dim: int = 1, reduce: str = "mean"
    ):
        super().__init__()
        self.hidden_dim, self.out_dim, self.reduce = hidden_dim, out_dim, reduce
        self.kind_emb = nn.Embedding(len(EDGE_KIND_VOCAB), hidden_dim)
        self.depth_emb = nn.Embedding(MAX_DEPTH, hidden_dim)
        self.phi_in = nn.Linear(EDGE_FLOAT_DIM, hidden_dim)
        self.phi = ConcatMLP(hidden_dim, hidden_dim, hidden_dim, phi_layers)
        self.rho = ConcatMLP(hidden_dim, hidden_dim, out_dim, rho_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.kind_emb.weight, std=0.1)
        nn.init.normal_(self.depth_emb.weight, std=0.1)
        self.phi_in.reset_parameters()
        self.phi.reset_parameters()
        self.rho.reset_parameters()

    @property
    def pooled_dim(self) -> int:
        return self.hidden_dim

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """``pool_k phi(element_k)`` per graph ``[num_graphs, hidden_dim]`` (what ``rho`` reads)."""
        el = batch.param_elements()
        h = self.phi_in(el.attr) + self.kind_emb(el.kind).to(el.attr.dtype) + self.depth_emb(el.depth).to(el.attr.dtype)
        h = self.phi(h.relu())
        return scatter_reduce(h, el.graph, el.num_graphs, self.reduce)

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Invariant output ``[num_graphs, out_dim]``."""
        return self.rho(self.pooled(batch))

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        raise no_edit_output("DeepSets")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hidden_dim={self.hidden_dim}, out_dim={self.out_dim}, reduce={self.reduce!r})"
