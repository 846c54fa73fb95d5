"""Proposition 9 (Appendix D.1.1): a GMN can express StatNN (Unterthiner et al., 2020).

StatNN's features are, for every parameter tensor ``w`` (each weight and each bias), the mean, the variance
and the quantiles 0, .25, .5, .75, 1; a StatNN head (an MLP) maps them to the prediction (Eq. 25). The proof
writes each statistic as ``s(w) = rho(sum_i phi(w_i))`` (Zaheer et al., 2017), lets the edge update emit
``phi(w)`` scattered into the row of the edge's (layer, weight/bias) pair (Eqs. 28-29), sums over edges in the
global update (Eq. 27) and applies ``rho`` and the head there (Eq. 34). What is exact, and how:

* **mean and variance: exact sum-decomposition** with ``phi(w) = [1, w, w^2]`` per parameter tensor and
  ``rho(s0, s1, s2) = (s1/s0, s2/s0 - (s1/s0)^2)`` (population variance, as ``numpy.var``). This runs through
  ``gmn.layers.GMNLayer`` (edge update Eqs. 28-29, global update Eq. 3 as a plain sum) and matches in float64.
* **quantiles: sum-decomposable too, but only with ``dim phi >= n``** (n = the tensor's size; Wagstaff et al.
  2019 show fewer dimensions cannot work for continuous phi, rho). The standard exact choice is the power sums
  ``phi(w) = (w, w^2, ..., w^n)``: Newton's identities turn them into the coefficients of
  ``prod_i (x - w_i)``, whose sorted roots are the multiset, hence every quantile. This is exact in exact
  arithmetic and we check it so, with sympy on rational weights (``prop9_quantiles_powersum``). It is useless
  in float64 (root-finding from power sums is catastrophically ill-conditioned beyond a handful of values), so
  the float64 check uses a **documented GMN variant**: the global aggregation of the quantile channels is a
  sort-based pooling of the edge features per parameter tensor, a permutation-invariant function of the same
  multiset in place of the sum (Eq. 27). Its approximation by sum-pooled MLPs is the universal-approximation
  argument of Lemma 1, not something a finite float64 construction shows.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import symgraph
from symgraph.graph import NeuralGraph

from .common import CheckResult, apply_layer, gmn_layer, max_abs, random_cnn, random_mlp, register

__all__ = [
    "QUANTILES",
    "statnn_features_reference",
    "statnn_gmn",
    "powersum_quantiles",
    "check_prop9",
    "check_prop9_powersum",
]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS_PER_TENSOR = 2 + len(QUANTILES)


def _param_values(g: NeuralGraph) -> list[torch.Tensor]:
    return [g.edge_weight[s.start : s.start + s.numel].double() for s in g.edge_param.slots]


def statnn_features_reference(g: NeuralGraph) -> torch.Tensor:
    """StatNN's feature vector, computed directly: per parameter tensor [mean, var, q0, q25, q50, q75, q100]."""
    feats = []
    for w in _param_values(g):
        q = torch.quantile(w, torch.tensor(QUANTILES, dtype=torch.float64))
        feats.append(torch.cat([w.mean()[None], w.var(unbiased=False)[None], q]))
    return torch.cat(feats)


