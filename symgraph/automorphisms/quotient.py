"""Exact order, factors and uniform sampling of the quotient group nauty returns.

nauty reports the group order as a float (``mantissa * 10**exponent``): not exact beyond 2**53. After twin
reduction the quotient still carries the *tied* symmetries (a residual stream: the same permutation on
every node set along the stream), whose orders are huge (``512!``). We get them exactly and cheaply:

1. *Drop determined orbits.* If the edges of one label between two orbits ``O1`` and ``O2`` form a perfect
   matching ``beta``, every automorphism satisfies ``g(beta(x)) = beta(g(x))`` (it preserves those edges and
   both orbits), so the action on ``O2`` is a function of the action on ``O1``. In each connected component
   of the "perfect matching" relation between orbits only one *root* orbit is kept; the restriction of the
   group to the kept points is faithful.
2. *Split into direct factors.* Generators whose supports (on kept points) share no point with any other
   generator's act independently: the union-find components of supports give ``G = H_1 x ... x H_r``.
3. *Order of each factor.* If all of a factor's generators are transpositions, it is the product of the
   symmetric groups on the connected components of the transposition graph (an elementary fact), which
   are its orbits; otherwise sympy's Schreier–Sims on the (small) factor alone.

Uniform sampling follows the same structure: a uniform element of each factor (a uniform permutation of an
orbit for symmetric factors, sympy's ``random`` = ``coset_unrank`` of a uniform rank otherwise), extended
to dropped orbits through the matchings and fixing everything else.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass, field

import numpy as np

__all__ = ["QuotientFactor", "QuotientGroup", "analyse_quotient"]


@dataclass
class QuotientFactor:
    """One direct factor ``H`` of the quotient group, acting on the root points ``points``.

    ``symmetric`` is set when ``H`` is the full symmetric group on each of its orbits ``orbits``.
    """

    points: np.ndarray
    orbits: list[np.ndarray]
    generators: np.ndarray  # [k, len(points)] permutations of positions in ``points``
    symmetric: bool
    order: int
    gen_index: list[int] = field(default_factory=list)  # rows of the quotient generators acting here
    _sympy: object = field(default=None, repr=False)

    def sympy_group(self):
        if self._sympy is None:
            from sympy.combinatorics import Permutation, PermutationGroup

            self._sympy = PermutationGroup([Permutation(g.tolist()) for g in self.generators])
        return self._sympy

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A uniform element, as a permutation of positions in ``points``."""
        if self.symmetric:
            out = np.arange(self.points.size)
            pos = {int(p): i for i, p in enumerate(self.points.tolist())}
            for orb in self.orbits:
                idx = np.array([pos[int(p)] for p in orb.tolist()])
                out[idx] = idx[rng.permutation(idx.size)]
            return out
        G = self.sympy_group()
        rank = _random.Random(int(rng.integers(2**62))).randrange(int(G.order()))
        return np.asarray(G.coset_unrank(rank, af=True), dtype=np.int64)


@dataclass
class QuotientGroup:
    """The quotient group from nauty's generators, with exact order and uniform sampling."""

    n: int
    generators: np.ndarray  # [k, n]
    orbits: np.ndarray  # [n] orbit id per point
    factors: list[QuotientFactor]
    # dependent orbits: (root points, dependent points) with dependent[j] = beta(root[j])
    dependents: list[tuple[np.ndarray, np.ndarray]]
    root_orbit: dict[int, list[int]]  # root orbit id -> dependent orbit ids (for descriptions)

    @property
    def order(self) -> int:
        return math.prod(f.order for f in self.factors)

    def random(self, rng: np.random.Generator) -> np.ndarray:
        perm = np.arange(self.n, dtype=np.int64)
        for f in self.factors:
            perm[f.points] = f.points[f.random(rng)]
        for root, dep in self.dependents:
            inv = np.full(self.n, -1, dtype=np.int64)
            inv[root] = np.arange(root.size)
            perm[dep] = dep[inv[perm[root]]]
        return perm


