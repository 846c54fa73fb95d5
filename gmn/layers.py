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

from .fused import Incidence, edge_update, message_sum, pair_index

__all__ = ["GMNLayer", "ConcatMLP", "scatter_reduce", "scatter_sum"]


def scatter_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum of the rows of ``src`` [M, d] grouped by ``index`` [M] into ``size`` rows (``index_add_``)."""
    return src.new_zeros((size,) + tuple(src.shape[1:])).index_add_(0, index, src)


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
    message : {"mlp", "edge"}
        ``"mlp"`` (Eq. 1): the message along an edge is ``msg_fn(v_dst, v_src, e, u)``. ``"edge"``: the updated
        edge feature itself is the message (``msg_fn`` is the identity, as in the reference edge-MPNN of
        ``benchmarks/gmn_engine.py``), so ``node_fn`` reads ``(v, sum e, u)``: one per-edge MLP per layer
        instead of two. Both are equivariant (the message is a function of the permuted edge's features).
    fused : bool
        Compute the default layer (two-layer ReLU MLPs, LayerNorm or no norm, residual) with the fused edge
        block of :mod:`gmn.fused` (the same function, faster and with less memory; not under autocast, where the
        autograd path runs). ``False``: always the plain autograd path.

    ``forward(..., chunk_size=k)`` without gradients processes the edges ``k`` at a time (the same outputs; the
    peak of the per-edge temporaries is that of ``k`` edges), and with ``inplace=True`` also overwrites ``e``
    with the updated edge features instead of allocating a second ``[E, de]`` tensor.

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
        fused: bool = True,
        message: str = "mlp",
    ):
        super().__init__()
        self.fused = bool(fused)
        if message not in ("mlp", "edge"):
            raise ValueError(f"Expected message 'mlp' or 'edge' (got {message!r})")
        if message == "edge" and msg_fn is not None:
            raise ValueError("Expected no msg_fn with message='edge' (the updated edge feature is the message)")
        self.message = message
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
        if message == "edge":
            self.msg_fn = None
            self.node_fn = node_fn if node_fn is not None else ConcatMLP(dv + de + du, h, dv, mlp_layers)
        else:
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

    def _fusable(self, v: Tensor, e: Tensor) -> bool:
        """Whether the fused edge block computes this layer (default functions, shapes and norms)."""
        if not self.fused or self.node_dim == 0 or self.edge_dim == 0 or e.shape[0] == 0:
            return False
        if self.norm_kind not in ("layernorm", None) or torch.is_autocast_enabled(v.device.type):
            return False
        for fn in (self.edge_fn, self.msg_fn) if self.message == "mlp" else (self.edge_fn,):
            if type(fn) is not ConcatMLP or fn.num_layers != 2 or type(fn.net[1]) is not nn.ReLU:
                return False
        return self.edge_fn.out_dim == self.edge_dim

    def _projections(self, fn: ConcatMLP, v: Tensor, u: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(P_dst, P_src, W_e)``: ``fn``'s first layer on the receiver / sender node features (bias and global
        block in ``P_dst``) and its edge block."""
        dv, de = self.node_dim, self.edge_dim
        lin = fn.net[0]
        w = lin.weight
        p_dst = torch.addmm(lin.bias, v, w[:, :dv].t())
        if self.global_dim:
            # embedding's backward (sorted segments) is far faster than index_select's (index_add_ into G rows)
            p_dst = p_dst + nn.functional.embedding(batch, u @ w[:, 2 * dv + de :].t())
        p_src = v @ w[:, dv : 2 * dv].t()
        return p_dst, p_src, w[:, 2 * dv : 2 * dv + de]

    @staticmethod
    def _chunks(num: int, chunk_size: int | None):
        step = num if not chunk_size else max(int(chunk_size), 1)
        return [(a, min(a + step, num)) for a in range(0, max(num, 1), step)]

    def _fused_edge(self, v, e, u, inc, batch, pairs, chunks, inplace) -> Tensor:
        p_dst, p_src, w_e = self._projections(self.edge_fn, v, u, batch)
        lin2 = self.edge_fn.net[2]
        ln = self.edge_norm
        ln_w, ln_b, eps = (ln.weight, ln.bias, ln.eps) if ln is not None else (None, None, 1e-5)
        if len(chunks) == 1 and not inplace:
            return edge_update(e, p_dst, p_src, w_e, lin2.weight, lin2.bias, ln_w, ln_b, pairs, inc, eps, self.residual)
        out = e if inplace else torch.empty_like(e)
        for a, b in chunks:
            out[a:b] = edge_update(
                e[a:b],
                p_dst,
                p_src,
                w_e,
                lin2.weight,
                lin2.bias,
                ln_w,
                ln_b,
                pairs[a:b],
                None,
                eps,
                self.residual,
            )
        return out

    def _fused_agg(self, v, e, u, dst, inc, batch, pairs, chunks) -> Tensor:
        q_dst, q_src, v_e = self._projections(self.msg_fn, v, u, batch)
        n = v.shape[0]
        if len(chunks) == 1:  # no slicing: a slice's backward would copy the whole gradient
            agg_hid = message_sum(e, q_dst, q_src, v_e, pairs, dst, inc)
        else:
            agg_hid = None
            for a, b in chunks:
                part = message_sum(e[a:b], q_dst, q_src, v_e, pairs[a:b], dst[a:b], None)
                agg_hid = part if agg_hid is None else agg_hid.add_(part)
        lin2 = self.msg_fn.net[2]
        deg = torch.bincount(dst, minlength=n).to(v.dtype)
        # sum_j (W2 h_j + b2) = W2 sum_j h_j + deg * b2: the message's last layer runs per node
        agg = torch.addmm(deg[:, None] * lin2.bias, agg_hid, lin2.weight.t())
        if self.aggr == "mean":
            agg = agg / deg.clamp(min=1)[:, None]
        return agg

    def _edge_sum(self, e: Tensor, dst: Tensor, n: int, inc: Incidence | None, chunks) -> Tensor:
        """``message="edge"``: the sum (or mean) of the edge features into each receiver."""
        if inc is not None:
            agg = inc.scatter(e, "dst")
        elif len(chunks) == 1:
            agg = scatter_sum(e, dst, n)
        else:
            agg = None
            for a, b in chunks:
                part = scatter_sum(e[a:b], dst[a:b], n)
                agg = part if agg is None else agg.add_(part)
        if self.aggr == "mean":
            cnt = torch.bincount(dst, minlength=n).to(agg.dtype).clamp(min=1)
            agg = agg / cnt.view(-1, *([1] * (agg.dim() - 1)))
        return agg

    def forward(
        self,
        v: Tensor,
        edge_index: Tensor,
        e: Tensor,
        u: Tensor | None = None,
        batch: Tensor | None = None,
        edge_batch: Tensor | None = None,
        chunk_size: int | None = None,
        inplace: bool = False,
        incidence: Incidence | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Update and return ``(v, e, u)``.

        ``batch`` [N] maps nodes to graphs (default: one graph); ``edge_batch`` [E] maps edges to graphs
        (default: ``batch[edge_index[1]]``); ``u`` [G, global_dim] (default zeros). ``chunk_size`` and
        ``inplace`` (inference only, see the class docstring) bound the memory of very large graphs.
        ``incidence``: the :class:`gmn.fused.Incidence` of ``edge_index`` (built here if not given; a caller
        running several layers on one batch builds it once).
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
        if (chunk_size or inplace) and torch.is_grad_enabled():
            raise ValueError("Expected chunk_size / inplace only without gradients (torch.no_grad or inference_mode)")
        if chunk_size and self.training and self.norm_kind == "batchnorm":
            raise ValueError("Expected eval mode for chunked processing with batchnorm (batch statistics)")
        fused = self._fusable(v, e)
        chunks = self._chunks(e.shape[0], chunk_size)
        pairs = pair_index(src, dst, n) if fused else None
        inc = None
        if fused and len(chunks) == 1:  # (chunks: index_add_ per chunk)
            inc = incidence
            if inc is None or not inc.matches(n, e.shape[0], v.dtype):
                inc = Incidence(src, dst, n, v.dtype)
        for step in self.order:
            if step == "edge":
                if fused:
                    e = self._fused_edge(v, e, u, inc, batch, pairs, chunks, inplace)
                    continue
                new_e = self._chunked_edge_call(self.edge_fn, v, e, u, src, dst, edge_batch, chunks)
                e = self._update(e, new_e, self.edge_norm, self.residual)
            elif step == "node":
                if self.message == "edge":
                    agg = self._edge_sum(e, dst, n, inc, chunks)
                elif fused:
                    agg = self._fused_agg(v, e, u, dst, inc, batch, pairs, chunks)
                else:
                    agg = None
                    for a, b in chunks:
                        part = (
                            (e, src, dst, edge_batch)
                            if len(chunks) == 1
                            else (e[a:b], src[a:b], dst[a:b], edge_batch[a:b])
                        )
                        msg = self._edge_call(self.msg_fn, v, part[0], u, part[1], part[2], part[3])
                        part = scatter_sum(msg, part[2], n)
                        agg = part if agg is None else agg.add_(part)
                    if self.aggr == "mean":
                        cnt = torch.bincount(dst, minlength=n).to(agg.dtype).clamp(min=1)
                        agg = agg / cnt.view(-1, *([1] * (agg.dim() - 1)))
                new_v = self.node_fn(v, agg, u[batch])
                v = self._update(v, new_v, self.node_norm, self.residual)
            elif self.global_fn is not None:
                sum_v = scatter_reduce(v, batch, num_graphs, self.global_reduce)
                sum_e = self._chunked_reduce(e, edge_batch, num_graphs, chunks)
                u = self._update(u, self.global_fn(sum_v, sum_e, u), self.global_norm, self.residual)
            elif self.global_fn_inside is not None:
                if len(chunks) == 1:
                    per_edge = self.global_fn_inside(e, u[edge_batch])
                else:
                    per_edge = [self.global_fn_inside(e[a:b], u[edge_batch[a:b]]) for a, b in chunks]
                u = self._update(
                    u,
                    self._chunked_reduce(per_edge, edge_batch, num_graphs, chunks),
                    self.global_norm,
                    self.residual,
                )
        return v, e, u

    def _chunked_edge_call(self, fn, v, e, u, src, dst, edge_batch, chunks) -> Tensor:
        if len(chunks) == 1:
            return self._edge_call(fn, v, e, u, src, dst, edge_batch)
        return torch.cat([self._edge_call(fn, v, e[a:b], u, src[a:b], dst[a:b], edge_batch[a:b]) for a, b in chunks])

    def _chunked_reduce(self, x, edge_batch: Tensor, num_graphs: int, chunks) -> Tensor:
        """``scatter_reduce(x, edge_batch, num_graphs, self.global_reduce)`` chunk by chunk (``x``: a tensor or
        the list of its chunks)."""
        if not isinstance(x, list) and len(chunks) == 1:
            return scatter_reduce(x, edge_batch, num_graphs, self.global_reduce)
        parts = x if isinstance(x, list) else [x[a:b] for a, b in chunks]
        total = None
        for part, (a, b) in zip(parts, chunks):
            s = scatter_sum(part, edge_batch[a:b], num_graphs)
            total = s if total is None else total.add_(s)
        if self.global_reduce == "mean":
            cnt = torch.bincount(edge_batch, minlength=num_graphs).to(total.dtype).clamp(min=1)
            total = total / cnt.view(-1, *([1] * (total.dim() - 1)))
        return total

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(node_dim={self.node_dim}, edge_dim={self.edge_dim}, "
            f"global_dim={self.global_dim}, order={self.order}, global_aggr={self.global_aggr!r}, "
            f"aggr={self.aggr!r}, residual={self.residual}, norm={self.norm_kind!r}, message={self.message!r})"
        )
