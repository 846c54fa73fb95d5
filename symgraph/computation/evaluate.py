"""Eq. 7 of the paper on a computation graph: ``h_i = sigma_i(sum_j w_ij h_j)``, level by level.

Node ids are sorted by topological level (``node_layer``): level 0 holds the input nodes (ids ``0..d_in-1``, in
the row-major order of one input sample) and the bias nodes (activation 1); every edge goes from a lower to a
higher level, so one sparse matmul per level evaluates the graph. ``sigma_i`` is the chain of elementwise ops in
node ``i``'s colour, turned into functions by :func:`symgraph.activations.activation_function`. Eq. 7 has no
nonlinearity on output nodes; here a node's chain applies whatever its role (a model ending in a sigmoid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..activations import activation_function
from ..errors import ShapeMismatchError, SymgraphError

if TYPE_CHECKING:
    from .graph import ComputationGraph

__all__ = ["activations", "evaluate", "PLAN_KEY"]

#: Where a graph caches its evaluation plan (it depends on the structure only, not on the weights).
PLAN_KEY = "_eval_plan"


def _plan(cg: ComputationGraph) -> dict:
    plan = cg.__dict__.get(PLAN_KEY)
    if plan is not None:
        return plan
    lvl = cg.node_layer
    L = int(lvl.max()) if lvl.numel() else 0
    ptr = torch.searchsorted(lvl, torch.arange(L + 2))
    src, dst = cg.edge_index
    order = torch.argsort(dst, stable=True)
    eptr = torch.searchsorted(dst[order], ptr)
    acts = [tuple(k[2]) for k in cg.node_color_keys]
    levels = []
    for ell in range(1, L + 1):
        lo, hi = int(ptr[ell]), int(ptr[ell + 1])
        eids = order[int(eptr[ell]) : int(eptr[ell + 1])]
        rows, cols = dst[eids] - lo, src[eids]
        if bool((cols >= lo).any()):
            raise SymgraphError("internal: an edge does not go from a lower to a higher level")
        colors = cg.node_color[lo:hi]
        groups = []
        for c in torch.unique(colors).tolist():
            if acts[c]:
                idx = (colors == c).nonzero().flatten()
                groups.append((None if idx.numel() == hi - lo else idx, [activation_function(a) for a in acts[c]]))
        levels.append((lo, hi, eids, torch.stack([rows, cols]), groups))
    n0 = int(ptr[1])
    n_in = int(cg.input_index.numel())
    if not torch.equal(cg.input_index.reshape(-1), torch.arange(n_in)) or not bool(cg.role_mask("bias")[n_in:n0].all()):
        raise SymgraphError("internal: level 0 must hold the input nodes (first) and the bias nodes only")
    plan = {"levels": levels, "n0": n0, "n_in": n_in}
    cg.__dict__[PLAN_KEY] = plan
    return plan


def activations(cg: ComputationGraph, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
    """All node activations ``h_i(x)`` of Eq. 7, shape [B, N] (differentiable in ``edge_weight``)."""
    plan = _plan(cg)
    x = torch.as_tensor(x)
    if tuple(x.shape[1:]) != tuple(cg.input_shape[1:]):
        raise ShapeMismatchError(
            f"an input of shape (B, {', '.join(map(str, cg.input_shape[1:]))})", f"{tuple(x.shape)}"
        )
    ew = cg.edge_weight if edge_weight is None else torch.as_tensor(edge_weight)
    if ew.shape != (cg.num_edges,):
        raise ShapeMismatchError(f"edge_weight of shape ({cg.num_edges},)", f"{tuple(ew.shape)}")
    dtype = torch.promote_types(ew.dtype, x.dtype) if x.is_floating_point() else ew.dtype
    B = x.shape[0]
    ew = ew.to(dtype=dtype, device=x.device)
    h = torch.cat(
        [x.reshape(B, -1).T.to(dtype), torch.ones(plan["n0"] - plan["n_in"], B, dtype=dtype, device=x.device)]
    )
    for lo, hi, eids, idx, groups in plan["levels"]:
        a = torch.sparse_coo_tensor(idx.to(x.device), ew[eids.to(x.device)], (hi - lo, lo), check_invariants=False)
        z = torch.sparse.mm(a, h)
        for rows, fns in groups:
            if rows is None:
                for f in fns:
                    z = f(z)
            else:
                rows = rows.to(x.device)
                v = z[rows]
                for f in fns:
                    v = f(v)
                z = z.index_copy(0, rows, v)
        h = torch.cat([h, z])
    return h.T


def evaluate(cg: ComputationGraph, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7/8: the network function on a batch ``x`` [B, *input_shape[1:]], optionally with substituted
    per-edge weights; returns [B, *output_shape[1:]].

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> cg = symgraph.computation_graph(m, x)
    >>> bool(torch.allclose(evaluate(cg, x), m(x))), bool(torch.allclose(evaluate(cg, x, 2 * cg.edge_weight), m(x)))
    (True, False)
    """
    h = activations(cg, x, edge_weight)
    return h[:, cg.output_index.reshape(-1).to(h.device)].reshape(h.shape[0], *cg.output_shape[1:])
