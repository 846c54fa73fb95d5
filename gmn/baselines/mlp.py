"""MLP baseline: the flattened weights of a network of one fixed architecture through an MLP (paper Tables 2, 3).

The input is the value of every forward edge in edge order (the parameters in the graph's parameter order;
parameter-free edges carry 1.0), so all networks of a batch must have the same architecture. The MLP is not
invariant or equivariant to anything: permuting a network's hidden neurons changes its output (the negative
control of the symmetry tests).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ..errors import MetanetOutputError
from ..weight_space import WeightSpaceBatch, WeightSpaceData
from .common import UnsupportedArchitectureError

__all__ = ["MLPMetanet"]


class MLPMetanet(nn.Module):
    """``Linear``/ReLU layers ``E -> hidden -> ... -> out`` on the flat edge values of each graph.

    Parameters
    ----------
    num_edges : int or WeightSpaceData
        Number of (forward) edges of the architecture, or one graph's data to read it from.
    hidden_dim : int
    num_layers : int
        Linear layers (>= 1).
    out_dim : int or None
        Width of the per-graph output (``forward``).
    edit_dim : int or None
        Values per parameter of the per-parameter output (``edit``: ``num_edges * edit_dim`` outputs); used
        instead of ``out_dim``.

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> b = gmn.WeightSpaceBatch.from_graphs([g, g])
    >>> MLPMetanet(g.num_edges, 8, out_dim=4)(b).shape
    torch.Size([2, 4])
    >>> MLPMetanet(g.num_edges, 8, out_dim=None, edit_dim=1).edit(b).shape  # one row per parameter edge
    torch.Size([26, 1])
    """

    def __init__(
        self,
        num_edges: int | WeightSpaceData,
        hidden_dim: int = 256,
        num_layers: int = 3,
        out_dim: int | None = 1,
        edit_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(num_edges, WeightSpaceData):
            num_edges = int(num_edges.num_forward_edges)
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1 (got {num_layers})")
        if (out_dim is None) == (edit_dim is None):
            raise ValueError(f"Expected exactly one of out_dim and edit_dim (got {out_dim!r} and {edit_dim!r})")
        self.num_edges, self.hidden_dim, self.num_layers = int(num_edges), hidden_dim, num_layers
        self.out_dim, self.edit_dim = out_dim, edit_dim
        width = out_dim if out_dim is not None else self.num_edges * edit_dim
        dims = [self.num_edges] + [hidden_dim] * (num_layers - 1)
        trunk: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            trunk += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*trunk)
        self.head = nn.Linear(dims[-1], width)

    @property
    def pooled_dim(self) -> int:
        return self.hidden_dim if self.num_layers > 1 else self.num_edges

    def reset_parameters(self) -> None:
        for m in (*self.trunk, self.head):
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def weights(self, batch: WeightSpaceBatch) -> Tensor:
        """The flat edge values ``[num_graphs, num_edges]``."""
        w = batch.edge_attr[batch.edge_is_forward, 0]
        g = batch.graph_count
        if w.numel() != g * self.num_edges:
            raise UnsupportedArchitectureError(
                "MLP", f"networks of one architecture with {self.num_edges} edges", f"{w.numel()} edges in {g} graphs"
            )
        return w.view(g, self.num_edges)

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """The last hidden layer ``[num_graphs, pooled_dim]``."""
        return self.trunk(self.weights(batch))

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Per-graph output ``[num_graphs, out_dim]``."""
        if self.out_dim is None:
            raise MetanetOutputError("MLP", "per-graph", "out_dim=None")
        return self.head(self.pooled(batch))

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        """Per-parameter output ``[num_forward_edges_in_batch, edit_dim]`` (not equivariant)."""
        if self.edit_dim is None:
            raise MetanetOutputError("MLP", "edit", "edit_dim=None")
        return self.head(self.pooled(batch)).reshape(-1, self.edit_dim)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_edges={self.num_edges}, hidden_dim={self.hidden_dim}, "
            f"num_layers={self.num_layers}, out_dim={self.out_dim}, edit_dim={self.edit_dim})"
        )
