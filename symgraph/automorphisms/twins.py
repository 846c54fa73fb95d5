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
vertex. More exact steps make twins appear where structure hides them (each lifts uniquely, see its
docstring): :func:`fold_fixed` (fixed nodes become colours of their neighbours), :func:`chain_classes`
(a channel and the norm node hanging on it become one vertex; an expansion channel and its own depthwise
channel), :func:`_matching` (a residual stream: each channel contracted with all its sum nodes at once),
:func:`closed_twin_classes` (pairwise-joined interchangeable vertices, which contracted streams produce) and
colour refinement (:func:`~symgraph.automorphisms.nauty.refine_colors`, which splits classes that only look
alike). The steps take turns until none applies; a ResNet-18 parameter graph (12,524 nodes) ends as a
12-vertex quotient, a DenseNet-121 one (53,068 nodes) as 62 vertices.

Candidate classes are proposed with multiset hashes of the neighbourhoods and then verified exactly by
counting ``(class, neighbour, colour)`` triples; a class that fails verification is split into singletons,
which only costs speed, never correctness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..progress import Progress
from .memory import trim_heap
from .nauty import _mix, argsort_int, dag_depth, multiset_hash, multiset_hash_pairs, refine_colors, unique_int

__all__ = ["TwinLevel", "TwinReduction", "reduce_twins", "twin_classes", "chain_classes", "closed_twin_classes"]


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
            self._log10 = sum(
                float(np.sum([math.lgamma(int(k) + 1) for k in lv.sizes[lv.sizes > 1]])) for lv in self.twin_levels
            ) / math.log(10)
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


