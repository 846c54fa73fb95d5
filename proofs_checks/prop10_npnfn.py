"""Proposition 10 (Appendix D.1.2): a GMN can express one NP-NFN linear layer (Zhou et al., 2023a) on MLPs.

The GMN has the D.1.2 form (global update first with ``MLP^u`` *inside* the sum, then node, then edge):

* Eq. 35 ``u <- sum_e MLP^u(e, u)`` with Eqs. 55-56: ``u = [W^(1)_**, ..., W^(L)_**, b^(1)_*, ..., b^(L)_*]``;
* Eq. 36 ``v_i <- sum_j MLP^v(...)`` with Eqs. 58-60: ``v = [W^(l+1)_{*,k}, W^(l)_{k,*}, b^(l)_k]``;
* Eq. 37 ``e_ij <- MLP^e(v_i, v_j, e_ij, u)`` with Eqs. 62-67: the NP-NFN output of the edge's parameter.

Graph form: the MLP's parameter graph made undirected (each edge also as a backward copy), edge features
``[w, layer l, backward?, bias?]`` (Eq. 39). Two details of the paper's text are made precise here, and said so
in the report: (1) Eqs. 55-56 sum over *both* copies of each undirected edge, which doubles ``u``; we add the
indicator ``1[forward]`` (equivalently, halve); (2) in Eqs. 66-67 (bias edges ``bias node -> neuron i``) the
terms ``c_2 [v_j]^2 + c_3 [v_j]^1`` must read ``v_i`` (the neuron), since the bias node receives no weight edges.

The NP-NFN reference is Eqs. 49-54 (with biases) and 40-41 (without), computed directly from the weight
matrices, and cross-checked against the team's ``gmn.baselines.npnfn.NPLinear``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .common import CheckResult, MLPView, apply_layer, gmn_layer, max_abs, mlp_view, random_mlp, register

__all__ = [
    "NPNFNCoeffs",
    "npnfn_reference",
    "npnfn_gmn",
    "GLOBAL_FAMILIES",
    "baseline_npnfn_error",
    "check_prop10",
    "check_prop10_sympy",
]

#: Coefficient families whose terms sum over *all* layers (W^(s)_** or b^(s)_*): they need the global feature.
GLOBAL_FAMILIES = ("a1", "a7", "c1", "c4")


@dataclass
class NPNFNCoeffs:
    """The learnable scalars of one NP-NFN layer for an L-layer MLP (Eqs. 49-54).

    ``a1, a7, c1, c4`` are ``[L, L]`` (``[l-1, s-1]``); the others are ``[L]`` (indexed by ``l-1``), with
    ``a3 = a_3^{l,l-1}``, ``a5 = a_5^{l,l+1}``, ``c3 = c_3^{l,l+1}``.
    """

    a1: torch.Tensor
    a2: torch.Tensor
    a3: torch.Tensor
    a4: torch.Tensor
    a5: torch.Tensor
    a6: torch.Tensor
    a7: torch.Tensor
    a8: torch.Tensor
    a9: torch.Tensor
    c1: torch.Tensor
    c2: torch.Tensor
    c3: torch.Tensor
    c4: torch.Tensor
    c5: torch.Tensor

    @classmethod
    def random(cls, num_layers: int, gen: torch.Generator, only: tuple[str, ...] | None = None) -> NPNFNCoeffs:
        """Standard normal coefficients; with ``only``, every other family is zero (for term ablations)."""
        out = {}
        for f in fields(cls):
            shape = (num_layers, num_layers) if f.name in GLOBAL_FAMILIES else (num_layers,)
            val = torch.randn(shape, generator=gen, dtype=torch.float64)
            out[f.name] = val if only is None or f.name in only else torch.zeros_like(val)
        return cls(**out)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def npnfn_reference(view: MLPView, c: NPNFNCoeffs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One NP-NFN layer, Eqs. 49-54 (reduces to Eqs. 40-41 when all biases are zero): ``(W~, b~)``."""
    W, b, L = view.weights, view.biases, view.num_layers
    w_all = torch.stack([w.sum() for w in W])
    b_all = torch.stack([x.sum() for x in b])
    new_w, new_b = [], []
    for l in range(L):  # 0-based: the paper's layer l+1
        w = W[l]
        zero_in = torch.zeros(w.shape[1], dtype=w.dtype)
        zero_out = torch.zeros(w.shape[0], dtype=w.dtype)
        prev_rows = W[l - 1].sum(1) if l > 0 else zero_in  # W^(l-1)_{j,*}; W^(0) = 0
        next_cols = W[l + 1].sum(0) if l < L - 1 else zero_out  # W^(l+1)_{*,i}; W^(L+1) = 0
        prev_b = b[l - 1] if l > 0 else zero_in  # b^(0) = 0
        t = (c.a1[l] @ w_all + c.a7[l] @ b_all) * torch.ones_like(w)
        t = t + c.a2[l] * w.sum(0)[None, :] + c.a3[l] * prev_rows[None, :] + c.a9[l] * prev_b[None, :]
        t = t + c.a4[l] * w.sum(1)[:, None] + c.a5[l] * next_cols[:, None] + c.a8[l] * b[l][:, None]
        new_w.append(t + c.a6[l] * w)
        nb = c.c1[l] @ w_all + c.c4[l] @ b_all + c.c2[l] * w.sum(1) + c.c3[l] * next_cols + c.c5[l] * b[l]
        new_b.append(nb)
    return new_w, new_b


