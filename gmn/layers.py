"""`GMNLayer`: the edge/node/global message-passing layer of graph metanetworks (paper Sec. 2.3, Eqs. 1-3).

For a batch of graphs with node features ``v`` [N, dv], edge features ``e`` [E, de] and global features
``u`` [G, du] (one row per graph), the layer applies, in the order given by ``order``:

- ``"edge"`` (Eq. 2): ``e_ij <- edge_fn(v_i, v_j, e_ij, u)``
- ``"node"`` (Eq. 1): ``v_i <- node_fn(v_i, sum_j msg_fn(v_i, v_j, e_ij, u), u)``
- ``"global"`` (Eq. 3, ``global_aggr="after"``): ``u <- global_fn(sum_i v_i, sum_e e, u)``;
  or (``global_aggr="inside"``, the form used in the proof of Prop. 10, Eq. 35):
  ``u <- sum_e global_fn_inside(e, u)``.

The paper writes the edge ``(i, j)`` as going from ``j`` to ``i``: with ``edge_index[0] = src`` and
``edge_index[1] = dst`` the receiver ``i`` is ``dst`` and the sender ``j`` is ``src``, messages flow
``src -> dst`` and are summed over ``edge_index[1]``. Give both directions of every edge (as
:func:`gmn.graph_to_data` does) to pass messages both ways. All aggregations are scatter operations: memory
is linear in the number of edges.

Pluggable functions (any ``nn.Module`` or callable; the defaults are MLPs on the concatenated inputs):

- ``edge_fn(v_dst [E, dv], v_src [E, dv], e [E, de], u_e [E, du]) -> [E, de']``
- ``msg_fn(v_dst [E, dv], v_src [E, dv], e [E, de], u_e [E, du]) -> [E, dm]``
- ``node_fn(v [N, dv], agg [N, dm], u_n [N, du]) -> [N, dv']``
- ``global_fn(sum_v [G, dv], sum_e [G, de], u [G, du]) -> [G, du']``
- ``global_fn_inside(e [E, de], u_e [E, du]) -> [E, du']`` (summed per graph)

``u_e``/``u_n`` are the global features of each edge's/node's graph. With ``global_dim=0`` there is no
global feature (the paper's experiments): ``u`` is a [G, 0] tensor and the global step is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["GMNLayer", "ConcatMLP", "scatter_reduce"]


def scatter_reduce(src: Tensor, index: Tensor, size: int, reduce: str = "sum") -> Tensor:
    """Sum or mean of the rows of ``src`` [M, d] grouped by ``index`` [M] into ``size`` rows."""
    out = src.new_zeros((size,) + tuple(src.shape[1:]))
    out.index_add_(0, index, src)
    if reduce == "sum":
        return out
    if reduce == "mean":
        cnt = torch.zeros(size, dtype=src.dtype, device=src.device)
        cnt.index_add_(0, index, torch.ones_like(index, dtype=src.dtype))
        return out / cnt.clamp(min=1).view(-1, *([1] * (src.dim() - 1)))
    raise ValueError(f"Expected reduce 'sum' or 'mean' (got {reduce!r})")


class ConcatMLP(nn.Module):
    """An MLP on the concatenation of its arguments: ``MLP(cat(args, -1))``.

    Parameters
    ----------
    in_dim : int
        Total width of the concatenated inputs.
    hidden_dim, out_dim : int
    num_layers : int
        Number of linear layers (>= 1); ReLU between them (``act`` to change).

    Example
    -------
    >>> f = ConcatMLP(3 + 2, 8, 4)
    >>> f(torch.randn(5, 3), torch.randn(5, 2)).shape
    torch.Size([5, 4])
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, act: Callable[[], nn.Module] = nn.ReLU
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1 (got {num_layers})")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers[:-1])
        self.in_dim, self.hidden_dim, self.out_dim, self.num_layers = in_dim, hidden_dim, out_dim, num_layers

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, *args: Tensor) -> Tensor:
        return self.net(torch.cat(args, dim=-1) if len(args) > 1 else args[0])

    def forward_gathered(self, *parts: tuple[Tensor, Tensor | None]) -> Tensor:
        """``forward(*(x[idx] for x, idx in parts))`` computed without materialising the gathered inputs.

        The first linear layer is split by input blocks: each block is projected on its own rows (nodes,
        graphs) and only then gathered (``idx``; ``None`` = no gather). Same result, far less work when
        there are many more edges than nodes.
        """
        first = self.net[0]
        out = None
        col = 0
        for x, idx in parts:
            d = x.shape[-1]
            proj = x @ first.weight[:, col : col + d].t() if d else None
            col += d
            if proj is None:
                continue
            proj = proj if idx is None else proj[idx]
            out = proj if out is None else out + proj
        if col != first.in_features:
            raise ValueError(f"Expected inputs of total width {first.in_features} (got {col})")
        out = out + first.bias
        return self.net[1:](out) if len(self.net) > 1 else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_dim}, {self.hidden_dim}, {self.out_dim}, num_layers={self.num_layers})"