def _matchings(n, u, v, label, orbit) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Pairs of distinct orbits joined by a perfect matching of one label: (O1, O2, pts1, pts2 matched)."""
    osz = np.bincount(orbit, minlength=n)
    ou, ov = orbit[u], orbit[v]
    sel = (ou != ov) & (osz[ou] > 1) & (osz[ou] == osz[ov])
    u, v, label, ou, ov = u[sel], v[sel], label[sel], ou[sel], ov[sel]
    if u.size == 0:
        return []
    L = int(label.max()) + 1
    key = (ou * n + ov) * L + label
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    out = []
    for j in np.nonzero(counts == osz[uniq // L // n])[0].tolist():
        m = inv == j
        a, b = u[m], v[m]
        if np.unique(a).size == a.size and np.unique(b).size == b.size:
            out.append((int(uniq[j] // L // n), int(uniq[j] // L % n), a, b))
    return out


def analyse_quotient(n: int, u, v, label, generators: np.ndarray, sympy_limit: int = 2000) -> QuotientGroup:
    """Structure of the group generated by ``generators`` (automorphisms of the labelled digraph u->v).

    Example
    -------
    >>> gens = np.array([[1, 0, 3, 2]])   # swaps (0 1) and (2 3) together; edges 0->2, 1->3 tie them
    >>> q = analyse_quotient(4, np.array([0, 1]), np.array([2, 3]), np.array([1, 1]), gens)
    >>> q.order, len(q.dependents)
    (2, 1)
    """
    gens = np.asarray(generators, dtype=np.int64).reshape(-1, n) if n else np.zeros((0, 0), dtype=np.int64)
    u, v, label = (np.asarray(x, dtype=np.int64) for x in (u, v, label))
    orbit = _orbits(n, gens)
    # 1. drop orbits determined by a perfect matching (BFS over the orbit matching graph)
    nbrs: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for o1, o2, a, b in _matchings(n, u, v, label, orbit):
        nbrs.setdefault(o1, []).append((o2, a, b))
        nbrs.setdefault(o2, []).append((o1, b, a))
    big = [int(o) for o in np.unique(orbit) if np.count_nonzero(orbit == o) > 1]
    where: dict[int, np.ndarray] = {}  # orbit -> its points, ordered as beta(root points)
    root_of: dict[int, int] = {}
    dependents, root_orbit = [], {}
    for o in big:
        if o in root_of:
            continue
        pts = np.nonzero(orbit == o)[0]
        where[o], root_of[o] = pts, o
        root_orbit[o] = []
        queue = [o]
        while queue:
            cur = queue.pop()
            for o2, a, b in nbrs.get(cur, []):
                if o2 in root_of:
                    continue
                img = np.full(n, -1, dtype=np.int64)
                img[a] = b
                where[o2] = img[where[cur]]
                root_of[o2] = o
                root_orbit[o].append(o2)
                dependents.append((pts, where[o2]))
                queue.append(o2)
    roots = sorted(root_orbit)
    # 2. direct factors: union-find of root orbits moved by a common generator
    parent = {o: o for o in roots}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    root_pts = np.concatenate([where[o] for o in roots]) if roots else np.zeros(0, dtype=np.int64)
    moved_orbits = []
    for g in gens:
        mv = root_pts[g[root_pts] != root_pts]
        os_ = np.unique(orbit[mv]).tolist()
        moved_orbits.append(os_)
        for a in os_[1:]:
            parent[find(a)] = find(os_[0])
    comps: dict[int, list[int]] = {}
    for o in roots:
        comps.setdefault(find(o), []).append(o)
    factors = []
    for members in comps.values():
        pts = np.concatenate([where[o] for o in members])
        pos = np.full(n, -1, dtype=np.int64)
        pos[pts] = np.arange(pts.size)
        mine = [i for i, os_ in enumerate(moved_orbits) if os_ and find(os_[0]) == find(members[0])]
        local = pos[gens[mine][:, pts]] if mine else np.zeros((0, pts.size), dtype=np.int64)
        ar = np.arange(pts.size)
        diff = local != ar
        first_moved = diff.argmax(axis=1)
        rows = np.arange(len(mine))
        swaps = (
            bool(mine)
            and bool((diff.sum(axis=1) == 2).all())
            and bool((local[rows, local[rows, first_moved]] == first_moved).all())
        )
        orbs = [where[o] for o in members]
        if swaps:
            # transpositions generate the symmetric group on each component of their graph = each orbit
            order = math.prod(math.factorial(int(x.size)) for x in orbs)
            factors.append(QuotientFactor(pts, orbs, local, True, order, mine))
        else:
            if pts.size > sympy_limit:
                raise RuntimeError(
                    f"Expected a quotient factor of at most {sympy_limit} points for Schreier-Sims (got {pts.size})"
                )
            f = QuotientFactor(pts, orbs, local, False, 0, mine)
            f.order = int(f.sympy_group().order())
            if f.order == math.prod(math.factorial(int(x.size)) for x in orbs):
                f.symmetric = True  # the full product of symmetric groups on its orbits
            factors.append(f)
    return QuotientGroup(n, gens, orbit, factors, dependents, root_orbit)


def _orbits(n: int, gens: np.ndarray) -> np.ndarray:
    """Orbit id (smallest member) of every point under the group generated by ``gens``."""
    if gens.size == 0:
        return np.arange(n, dtype=np.int64)
    from scipy.sparse import coo_matrix  # imported only when used: it costs ~0.2 s of a CLI's cold start
    from scipy.sparse.csgraph import connected_components

    rows = np.tile(np.arange(n), gens.shape[0])
    m = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, gens.reshape(-1))), shape=(n, n))
    _, lab = connected_components(m, directed=True, connection="weak")
    first = np.full(lab.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n))
    return first[lab]