def _graph_inputs(view: MLPView) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Undirected edge list and the Eq. 39 edge features ``[w, l, backward, bias]``; returns (ei, e, E)."""
    g = view.graph
    n_e = g.num_edges
    ei = torch.cat([g.edge_index, g.edge_index.flip(0)], 1)
    zeros = torch.zeros(n_e, dtype=torch.float64)
    base = torch.stack([g.edge_weight.double(), view.edge_layer.double(), zeros, view.edge_is_bias.double()], 1)
    back = base.clone()
    back[:, 2] = 1.0
    return ei, torch.cat([base, back]), n_e


def npnfn_gmn(
    view: MLPView, c: NPNFNCoeffs, use_global: bool = True, use_bias_messages: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The Prop. 10 construction: one GMN layer (order global, node, edge) whose forward-edge outputs are W~, b~.

    ``use_global=False`` is the negative control: the global step is removed, so ``u`` stays 0.
    ``use_bias_messages=False`` drops the messages that bias nodes send to neurons (Eq. 60), for the ablation
    that shows which terms travel through the bias nodes.
    """
    L = view.num_layers
    ei, e0, n_e = _graph_inputs(view)

    def lay(e):
        return e[:, 1].long() - 1  # 0-based layer of the edge

    def global_fn_inside(e, u_e):  # Eqs. 55-56, restricted to forward copies (see module docstring)
        fwd, is_b = 1.0 - e[:, 2], e[:, 3]
        hot = torch.nn.functional.one_hot(lay(e), L).double()
        return torch.cat([hot * (e[:, 0] * fwd * (1 - is_b))[:, None], hot * (e[:, 0] * fwd * is_b)[:, None]], 1)

    def msg_fn(v_dst, v_src, e, u_e):  # Eqs. 58-60
        w, bwd, is_b = e[:, 0], e[:, 2], e[:, 3]
        from_bias = w * (1 - bwd) * is_b * (1.0 if use_bias_messages else 0.0)
        return torch.stack([w * bwd * (1 - is_b), w * (1 - bwd) * (1 - is_b), from_bias], 1)

    def node_fn(v, agg, u_n):  # Eq. 36 has no outer node MLP: v <- the aggregated messages
        return agg

    def edge_fn(v_dst, v_src, e, u_e):  # Eqs. 62-67; v_i = receiver (dst), v_j = sender (src)
        l, w, is_b = lay(e), e[:, 0], e[:, 3]
        uw, ub = u_e[:, :L], u_e[:, L:]
        vi, vj = v_dst, v_src
        weight_out = (
            (c.a1[l] * uw).sum(1)
            + c.a2[l] * vj[:, 0]
            + c.a3[l] * vj[:, 1]
            + c.a4[l] * vi[:, 1]
            + c.a5[l] * vi[:, 0]
            + c.a6[l] * w
            + (c.a7[l] * ub).sum(1)
            + c.a8[l] * vi[:, 2]
            + c.a9[l] * vj[:, 2]
        )
        bias_out = (c.c1[l] * uw).sum(1) + c.c2[l] * vi[:, 1] + c.c3[l] * vi[:, 0] + (c.c4[l] * ub).sum(1) + c.c5[l] * w
        return ((1 - is_b) * weight_out + is_b * bias_out)[:, None]

    order = ("global", "node", "edge") if use_global else ("node", "edge")
    layer = gmn_layer(
        1, 4, 2 * L, global_fn_inside=global_fn_inside, msg_fn=msg_fn, node_fn=node_fn, edge_fn=edge_fn, order=order
    )
    v0 = torch.zeros(view.graph.num_nodes, 1, dtype=torch.float64)
    u0 = torch.zeros(1, 2 * L, dtype=torch.float64)
    _v, e, _u = apply_layer(layer, v0, ei, e0, u0)
    sd = view.graph.to_state_dict(edge_weight=e[:n_e, 0])
    new_w = [sd[n].double() for n in view.weight_names]
    new_b = [sd[n].double() if n is not None else None for n in view.bias_names]
    return new_w, new_b