def twin_classes(n: int, src, dst, color, vertex_color, simple: bool = False) -> np.ndarray:
    """Class id of every vertex (ids ``0 .. m-1`` in order of first member); singletons where no twin.

    ``simple=True`` promises one edge per ordered pair (the labelled graph of :func:`reduce_twins`): the
    candidates are then verified against one member's neighbourhood in a table, without sorting.

    Example
    -------
    >>> # 0 -> {1, 2} -> 3 with one colour: 1 and 2 are twins
    >>> twin_classes(4, [0, 0, 1, 2], [1, 2, 3, 3], [0, 0, 0, 0], [0, 1, 1, 2]).tolist()
    [0, 1, 1, 2]
    """
    # int32 or int64 edge arrays are read as they are (the labelled graph's are int32); every key below is
    # formed in int64 (:func:`~.nauty.multiset_hash_pairs`, the table check), chunk by chunk: no int64 copy
    src, dst, color = _index(src), _index(dst), _index(color)
    vc = np.asarray(vertex_color, dtype=np.int64)
    C = int(color.max()) + 1 if color.size else 1
    h_in = multiset_hash_pairs(src, C, color, dst, n, salt=0x1234567)
    h_out = multiset_hash_pairs(dst, C, color, src, n, salt=0x7654321)
    deg_in = np.bincount(dst, minlength=n)
    deg_out = np.bincount(src, minlength=n)
    sig = np.stack([vc, h_in, h_out, deg_in, deg_out], axis=1)
    cand = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(cand)
    bad = np.zeros(sizes.size, dtype=bool)
    # exact check: each member has at most one edge per (neighbour, colour), the members have equal degrees,
    # so equal neighbourhoods <=> every (class, neighbour, colour) triple occurs |class| times
    big = sizes > 1
    # classes of two or more numbered 0 .. R-1: the keys below then often fit int32 (a sort twice as fast)
    big_id = np.cumsum(big) - 1
    big_size = sizes[big]
    # simple graph: a class's members have equal degrees, so their neighbourhoods are equal iff every member's
    # (neighbour, label) is one of a reference member's, looked up in a [classes, n] table; with many classes
    # the table is made for a group of them at a time (passes over the edges), so that it never has more
    # entries than twice the edges (int16 entries for the few labels of real graphs: <= 4 bytes per edge)
    tabled = simple and (color.size == 0 or color.max() < 2**31)
    R = int(big_size.size)
    ref = np.full(sizes.size, n, dtype=np.int64)
    if tabled:
        _a_member(cand, ref)
        gid = np.where(big, big_id, -1)
        per_pass = max(1, max(2 * color.size, TABLE_ENTRIES) // max(n, 1))  # classes per pass
    for a, b in ((dst, src), (src, dst)):
        if tabled:
            for g0 in range(0, R, per_pass):
                _table_check(a, b, color, cand, gid, ref, n, g0, min(R, g0 + per_pass), bad)
            continue
        sel = np.nonzero(big[cand[a]])[0]
        if not sel.size:
            continue
        key = big_id[cand[a[sel]]]  # (class, neighbour, colour), built in place: one array of the edges' size
        key *= n
        key += b[sel]
        key *= C
        key += color[sel]
        del sel
        uniq, counts = unique_int(key, return_counts=True)
        del key
        cls_of = uniq // (n * C)
        wrong = np.zeros(big_size.size, dtype=bool)
        wrong[cls_of[counts != big_size[cls_of]]] = True
        bad[np.nonzero(big)[0][wrong]] = True
    if bad.any():  # split unverified classes (hash collision or an illegal self-loop): exactness first
        hit = bad[cand]
        cand = cand.copy()
        cand[hit] = cand.max() + 1 + np.nonzero(hit)[0]
    # renumber by first member, so that class ids follow node order
    _, first, inv = np.unique(cand, return_index=True, return_inverse=True)
    rank_of = np.empty(first.size, dtype=np.int64)
    rank_of[np.argsort(first)] = np.arange(first.size)
    return rank_of[inv.reshape(-1)]


def _table_check(a, b, color, cand, gid, ref, n: int, g0: int, g1: int, bad: np.ndarray) -> None:
    """The table check of :func:`twin_classes` for one direction and the classes numbered ``g0 .. g1 - 1``
    among those of two or more (``gid``), in chunks of the edges: mark ``bad[c]`` for each class ``c`` some
    member ``x`` of which has an edge ``x - y`` of label ``l`` (``x`` the ``a`` end, ``y`` the ``b`` end)
    that the class's reference member ``ref[c]`` does not have."""
    dtype = np.int16 if color.size == 0 or int(color.max()) < 2**15 - 1 else np.int32
    table = np.full((g1 - g0) * n, -1, dtype=dtype)
    for fill in (True, False):  # the reference members' edges first, then every member's looked up
        for lo in range(0, a.size, CHUNK_EDGES):
            aa = a[lo : lo + CHUNK_EDGES]
            ca = cand[aa]
            g = gid[ca]
            hit = (g >= g0) & (g < g1)
            if fill:
                hit &= aa == ref[ca]
            key = (g[hit] - g0) * n + b[lo : lo + CHUNK_EDGES][hit]
            col = color[lo : lo + CHUNK_EDGES][hit]
            if fill:
                table[key] = col
            else:
                bad[ca[hit][table[key] != col]] = True


def _a_member(cand: np.ndarray, out: np.ndarray) -> None:
    """``out[c]`` = a member of candidate class ``c`` (which one does not matter: the check of
    :func:`twin_classes` compares every member with it, and equal neighbourhoods are equal to any member's)."""
    out[cand] = np.arange(cand.size, dtype=np.int64)


def _make_level(cls: np.ndarray, position: np.ndarray | None = None) -> TwinLevel:
    sizes = np.bincount(cls)
    members = np.argsort(cls, kind="stable") if position is None else np.lexsort((position, cls))
    start = np.zeros(sizes.size, dtype=np.int64)
    start[1:] = np.cumsum(sizes)[:-1]
    rank = np.empty(cls.size, dtype=np.int64)
    rank[members] = np.arange(cls.size) - start[cls[members]]
    return TwinLevel(cls, sizes, members, start, rank, position is None)


def chain_classes(n: int, src, dst, label, vertex_color) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Contract chains of a labelled simple digraph: edges ``x -> y`` where ``y`` is the only out-neighbour of
    ``x`` and ``x`` the only in-neighbour of ``y``.

    Such edges form vertex-disjoint paths (a norm node hanging on its channel, an activation copy, a 1x1
    expansion channel feeding its own depthwise channel); the condition is automorphism-invariant, chains
    only enter at their head and leave at their tail, so replacing each chain by one vertex coloured by its
    sequence of vertex colours and edge labels (a depthwise 3x3 kernel's nine colours are one label) keeps the
    group, and a quotient automorphism lifts uniquely (position along the chain to the same position).

    ``src, dst`` must be one edge per ordered pair (parallel edges collapsed into their label). Returns
    ``(cls, position, quotient vertex colour)``, or None when there is no chain edge. The quotient colours
    number the distinct chain signatures by their first chain (an invariant numbering of an invariant
    partition, independent of how the labels are numbered).

    Example
    -------
    >>> cls, pos, qv = chain_classes(3, [0, 1], [1, 2], [0, 0], [0, 1, 2])
    >>> cls.tolist(), pos.tolist()
    ([0, 0, 0], [0, 1, 2])
    """
    src, dst, label = _index(src), _index(dst), _index(label)  # no arithmetic on them below: any int dtype
    vc = np.asarray(vertex_color, dtype=np.int64)
    outdeg = np.bincount(src, minlength=n).astype(np.int64)
    indeg = np.bincount(dst, minlength=n).astype(np.int64)
    ce = (outdeg[src] == 1) & (indeg[dst] == 1) & (src != dst)
    if not ce.any():
        return None
    nxt = np.full(n, -1, dtype=np.int64)
    nxt[src[ce]] = dst[ce]
    ecol = np.full(n, -1, dtype=np.int64)
    ecol[src[ce]] = label[ce]
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
    if k == n:  # every chain edge closes a cycle: nothing to contract
        return None
    L = int(pos.max()) + 1
    sig = np.full((k, 2 * L), -1, dtype=np.int64)
    sig[cls, 2 * pos] = vc
    inner = (nxt >= 0) & (cls[np.maximum(nxt, 0)] == cls)
    sig[cls[inner], 2 * pos[inner] + 1] = ecol[inner]
    return cls, pos, _first_rank(sig)


def _first_rank(rows: np.ndarray) -> np.ndarray:
    """Id of each row's distinct value, numbered in order of first occurrence."""
    _, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size, dtype=np.int64)
    return rank[inv.reshape(-1)]


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
    fixed = np.asarray(fixed, dtype=bool)
    keep = np.nonzero(~fixed)[0]
    new_id = np.full(n, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.size)
    C = int(color.max()) + 1 if color.size else 1
    node, key = _fixed_keys(src, dst, color, fixed, C)
    sel = ~fixed[src] & ~fixed[dst]
    m = int(keep.size)
    vc = _fixed_colours(n, vertex_color, fixed, keep, node, key, C)
    return (m, new_id[src[sel]], new_id[dst[sel]], color[sel], vc), keep


def _fixed_keys(src, dst, color, fixed, C: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges between a non-fixed node and a fixed one: ``(non-fixed end, (fixed end, colour, direction))``."""
    out_f = ~fixed[src] & fixed[dst]
    in_f = fixed[src] & ~fixed[dst]
    node = np.concatenate([src[out_f], dst[in_f]])
    key = np.concatenate([(dst[out_f] * C + color[out_f]) * 2, (src[in_f] * C + color[in_f]) * 2 + 1])
    return node, key


def _fixed_colours(n: int, vertex_color, fixed, keep, node, key, C: int) -> np.ndarray:
    """New colours of the kept nodes: old colour and the exact set of keys (:func:`fold_fixed`)."""
    vc = np.asarray(vertex_color, dtype=np.int64)
    new_id = np.full(n, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.size)
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
    return _dense(cand)


#: Steps on graphs of at least this many edges hand freed heap memory back afterwards (:func:`trim_heap`).
TRIM_EDGES = 1 << 20

#: Entries of the twin check's table made in one pass at least (more where the graph has more edges).
TABLE_ENTRIES = 1 << 24

#: Edges per chunk of the first pass over a graph (fixed nodes folded, parallel edges merged): the raw edge
#: list of a 100M-parameter model is never copied whole.
CHUNK_EDGES = 1 << 18


def _index_dtype(m: int):
    """int32 for vertex ids and labels below ``2**31`` (the labelled graph's edge arrays: half the memory)."""
    return np.int32 if m < 2**31 else np.int64


def _index(x) -> np.ndarray:
    """An integer array as it is (int32 or int64: no copy); anything else as int64."""
    x = np.asarray(x)
    return x if x.dtype in (np.int32, np.int64) else x.astype(np.int64)


def _fold_and_collapse(n: int, src, dst, color, vertex_color, fixed, chunk: int = CHUNK_EDGES):
    """:func:`fold_fixed` then :func:`_collapse`, in one pass over chunks of the raw edge list.

    A pair's parallel edges usually come as one run (the builders emit them so); pairs met in several runs
    are merged at the end (:func:`_merge_runs`, a sort of the collapsed edges only). ``src, dst, color`` may be any
    integer arrays (views of the graph's tensors: nothing is copied whole). Returns
    ``((m, u, v, lab, table, vc), keep)`` like :func:`_collapse` after :func:`fold_fixed`.
    """
    E = int(src.size)
    fixed = np.zeros(n, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    keep = np.nonzero(~fixed)[0]
    m = int(keep.size)
    new_id = np.full(n, -1, dtype=np.int64)
    new_id[keep] = np.arange(m)
    C = int(color.max()) + 1 if E else 1
    if E and int(color.min()) < 0:
        raise ValueError(f"Expected edge colours >= 0 (got {int(color.min())})")
    nodes, keys = [], []
    small = _index_dtype(m)
    # the labelled graph in int32 (vertex ids and labels below 2**31: 12 bytes per merged edge), written
    # chunk by chunk into buffers of the raw edge count: an upper bound, and pages never written are never
    # committed (np.empty), so they cost address space, not memory; the result is a view of their head
    u_buf, v_buf = np.empty(E, dtype=small), np.empty(E, dtype=small)
    lab_buf = np.empty(E, dtype=np.int32)
    table: dict[tuple, int] = {}
    breaks: tuple[list, list] = ([], [])
    last: list[int | None] = [None, None]
    offset = 0
    a = 0
    while a < E:
        b = min(E, a + chunk)
        while b < E and src[b] == src[b - 1] and dst[b] == dst[b - 1]:  # never split a pair's run
            b += 1
        s = np.asarray(src[a:b], dtype=np.int64)
        d = np.asarray(dst[a:b], dtype=np.int64)
        c = np.asarray(color[a:b], dtype=np.int64)
        a = b
        fs, fd = fixed[s], fixed[d]
        if fs.any() or fd.any():
            node, key = _fixed_keys(s, d, c, fixed, C)
            nodes.append(node)
            keys.append(key)
            sel = ~fs & ~fd
            s, d, c = s[sel], d[sel], c[sel]
        del fs, fd
        if not s.size:
            continue
        s, d = new_id[s], new_id[d]
        first, counts = _runs(s * m + d)
        if counts.max() > 1:
            inner = np.ones(c.size, dtype=bool)
            inner[first] = False
            if not bool(np.all(c[1:][inner[1:]] >= c[:-1][inner[1:]])):  # colours sorted inside each run
                run = np.repeat(np.arange(first.size, dtype=np.int64), counts)
                c = c[np.lexsort((c, run))]
        ids, rep = _run_ids(c, first, counts)
        gid = np.array(
            [table.setdefault(tuple(c[first[r] : first[r] + counts[r]].tolist()), len(table)) for r in rep.tolist()],
            dtype=np.int64,
        )
        s1, d1 = s[first], d[first]
        for o, (x, y) in enumerate(((s1, d1), (d1, s1))):  # where the pair keys stop increasing, both ways
            k = x * m + y
            if last[o] is not None and k[0] <= last[o]:
                breaks[o].append(np.array([offset], dtype=np.int64))
            breaks[o].append(np.nonzero(k[1:] <= k[:-1])[0] + 1 + offset)
            last[o] = int(k[-1])
            del k
        u_buf[offset : offset + s1.size] = s1
        v_buf[offset : offset + s1.size] = d1
        lab_buf[offset : offset + s1.size] = gid[ids]
        offset += s1.size
        del s, d, c, first, counts, ids, s1, d1
    trim_heap()  # the chunks' freed temporaries
    node, key = _concat(nodes), _concat(keys)  # the edges to fixed nodes (a classifier's, mostly)
    vc = _fixed_colours(n, vertex_color, fixed, keep, node, key, C)
    del node, key
    u, v, lab = u_buf[:offset], v_buf[:offset], lab_buf[:offset]
    del u_buf, v_buf, lab_buf
    brk = tuple(np.concatenate(b) if b else np.zeros(0, dtype=np.int64) for b in breaks)
    del breaks
    trim_heap()  # and the fixed colours', before the merged list's own passes
    tuples = list(table)
    del table
    used = None
    if not _distinct(u, v, m, brk):  # some pair's parallel edges came in several runs (attention's Q/K/V blocks)
        u, v, lab, tuples = _merge_overlaps(m, u, v, lab, tuples, brk, chunk)
        used = np.zeros(len(tuples), dtype=bool)  # a run's own multiset may now be no pair's label
        for a in range(0, lab.size, chunk):
            used[lab[a : a + chunk]] = True
    remap, sorted_table = _canonical_map(tuples, used)
    for a in range(0, lab.size, chunk):  # relabelled in place: no second label array
        lab[a : a + chunk] = remap[lab[a : a + chunk]]
    return (m, u, v, lab, sorted_table, vc), keep


def _merge_overlaps(m: int, u, v, lab, tuples: list[tuple], breaks: tuple, chunk: int = CHUNK_EDGES):
    """:func:`_merge_runs` restricted to the edges whose pairs can repeat, in place.

    The edge list falls into increasing segments (``breaks`` as in :func:`_distinct`). A pair met twice lies
    in two segments, hence inside the intersection of their bounding boxes (source range x target range);
    only the edges of two meeting segments inside their intersection are merged (an attention layer's Q and
    K blocks, which join the same pairs), intersections that overlap each other together, one group at a
    time. Every other edge's pair occurs once and stays as it is. Returns ``(u, v, lab, tuples)`` with labels
    into ``tuples`` (the given tuples first, then the merged multisets), the edges written over the heads of
    the given arrays (which must belong to the caller alone)."""
    o = 0 if breaks[0].size <= breaks[1].size else 1
    br = breaks[o]
    if br.size > 4096:  # too many segments for their pairwise boxes: one sort of everything
        return _merge_runs(m, u, v, lab, tuples)
    first_end, second_end = (u, v) if o == 0 else (v, u)  # inside a segment first_end never decreases
    starts = np.concatenate([[0], br]).astype(np.int64)
    ends = np.concatenate([br, [u.size]]).astype(np.int64)
    lo1, hi1, lo2, hi2 = (
        f(x, starts).astype(np.int64)
        for x in (first_end, second_end)
        for f in (np.minimum.reduceat, np.maximum.reduceat)
    )
    meet = (lo1[:, None] <= hi1[None, :]) & (lo1[None, :] <= hi1[:, None])
    meet &= (lo2[:, None] <= hi2[None, :]) & (lo2[None, :] <= hi2[:, None])
    ii, jj = np.nonzero(np.triu(meet, 1))
    del meet
    if ii.size > 4096:
        return _merge_runs(m, u, v, lab, tuples)
    # the intersection boxes, grouped where they overlap (a pair in two of them is one group's)
    b1, e1 = np.maximum(lo1[ii], lo1[jj]), np.minimum(hi1[ii], hi1[jj])
    b2, e2 = np.maximum(lo2[ii], lo2[jj]), np.minimum(hi2[ii], hi2[jj])
    over = (b1[:, None] <= e1[None, :]) & (b1[None, :] <= e1[:, None])
    over &= (b2[:, None] <= e2[None, :]) & (b2[None, :] <= e2[:, None])
    root = np.arange(ii.size)

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = int(root[x])
        return x

    for a, b in zip(*np.nonzero(np.triu(over, 1)), strict=True):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            root[max(ra, rb)] = min(ra, rb)
    del over
    box_group = np.array([find(k) for k in range(ii.size)], dtype=np.int64)
    dirty = np.zeros(u.size, dtype=bool)
    ids = {t: i for i, t in enumerate(tuples)}
    NL = max(len(tuples), 1)
    merged = []
    for g in np.unique(box_group).tolist():
        parts = []
        boxes = np.nonzero(box_group == g)[0].tolist()
        for k in boxes:
            for t in (int(ii[k]), int(jj[k])):
                a, b = int(starts[t]), int(ends[t])
                # first_end is sorted inside the segment: the box's rows are one range of it
                lo = a + int(np.searchsorted(first_end[a:b], b1[k], side="left"))
                hi = a + int(np.searchsorted(first_end[a:b], e1[k], side="right"))
                sec = second_end[lo:hi]
                parts.append(lo + np.nonzero((sec >= b2[k]) & (sec <= e2[k]))[0])
        # one box: its two segments' edges, distinct; several: an edge may lie in more than one of them
        idx = np.concatenate(parts) if len(boxes) == 1 else unique_int(np.concatenate(parts))
        del parts
        dirty[idx] = True
        key = u[idx].astype(np.int64) * m + v[idx]
        ll = lab[idx].astype(np.int64)
        del idx
        order = argsort_int(key * NL + ll) if int(key.max()) < 2**62 // NL else np.lexsort((ll, key))
        key, ll = key[order], ll[order]
        del order
        first, counts = _runs(key)
        sid, rep = _segment_ids(ll, first, counts)
        union = [
            tuple(sorted(c for x in ll[first[r] : first[r] + counts[r]].tolist() for c in tuples[x]))
            for r in rep.tolist()
        ]
        gid = np.array([ids.setdefault(t, len(ids)) for t in union], dtype=np.int64)
        pairs = key[first]
        merged.append((pairs // m, pairs % m, gid[sid]))
        del key, ll, first, counts, sid, pairs
    # the other edges move down over the merged ones' places (never past where they are read), then the
    # merged pairs follow: fewer edges than before, in the same buffers
    w = 0
    for a in range(0, u.size, chunk):
        keep = ~dirty[a : a + chunk]
        rows = [x[a : a + chunk][keep] for x in (u, v, lab)]  # copies: safe to write over the chunk
        for x, y in zip((u, v, lab), rows, strict=True):
            x[w : w + y.size] = y
        w += rows[0].size
    del dirty
    for parts in merged:
        k = parts[0].size
        for x, y in zip((u, v, lab), parts, strict=True):
            x[w : w + k] = y
        w += k
    return u[:w], v[:w], lab[:w], list(ids)


def _merge_runs(m: int, u, v, lab, tuples: list[tuple]):
    """One edge per pair from runs of one pair met more than once: the pair's label is the multiset union of
    its runs' colour tuples (with multiplicity). Pairs are grouped by a sort of the collapsed edges; equal
    sequences of run labels share one union, computed once per distinct sequence."""
    key = u.astype(np.int64) * m + v
    NL = max(len(tuples), 1)
    order = argsort_int(key * NL + lab) if key.size and int(key.max()) < 2**62 // NL else np.lexsort((lab, key))
    ks, ls = key[order], lab[order]
    del key, order
    first, counts = _runs(ks)
    ids, rep = _segment_ids(ls, first, counts)
    merged = [
        tuple(sorted(c for x in ls[first[r] : first[r] + counts[r]].tolist() for c in tuples[x])) for r in rep.tolist()
    ]
    lab2, table = _canonical(ids, merged)
    pairs = ks[first]
    return pairs // m, pairs % m, lab2, table


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate int64 parts, freeing each part once copied (the list is emptied)."""
    out = np.empty(sum(p.size for p in parts), dtype=np.int64)
    at = 0
    while parts:
        p = parts.pop(0)
        out[at : at + p.size] = p
        at += p.size
    return out


def _contract_edges(c: np.ndarray, u, v, lab, keep, chunk: int = CHUNK_EDGES):
    """The edges ``(c[u], c[v], lab)`` of those with ``keep(u, v)``, written *in place* over the state's
    arrays chunk by chunk (the write position never passes the read position), so that a contraction that
    keeps most edges (a chain step) needs no second edge list. Returns views of the arrays' heads, or copies
    when fewer than half of the edges are kept (so that the large buffers are freed with the old state).

    The arrays must belong to the reduction alone (``_reduce``'s state: made by :func:`_fold_and_collapse`
    or by an earlier step), never be the caller's.
    """
    w = 0
    for lo in range(0, u.size, chunk):
        uu, vv = u[lo : lo + chunk], v[lo : lo + chunk]
        k = keep(uu, vv)
        cu, cv, ll = c[uu[k]], c[vv[k]], lab[lo : lo + chunk][k]  # fresh arrays: safe to write over the chunk
        u[w : w + cu.size], v[w : w + cu.size], lab[w : w + cu.size] = cu, cv, ll
        w += cu.size
    # the views keep the input's pages (all written) alive: worth a copy once most of them are dropped
    held = u.size
    u, v, lab = u[:w], v[:w], lab[:w]
    if 2 * w < held:
        u, v, lab = u.copy(), v.copy(), lab.copy()
    return u, v, lab


def _dense(x: np.ndarray) -> np.ndarray:
    """Rank of each value among the distinct values of ``x`` (``np.unique``'s inverse)."""
    if not x.size:
        return x
    lo, hi = int(x.min()), int(x.max())
    if hi - lo <= 4 * x.size + 1024:
        # small value range (edge colours): a presence table instead of sorting tens of millions of values
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[x - lo] = True
        rank = np.cumsum(present, dtype=np.int64) - 1
        return rank[x - lo]
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64)


def reduce_twins(
    n: int, src, dst, color, vertex_color, max_levels: int = 100_000, fixed=None, progress: Progress | None = None
) -> TwinReduction:
    """Iterated exact reduction of a coloured directed multigraph (module docstring).

    The parallel edges of each ordered pair are merged once, up front, into one edge labelled by the
    multiset of their colours (a 3x3 conv's 9 edges per channel pair become one), and every step works on
    that much smaller labelled simple graph. Twins, chains, matchings and closed twins are contracted and
    the colours refined, in turn, until no step changes the graph: contracting a channel with its norm node
    makes the channels of a layer twins again, and so on.

    Example
    -------
    >>> r = reduce_twins(4, [0, 0, 1, 2], [1, 2, 3, 3], [0, 0, 0, 0], [0, 1, 1, 2])
    >>> r.quotient[0], r.twin_order   # {1, 2} are twins; the path 0 -> {1,2} -> 3 is then one chain
    (1, 2)

    ``progress`` (a :class:`~symgraph.progress.Progress`) is told the graph's size after every step and
    enforces its time limit between steps.
    """
    progress = progress if progress is not None else Progress()
    src, dst, color = (np.asarray(x) for x in (src, dst, color))  # views; chunks are made int64 one by one
    # the state's arrays are new ones (the steps contract them in place), never the caller's
    (m, u, v, lab, table, vc), keep = _fold_and_collapse(int(n), src, dst, color, vertex_color, fixed)
    keep = None if fixed is None else keep
    progress.note(f"fixed nodes folded, parallel edges merged: {m} vertices, {u.size} edges")
    # handed over in a box, so that this frame holds no reference to the (largest) merged edge list while the
    # steps replace it by ever smaller graphs
    box = [(m, u, v, lab, table, vc)]
    del u, v, lab, vc
    levels, (m, u, v, lab, table, vc) = _reduce(box, max_levels, progress)
    # the last level's graph (the input itself, fixed nodes folded, when nothing was contracted)
    return TwinReduction(levels, _expand(m, u, v, lab, table, vc), int(n), keep)


# ------------------------------------------------------------------ the labelled graph and its steps
# The multigraph is held as the simple graph of its ordered pairs ``(u, v)``, each labelled by the multiset of
# its colours: ``table[label]`` is that multiset as a sorted tuple, and labels are numbered in the
# lexicographic order of their tuples (so single colours keep their relative order). A step takes the state
# ``(m, u, v, lab, table, vc)`` and returns ``(level or None, new state)``, or None when it changes nothing.


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``, vectorised."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def _segment_ids(values: np.ndarray, first: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the contiguous segments ``values[first[i] : first[i] + counts[i]]``: equal sequences <=> equal
    ids. Returns ``(id per segment, a representative segment per id)``. Proposed by hashing, checked
    element by element (Python tuples for everything if any check fails)."""
    seg = np.repeat(np.arange(first.size, dtype=np.int64), counts)
    h = multiset_hash(values, seg, first.size, salt=0x51ED270B)
    h = h ^ _mix(counts.astype(np.uint64)).view(np.int64)
    _, cand = np.unique(h, return_inverse=True)
    cand = cand.reshape(-1).astype(np.int64)
    rep = np.full(int(cand.max()) + 1, -1, dtype=np.int64)
    rep[cand[::-1]] = np.arange(first.size, dtype=np.int64)[::-1]
    r = rep[cand]
    ok = bool(np.array_equal(counts, counts[r]))
    if ok:
        idx = np.repeat(first[r], counts) + _ragged_arange(counts)
        ok = bool(np.array_equal(values, values[idx]))
    if not ok:  # hash collision: explicit tuples (never seen in practice)
        table: dict[tuple, int] = {}
        cand = np.array(
            [
                table.setdefault(tuple(values[a : a + c].tolist()), len(table))
                for a, c in zip(first.tolist(), counts.tolist(), strict=True)
            ],
            dtype=np.int64,
        )
        rep = np.full(len(table), -1, dtype=np.int64)
        rep[cand[::-1]] = np.arange(first.size, dtype=np.int64)[::-1]
    return cand, rep


def _canonical(ids: np.ndarray, tuples: list[tuple]) -> tuple[np.ndarray, list[tuple]]:
    """Renumber ``ids`` (with ``tuples[id]``) so that labels follow the sorted distinct tuples."""
    remap, table = _canonical_map(tuples)
    # int32 ids stay int32 (the labelled graph's labels): there are fewer labels than 2**31
    remap = remap.astype(ids.dtype) if ids.dtype == np.int32 else remap
    return (remap[ids] if ids.size else ids), table


def _canonical_map(tuples: list[tuple], used: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple]]:
    """``(remap, table)``: ``table`` the sorted distinct tuples (those marked ``used``, when given),
    ``remap[i]`` the rank of ``tuples[i]`` in it (-1 for an unused one)."""
    keep = tuples if used is None else [t for t, x in zip(tuples, used.tolist(), strict=True) if x]
    table = sorted(set(keep))
    rank = {t: i for i, t in enumerate(table)}
    return np.array([rank.get(t, -1) for t in tuples], dtype=np.int64), table


def _runs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal consecutive values."""
    br = np.ones(key.size, dtype=bool)
    br[1:] = key[1:] != key[:-1]
    first = np.nonzero(br)[0]
    return first, np.diff(np.append(first, key.size))


def _collapse(m: int, src, dst, color):
    """``(u, v, label, table)``: one edge per ordered pair, labelled by the multiset of its colours."""
    if src.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), e.copy(), []
    pair = src * m + dst
    first, counts = _runs(pair)
    inner = np.ones(pair.size, dtype=bool)
    inner[first] = False  # edges continuing a run of their pair
    grouped = _distinct(src[first], dst[first], m)  # builders emit a pair's parallel edges together
    if grouped and first.size == pair.size:  # a simple graph already (an MLP): labels are the colours
        lab = _dense(color)
        return src, dst, lab, [(c,) for c in np.unique(color).tolist()]
    if not (grouped and bool(np.all(color[1:][inner[1:]] >= color[:-1][inner[1:]]))):
        C = int(color.max()) + 1
        order = torch.sort(torch.from_numpy(pair * C + color), stable=True).indices.numpy()
        src, dst, color, pair = src[order], dst[order], color[order], pair[order]
        first, counts = _runs(pair)
    ids, rep = _run_ids(color, first, counts)
    tuples = [tuple(color[first[r] : first[r] + counts[r]].tolist()) for r in rep.tolist()]
    lab, table = _canonical(ids, tuples)
    return src[first], dst[first], lab, table


def _run_ids(color: np.ndarray, first: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_segment_ids` for runs of non-negative colours, exactly and in one pass: runs of one length
    ``L`` are rows of an ``[k, L]`` table; consecutive equal rows (a layer's kernel, pair after pair) share an
    id, so only the rows where the sequence changes are compared with each other."""
    ids = np.empty(first.size, dtype=np.int64)
    rep_parts = []
    total = 0
    lengths = np.nonzero(np.bincount(counts))[0].tolist()
    for L in lengths:
        sel = np.nonzero(counts == L)[0] if len(lengths) > 1 else np.arange(first.size)
        rows = color[first[sel].reshape(-1, 1) + np.arange(L, dtype=np.int64)]
        change = np.ones(sel.size, dtype=bool)
        change[1:] = np.any(rows[1:] != rows[:-1], axis=1)
        heads = np.nonzero(change)[0]  # a run that differs from the run before it
        _, first_of, inv = np.unique(rows[heads], axis=0, return_index=True, return_inverse=True)
        local = inv.reshape(-1)[np.cumsum(change) - 1]
        ids[sel] = local + total
        rep_parts.append(sel[heads[first_of]])
        total += int(first_of.size)
    return ids, np.concatenate(rep_parts)


def _distinct(src: np.ndarray, dst: np.ndarray, m: int, breaks: tuple | None = None) -> bool:
    """No ordered pair occurs twice?

    Builders emit layer after layer, each in increasing order by target (or by source): the pairs fall into
    a few increasing segments. Pairs inside a segment are distinct; segments whose bounding boxes (source
    range x target range) are disjoint share no pair. Only the keys of segments whose boxes meet are
    sorted (all of them, in the worst case). ``breaks`` (the segment starts of the source-major and the
    target-major keys, as computed here) may be given by a caller that met the edges chunk by chunk.
    """
    if src.size < 2:
        return True
    if breaks is None:
        breaks = tuple(
            np.nonzero((a[1:] * np.int64(m) + b[1:]) <= (a[:-1] * np.int64(m) + b[:-1]))[0] + 1
            for a, b in ((src, dst), (dst, src))
        )
    o = 0 if breaks[0].size <= breaks[1].size else 1
    br = breaks[o]
    if br.size == 0:
        return True
    first, second = (src, dst) if o == 0 else (dst, src)

    def keys(a: int = 0, b: int | None = None) -> np.ndarray:
        return first[a:b].astype(np.int64) * m + second[a:b]  # int64 keys of int32 ids

    if br.size > 4096:
        return unique_int(keys()).size == src.size
    starts = np.concatenate([[0], br])
    ends = np.concatenate([br, [src.size]])
    lo_s, hi_s = np.minimum.reduceat(src, starts), np.maximum.reduceat(src, starts)
    lo_d, hi_d = np.minimum.reduceat(dst, starts), np.maximum.reduceat(dst, starts)
    meet = (
        (lo_s[:, None] <= hi_s[None, :])
        & (lo_s[None, :] <= hi_s[:, None])
        & (lo_d[:, None] <= hi_d[None, :])
        & (lo_d[None, :] <= hi_d[:, None])
    )
    ii, jj = np.nonzero(np.triu(meet, 1))
    if ii.size > 4096:
        return unique_int(keys()).size == src.size
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        # only pairs inside both boxes can be shared: compare those of the two segments
        s0, s1 = max(lo_s[i], lo_s[j]), min(hi_s[i], hi_s[j])
        d0, d1 = max(lo_d[i], lo_d[j]), min(hi_d[i], hi_d[j])
        parts = []
        for t in (i, j):
            a, b = starts[t], ends[t]
            ss, dd = src[a:b], dst[a:b]
            inside = (ss >= s0) & (ss <= s1) & (dd >= d0) & (dd <= d1)
            parts.append(keys(a, b)[inside])
        both = np.concatenate(parts)
        if both.size and unique_int(both).size != both.size:
            return False
    return True


def _merge(k: int, pair: np.ndarray, item: np.ndarray, tuples: list[tuple], alone: np.ndarray | None = None):
    """Quotient edges: one per distinct ``pair`` (``A * k + B``). Equal labels of one pair are counted once
    (the complete blocks between two twin classes); different ones add up as multisets (the side-tagged
    edges between two contracted pairs: their tags make them distinct). ``alone`` marks edges known to be
    the only one of their pair (they skip the sort). Returns ``(u, v, label, table)``."""
    if alone is not None and alone.any():
        rest = ~alone
        u, v, lab, table = _merge(k, pair[rest], item[rest], tuples)
        a_item = item[alone]
        a_used = np.nonzero(np.bincount(a_item, minlength=len(tuples)))[0]
        full = sorted(set(table) | {tuples[i] for i in a_used.tolist()})
        rank = {t: i for i, t in enumerate(full)}
        remap_rest = np.array([rank[t] for t in table], dtype=np.int64)
        remap_item = np.zeros(len(tuples), dtype=np.int64)
        remap_item[a_used] = [rank[tuples[i]] for i in a_used.tolist()]
        a_pair = pair[alone]
        lab_all = np.concatenate([remap_rest[lab] if lab.size else lab, remap_item[a_item]])
        return np.concatenate([u, a_pair // k]), np.concatenate([v, a_pair % k]), lab_all, full
    T = max(len(tuples), 1)
    uk = unique_int(pair * T + item)
    p, it = uk // T, uk % T
    first, counts = _runs(p)
    if bool(np.all(counts == 1)):
        ids, merged = it, list(tuples)
    else:
        ids, rep = _segment_ids(it, first, counts)
        merged = [
            tuple(sorted(c for x in it[first[r] : first[r] + counts[r]].tolist() for c in tuples[x]))
            for r in rep.tolist()
        ]
        p = p[first]
    lab, table = _canonical(ids, merged)
    return p // k, p % k, lab, table


def _expand(k: int, u, v, lab, table, vc):
    """The labelled graph as the multigraph ``(k, src, dst, colour, vertex_colour)``, sorted by (pair, colour)."""
    lens = np.array([len(t) for t in table], dtype=np.int64)
    flat = np.array([c for t in table for c in t], dtype=np.int64)
    start = np.cumsum(lens) - lens
    reps = lens[lab] if lab.size else np.zeros(0, dtype=np.int64)
    col = flat[np.repeat(start[lab], reps) + _ragged_arange(reps)] if lab.size else lab
    rep = (np.repeat(np.asarray(x, dtype=np.int64), reps) for x in (u, v))
    return k, *rep, col, vc


def _reduce(box: list, max_levels: int, progress: Progress):
    """Apply the steps in turn until a full round changes nothing; returns ``(levels, final state)``.

    ``box`` holds the state ``(m, u, v, lab, table, vc)`` and is emptied: only the current state is alive
    while a step runs (with the step's own temporaries and result)."""
    # cheapest and most shrinking first, and back to the start after every change: the twin step removes most
    # edges (a layer's channels collapse to one vertex), so the costlier steps mostly see small graphs
    steps = (_twin_step, _chain_step, _matching_step, _closed_twin_step, _refine_step)
    state = box.pop()
    levels: list[TwinLevel] = []
    # chains first, once: a channel with the norm node hanging on it is no twin of its neighbours until the
    # two are one vertex (a ResNet's first twin step would find nothing in its largest graph)
    first = _chain_step(*state) if state[0] else None
    if first is not None:
        levels.append(first[0])
        state = first[1]
        del first
        trim_heap()
        progress.note(f"{len(levels)} levels: {state[0]} vertices, {state[1].size} edges")
    i = 0
    while i < len(steps) and len(levels) < max_levels and state[0] > 0:
        out = steps[i](*state)
        if out is None:
            i += 1
            progress.check()
            continue
        big = state[1].size >= TRIM_EDGES
        level, state = out
        del out
        if big:
            trim_heap()  # what the step freed (most of it in heap blocks), before the next step's peak
        if level is not None:
            levels.append(level)
        i = 0 if i else 1  # after twins, try the others; after any other change, twins again
        progress.note(f"{len(levels)} levels: {state[0]} vertices, {state[1].size} edges")
    return levels, state


def _twin_step(m, u, v, lab, table, vc):
    # exact twins of the labelled graph = those of the multigraph (a label is the pair's colour multiset)
    cls = twin_classes(m, u, v, lab, vc, simple=True)
    k = int(cls.max()) + 1 if m else 0
    if k == m:
        return None
    lv = _make_level(cls)
    rep = lv.members[lv.start]
    qv = np.unique(np.stack([vc[rep], lv.sizes]), axis=1, return_inverse=True)[1].reshape(-1)
    # verified twin classes are joined by complete blocks of one label: the edges between the classes'
    # first members are the quotient's edges, no sort or merge needed
    is_rep = np.zeros(m, dtype=bool)
    is_rep[rep] = True
    c = cls.astype(_index_dtype(k))
    u, v, lab = _contract_edges(c, u, v, lab, lambda a, b: is_rep[a] & is_rep[b])
    return lv, (k, u, v, lab, table, qv)


def _chain_step(m, u, v, lab, table, vc):
    found = chain_classes(m, u, v, lab, vc)
    if found is None:
        return None
    cls, pos, qv = found
    k = int(cls.max()) + 1
    level = _make_level(cls, pos)
    c = cls.astype(_index_dtype(k))
    del cls, pos
    # chain-internal edges live in the vertex colour now; no two outside edges meet in one quotient pair (a
    # chain is entered only at its head and left only at its tail), so the edges keep their labels as they are
    u, v, lab = _contract_edges(c, u, v, lab, lambda a, b: c[a] != c[b])
    return level, (k, u, v, lab, table, qv)


def _matching_step(m, u, v, lab, table, vc):
    found = _matching(m, u, v, lab, table, vc)
    if found is None:
        return None
    cls, pos, qv, ext, item, tuples = found
    k = int(cls.max()) + 1
    # an edge between two uncontracted vertices is alone in its quotient pair (cls is injective there)
    single = np.bincount(cls, minlength=k)[cls] == 1
    alone = single[u[ext]] & single[v[ext]]
    return _make_level(cls, pos), (k, *_merge(k, cls[u[ext]] * k + cls[v[ext]], item, tuples, alone), qv)


def _closed_twin_step(m, u, v, lab, table, vc):
    found = closed_twin_classes(m, u, v, lab, vc)
    if found is None:
        return None
    cls, mutual = found
    k = int(cls.max()) + 1
    lv = _make_level(cls)
    rep = lv.members[lv.start]
    qv = np.unique(np.stack([vc[rep], lv.sizes, mutual]), axis=1, return_inverse=True)[1].reshape(-1)
    ext = cls[u] != cls[v]  # inside a class every edge carries the mutual label, now in the colour
    return lv, (k, *_merge(k, cls[u[ext]] * k + cls[v[ext]], lab[ext], table), qv)


def _refine_step(m, u, v, lab, table, vc):
    # colour refinement: stuck reductions often only need the classes split (the BatchNorm copies of a
    # DenseNet's concatenated channels, one per later layer, look alike until their layers differ)
    refined = refine_colors(m, u, v, lab, vc)
    if int(refined.max()) == int(vc.max()):
        return None
    return None, (m, u, v, lab, table, refined)


def closed_twin_classes(n: int, src, dst, label, vertex_color) -> tuple[np.ndarray, np.ndarray] | None:
    """Classes of *closed* twins of a labelled simple digraph: vertices of one colour joined pairwise in both
    directions by edges of one label ``X``, with equal labelled neighbourhoods outside the class.

    Swapping two of them maps every edge to an edge of the same label (the edges between them have label
    ``X`` both ways), so any permutation inside a class is an automorphism; "closed twins with mutual label
    ``X``" is an equivalence relation that automorphisms preserve (they arise where a contracted residual
    stream makes the channels of a layer a complete digraph: RepVGG's identity branches, ConvMixer). The
    quotient treats a class like a twin class, with ``X`` in its colour.

    Candidates: vertices with exactly one label on symmetric same-colour edges (an invariant condition,
    shared by all members of a class), grouped by the hashes of their neighbourhoods with themselves added
    under that label; each class is then verified exactly (``s (s - 1)`` internal edges, all of label
    ``X``; every outside ``(neighbour, label)`` shared by all ``s`` members) and split into singletons if not.

    Returns ``(cls, mutual)``: class ids in order of first member, and the mutual label per class (-1 for
    singletons), or None when there is no class of two or more.

    Example
    -------
    >>> # a triangle 0 <-> 1 <-> 2 <-> 0 (label 0) with all three pointing at 3 (label 1): one class {0, 1, 2}
    >>> cls, mutual = closed_twin_classes(4, [0, 1, 0, 2, 1, 2, 0, 1, 2], [1, 0, 2, 0, 2, 1, 3, 3, 3],
    ...                                   [0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1])
    >>> cls.tolist(), mutual.tolist()
    ([0, 0, 0, 1], [0, -1])
    """
    u = np.asarray(src, dtype=np.int64)
    v = np.asarray(dst, dtype=np.int64)
    lab = np.asarray(label, dtype=np.int64)
    vc = np.asarray(vertex_color, dtype=np.int64)
    if u.size == 0:
        return None
    L = int(lab.max()) + 1
    fwd = u * n + v
    order = argsort_int(fwd)
    sk = fwd[order]
    back = v * n + u
    pos = np.minimum(np.searchsorted(sk, back), sk.size - 1)
    has_back = sk[pos] == back
    sym = has_back & (lab[order[pos]] == lab) & (vc[u] == vc[v]) & (u != v)
    if not sym.any():
        return None
    vx = unique_int(u[sym] * L + lab[sym])  # distinct (vertex, mutual label) pairs
    x_of, l_of = vx // L, vx % L
    nlab = np.bincount(x_of, minlength=n)
    X = np.full(n, -1, dtype=np.int64)
    one = nlab[x_of] == 1
    X[x_of[one]] = l_of[one]
    cand_ok = X >= 0
    idx = np.arange(n, dtype=np.int64)
    self_key = idx * L + np.maximum(X, 0)
    h_out = _hash_with_self(v * L + lab, u, n, self_key, cand_ok, salt=0x3C0FFEE)
    h_in = _hash_with_self(u * L + lab, v, n, self_key, cand_ok, salt=0x7EA)
    deg = np.bincount(u, minlength=n) * (n + 1) + np.bincount(v, minlength=n)
    sig = np.stack([vc, X, h_out, h_in, deg, np.where(cand_ok, -1, idx)], axis=1)
    cand = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    sizes = np.bincount(cand)
    big = sizes[cand] > 1
    if not big.any():
        return None
    bad = np.zeros(sizes.size, dtype=bool)
    inside = cand[u] == cand[v]
    # internal edges: s (s - 1) of them per class, all with the class's mutual label
    in_cls = cand[u[inside]]
    bad[in_cls[lab[inside] != X[u[inside]]]] = True
    n_in = np.bincount(in_cls, minlength=sizes.size)
    bad |= (sizes > 1) & (n_in != sizes * (sizes - 1))
    # outside: every (class, neighbour, label) occurs once per member, in both directions
    for a, b in ((u, v), (v, u)):
        sel = ~inside & big[a]
        if not sel.any():
            continue
        key = (cand[a[sel]] * n + b[sel]) * L + lab[sel]
        uniq, counts = unique_int(key, return_counts=True)
        c_of = uniq // (n * L)
        bad[c_of[counts != sizes[c_of]]] = True
    bad &= sizes > 1
    good = ~bad & (sizes > 1)
    if not good.any():
        return None
    split = ~good[cand]
    cand = cand.copy()
    cand[split] = int(cand.max()) + 1 + np.nonzero(split)[0]
    _, first, inv = np.unique(cand, return_index=True, return_inverse=True)
    rank_of = np.empty(first.size, dtype=np.int64)
    rank_of[np.argsort(first)] = np.arange(first.size)
    cls = rank_of[inv.reshape(-1)]
    mutual = np.full(first.size, -1, dtype=np.int64)
    sizes2 = np.bincount(cls)
    mutual[cls[sizes2[cls] > 1]] = X[sizes2[cls] > 1]
    return cls, mutual


def _hash_with_self(keys, groups, n, self_key, with_self, salt: int) -> np.ndarray:
    """Multiset hash of each vertex's ``keys``, plus its own ``self_key`` where ``with_self``."""
    keys = np.concatenate([keys, self_key[with_self]])
    groups = np.concatenate([groups, np.nonzero(with_self)[0]])
    return multiset_hash(keys, groups, n, salt=salt)


def _matching(n: int, u, v, lab, table, vertex_color):
    """Contract canonical perfect matchings of the labelled graph: all edges carrying colour ``c`` from colour
    class ``a`` to class ``b`` (a != b), when they match the two classes perfectly (a residual stream: each
    channel to its own sum node; a depthwise convolution: each channel to its own output channel).

    Every automorphism maps class ``a`` onto itself and ``b`` onto itself and preserves those edges, so it
    maps matched pairs to matched pairs. The matchings found are contracted along a spanning forest of the
    classes they join (a whole residual stream ``channel -> sum -> sum -> ...`` in one step): each tree's
    matchings compose into one bijection between its classes, so its vertices fall into tuples (one member
    per class, ``pos`` the class's rank in the tree), and a permutation of the tuples lifts uniquely (member
    at ``pos`` to member at ``pos``). Edges to the outside keep the positions of the members they touch (in
    their new colours) and a tuple's own edges (every ``(position, position, label)``, exactly, by
    :func:`_segment_ids`) go into its vertex colour, so the contracted graph loses nothing. A matching that
    would close a cycle of classes is left as edges (its composition around the cycle may be a non-trivial
    permutation).

    Returns ``(cls, pos, qv, ext, item, tuples)``: the edges ``ext`` between different classes keep the
    colour multiset ``tuples[item]`` (position-tagged colours, densely renumbered), or None.

    Example
    -------
    >>> cls, pos, qv, *_ = _matching(4, np.array([0, 1]), np.array([2, 3]), np.array([0, 0]), [(0,)],
    ...                              np.array([0, 0, 1, 1]))
    >>> cls.tolist(), pos.tolist()
    ([0, 1, 0, 1], [0, 0, 1, 1])
    """
    vc = vertex_color
    if u.size == 0:
        return None
    u, v, lab = (np.asarray(x, dtype=np.int64) for x in (u, v, lab))  # the keys below are products of these
    depth = dag_depth(n, u, v)
    if depth is not None:
        vc = _dense(vc * (int(depth.max()) + 1) + depth)
    V = int(vc.max()) + 1
    NL = len(table)
    lens = np.array([len(t) for t in table], dtype=np.int64)
    flat = np.array([c for t in table for c in t], dtype=np.int64)
    tstart = np.cumsum(lens) - lens
    C = int(flat.max()) + 1
    size = np.bincount(vc, minlength=V)
    cu, cv = vc[u], vc[v]
    # only edges between two different classes of one size can be in a perfect matching between them (the
    # dense layers between two streams of different widths, most of the edges, drop out here)
    pre = np.nonzero((cu != cv) & (size[cu] == size[cv]) & (size[cu] > 1))[0]
    if pre.size == 0:
        return None
    ab = cu[pre] * V + cv[pre]
    del cu, cv
    comb, inv, ccnt = unique_int(ab * NL + lab[pre], return_inverse=True, return_counts=True)
    cl, cab = comb % NL, comb // NL
    # one entry per (combination, distinct colour of its label): a repeated colour is one matching candidate
    rep = lens[cl]
    ent_comb = np.repeat(np.arange(comb.size, dtype=np.int64), rep)
    ent_col = flat[np.repeat(tstart[cl], rep) + _ragged_arange(rep)]
    dedup = unique_int(ent_comb * C + ent_col)
    ent_comb, ent_col = dedup // C, dedup % C
    ent_key = cab[ent_comb] * C + ent_col
    uk, kinv = np.unique(ent_key, return_inverse=True)
    kinv = kinv.reshape(-1)
    counts = np.bincount(kinv, weights=ccnt[ent_comb], minlength=uk.size).astype(np.int64)
    a_of, b_of = uk // C // V, uk // C % V
    ok = (a_of != b_of) & (counts == size[a_of]) & (counts == size[b_of]) & (counts > 1)
    cands = uk[ok]
    if cands.size == 0:
        return None
    # distinct sources and targets per candidate key: a perfect matching has counts distinct of each
    cidx = np.full(uk.size, -1, dtype=np.int64)
    cidx[ok] = np.arange(cands.size)
    ent_cand = cidx[kinv]
    hit = ent_cand >= 0
    ncand = np.bincount(ent_comb[hit], minlength=comb.size)
    off = np.cumsum(ncand) - ncand
    cand_list = ent_cand[hit]  # grouped by combination (entries are)
    erep = ncand[inv]
    e_idx = np.repeat(pre, erep)
    cand_of = cand_list[np.repeat(off[inv], erep) + _ragged_arange(erep)]
    cs = np.bincount(unique_int(cand_of * n + u[e_idx]) // n, minlength=cands.size)
    cd = np.bincount(unique_int(cand_of * n + v[e_idx]) // n, minlength=cands.size)
    good = cands[(cs == counts[ok]) & (cd == counts[ok])]
    # every good candidate is an invariant perfect matching between two classes (each class is fixed setwise):
    # keep a spanning forest of them (Kruskal in key order, deterministic in the invariant class ids), so that
    # a whole residual stream (channel -> sum -> sum -> ...) is contracted in one step; a matching that would
    # close a cycle of classes stays an edge (inside one tuple it goes into the colour)
    root = np.arange(V, dtype=np.int64)

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = int(root[x])
        return x

    chosen = []
    for kk in good.tolist():
        ra, rb = find(kk // C // V), find(kk // C % V)
        if ra != rb:
            root[max(ra, rb)] = min(ra, rb)
            chosen.append(kk)
    if not chosen:
        return None
    comp = np.array([find(x) for x in range(V)], dtype=np.int64)  # the smallest class of each tree
    chosen_arr = np.asarray(chosen, dtype=np.int64)
    sel_comb = np.bincount(ent_comb[np.isin(ent_key, chosen_arr)], minlength=comb.size) > 0
    sel = np.zeros(u.size, dtype=bool)
    sel[pre] = sel_comb[inv]  # the edge carries the chosen colour of its (class, class)
    mu, mv = u[sel], v[sel]
    # tuple of each vertex: the member of its tree's root class it is matched to along the tree's path
    # (unique: the matchings of a tree compose without cycles)
    tup = np.full(n, -1, dtype=np.int64)
    own = comp[vc] == vc
    tup[own] = np.nonzero(own)[0]
    while True:
        fw = (tup[mu] >= 0) & (tup[mv] < 0)
        bw = (tup[mv] >= 0) & (tup[mu] < 0)
        if not (fw.any() or bw.any()):
            break
        tup[mv[fw]] = tup[mu[fw]]
        tup[mu[bw]] = tup[mv[bw]]
    cls = _dense(tup)
    # position: rank of the vertex's class among the classes of its tree (all invariant)
    in_tree = np.bincount(comp, minlength=V)[comp] > 1
    corder = np.lexsort((np.arange(V), comp))
    crank = np.empty(V, dtype=np.int64)
    cstart = np.searchsorted(comp[corder], comp[corder])
    crank[corder] = np.arange(V) - cstart
    pos = np.where(in_tree[vc], crank[vc], 0)
    P = int(pos.max()) + 1
    internal = cls[u] == cls[v]
    # a tuple's own edges (between its positions, with their labels) go into its colour, exactly: equal
    # sorted sequences of (position, position, label) <=> equal ids
    k = int(cls.max()) + 1
    inner = np.full(k, -1, dtype=np.int64)
    if internal.any():
        ikey = (pos[u[internal]] * P + pos[v[internal]]) * NL + lab[internal]
        icls = cls[u[internal]]
        order = np.lexsort((ikey, icls))
        ikey, icls = ikey[order], icls[order]
        first, counts = _runs(icls)
        ids, _ = _segment_ids(ikey, first, counts)
        inner[icls[first]] = ids
    head = np.empty(k, dtype=np.int64)
    head[cls] = np.arange(n)
    qv = np.unique(np.stack([comp[vc[head]], inner]), axis=1, return_inverse=True)[1].reshape(-1)
    ext = ~internal
    t = (lab[ext] * P + pos[u[ext]]) * P + pos[v[ext]]
    ut, item = np.unique(t, return_inverse=True)
    raw = [tuple((c * P + x // P % P) * P + x % P for c in table[x // (P * P)]) for x in ut.tolist()]
    values = sorted({c for r in raw for c in r})
    rank = {c: i for i, c in enumerate(values)}
    return cls, pos, qv, ext, item.reshape(-1).astype(np.int64), [tuple(rank[c] for c in r) for r in raw]
