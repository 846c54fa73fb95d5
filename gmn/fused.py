"""The fused edge block of :class:`gmn.GMNLayer`: the default layer's per-edge work with a hand-written backward.

The default layer (two-layer ReLU :class:`~gmn.layers.ConcatMLP` edge, message and node functions, LayerNorm or
no norm, residual) spends its time on ``[E, h]`` tensors. This module computes the same function with fewer of
them; every step is an exact reformulation (the same numbers up to floating-point summation order):

- **Node projections, gathered once.** The first linear layer of ``edge_fn`` / ``msg_fn`` is split by input
  blocks: ``W [v_dst | v_src | e | u] = W_d v_dst + W_s v_src + W_e e + W_u u``. The node and global blocks are
  projected per node (the global one is added to the receiver's projection, as ``edge_batch = batch[dst]``
  for every edge), and the two gathers are one ``embedding_bag`` (sum of two rows, no ``[E, h]`` temporary).
- **The message's second linear layer moves to the nodes.** ``sum_j (W_2 h_j + b_2) = W_2 sum_j h_j + deg b_2``:
  the hidden activations are summed per receiver and the last layer runs on ``[N, h]``, which removes one of the
  four ``[E, h] x [h, h]`` matmuls of a layer (forward and backward).
- **Minimal saved state.** The edge update saves its hidden activation and the pre-norm output (LayerNorm's
  backward reads its input), the message saves a boolean ReLU mask; gradients are written in place where the
  tensor is ours. Peak memory in training is a few ``[E, h]`` tensors per layer.

:func:`edge_update` and :func:`message_sum` are the two differentiable steps; with ``torch.is_grad_enabled()``
false they run without saving anything, and :class:`gmn.GMNLayer` calls them chunk by chunk for graphs too big
to hold the temporaries of all edges at once.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Incidence", "edge_update", "message_sum", "pair_index", "retain_freed_memory"]


def retain_freed_memory(bytes_: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed blocks up to ``bytes_`` for reuse instead of unmapping them (Linux only).

    On CPU every ``[E, h]`` temporary is a fresh ``mmap``: its pages are faulted in and zeroed on first touch,
    which on a busy machine costs as much as the arithmetic. Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` lets later allocations reuse freed memory (the advice behind running CPU training
    with jemalloc / tcmalloc). Process-wide and opt-in; returns whether both settings were accepted.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, int(bytes_))) & bool(libc.mallopt(m_trim_threshold, 4 * int(bytes_)))
    except (OSError, AttributeError):
        return False


class Incidence:
    """Sparse CSR incidence matrices ``[N, E]`` of the receivers and senders of a graph's edges.

    ``scatter(x, "dst")`` is ``sum over edges into each node of x`` as one sparse-dense matmul (on CPU 1.5-3x
    faster than ``index_add_``, which it replaces in the fused block). Built once per batch (two stable sorts
    of the edge index) and shared by all layers.
    """

    def __init__(self, src: Tensor, dst: Tensor, num_nodes: int, dtype: torch.dtype):
        self.num_nodes, self.num_edges, self.dtype = int(num_nodes), int(dst.shape[0]), dtype
        self._mats = {name: self._csr(idx) for name, idx in (("dst", dst), ("src", src))}

    def _csr(self, index: Tensor) -> Tensor:
        n, m = self.num_nodes, self.num_edges
        crow = torch.zeros(n + 1, dtype=torch.long, device=index.device)
        crow[1:] = torch.cumsum(torch.bincount(index, minlength=n), 0)
        col = torch.argsort(index, stable=True)
        ones = torch.ones(m, dtype=self.dtype, device=index.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse.mm on CSR is all we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, ones, (n, m), check_invariants=False)

    def matches(self, num_nodes: int, num_edges: int, dtype: torch.dtype) -> bool:
        return (self.num_nodes, self.num_edges, self.dtype) == (int(num_nodes), int(num_edges), dtype)

    def scatter(self, x: Tensor, which: str) -> Tensor:
        """``[N, d]`` sums of the rows of ``x`` [E, d] per receiver (``"dst"``) or sender (``"src"``)."""
        return torch.sparse.mm(self._mats[which], x)


def pair_index(src: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    """``[E, 2]`` rows ``(dst, num_nodes + src)``: the bag index of :func:`gather_pair` over ``cat(P_dst, P_src)``."""
    return torch.stack([dst, src + num_nodes], dim=1)


def gather_pair(p_dst: Tensor, p_src: Tensor, pairs: Tensor) -> Tensor:
    """``p_dst[dst] + p_src[src]`` as one ``embedding_bag`` sum (no gathered temporaries)."""
    return F.embedding_bag(pairs, torch.cat([p_dst, p_src], 0), mode="sum")


def _scatter(x: Tensor, index: Tensor, size: int) -> Tensor:
    return x.new_zeros(size, x.shape[1]).index_add_(0, index, x)


class _EdgeUpdate(torch.autograd.Function):
    """``e' = [e +] LN(W_2 relu(P_d[dst] + P_s[src] + W_e e) + b_2)`` (LN optional)."""

    @staticmethod
    def forward(ctx, e, p_dst, p_src, w_e, w_2, b_2, ln_w, ln_b, pairs, inc, eps, residual):
        hid = gather_pair(p_dst, p_src, pairs)
        hid.addmm_(e, w_e.t()).relu_()
        out = torch.addmm(b_2, hid, w_2.t())
        if ln_w is not None:
            y, mean, rstd = torch.native_layer_norm(out, [out.shape[1]], ln_w, ln_b, eps)
        else:
            y, mean, rstd = out, None, None
        new = y.add_(e) if residual else y
        ctx.save_for_backward(e, hid, out if ln_w is not None else None, mean, rstd, w_e, w_2, ln_w, ln_b)
        ctx.residual, ctx.inc = residual, inc
        return new

    @staticmethod
    def backward(ctx, g_new):
        e, hid, out, mean, rstd, w_e, w_2, ln_w, ln_b = ctx.saved_tensors
        g_new = g_new.contiguous()
        g_lnw = g_lnb = None
        if ln_w is not None:
            g_out, g_lnw, g_lnb = torch.ops.aten.native_layer_norm_backward(
                g_new, out, [out.shape[1]], mean, rstd, ln_w, ln_b, [True, ln_w.requires_grad, ln_b.requires_grad]
            )
        else:
            g_out = g_new
        g_w2 = g_out.t() @ hid
        g_b2 = g_out.sum(0)
        g_hid = g_out @ w_2
        del g_out
        g_hid.masked_fill_(hid <= 0, 0)
        g_we = g_hid.t() @ e
        g_e = torch.addmm(g_new, g_hid, w_e) if ctx.residual else g_hid @ w_e
        g_pd = ctx.inc.scatter(g_hid, "dst")
        g_ps = ctx.inc.scatter(g_hid, "src")
        return g_e, g_pd, g_ps, g_we, g_w2, g_b2, g_lnw, g_lnb, None, None, None, None