def _error(view: MLPView, got, ref) -> float:
    errs = [max_abs(a, b) for a, b in zip(got[0], ref[0])]
    errs += [max_abs(a, b) for a, b, has in zip(got[1], ref[1], view.has_bias) if has]
    return max(errs)


def baseline_npnfn_error(view: MLPView, gen: torch.Generator) -> float | None:
    """Cross-check: the construction reproduces ``gmn.baselines.npnfn.NPLinear`` (the team's NP-NFN layer).

    ``NPLinear`` pools with means where Eqs. 49-54 use sums, so its weights map to the paper's scalars divided
    by the pooled counts; its affine offsets (the biases of ``A6``/``C5``) are not part of Eqs. 49-54 and are
    set to zero.
    """
    from gmn.baselines.npnfn import NPLinear

    L = view.num_layers
    b_in = [1 if h else 0 for h in view.has_bias]
    layer = NPLinear([1] * L, [1] * L, b_in, b_in).double()
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.zero_()
    n_out = [w.shape[0] for w in view.weights]
    n_in = [w.shape[1] for w in view.weights]
    bias_layers = [s for s in range(L) if view.has_bias[s]]

    def w(mod) -> float:
        return float(mod.weight.reshape(-1)[0]) if isinstance(mod, torch.nn.Linear) else 0.0

    def glob(mod) -> tuple[torch.Tensor, torch.Tensor]:  # A1/C1 act on [W_s means..., b_s means (with bias)]
        if not isinstance(mod, torch.nn.Linear):
            return torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
        row = mod.weight.reshape(-1)
        gw = torch.stack([row[s] / (n_out[s] * n_in[s]) for s in range(L)])
        gb = torch.zeros(L, dtype=torch.float64)
        for k, s in enumerate(bias_layers):
            gb[s] = row[L + k] / n_out[s]
        return gw, gb

    z = torch.zeros(L, dtype=torch.float64)
    c = NPNFNCoeffs(
        **{
            k: (torch.zeros(L, L, dtype=torch.float64) if k in GLOBAL_FAMILIES else z.clone())
            for k in NPNFNCoeffs.names()
        }
    )
    with torch.no_grad():
        for l in range(L):
            c.a1[l], c.a7[l] = glob(layer.A1[l])
            c.c1[l], c.c4[l] = glob(layer.C1[l])
            c.a2[l] = w(layer.A2[l]) / n_out[l]
            c.a4[l] = w(layer.A4[l]) / n_in[l]
            c.a6[l] = w(layer.A6[l])
            c.a8[l] = w(layer.A8[l])
            c.c2[l] = w(layer.C2[l]) / n_in[l]
            c.c5[l] = w(layer.C5[l])
            if l > 0:
                c.a3[l] = w(layer.A3[l]) / n_in[l - 1]
                c.a9[l] = w(layer.A9[l])
            if l < L - 1:
                c.a5[l] = w(layer.A5[l]) / n_out[l + 1]
                c.c3[l] = w(layer.C3[l]) / n_out[l + 1]
        Ws = [x[None, :, :, None] for x in view.weights]
        bs = [b[None, :, None] if h else None for b, h in zip(view.biases, view.has_bias)]
        w_out, b_out = layer(Ws, bs)
    ref = ([x[0, :, :, 0] for x in w_out], [b[0, :, 0] if b is not None else None for b in b_out])
    return _error(view, npnfn_gmn(view, c), ref)