def _sort_pool_quantiles(w: torch.Tensor, slot: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Sort-based permutation-invariant pooling: the quantiles of each slot's multiset (linear interpolation)."""
    out = []
    for p in range(num_slots):
        vals = torch.sort(w[slot == p]).values
        n = vals.numel()
        if n == 0:  # an empty multiset has no quantiles (only reachable by the misrouting control)
            out += [torch.tensor(math.nan, dtype=w.dtype)] * len(QUANTILES)
            continue
        for q in QUANTILES:
            pos = q * (n - 1)
            lo = int(math.floor(pos))
            hi = min(lo + 1, n - 1)
            out.append(vals[lo] + (pos - lo) * (vals[hi] - vals[lo]))
    return torch.stack(out).reshape(num_slots, len(QUANTILES))


def statnn_gmn(g: NeuralGraph, head: nn.Module, misroute_edge: int | None = None) -> torch.Tensor:
    """The Prop. 9 GMN: edge update = scattered ``phi``, global update = ``rho`` + StatNN head.

    Edge features are ``[w, parameter-tensor id]`` (the proof's (layer, weight/bias) pair, generalised to CNN
    tensors). ``misroute_edge`` is the negative control: that edge's indicator points at the wrong tensor.
    """
    slot, _ = g.edge_param.lookup(torch.arange(g.num_edges))
    num_slots = len(g.edge_param.slots)
    if misroute_edge is not None:
        slot = slot.clone()
        slot[misroute_edge] = (slot[misroute_edge] + 1) % num_slots
    e0 = torch.stack([g.edge_weight.double(), slot.double()], 1)

    def edge_fn(v_dst, v_src, e, u_e):  # Eqs. 28-29 with phi(w) = [1, w, w^2]; parameter-free edges give 0
        w, s = e[:, 0], e[:, 1].long()
        hot = torch.zeros(e.shape[0], num_slots, dtype=e.dtype)
        has = s >= 0
        hot[has] = nn.functional.one_hot(s[has], num_slots).to(e.dtype)
        phi = torch.stack([torch.ones_like(w), w, w * w], 1)
        return (hot[:, :, None] * phi[:, None, :]).reshape(e.shape[0], 3 * num_slots)

    def global_fn(sum_v, sum_e, u):  # Eq. 27: u <- the summed phi's (rho and the head follow, Eq. 34)
        return sum_e

    layer = gmn_layer(1, 2, 3 * num_slots, edge_fn=edge_fn, global_fn=global_fn, order=("edge", "global"))
    v0 = torch.zeros(g.num_nodes, 1, dtype=torch.float64)
    _v, e, u = apply_layer(layer, v0, g.edge_index, e0)
    a = u.reshape(num_slots, 3)
    mean = a[:, 1] / a[:, 0]  # rho: exact for mean and population variance
    var = a[:, 2] / a[:, 0] - mean * mean
    # Quantile channels: sort-based pooling of the edge features per tensor (module docstring). The value
    # and the tensor id are read back from the edge output (phi's w column and its indicator), i.e. this is a
    # function of the multiset of edge features only.
    blocks = e.reshape(-1, num_slots, 3)
    w_back = blocks[:, :, 1].sum(1)
    slot_back = torch.where(blocks[:, :, 0].sum(1) > 0, blocks[:, :, 0].argmax(1), torch.full_like(slot, -1))
    q = _sort_pool_quantiles(w_back, slot_back, num_slots)
    feats = torch.cat([mean[:, None], var[:, None], q], 1).reshape(-1)
    return head(feats)


def _random_head(n_in: int, gen: torch.Generator) -> nn.Module:
    head = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[-1]))
    return head


