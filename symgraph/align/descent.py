"""Coordinate descent for weight matching over the factors of an exact automorphism group.

The objective is ``<theta_A, Phi(P) theta_B>``: the sum, over every parameter-carrying edge and every
node-stored parameter (norm gamma/beta, running statistics), of the reference's value times the permuted
model's value. ``P`` ranges over the automorphism group; the solver keeps ``P`` and the permuted weights
``Phi(P) theta_B`` and improves one factor at a time, as Ainsworth et al. (Git Re-Basin, ICLR 2023, Sec.
3.2) do with one permutation per layer:

* a symmetric factor (:class:`~symgraph.align.problem.Factor`) is one linear assignment problem
  (``scipy.optimize.linear_sum_assignment``): the cost of sending unit ``a`` of the permuted model onto unit
  ``b`` is the inner product of the two units' slot rows (every edge and node parameter they touch). Units
  that contain smaller factors (attention heads, GroupNorm groups) are matched exactly as blocks: the cost
  of ``a -> b`` includes the best assignment of their inner units (one assignment problem per inner class
  and pair of blocks), and the chosen inner assignments are applied with the block's;
* the new permutation is ``h o P`` with ``h`` in the group, so ``P`` never leaves it; a step is kept only
  when it raises the objective by more than ``tol * max(1, |objective|)``;
* passes over all factors, in a seeded random order, repeat until one pass changes nothing or
  ``max_iter`` passes have run.

Before the passes, an optional *sweep* visits the factors once from inputs to outputs and matches each on
the parameters that join it to nodes already matched (fixed nodes and earlier factors) and on its own node
parameters only; it starts the descent from a layer-by-layer match instead of the identity, which recovers
exactly permuted copies whatever the widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SymgraphError
from .problem import Adjacency, FactorTables, GenericFactor, build_tables

__all__ = ["Descent", "DescentStats", "linear_sum_assignment"]


def linear_sum_assignment(cost: np.ndarray, maximize: bool = False):
    """``scipy.optimize.linear_sum_assignment`` (imported on first use: ``import symgraph`` needs no scipy)."""
    from scipy.optimize import linear_sum_assignment as lsa

    return lsa(cost, maximize=maximize)


@dataclass
class DescentStats:
    """What a run of :meth:`Descent.run` did."""

    objective_before: float
    objective_after: float
    iterations: int
    converged: bool
    steps: int  # accepted steps (sweep included)
    sweep_steps: int


class Descent:
    """Weight matching state: the reference's weights, the permuted model's weights and the permutation.

    ``ew_ref``/``nw_ref`` and ``ew``/``nw`` are float64 arrays in the graph's layout (``edge_weight``,
    ``node_weight``), with parameter-free edges set to 0 (their value is 1 in both models and every
    automorphism maps them onto each other: they only add a constant).

    Example
    -------
    >>> import numpy as np, torch, torch.nn as nn, symgraph
    >>> from symgraph.align.problem import factors_of
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> aut = symgraph.automorphism_group(m)
    >>> g = aut.graph
    >>> ew, nw = g.edge_weight.double().numpy(), g.node_weight.double().numpy()
    >>> perm = aut.random_element(torch.Generator().manual_seed(1))
    >>> moved = g.permute(perm)
    >>> d = Descent(g, factors_of(aut), ew, nw, moved.edge_weight.double().numpy(), moved.node_weight.double().numpy())
    >>> stats = d.run(max_iter=10)
    >>> bool(np.array_equal(d.ew, ew))
    True
    """

    def __init__(self, graph, factors, ew_ref, nw_ref, ew, nw, nested: bool = True, tol: float = 1e-12):
        self.num_nodes = int(graph.num_nodes)
        ei = graph.edge_index.numpy()
        self.src = np.ascontiguousarray(ei[0], dtype=np.int64)
        self.dst = np.ascontiguousarray(ei[1], dtype=np.int64)
        self.color = graph.edge_color.numpy().astype(np.int64)
        self.fixed = graph.fixed_mask.numpy().astype(bool)
        self.factors = list(factors)
        self.ew_ref = np.ascontiguousarray(ew_ref, dtype=np.float64)
        self.nw_ref = np.ascontiguousarray(nw_ref, dtype=np.float64).reshape(self.num_nodes, -1)
        self.ew = np.array(ew, dtype=np.float64)
        self.nw = np.array(nw, dtype=np.float64).reshape(self.num_nodes, -1)
        self.perm = np.arange(self.num_nodes, dtype=np.int64)
        # src_of[e]: the edge of the unpermuted model whose value now sits at edge e (Phi(P) as an edge map)
        self.src_of = np.arange(self.src.size, dtype=np.int64)
        self.nested = nested
        self.tol = float(tol)
        self._tables: dict[int, FactorTables] = {}
        self._ref_rows: dict[tuple[int, int], np.ndarray] = {}
        self._adjacency: Adjacency | None = None
        self._edge_sort: tuple[np.ndarray, np.ndarray] | None = None
        self._objective = self.objective(exact=True)

    # ------------------------------------------------------------------ objective
    def objective(self, exact: bool = False) -> float:
        """``<theta_A, Phi(P) theta_B>`` over parameters and node-stored buffers (recomputed if ``exact``)."""
        if exact:
            self._objective = float(self.ew_ref @ self.ew) + float(np.sum(self.nw_ref * self.nw))
        return self._objective

    def tables(self, i: int) -> FactorTables:
        if i not in self._tables:
            if self._adjacency is None:
                self._adjacency = Adjacency(self.src, self.dst, self.num_nodes)
            f = self.factors[i]
            self._tables[i] = build_tables(f, self.src, self.dst, self.color, self.num_nodes, self._adjacency)
        return self._tables[i]

    # ------------------------------------------------------------------ values of block assignments
    def _class_values(self, i: int, ci: int, usable, cross: bool, choices: dict) -> np.ndarray:
        """``M[a, b]``: the best value of putting the permuted model's unit ``a`` of class ``ci`` onto the
        reference's unit ``b`` (inner classes optimised; ``choices[child][a, b]`` records their assignment)."""
        ft = self.tables(i)
        ct = ft.classes[ci]
        n = ct.exact.shape[0]
        key = (i, ci)
        if key not in self._ref_rows:  # the reference's rows never change: gathered once per class
            self._ref_rows[key] = self.ew_ref[ct.exact]
        ref = self._ref_rows[key]
        cur = self.ew[ct.exact]
        if usable is not None:
            cur[:, ~((ct.exact_other < 0) | usable[np.maximum(ct.exact_other, 0)])] = 0.0
        M = cur @ ref.T if ct.exact.size else np.zeros((n, n))
        if ct.nodes.size:
            M += self.nw[ct.nodes].reshape(n, -1) @ self.nw_ref[ct.nodes].reshape(n, -1).T
        if cross and ct.cross.size:
            hole = ct.cross < 0
            xb = np.where(hole, 0.0, self.ew[ct.cross])
            xa = np.where(hole, 0.0, self.ew_ref[ct.cross])
            M += xb @ xa.T
        for cj in (j for j, p in enumerate(ft.parents) if p == ci):
            Mc = self._class_values(i, cj, usable, cross, choices)
            kc = ft.classes[cj].exact.shape[0] // n
            blocks = Mc.reshape(n, kc, n, kc).transpose(0, 2, 1, 3)  # [a, b, rho, rho']
            if not self.nested:
                M += np.trace(blocks, axis1=2, axis2=3)
                choices[cj] = None
                continue
            pick = np.empty((n, n, kc), dtype=np.int64)
            for a in range(n):
                for b in range(n):
                    rows, col = linear_sum_assignment(blocks[a, b], maximize=True)
                    pick[a, b, rows] = col
                    M[a, b] += blocks[a, b, rows, col].sum()
            choices[cj] = pick
        return M

    def _images(self, ft: FactorTables, top: np.ndarray, choices: dict) -> list[np.ndarray]:
        """Image unit of every unit of every class, from the root assignment and the inner choices."""
        imgs: list[np.ndarray] = [top]
        for cj in range(1, len(ft.classes)):
            p = ft.parents[cj]
            parent_img = imgs[p]
            n = parent_img.size
            kc = ft.classes[cj].exact.shape[0] // n
            pick = choices.get(cj)
            a = np.arange(n)
            inner = np.tile(np.arange(kc), (n, 1)) if pick is None else pick[a, parent_img]
            imgs.append((parent_img[:, None] * kc + inner).reshape(-1))
        return imgs

    # ------------------------------------------------------------------ moves
    def _move(self, ft: FactorTables, imgs: list[np.ndarray]):
        """Node map ``h`` and the edge/node moves it induces on the factor's slots: ``(h, e_from, e_to,
        n_from, n_to)`` with ``(n_from, n_to)`` pairs of (node, column) flat indices into ``nw``."""
        h = np.arange(self.num_nodes, dtype=np.int64)
        e_from, e_to, n_from, n_to = [], [], [], []
        F = self.nw.shape[1]
        for ct, img in zip(ft.classes, imgs, strict=True):
            moved = np.nonzero(img != np.arange(img.size))[0]
            if moved.size == 0:
                continue
            dest = img[moved]
            if ct.nodes.size:
                h[ct.nodes[moved].reshape(-1)] = ct.nodes[dest].reshape(-1)
                nf = (ct.nodes[moved].reshape(-1, 1) * F + np.arange(F)).reshape(-1)
                nt = (ct.nodes[dest].reshape(-1, 1) * F + np.arange(F)).reshape(-1)
                n_from.append(nf)
                n_to.append(nt)
            if ct.exact.size:
                e_from.append(ct.exact[moved].reshape(-1).astype(np.int64))
                e_to.append(ct.exact[dest].reshape(-1).astype(np.int64))
        if ft.cross_edges.size:
            ce = ft.cross_edges
            nk = (h[self.src[ce]] * self.num_nodes + h[self.dst[ce]]) * ft.num_colors + self.color[ce]
            at = np.searchsorted(ft.cross_keys, nk)
            at = np.minimum(at, ft.cross_keys.size - 1)
            if not np.array_equal(ft.cross_keys[at], nk):
                raise SymgraphError("internal: Expected a factor's move to map its edges onto its edges (got others)")
            image = ce[ft.cross_order[at]]
            change = image != ce
            e_from.append(ce[change])
            e_to.append(image[change])
        cat = [np.concatenate(x) if x else np.zeros(0, dtype=np.int64) for x in (e_from, e_to, n_from, n_to)]
        return (h, *cat)

    def _gain(self, e_from, e_to, n_from, n_to) -> float:
        ref_n, cur_n = self.nw_ref.reshape(-1), self.nw.reshape(-1)
        d = float(self.ew_ref[e_to] @ (self.ew[e_from] - self.ew[e_to]))
        return d + float(ref_n[n_to] @ (cur_n[n_from] - cur_n[n_to]))

    def _apply(self, h, e_from, e_to, n_from, n_to, gain: float) -> None:
        self.ew[e_to] = self.ew[e_from].copy()
        self.src_of[e_to] = self.src_of[e_from].copy()
        flat = self.nw.reshape(-1)
        flat[n_to] = flat[n_from].copy()
        self.perm = h[self.perm]
        self._objective += gain

    # ------------------------------------------------------------------ steps
    def step(self, i: int, usable: np.ndarray | None = None) -> bool:
        """Improve factor ``i`` (all others held). With ``usable`` (sweep), match on the parameters to the
        nodes it marks and apply the result whatever the full objective says. Returns whether it moved."""
        f = self.factors[i]
        if isinstance(f, GenericFactor):
            return self._generic_step(f) if usable is None else False
        ft = self.tables(i)
        choices: dict = {}
        M = self._class_values(i, 0, usable, usable is None, choices)
        rows, top = linear_sum_assignment(M, maximize=True)
        img = np.empty(M.shape[0], dtype=np.int64)
        img[rows] = top
        imgs = self._images(ft, img, choices)
        if all(np.array_equal(x, np.arange(x.size)) for x in imgs):
            return False
        h, e_from, e_to, n_from, n_to = self._move(ft, imgs)
        gain = self._gain(e_from, e_to, n_from, n_to)
        if usable is None and not gain > self.tol * max(1.0, abs(self._objective)):
            return False
        self._apply(h, e_from, e_to, n_from, n_to, gain)
        return True

    def _generic_step(self, f: GenericFactor) -> bool:
        """Try every listed element of a non-symmetric quotient factor; keep the best if it improves."""
        if self._edge_sort is None:
            keys = (self.src * self.num_nodes + self.dst) * (int(self.color.max()) + 1) + self.color
            order = np.argsort(keys, kind="stable")
            self._edge_sort = (keys[order], order)
        sk, order = self._edge_sort
        C = int(self.color.max()) + 1
        best, best_gain = None, self.tol * max(1.0, abs(self._objective))
        for g in f.elements:
            nk = (g[self.src] * self.num_nodes + g[self.dst]) * C + self.color
            at = np.minimum(np.searchsorted(sk, nk), sk.size - 1)
            if not np.array_equal(sk[at], nk):
                raise SymgraphError("internal: Expected a quotient factor element to map edges onto edges")
            eperm = order[at]
            moved = np.nonzero(eperm != np.arange(eperm.size))[0]
            nodes = np.nonzero(g != np.arange(g.size))[0]
            F = self.nw.shape[1]
            nf = (nodes[:, None] * F + np.arange(F)).reshape(-1)
            nt = (g[nodes][:, None] * F + np.arange(F)).reshape(-1)
            gain = self._gain(moved, eperm[moved], nf, nt)
            if gain > best_gain:
                best, best_gain = (g, moved, eperm[moved], nf, nt), gain
        if best is None:
            return False
        g, ef, et, nf, nt = best
        self._apply(g, ef, et, nf, nt, best_gain)
        return True

    def certify(self, node_color: np.ndarray) -> bool:
        """Is ``perm`` an automorphism? Checked in O(E) through the edge map kept along the way: ``src_of`` is
        a bijection of the edges, every edge ``(i, j, c)`` sits at ``(perm[i], perm[j], c)``, ``perm`` keeps
        node colours and fixes the fixed nodes (the definition of :meth:`NeuralGraph.is_automorphism`)."""
        n, p, e = self.num_nodes, self.perm, self.src_of
        if p.shape != (n,) or not np.array_equal(np.bincount(p, minlength=n), np.ones(n, dtype=np.int64)):
            return False
        if not np.array_equal(node_color[p], node_color):
            return False
        if not np.array_equal(p[self.fixed], np.nonzero(self.fixed)[0]):
            return False
        if not np.array_equal(np.bincount(e, minlength=e.size), np.ones(e.size, dtype=np.int64)):
            return False
        return bool(
            np.array_equal(p[self.src[e]], self.src)
            and np.array_equal(p[self.dst[e]], self.dst)
            and np.array_equal(self.color[e], self.color)
        )

    # ------------------------------------------------------------------ runs
    def sweep(self) -> int:
        """One pass from inputs to outputs matching each factor on already matched neighbours (see module)."""
        # nodes no factor moves (fixed nodes, and units alone in their class) are matched from the start
        usable = np.ones(self.num_nodes, dtype=bool)
        for f in self.factors:
            usable[f.nodes] = False
        steps = 0
        order = sorted(range(len(self.factors)), key=lambda i: (self.factors[i].layer, -self.factors[i].nodes.size))
        for i in order:
            steps += bool(self.step(i, usable=usable))
            usable[self.factors[i].nodes] = True
        self.objective(exact=True)
        return steps

    def run(self, max_iter: int = 100, seed: int = 0, sweep: bool = True) -> DescentStats:
        """Sweep (optional), then passes in seeded random factor order until one changes nothing."""
        before = self.objective(exact=True)
        sweep_steps = self.sweep() if sweep else 0
        rng = np.random.default_rng(seed)
        steps, it, converged = sweep_steps, 0, False
        for it in range(1, max_iter + 1):  # noqa: B007 - the pass count is reported
            progress = False
            for i in rng.permutation(len(self.factors)).tolist():
                if self.step(i):
                    progress = True
                    steps += 1
            if not progress:
                converged = True
                break
        if not self.factors:
            converged = True
        after = self.objective(exact=True)
        return DescentStats(before, after, it, converged, steps, sweep_steps)