def _make_norm(kind: str | None, dim: int) -> nn.Module | None:
    if kind is None or dim == 0:
        return None
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "batchnorm":
        return nn.BatchNorm1d(dim)
    raise ValueError(f"Expected norm 'layernorm', 'batchnorm' or None (got {kind!r})")


def _reset(fn) -> None:
    if hasattr(fn, "reset_parameters"):
        fn.reset_parameters()
    elif isinstance(fn, nn.Module):
        for m in fn.modules():
            if m is not fn and hasattr(m, "reset_parameters"):
                m.reset_parameters()


class GMNLayer(nn.Module):
    """One graph-metanetwork layer (paper Eqs. 1-3); see the module docstring for the update rules.

    Parameters
    ----------
    node_dim, edge_dim, global_dim : int
        Widths of node, edge and global features (``global_dim=0``: no global feature).
    hidden_dim : int, optional
        Width of the default MLPs' hidden layers and of messages (default: ``max(node_dim, edge_dim)``).
    order : sequence of "edge", "node", "global"
        Order of the updates; each uses the features updated before it. The paper's Eqs. 1-3 are
        ``("edge", "node", "global")`` up to ordering; the proof of Prop. 10 uses ``("global", "node",
        "edge")`` with ``global_aggr="inside"``.
    global_aggr : {"after", "inside"}
        Eq. 3 (``global_fn`` of the sums) or Eq. 35 (sum over edges of ``global_fn_inside``).
    aggr : {"sum", "mean"}
        Aggregation of messages at a node (Eq. 1 uses the sum).
    global_reduce : {"sum", "mean"}
        Pooling of nodes and edges (or of ``global_fn_inside`` outputs) per graph (Eq. 3 uses the sum).
    residual : bool
        Add each updated feature to its input (only where the widths agree and the default functions are
        used or the custom ones keep the width).
    norm : {"layernorm", "batchnorm", None}
        Normalisation applied to each update before the residual addition. BatchNorm mixes statistics
        across graphs in training mode: in eval mode the layer is per-graph again.
    edge_fn, msg_fn, node_fn, global_fn, global_fn_inside : callable, optional
        Replace the default MLPs (signatures in the module docstring).
    mlp_layers : int
        Linear layers in each default MLP.

    Example
    -------
    >>> layer = GMNLayer(node_dim=8, edge_dim=8, global_dim=4)
    >>> v, e, u = torch.randn(5, 8), torch.randn(6, 8), torch.randn(1, 4)
    >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    >>> v2, e2, u2 = layer(v, edge_index, e, u, torch.zeros(5, dtype=torch.long))
    >>> v2.shape, e2.shape, u2.shape
    (torch.Size([5, 8]), torch.Size([6, 8]), torch.Size([1, 4]))
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        global_dim: int = 0,
        hidden_dim: int | None = None,
        order: Sequence[str] = ("edge", "node", "global"),
        global_aggr: str = "after",
        aggr: str = "sum",
        global_reduce: str = "sum",
        residual: bool = True,
        norm: str | None = "layernorm",
        edge_fn: Callable[..., Tensor] | None = None,
        msg_fn: Callable[..., Tensor] | None = None,
        node_fn: Callable[..., Tensor] | None = None,
        global_fn: Callable[..., Tensor] | None = None,
        global_fn_inside: Callable[..., Tensor] | None = None,
        mlp_layers: int = 2,
    ):
        super().__init__()
        order = tuple(order)
        if not set(order) <= {"edge", "node", "global"} or len(set(order)) != len(order):
            raise ValueError(f"Expected order made of distinct 'edge', 'node', 'global' (got {order!r})")
        if global_aggr not in ("after", "inside"):
            raise ValueError(f"Expected global_aggr 'after' or 'inside' (got {global_aggr!r})")
        for name, val in (("aggr", aggr), ("global_reduce", global_reduce)):
            if val not in ("sum", "mean"):
                raise ValueError(f"Expected {name} 'sum' or 'mean' (got {val!r})")
        h = hidden_dim or max(node_dim, edge_dim, 1)
        dv, de, du = node_dim, edge_dim, global_dim
        self.node_dim, self.edge_dim, self.global_dim, self.hidden_dim = dv, de, du, h
        self.order, self.global_aggr, self.aggr, self.global_reduce = order, global_aggr, aggr, global_reduce
        self.residual, self.norm_kind = residual, norm
        self.edge_fn = edge_fn if edge_fn is not None else ConcatMLP(2 * dv + de + du, h, de, mlp_layers)
        self.msg_fn = msg_fn if msg_fn is not None else ConcatMLP(2 * dv + de + du, h, h, mlp_layers)
        self.node_fn = node_fn if node_fn is not None else ConcatMLP(dv + h + du, h, dv, mlp_layers)
        self.global_fn = None
        self.global_fn_inside = None
        if du > 0 and "global" in order:
            if global_aggr == "after":
                self.global_fn = global_fn if global_fn is not None else ConcatMLP(dv + de + du, h, du, mlp_layers)
            else:
                self.global_fn_inside = (
                    global_fn_inside if global_fn_inside is not None else ConcatMLP(de + du, h, du, mlp_layers)
                )
        self.node_norm = _make_norm(norm, dv)
        self.edge_norm = _make_norm(norm, de)
        self.global_norm = _make_norm(norm, du) if norm == "layernorm" else None

    def reset_parameters(self) -> None:
        for fn in (
            self.edge_fn,
            self.msg_fn,
            self.node_fn,
            self.global_fn,
            self.global_fn_inside,
            self.node_norm,
            self.edge_norm,
            self.global_norm,
        ):
            if fn is not None:
                _reset(fn)

    @staticmethod
    def _update(old: Tensor, new: Tensor, norm: nn.Module | None, residual: bool) -> Tensor:
        if norm is not None and new.shape[-1] == old.shape[-1] and new.shape[0] > 0:
            new = norm(new)
        if residual and new.shape == old.shape:
            return old + new
        return new

    @staticmethod
    def _edge_call(fn, v: Tensor, e: Tensor, u: Tensor, src: Tensor, dst: Tensor, edge_batch: Tensor) -> Tensor:
        if isinstance(fn, ConcatMLP):  # same function, gathered after the first projection (faster)
            return fn.forward_gathered((v, dst), (v, src), (e, None), (u, edge_batch))
        return fn(v[dst], v[src], e, u[edge_batch])

    def forward(
        self,
        v: Tensor,
        edge_index: Tensor,
        e: Tensor,
        u: Tensor | None = None,
        batch: Tensor | None = None,
        edge_batch: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Update and return ``(v, e, u)``.

        ``batch`` [N] maps nodes to graphs (default: one graph); ``edge_batch`` [E] maps edges to graphs
        (default: ``batch[edge_index[1]]``); ``u`` [G, global_dim] (default zeros).
        """
        n = v.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=v.device)
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
        if u is None:
            u = v.new_zeros(num_graphs, self.global_dim)
        num_graphs = max(num_graphs, u.shape[0])
        src, dst = edge_index[0], edge_index[1]
        if edge_batch is None:
            edge_batch = batch[dst]
        for step in self.order:
            if step == "edge":
                new_e = self._edge_call(self.edge_fn, v, e, u, src, dst, edge_batch)
                e = self._update(e, new_e, self.edge_norm, self.residual)
            elif step == "node":
                msg = self._edge_call(self.msg_fn, v, e, u, src, dst, edge_batch)
                agg = scatter_reduce(msg, dst, n, self.aggr)
                new_v = self.node_fn(v, agg, u[batch])
                v = self._update(v, new_v, self.node_norm, self.residual)
            elif self.global_fn is not None:
                sum_v = scatter_reduce(v, batch, num_graphs, self.global_reduce)
                sum_e = scatter_reduce(e, edge_batch, num_graphs, self.global_reduce)
                u = self._update(u, self.global_fn(sum_v, sum_e, u), self.global_norm, self.residual)
            elif self.global_fn_inside is not None:
                per_edge = self.global_fn_inside(e, u[edge_batch])
                u = self._update(
                    u,
                    scatter_reduce(per_edge, edge_batch, num_graphs, self.global_reduce),
                    self.global_norm,
                    self.residual,
                )
        return v, e, u

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(node_dim={self.node_dim}, edge_dim={self.edge_dim}, "
            f"global_dim={self.global_dim}, order={self.order}, global_aggr={self.global_aggr!r}, "
            f"aggr={self.aggr!r}, residual={self.residual}, norm={self.norm_kind!r})"
        )