@register("prop9_statnn")
def check_prop9(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 9 in float64 on random MLPs and CNNs: GMN output == StatNN head(StatNN features)."""
    res = CheckResult(
        name="prop9_statnn",
        proposition="Prop 9 (D.1.1)",
        statement="GMN (edge phi, global rho + head) = StatNN (mean, var, 5 quantiles per tensor + MLP head)",
        control="one edge's (layer, kind) indicator misrouted to the next tensor",
        exactness="mean/var: exact sum-decomposition in GMNLayer; quantiles: sort-pooling variant (see "
        "prop9_quantiles_powersum for the exact sum-decomposition with dim phi = n)",
    )
    gen = torch.Generator().manual_seed(seed)
    errs, ctrls = [], []
    n_mlp, n_cnn = (5, 3) if quick else (25, 10)
    graphs = []
    for _ in range(n_mlp):
        graphs.append(symgraph.parameter_graph(random_mlp(gen, depth=(1, 4), width=(1, 8), bias=None)))
    for _ in range(n_cnn):
        model, shape = random_cnn(gen, depth=(1, 3), channels=(1, 4), spatial=5)
        graphs.append(symgraph.parameter_graph(model, input_shape=shape))
    for g in graphs:
        feats = statnn_features_reference(g)
        head = _random_head(feats.numel(), gen)
        ref = head(feats)
        errs.append(max_abs(statnn_gmn(g, head), ref))
        base = _baseline_features(g)
        if base is not None:
            errs.append(max_abs(base, feats))
        if len(g.edge_param.slots) >= 2:  # misrouting needs a second tensor to route to
            e_bad = int(torch.randint(0, g.num_edges, (1,), generator=gen))
            # judged on the features: a random head could in principle be insensitive to one feature
            ctrls.append(max_abs(_gmn_features(g, e_bad), feats))
    res.cases = len(graphs)
    res.max_error = max(errs)
    res.control_error = min(ctrls) if ctrls else 0.0
    res.notes.append(f"{n_mlp} random MLPs, {n_cnn} random CNNs; random 2-layer StatNN heads")
    if _baseline_features(graphs[0]) is None:
        res.notes.append("gmn.baselines.statnn not available: reference features computed here (torch.quantile)")
    else:
        res.notes.append("reference features (torch.quantile here) also equal gmn.baselines.statnn.tensor_statistics")
    return res.finish()


def _gmn_features(g: NeuralGraph, misroute_edge: int | None = None) -> torch.Tensor:
    return statnn_gmn(g, nn.Identity(), misroute_edge)


def _baseline_features(g: NeuralGraph) -> torch.Tensor | None:
    """StatNN features from the team's baseline (``gmn.baselines.statnn.tensor_statistics``), same layout."""
    from gmn.baselines.statnn import tensor_statistics

    slot, _ = g.edge_param.lookup(torch.arange(g.num_edges))
    has = slot >= 0
    stats, _count = tensor_statistics(g.edge_weight.double()[has], slot[has], len(g.edge_param.slots))
    return stats.reshape(-1)


# -------------------------------------------------------------------------------------- exact power sums
def powersum_quantiles(power_sums: list, n: int) -> list | None:
    """rho for the quantiles: the multiset from its first ``n`` power sums, then its 5 quantiles (sympy, exact).

    Newton's identities give the elementary symmetric polynomials ``e_k`` from the power sums ``p_k``; the
    multiset is the roots of ``x^n - e_1 x^(n-1) + ... + (-1)^n e_n``. Returns None when those roots are not
    ``n`` explicit real numbers (power sums of no real multiset, as in the negative control).
    """
    import sympy as sp

    e = [sp.Integer(1)]
    for k in range(1, n + 1):
        e.append(sp.Rational(1, k) * sum((-1) ** (i - 1) * e[k - i] * power_sums[i - 1] for i in range(1, k + 1)))
    x = sp.Symbol("x")
    poly = sp.Poly(sum((-1) ** k * e[k] * x ** (n - k) for k in range(n + 1)), x)
    roots = sp.roots(poly, multiple=True)  # rational weights: exact rational roots, with multiplicity
    if len(roots) != n or not all(r.is_real for r in roots):
        return None
    return _exact_quantiles(sorted(roots))


def _exact_quantiles(sorted_vals: list) -> list:
    import sympy as sp

    n = len(sorted_vals)
    out = []
    for q in QUANTILES:
        pos = sp.Rational(q) * (n - 1)
        lo = int(sp.floor(pos))
        hi = min(lo + 1, n - 1)
        out.append(sorted_vals[lo] + (pos - lo) * (sorted_vals[hi] - sorted_vals[lo]))
    return out


@register("prop9_quantiles_powersum")
def check_prop9_powersum(quick: bool = True, seed: int = 0) -> CheckResult:
    """Quantiles as rho(sum phi) with phi = power sums up to n, exactly, on rational weights of small nets."""
    import sympy as sp

    res = CheckResult(
        name="prop9_quantiles_powersum",
        proposition="Prop 9 (D.1.1)",
        statement="quantiles = rho(sum_i phi(w_i)) with phi(w) = (w, ..., w^n): exact on rational weights",
        control="rho fed a wrong last power sum (p_n + 1): no real multiset or wrong quantiles",
        exactness="exact (sympy rationals); float64 root-finding from power sums is ill-conditioned, not used",
    )
    gen = torch.Generator().manual_seed(seed)
    models = [nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))]
    models += [random_mlp(gen, depth=(1, 2), width=(1, 3 if quick else 4), bias=True) for _ in range(2 if quick else 6)]
    worst, ctrl_min, cases = 0.0, math.inf, 0
    for model in models:
        g = symgraph.parameter_graph(model.double())
        for w in _param_values(g):
            # rational weights (with a repeated value when possible, to exercise multiplicities)
            vals = [sp.Rational(int(torch.randint(-9, 10, (1,), generator=gen)), 4) for _ in range(w.numel())]
            if len(vals) > 2:
                vals[-1] = vals[0]
            n = len(vals)
            p = [sum(v**k for v in vals) for k in range(1, n + 1)]  # sum over edges of phi(w) = (w, ..., w^n)
            got = powersum_quantiles(p, n)
            ref = _exact_quantiles(sorted(vals))
            worst = max(worst, math.inf if got is None else max(float(abs(a - b)) for a, b in zip(got, ref)))
            cases += 1
            bad = powersum_quantiles(p[:-1] + [p[-1] + 1], n)  # one wrong power sum
            ctrl = math.inf if bad is None else max(float(abs(a - b)) for a, b in zip(bad, ref))
            ctrl_min = min(ctrl_min, ctrl)
    res.cases = cases
    res.max_error = worst
    res.control_error = ctrl_min
    res.notes.append("dim phi must be >= n: e.g. {0,3,3} and {1,1,4} share p_1, p_2 but have different minima")
    return res.finish()
