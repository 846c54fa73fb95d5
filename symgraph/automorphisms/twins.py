"""Twin reduction: collapse interchangeable nodes before nauty, lift the group back exactly.

Two nodes are *twins* when they have the same colour and the same coloured in- and out-neighbourhoods (as
sets of ``(neighbour, colour)``; a parameter graph has at most one edge per ``(src, dst, colour)``). In a
DAG twins are never adjacent, so the transposition of two twins is an automorphism, and twinhood is an
equivalence relation preserved by every automorphism. Hence, for the twin classes ``C_1 .. C_m``:

* between two classes ``A``, ``B`` the edges of each colour are all-or-nothing (complete bipartite), so the
  *quotient* graph ``Q`` (one vertex per class, coloured by ``(colour, |class|)``, one edge per colour) loses
  nothing;
* ``Aut(G) = K ⋊ s(Aut(Q))`` with ``K = S_{|C_1|} x ... x S_{|C_m|}`` (the automorphisms fixing every class:
  any permutation inside classes preserves the complete bipartite blocks) and ``s`` the section that maps
  the ``r``-th member of ``A`` to the ``r``-th member of ``psi(A)`` (a homomorphism, injective);
* ``|Aut(G)| = |Aut(Q)| * prod |C_i|!``.

The reduction is iterated on ``Q`` (classes of classes: e.g. blocks of twins that are themselves twins)
until no twins remain; nauty then only sees the final quotient. A hidden layer of 1024 units becomes one
vertex. Three more exact steps make twins appear where structure hides them (each lifts uniquely, see its
docstring): :func:`fold_fixed` (fixed nodes become colours of their neighbours), :func:`chain_classes`
(a channel and the norm node hanging on it become one vertex) and :func:`matching_classes` (a residual
stream: each channel contracted with its own sum node). Twin, chain and matching steps alternate until none
applies; a ResNet-18 parameter graph (12,524 nodes) ends as a 12-vertex quotient.

Candidate classes are proposed with multiset hashes of the neighbourhoods and then verified exactly by
counting ``(class, neighbour, colour)`` triples; a class that fails verification is split into singletons,
which only costs speed, never correctness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .nauty import dag_depth, multiset_hash, unique_int

__all__ = ["TwinLevel", "TwinReduction", "reduce_twins", "twin_classes"]


@dataclass(frozen=True)
class TwinLevel:
    """One reduction step: ``cls[i]`` is the class (vertex of the next level) of vertex ``i`` of this level.

    ``members`` lists this level's vertices grouped by class (classes in order, members ascending) and
    ``start[c]`` is where class ``c`` begins in it; ``rank[i]`` is the position of ``i`` inside its class.
    """

    cls: np.ndarray
    sizes: np.ndarray
    members: np.ndarray
    start: np.ndarray
    rank: np.ndarray
    #: True for twin classes (any permutation inside a class is an automorphism); False for contracted
    #: chains (members ordered along the chain; nothing moves inside a chain)
    interchangeable: bool = True

    @property
    def num_nodes(self) -> int:
        return int(self.cls.size)

    @property
    def num_classes(self) -> int:
        return int(self.sizes.size)

    def lift(self, perm_next: np.ndarray) -> np.ndarray:
        """The section ``s``: class ``A -> psi(A)`` becomes r-th member -> r-th member (vectorised)."""
        perm_next = np.asarray(perm_next, dtype=np.int64)
        return self.members[self.start[perm_next[..., self.cls]] + self.rank]

    def shuffle(self, keys: np.ndarray) -> np.ndarray:
        """The element of K (permutation inside each class) that sorts members by ``keys`` [num_nodes]."""
        order = np.lexsort((keys, self.cls))  # grouped by class, shuffled inside by keys
        perm = np.empty(self.num_nodes, dtype=np.int64)
        perm[self.members] = order  # r-th member of each class -> r-th element of the shuffled class
        return perm


@dataclass
class TwinReduction:
    """The chain of reductions and the final quotient graph that nauty sees.

    ``quotient`` is ``(n, src, dst, colour, vertex_colour)`` of the last level (the graph itself when no
    twins were found). ``keep`` lists the original nodes that level 0 numbers (the non-fixed nodes, when
    fixed nodes were folded into colours by :func:`fold_fixed`); every other node is fixed.
    """

    levels: list[TwinLevel]
    quotient: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    num_nodes: int
    keep: np.ndarray | None = None
    _log10: float | None = field(default=None, repr=False)

    def expand(self, perm: np.ndarray) -> np.ndarray:
        """A permutation of level 0 as a permutation of all original nodes (identity on folded nodes)."""
        perm = np.asarray(perm, dtype=np.int64)
        if self.keep is None:
            return perm
        out = np.broadcast_to(np.arange(self.num_nodes), perm.shape[:-1] + (self.num_nodes,)).copy()
        out[..., self.keep] = self.keep[perm]
        return out

    @property
    def twin_order(self) -> int:
        """``prod |C|!`` over the twin classes of every level (the order of the K parts)."""
        out = 1
        for lv in self.twin_levels:
            for k, cnt in zip(*np.unique(lv.sizes[lv.sizes > 1], return_counts=True), strict=True):
                out *= math.factorial(int(k)) ** int(cnt)
        return out

    @property
    def twin_log10(self) -> float:
        if self._log10 is None:
            self._log10 = sum(float(np.sum([math.lgamma(int(k) + 1) for k in lv.sizes[lv.sizes > 1]]))
                              for lv in self.twin_levels) / math.log(10)
        return self._log10

    @property
    def twin_levels(self) -> list[TwinLevel]:
        return [lv for lv in self.levels if lv.interchangeable]

    def lift(self, perm: np.ndarray, to_level: int = 0) -> np.ndarray:
        """Lift a permutation of the vertices of level ``len(levels)`` (the quotient) down to ``to_level``."""
        out = np.asarray(perm, dtype=np.int64)
        for lv in reversed(self.levels[to_level:]):
            out = lv.lift(out)
        return self.expand(out) if to_level == 0 else out

    def class_generators(self) -> list[np.ndarray]:
        """Generators of the K parts, lifted to the original nodes: per class a transposition and a cycle.

        ``(m0 m1)`` and ``(m0 m1 ... m_{k-1})`` generate ``S_k``; classes of deeper levels permute whole
        blocks (their members' lifts).
        """
        gens = []
        for depth, lv in enumerate(self.levels):
            if not lv.interchangeable:
                continue
            for c in np.nonzero(lv.sizes > 1)[0].tolist():
                gens.extend(self.class_generator_pair(depth, c))
        return gens

    def class_generator_pair(self, depth: int, c: int) -> list[np.ndarray]:
        """A transposition and (for k > 2) a k-cycle of twin class ``c`` of level ``depth``, lifted."""
        lv = self.levels[depth]
        s, k = int(lv.start[c]), int(lv.sizes[c])
        mem = lv.members[s : s + k]
        swap = np.arange(lv.num_nodes)
        swap[mem[0]], swap[mem[1]] = mem[1], mem[0]
        out = [self._lift_from(depth, swap)]
        if k > 2:
            cyc = np.arange(lv.num_nodes)
            cyc[mem] = np.roll(mem, -1)
            out.append(self._lift_from(depth, cyc))
        return out

    def _lift_from(self, depth: int, perm: np.ndarray) -> np.ndarray:
        for lv in reversed(self.levels[:depth]):
            perm = lv.lift(perm)
        return self.expand(perm)

    def random_element(self, quotient_perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``k_0 s(k_1 s(... s(psi)))`` with every ``k`` uniform in its K part: uniform in Aut(G) when
        ``psi`` is uniform in Aut(Q) (unique factorisation ``Aut = K ⋊ s(Aut(Q))`` at every level)."""
        perm = np.asarray(quotient_perm, dtype=np.int64)
        for lv in reversed(self.levels):
            perm = lv.lift(perm)
            if lv.interchangeable:
                perm = lv.shuffle(rng.random(lv.num_nodes))[perm]
        return self.expand(perm)

    def class_members(self, depth: int, cls: int) -> np.ndarray:
        """Original nodes under class ``cls`` of level ``depth`` (the union of its members' preimages)."""
        lv = self.levels[depth]
        mem = lv.members[int(lv.start[cls]) : int(lv.start[cls]) + int(lv.sizes[cls])]
        for lower in reversed(self.levels[:depth]):
            mem = np.nonzero(np.isin(lower.cls, mem))[0]
        return mem if self.keep is None else self.keep[mem]


def twin_classes(n: int, src, dst, color, vertex_color) -> np.ndarray:
    """Class id of every vertex (ids ``0 .. m-1`` in order of first member); singletons where no twin.

    Example
    -------
    >>> # 0 -> {1, 2} -> 3 with one colour: 1 and 2 are twins
    >>> twin_classes(4, [0, 0, 1, 2], [1, 2, 3, 3], [0, 0, 0, 0], [0, 1, 1, 2]).tolist()
    [0, 1, 1, 2]
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    C = int(color.max()) + 1 if color.size else 1
    h_in = multiset_hash(src * C + color, dst, n, salt=0x1234567)
    h_out = multiset_hash(dst * C + color, src, n, salt=0x7654321)
    deg_in = np.bincount(dst, minlength=n)
    deg_out = np.bincount(src, minlength=n)
    sig = np.stack([vc, h_in, h_out, deg_in, deg_out], axis=1)
    cand = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(cand)
    bad = np.zeros(sizes.size, dtype=bool)
    # exact check: each member has at most one edge per (neighbour, colour), the members have equal degrees,
    # so equal neighbourhoods <=> every (class, neighbour, colour) triple occurs |class| times
    for a, b in ((dst, src), (src, dst)):
        sel = sizes[cand[a]] > 1
        if not sel.any():
            continue
        key = (cand[a[sel]] * n + b[sel]) * C + color[sel]
        uniq, counts = unique_int(key, return_counts=True)
        cls_of = uniq // (n * C)
        bad[cls_of[counts != sizes[cls_of]]] = True
    if bad.any():  # split unverified classes (hash collision or an illegal self-loop): exactness first
        hit = bad[cand]
        cand = cand.copy()
        cand[hit] = cand.max() + 1 + np.nonzero(hit)[0]
    # renumber by first member, so that class ids follow node order
    _, first, inv = np.unique(cand, return_index=True, return_inverse=True)
    rank_of = np.empty(first.size, dtype=np.int64)
    rank_of[np.argsort(first)] = np.arange(first.size)
    return rank_of[inv.reshape(-1)]


def _make_level(cls: np.ndarray, position: np.ndarray | None = None) -> TwinLevel:
    sizes = np.bincount(cls)
    members = np.argsort(cls, kind="stable") if position is None else np.lexsort((position, cls))
    start = np.zeros(sizes.size, dtype=np.int64)
    start[1:] = np.cumsum(sizes)[:-1]
    rank = np.empty(cls.size, dtype=np.int64)
    rank[members] = np.arange(cls.size) - start[cls[members]]
    return TwinLevel(cls, sizes, members, start, rank, position is None)


def chain_classes(n: int, src, dst, color, vertex_color) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Contract chains: edges ``x -> y`` with ``x`` of out-degree 1 and ``y`` of in-degree 1.

    Such edges form vertex-disjoint paths (a norm node hanging on its channel, an activation copy); the
    condition is automorphism-invariant, chains only enter at their head and leave at their tail, so
    replacing each chain by one vertex coloured by its sequence of vertex and edge colours keeps the group,
    and a quotient automorphism lifts uniquely (position along the chain to the same position).

    Returns ``(cls, position, quotient vertex colour)``, or None when there is no chain edge.

    Example
    -------
    >>> cls, pos, qv = chain_classes(3, [0, 1], [1, 2], [0, 0], [0, 1, 2])
    >>> cls.tolist(), pos.tolist()
    ([0, 0, 0], [0, 1, 2])
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    outdeg = np.bincount(src, minlength=n)
    indeg = np.bincount(dst, minlength=n)
    ce = (outdeg[src] == 1) & (indeg[dst] == 1) & (src != dst)
    if not ce.any():
        return None
    nxt = np.full(n, -1, dtype=np.int64)
    nxt[src[ce]] = dst[ce]
    ecol = np.full(n, -1, dtype=np.int64)
    ecol[src[ce]] = color[ce]
    has_prev = np.zeros(n, dtype=bool)
    has_prev[dst[ce]] = True
    heads = np.nonzero(~has_prev)[0]
    cls = np.full(n, -1, dtype=np.int64)
    pos = np.zeros(n, dtype=np.int64)
    # walk the chains from their heads (chain length steps; a cycle of chain edges cannot occur in a DAG)
    cls[heads] = np.arange(heads.size)
    cur, p = heads, 0
    while cur.size:
        nx = nxt[cur]
        ok = nx >= 0
        prev_cls = cls[cur[ok]]
        cur, p = nx[ok], p + 1
        cls[cur] = prev_cls
        pos[cur] = p
    if (cls < 0).any():  # chain edges closing a cycle (not a DAG): leave those nodes alone
        loose = np.nonzero(cls < 0)[0]
        cls[loose] = heads.size + np.arange(loose.size)
        pos[loose] = 0
        ecol[loose] = -1
    k = int(cls.max()) + 1
    L = int(pos.max()) + 1
    sig = np.full((k, 2 * L), -1, dtype=np.int64)
    sig[cls, 2 * pos] = vc
    inner = (nxt >= 0) & (cls[np.maximum(nxt, 0)] == cls)
    sig[cls[inner], 2 * pos[inner] + 1] = ecol[inner]
    qv = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
    return cls, pos, qv


def matching_classes(n: int, src, dst, color, vertex_color):
    """Contract canonical perfect matchings: all ``c``-edges from colour class ``a`` to class ``b`` (a != b),
    when they match the two classes perfectly (a residual stream: each channel to its own sum node).

    Every automorphism maps class ``a`` onto itself and ``b`` onto itself and preserves the ``c``-edges, so it
    maps matched pairs to matched pairs; conversely a permutation of the pairs lifts uniquely (``x`` first,
    ``y = mu(x)`` second). Edges keep which end of a pair they touch (``side`` in their new colour), so the
    contracted graph loses nothing. Pairs joined by any other edge are left alone.

    Returns ``(cls, position, quotient vertex colour, new edge colours)`` or None.

    Example
    -------
    >>> cls, pos, qv, _ = matching_classes(4, [0, 1], [2, 3], [0, 0], [0, 0, 1, 1])
    >>> cls.tolist(), pos.tolist()
    ([0, 1, 0, 1], [0, 0, 1, 1])
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    if src.size == 0:
        return None
    depth = dag_depth(n, src, dst)
    if depth is not None:  # an invariant that separates the layers (e.g. the sum nodes of each block)
        vc = _dense(vc * (int(depth.max()) + 1) + depth)
    V = int(vc.max()) + 1
    C = int(color.max()) + 1
    size = np.bincount(vc, minlength=V)
    key = (vc[src] * V + vc[dst]) * C + color
    uk, counts = unique_int(key, return_counts=True)
    a_of, b_of = uk // C // V, uk // C % V
    ok = (a_of != b_of) & (counts == size[a_of]) & (counts == size[b_of]) & (counts > 1)
    cands = uk[ok]
    if cands.size == 0:
        return None
    # distinct sources and targets per candidate key: a perfect matching has counts distinct of each
    sel = np.isin(key, cands)
    n_src = unique_int(key[sel] * n + src[sel], return_counts=True)[0] // n
    n_dst = unique_int(key[sel] * n + dst[sel], return_counts=True)[0] // n
    cs = np.bincount(np.searchsorted(cands, n_src), minlength=cands.size)
    cd = np.bincount(np.searchsorted(cands, n_dst), minlength=cands.size)
    good = cands[(cs == counts[ok]) & (cd == counts[ok])]
    used: set[int] = set()
    chosen = []
    for kk in good.tolist():
        a, b = kk // C // V, kk // C % V
        if a not in used and b not in used:
            used.update((a, b))
            chosen.append(kk)
    while chosen:
        partner = np.full(n, -1, dtype=np.int64)
        sel = np.isin(key, np.asarray(chosen))
        partner[src[sel]] = dst[sel]
        is_y = np.zeros(n, dtype=bool)
        is_y[dst[sel]] = True
        head = np.nonzero(~is_y)[0]  # x ends and uncontracted vertices
        cls = np.full(n, -1, dtype=np.int64)
        cls[head] = np.arange(head.size)
        pos = np.zeros(n, dtype=np.int64)
        xs = np.nonzero(partner >= 0)[0]
        cls[partner[xs]] = cls[xs]
        pos[partner[xs]] = 1
        internal = cls[src] == cls[dst]
        extra = internal & ~sel  # pairs joined by another edge too: drop their matching, try again
        if not extra.any():
            break
        bad_keys = set(key[sel & np.isin(cls[src], cls[src[extra]])].tolist())
        chosen = [kk for kk in chosen if kk not in bad_keys]
    if not chosen:
        return None
    side = np.where(partner >= 0, 0, np.where(is_y, 1, 2))
    qv_sig = np.stack([vc[head], np.where(partner[head] >= 0, vc[np.maximum(partner[head], 0)], -1)], axis=1)
    qv = np.unique(qv_sig, axis=0, return_inverse=True)[1].reshape(-1)
    new_color = (color * 3 + side[src]) * 3 + side[dst]
    new_color[internal] = -1
    return cls, pos, qv, new_color


def fold_fixed(n: int, src, dst, color, vertex_color, fixed) -> tuple[tuple, np.ndarray]:
    """Remove fixed nodes, recording each other node's edges to and from them in its colour.

    Every automorphism fixes the fixed nodes pointwise, so a permutation of the other nodes is an
    automorphism iff it preserves colours, the edges among them, and each node's set of
    ``(fixed neighbour, colour, direction)``: exactly what the new colours say. Removes, e.g., the
    512 x 1000 edges into a classifier's output nodes before anything else looks at the graph.
    Equal sets are proposed by hashing and verified exactly (an unverified class falls back to Python sets).

    Returns ``((m, src, dst, colour, vertex_colour), keep)`` with ``keep`` the original ids of the m nodes.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    fixed = np.asarray(fixed, dtype=bool)
    keep = np.nonzero(~fixed)[0]
    new_id = np.full(n, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.size)
    C = int(color.max()) + 1 if color.size else 1
    out_f = ~fixed[src] & fixed[dst]
    in_f = fixed[src] & ~fixed[dst]
    node = np.concatenate([src[out_f], dst[in_f]])
    key = np.concatenate([(dst[out_f] * C + color[out_f]) * 2, (src[in_f] * C + color[in_f]) * 2 + 1])
    h = multiset_hash(key, node, n, salt=0xF1DE)
    deg = np.bincount(node, minlength=n)
    cand = np.unique(np.stack([vc, h, deg], axis=1)[keep], axis=0, return_inverse=True)[1].reshape(-1)
    if node.size:
        size = np.bincount(cand)
        cn = cand[new_id[node]]
        trip = cn * (2 * C * n) + key
        uniq, counts = unique_int(trip, return_counts=True)
        c_of = uniq // (2 * C * n)
        bad = np.unique(c_of[counts != size[c_of]])
        if bad.size:  # hash collision: exact sets for the nodes of unverified classes
            table: dict[tuple, int] = {}
            hit = np.nonzero(np.isin(cand, bad))[0]
            for i in hit.tolist():
                sig = (int(cand[i]), tuple(sorted(key[node == keep[i]].tolist())))
                cand[i] = int(cand.max()) + 1 + table.setdefault(sig, len(table))
    sel = ~fixed[src] & ~fixed[dst]
    m = int(keep.size)
    return (m, new_id[src[sel]], new_id[dst[sel]], color[sel], _dense(cand)), keep


def _dense(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64) if x.size else x


def reduce_twins(n: int, src, dst, color, vertex_color, max_levels: int = 32, chains: bool = True,
                 fixed=None) -> TwinReduction:
    """Iterated twin reduction (and chain contraction) of a coloured directed multigraph (module docstring).

    Twin steps and chain steps alternate until neither changes the graph: contracting a channel with its
    norm node makes the channels of a layer twins again, and so on.

    Example
    -------
    >>> r = reduce_twins(4, [0, 0, 1, 2], [1, 2, 3, 3], [0, 0, 0, 0], [0, 1, 1, 2])
    >>> r.quotient[0], r.twin_order   # {1, 2} are twins; the path 0 -> {1,2} -> 3 is then one chain
    (1, 2)
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    levels: list[TwinLevel] = []
    keep = None
    if fixed is not None:
        (m0, src, dst, color, vc), keep = fold_fixed(int(n), src, dst, color, vc, fixed)
    cur = (int(n) if keep is None else m0, src, dst, color, vc)
    idle = 0
    step = 0
    while idle < 3 and len(levels) < max_levels:
        m, s, d, c, v = cur
        if m == 0:
            break
        C = int(c.max()) + 1 if c.size else 1
        if step % 3 == 0:
            cls = twin_classes(m, s, d, c, v)
            k = int(cls.max()) + 1 if m else 0
            if k == m:
                idle, step = idle + 1, step + 1
                continue
            lv = _make_level(cls)
            # quotient: one vertex per class, coloured by (colour, class size); one edge per (A, B, colour)
            rep = lv.members[lv.start]
            qv = np.unique(np.stack([v[rep], lv.sizes]), axis=1, return_inverse=True)[1].reshape(-1)
            key = unique_int((cls[s] * k + cls[d]) * C + c)
        elif step % 3 == 2:
            found = matching_classes(m, s, d, c, v) if chains else None
            if found is None:
                idle, step = idle + 1, step + 1
                continue
            cls, pos, qv, newc = found
            k = int(cls.max()) + 1
            lv = _make_level(cls, pos)
            ext = newc >= 0
            c = _dense(newc[ext])
            C = int(c.max()) + 1 if c.size else 1
            key = unique_int((cls[s[ext]] * k + cls[d[ext]]) * C + c)
        else:
            found = chain_classes(m, s, d, c, v) if chains else None
            if found is None:
                idle, step = idle + 1, step + 1
                continue
            cls, pos, qv = found
            k = int(cls.max()) + 1
            lv = _make_level(cls, pos)
            ext = cls[s] != cls[d]  # chain-internal edges live in the vertex colour now
            key = unique_int((cls[s[ext]] * k + cls[d[ext]]) * C + c[ext])
        levels.append(lv)
        cur = (k, key // C // k, key // C % k, key % C, qv)
        idle, step = 0, step + 1
    return TwinReduction(levels, cur, int(n), keep)
