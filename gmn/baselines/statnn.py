"""StatNN baseline (Unterthiner et al., 2020): statistics of each parameter tensor -> MLP.

Per parameter tensor (each weight, bias and node-stored norm parameter or buffer): mean, variance and the
0/25/50/75/100 % quantiles (linear interpolation, as ``torch.quantile``). These are invariant to any
permutation of the entries of a tensor, hence to parameter permutation symmetries (paper D.1.1).

Mixed architectures (different numbers of tensors) are handled in one of two documented ways:

- ``layout="pad"`` (the original, for a fixed architecture family): the statistics of tensor ``t`` (in
  graph order) fill slot ``t`` of a ``max_tensors``-slot vector, with a presence flag; missing tensors are
  zeros. A network with more than ``max_tensors`` tensors raises :class:`UnsupportedArchitectureError`.
- ``layout="pool"``: each tensor's statistics, edge-kind embedding and relative position ``t / (T - 1)``
  go through an MLP and are mean-pooled per network (works for any architecture and depth).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..data import EDGE_KIND_VOCAB
from ..layers import ConcatMLP, scatter_reduce
from ..weight_space import WeightSpaceBatch
from .common import UnsupportedArchitectureError, no_edit_output

__all__ = ["StatNN", "tensor_statistics", "NUM_STATS"]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_STATS = 2 + len(QUANTILES)


def tensor_statistics(values: Tensor, segment: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Mean, variance and quantiles of ``values`` [M] grouped by ``segment`` [M] (vectorised).

    Returns ``stats`` [num_segments, 7] and ``count`` [num_segments] (empty segments give zeros).

    Example
    -------
    >>> s, c = tensor_statistics(torch.tensor([1., 2., 3., 10.]), torch.tensor([0, 0, 0, 1]), 2)
    >>> [round(v, 4) for v in s[0].tolist()], c.tolist()
    ([2.0, 0.6667, 1.0, 1.5, 2.0, 2.5, 3.0], [3, 1])
    """
    dev, dt = values.device, values.dtype
    count = torch.zeros(num_segments, dtype=torch.long, device=dev).index_add_(0, segment, torch.ones_like(segment))
    mean = scatter_reduce(values, segment, num_segments, "mean")
    var = scatter_reduce((values - mean[segment]) ** 2, segment, num_segments, "mean")
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    sv = values[order]
    start = torch.cumsum(count, 0) - count
    qs = []
    n1 = (count - 1).clamp(min=0).to(dt)
    for q in QUANTILES:
        pos = q * n1
        lo = pos.floor().long()
        hi = pos.ceil().long()
        frac = pos - lo.to(dt)
        a = sv[(start + lo).clamp(max=max(sv.numel() - 1, 0))] if sv.numel() else torch.zeros_like(pos)
        b = sv[(start + hi).clamp(max=max(sv.numel() - 1, 0))] if sv.numel() else torch.zeros_like(pos)
        qs.append(torch.where(count > 0, a * (1 - frac) + b * frac, torch.zeros_like(pos)))
    return torch.stack([mean, var, *qs], dim=1), count


class StatNN(nn.Module):
    """MLP on per-tensor statistics (see the module docstring for ``layout``).

    Parameters
    ----------
    hidden_dim : int
    num_layers : int
        Linear layers of the MLP.
    out_dim : int
    layout : {"pad", "pool"}
    max_tensors : int
        Slots of the ``"pad"`` layout.

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> from torch_geometric.data import Batch
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> StatNN(hidden_dim=8, max_tensors=4)(Batch.from_data_list([gmn.graph_to_data(g)])).shape
    torch.Size([1, 1])
    """

    def __init__(
        self, hidden_dim: int = 64, num_layers: int = 3, out_dim: int = 1, layout: str = "pad", max_tensors: int = 16
    ):
        super().__init__()
        if layout not in ("pad", "pool"):
            raise ValueError(f"Expected layout 'pad' or 'pool' (got {layout!r})")
        self.hidden_dim, self.num_layers, self.out_dim = hidden_dim, num_layers, out_dim
        self.layout, self.max_tensors = layout, max_tensors
        if layout == "pad":
            self.mlp = ConcatMLP(max_tensors * (NUM_STATS + 1), hidden_dim, out_dim, num_layers)
        else:
            self.kind_emb = nn.Embedding(len(EDGE_KIND_VOCAB), hidden_dim)
            self.phi = ConcatMLP(NUM_STATS + 2 + hidden_dim, hidden_dim, hidden_dim, 2)
            self.mlp = ConcatMLP(hidden_dim, hidden_dim, out_dim, max(num_layers - 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.mlp.reset_parameters()
        if self.layout == "pool":
            nn.init.normal_(self.kind_emb.weight, std=0.1)
            self.phi.reset_parameters()

    @property
    def pooled_dim(self) -> int:
        return self.max_tensors * (NUM_STATS + 1) if self.layout == "pad" else self.hidden_dim

    def statistics(self, batch: WeightSpaceBatch) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """``(stats [G*T, 7], count [G*T], kind [G*T], G, T)`` for a batch (T: most tensors of a graph)."""
        el = batch.param_elements()
        G, T = el.num_graphs, el.max_tensors
        stats, count = tensor_statistics(el.value, el.tensor, G * T)
        kind = torch.zeros(G * T, dtype=torch.long, device=el.value.device)
        kind.scatter_reduce_(0, el.tensor, el.kind, reduce="amax", include_self=True)
        return stats, count, kind, G, T

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """What the MLP reads: the padded statistics ``[G, max_tensors * 8]`` (``"pad"``) or their pooled
        embedding ``[G, hidden_dim]`` (``"pool"``)."""
        stats, count, kind, G, T = self.statistics(batch)
        present = (count > 0).to(stats.dtype).view(-1, 1)
        feats = torch.cat([stats, present], 1).view(G, T, NUM_STATS + 1)
        if self.layout == "pad":
            if T > self.max_tensors:
                raise UnsupportedArchitectureError(
                    f"StatNN(layout='pad', max_tensors={self.max_tensors})",
                    f"at most {self.max_tensors} parameter tensors",
                    f"a network with {T}",
                )
            if T < self.max_tensors:
                feats = torch.cat([feats, feats.new_zeros(G, self.max_tensors - T, NUM_STATS + 1)], 1)
            return feats.reshape(G, -1)
        n_t = (count.view(G, T) > 0).sum(1, keepdim=True).clamp(min=2) - 1
        rel = (torch.arange(T, device=stats.device).view(1, T) / n_t).to(stats.dtype).unsqueeze(-1)
        h = self.phi(feats, rel, self.kind_emb(kind).view(G, T, -1).to(stats.dtype))
        w = (count.view(G, T, 1) > 0).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Invariant output ``[num_graphs, out_dim]``."""
        return self.mlp(self.pooled(batch))

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        raise no_edit_output("StatNN")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden_dim={self.hidden_dim}, out_dim={self.out_dim}, "
            f"layout={self.layout!r}, max_tensors={self.max_tensors})"
        )