@register("prop10_npnfn")
def check_prop10(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 10 numerically: the constructed GMN layer equals an NP-NFN layer on random MLPs."""
    res = CheckResult(
        name="prop10_npnfn",
        proposition="Prop 10 (D.1.2)",
        statement="GMN (global-inside-sum, node, edge) with Eqs. 55-67 = one NP-NFN layer, with/without biases",
        control="global feature dropped (u = 0): mismatch on the a1, a7, c1, c4 terms",
        exactness="exact construction: every function is linear in indicator-selected features",
    )
    gen = torch.Generator().manual_seed(seed)
    errs, ctrls = [], []
    n_base = 0
    n = 8 if quick else 40
    for k in range(n):
        bias = (True, False, None)[k % 3]  # all biases, none (Eqs. 40-48), and mixed
        model = random_mlp(gen, depth=(1, 4), width=(1, 5) if quick else (1, 12), bias=bias)
        view = mlp_view(model)
        c = NPNFNCoeffs.random(view.num_layers, gen)
        ref = npnfn_reference(view, c)
        errs.append(_error(view, npnfn_gmn(view, c), ref))
        ctrls.append(_error(view, npnfn_gmn(view, c, use_global=False), ref))
        base = baseline_npnfn_error(view, gen)
        if base is not None:
            errs.append(base)
            n_base += 1
    # Which terms need the global feature: one coefficient family at a time, with and without u.
    model = random_mlp(gen, depth=(3, 3), width=(2, 4), bias=True)
    view = mlp_view(model)
    needs_u, needs_b = [], []
    for fam in NPNFNCoeffs.names():
        c = NPNFNCoeffs.random(view.num_layers, gen, only=(fam,))
        ref = npnfn_reference(view, c)
        errs.append(_error(view, npnfn_gmn(view, c), ref))
        if _error(view, npnfn_gmn(view, c, use_global=False), ref) >= 1e-6:
            needs_u.append(fam)
        if _error(view, npnfn_gmn(view, c, use_bias_messages=False), ref) >= 1e-6:
            needs_b.append(fam)
    res.notes.append(
        f"terms that need the global feature (error without u): {needs_u}; all other terms are "
        "exact without u (node aggregation of forward/backward weight and bias edges)"
    )
    if tuple(needs_u) != GLOBAL_FAMILIES:
        res.notes.append(f"UNEXPECTED: expected exactly {GLOBAL_FAMILIES} to need u")
        errs.append(math.inf)
    res.notes.append(
        f"terms that need the bias-node messages (error without Eq. 60): {needs_b} (b_i^(l), "
        "b_j^(l-1) reach weight edges only through them); b~ itself lives on the bias edges; see "
        "d13_bias_nodes for c4^{l,l} without a global feature"
    )
    if tuple(needs_b) != ("a8", "a9"):
        res.notes.append("UNEXPECTED: expected exactly ('a8', 'a9') to need the bias-node messages")
        errs.append(math.inf)
    res.notes.append(
        "paper text made precise: Eqs. 55-56 get 1[forward] (else u is doubled on the undirected "
        "graph); Eqs. 66-67 read v_i (the neuron) where the text has v_j (the bias node)"
    )
    res.notes.append(
        f"cross-check with gmn.baselines.npnfn.NPLinear (means mapped to sums, offsets zeroed) on {n_base}/{n} networks"
    )
    res.cases = n + len(NPNFNCoeffs.names())
    res.max_error = max(errs)
    res.control_error = min(ctrls)
    return res.finish()


# ------------------------------------------------------------------------------------------------ sympy
def symbolic_gmn_and_reference(use_global: bool = True):
    """Tiny 2-2-1 MLP with biases, symbolic weights and coefficients: (GMN outputs, NP-NFN outputs).

    The GMN side follows the construction edge by edge over the *actual* parameter graph (symgraph's edge
    list): u as the sum of Eq. 55-56 over forward edges, v_i as the sum of the Eq. 58-60 messages over the
    undirected edges into i, then Eqs. 62-67 per forward edge. The reference side is Eqs. 49-54 with explicit
    index sums. Returns two dicts ``{(name, flat index): expression}``.
    """
    import sympy as sp
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    view = mlp_view(model)
    g, L = view.graph, view.num_layers
    W = [sp.Matrix(*w.shape, lambda i, j, l=l: sp.Symbol(f"W{l + 1}_{i}{j}")) for l, w in enumerate(view.weights)]
    B = [sp.Matrix(b.numel(), 1, lambda i, j, l=l: sp.Symbol(f"b{l + 1}_{i}")) for l, b in enumerate(view.biases)]

    def sym(name, *shape):
        if len(shape) == 2:
            return sp.Matrix(*shape, lambda i, j: sp.Symbol(f"{name}_{i + 1}{j + 1}"))
        return sp.Matrix(shape[0], 1, lambda i, j: sp.Symbol(f"{name}_{i + 1}"))

    c = {f: sym(f, L, L) if f in GLOBAL_FAMILIES else sym(f, L) for f in NPNFNCoeffs.names()}
    # symbolic edge values in the graph's own layout
    slot, flat = g.edge_param.lookup(torch.arange(g.num_edges))
    names = g.edge_param.names
    value = []
    for s, k in zip(slot.tolist(), flat.tolist()):
        l = int(view.edge_layer[len(value)]) - 1
        if names[s].endswith("bias"):
            value.append(B[l][k])
        else:
            value.append(W[l][k // W[l].shape[1], k % W[l].shape[1]])
    layer = view.edge_layer.tolist()
    is_b = view.edge_is_bias.tolist()
    src, dst = g.edge_index.tolist()
    u = [sp.Integer(0)] * (2 * L)
    if use_global:
        for e in range(g.num_edges):
            u[layer[e] - 1 + (L if is_b[e] else 0)] += value[e]
    v = [[sp.Integer(0)] * 3 for _ in range(g.num_nodes)]
    for e in range(g.num_edges):  # forward copy j -> i and backward copy i -> j
        if is_b[e]:
            v[dst[e]][2] += value[e]
        else:
            v[dst[e]][1] += value[e]
            v[src[e]][0] += value[e]
    gmn_out = {}
    for e in range(g.num_edges):
        l, vi, vj, w = layer[e] - 1, v[dst[e]], v[src[e]], value[e]
        uw = sum(c["a1" if not is_b[e] else "c1"][l, s] * u[s] for s in range(L))
        ub = sum(c["a7" if not is_b[e] else "c4"][l, s] * u[L + s] for s in range(L))
        if not is_b[e]:
            out = (
                uw
                + c["a2"][l] * vj[0]
                + c["a3"][l] * vj[1]
                + c["a4"][l] * vi[1]
                + c["a5"][l] * vi[0]
                + c["a6"][l] * w
                + ub
                + c["a8"][l] * vi[2]
                + c["a9"][l] * vj[2]
            )
        else:
            out = uw + c["c2"][l] * vi[1] + c["c3"][l] * vi[0] + ub + c["c5"][l] * w
        gmn_out[(names[int(slot[e])], int(flat[e]))] = out
    # reference, Eqs. 49-54 with explicit index sums
    ref = {}
    w_all = [sum(W[s]) for s in range(L)]
    b_all = [sum(B[s]) for s in range(L)]
    for l in range(L):
        n_out, n_in = W[l].shape
        for i in range(n_out):
            for j in range(n_in):
                t = sum(c["a1"][l, s] * w_all[s] + c["a7"][l, s] * b_all[s] for s in range(L))
                t += c["a2"][l] * sum(W[l][k, j] for k in range(n_out))
                t += c["a3"][l] * (sum(W[l - 1][j, k] for k in range(W[l - 1].shape[1])) if l > 0 else 0)
                t += c["a4"][l] * sum(W[l][i, k] for k in range(n_in))
                t += c["a5"][l] * (sum(W[l + 1][k, i] for k in range(W[l + 1].shape[0])) if l < L - 1 else 0)
                t += c["a6"][l] * W[l][i, j] + c["a8"][l] * B[l][i] + c["a9"][l] * (B[l - 1][j] if l > 0 else 0)
                ref[(view.weight_names[l], i * n_in + j)] = t
            t = sum(c["c1"][l, s] * w_all[s] + c["c4"][l, s] * b_all[s] for s in range(L))
            t += c["c2"][l] * sum(W[l][i, k] for k in range(n_in))
            t += c["c3"][l] * (sum(W[l + 1][k, i] for k in range(W[l + 1].shape[0])) if l < L - 1 else 0)
            ref[(view.bias_names[l], i)] = t + c["c5"][l] * B[l][i]
    return gmn_out, ref


@register("prop10_npnfn_sympy")
def check_prop10_sympy(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 10 algebraically: for symbolic weights and coefficients of a 2-2-1 MLP the GMN messages equal NP-NFN."""
    import sympy as sp

    res = CheckResult(
        name="prop10_npnfn_sympy",
        proposition="Prop 10 (D.1.2)",
        statement="symbolic 2-2-1 MLP: constructed GMN messages == NP-NFN layer, identically in all symbols",
        control="same construction without the global feature: nonzero symbolic difference",
        exactness="exact (sympy polynomial identity)",
    )
    got, ref = symbolic_gmn_and_reference(True)
    diffs = [sp.expand(got[k] - ref[k]) for k in ref]
    res.cases = len(diffs) if set(got) == set(ref) else 0
    res.max_error = 0.0 if all(d == 0 for d in diffs) else math.inf
    got0, _ = symbolic_gmn_and_reference(False)
    nonzero = [k for k in ref if sp.expand(got0[k] - ref[k]) != 0]
    res.control_error = math.inf if len(nonzero) == len(ref) else 0.0
    res.notes.append(f"{len(ref)} parameter outputs compared; without u all {len(nonzero)} differ symbolically")
    return res.finish()