class _MessageSum(torch.autograd.Function):
    """``sum_{edges into i} relu(Q_d[dst] + Q_s[src] + V_e e)`` per receiver ``i`` (``[N, h]``)."""

    @staticmethod
    def forward(ctx, e, q_dst, q_src, v_e, pairs, dst, inc):
        hid = gather_pair(q_dst, q_src, pairs)
        hid.addmm_(e, v_e.t()).relu_()
        agg = inc.scatter(hid, "dst")
        dead = hid <= 0  # the ReLU's zeros: masked_fill_ in backward (no float mask, no multiply)
        del hid
        ctx.save_for_backward(e, dead, v_e, dst)
        ctx.inc = inc
        return agg

    @staticmethod
    def backward(ctx, g_agg):
        e, dead, v_e, dst = ctx.saved_tensors
        g_hid = g_agg.index_select(0, dst).masked_fill_(dead, 0)
        g_ve = g_hid.t() @ e
        g_e = g_hid @ v_e
        g_qd = ctx.inc.scatter(g_hid, "dst")
        g_qs = ctx.inc.scatter(g_hid, "src")
        return g_e, g_qd, g_qs, g_ve, None, None, None


def edge_update(
    e: Tensor,
    p_dst: Tensor,
    p_src: Tensor,
    w_e: Tensor,
    w_2: Tensor,
    b_2: Tensor,
    ln_w: Tensor | None,
    ln_b: Tensor | None,
    pairs: Tensor,
    inc: Incidence | None,
    eps: float = 1e-5,
    residual: bool = True,
) -> Tensor:
    """The updated edge features ``[E, de]`` (see :class:`_EdgeUpdate`); ``p_*`` carry the first layer's bias.
    ``inc`` (the edges' :class:`Incidence`) is needed with gradients only."""
    if torch.is_grad_enabled():
        return _EdgeUpdate.apply(e, p_dst, p_src, w_e, w_2, b_2, ln_w, ln_b, pairs, inc, eps, residual)
    hid = gather_pair(p_dst, p_src, pairs)
    hid.addmm_(e, w_e.t()).relu_()
    out = torch.addmm(b_2, hid, w_2.t())
    del hid
    if ln_w is not None:
        out = torch.native_layer_norm(out, [out.shape[1]], ln_w, ln_b, eps)[0]
    return out.add_(e) if residual else out


def message_sum(
    e: Tensor, q_dst: Tensor, q_src: Tensor, v_e: Tensor, pairs: Tensor, dst: Tensor, inc: Incidence | None
) -> Tensor:
    """Per-receiver sums of the message function's hidden activations ``[N, h]`` (see :class:`_MessageSum`).
    ``inc``: the edges' :class:`Incidence` (``None``: ``index_add_`` over ``dst``; required with gradients)."""
    if torch.is_grad_enabled():
        return _MessageSum.apply(e, q_dst, q_src, v_e, pairs, dst, inc)
    hid = gather_pair(q_dst, q_src, pairs)
    hid.addmm_(e, v_e.t()).relu_()
    return inc.scatter(hid, "dst") if inc is not None else _scatter(hid, dst, q_dst.shape[0])
