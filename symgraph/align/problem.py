"""The weight-matching problem of a model, derived from its exact automorphism group.

Every symmetric factor of the group is a set of *units* that may be permuted arbitrarily: the members of a
twin class of the reduction (:mod:`symgraph.automorphisms.twins`) or an orbit of a symmetric direct factor
of the quotient group, each orbit point joined with the orbits its perfect matchings determine. A unit is
a *block* of graph nodes, listed in the order in which the group's section maps blocks onto each other:
the permutation that sends unit ``r`` to unit ``s`` sends ``units[r, t]`` to ``units[s, t]`` for every
position ``t`` (an MLP hidden unit is a block of one node; a residual-stream channel is the block of its
nodes along the whole stream; an attention head is the block of its head node, its q/k pairs and its v
dimensions).

Units may contain smaller factors: the q/k pairs and v dimensions inside a head, the channels inside a
GroupNorm group. A :class:`UnitClass` therefore holds its child classes, given at the same positions in
every unit, and the matching of a block onto another block optimises its children too (see
:mod:`symgraph.align.descent`). Nothing here looks at layer names: the blocks, their order and their
nesting come from the reduction levels and the quotient factors alone.

:class:`FactorTables` then lists, once per factor, every parameter its units touch: incoming and outgoing
edges and node-stored parameters (norm gamma/beta, running statistics), each at a *slot* that is the same
in every unit (position in the unit, the edge's other end, colour, direction), so that the cost of sending
unit ``r`` onto unit ``s`` is one inner product of two rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SymgraphError

__all__ = [
    "UnitClass",
    "Factor",
    "GenericFactor",
    "ClassTables",
    "FactorTables",
    "factors_of",
    "build_tables",
    "reduction_positions",
    "Adjacency",
]


@dataclass(frozen=True)
class UnitClass:
    """Interchangeable units (one class type of a factor tree), over all instances of the parent units.

    ``units[a]`` lists unit ``a``'s nodes (``[n, m]``); units ``p * k .. p * k + k - 1`` lie in unit ``p`` of
    the parent class and are permuted among themselves. ``own`` (``[n, m_own]``) are the nodes of each unit
    that lie in no child class, at the same positions in every unit. ``children`` are the classes inside
    each unit (their unit ``a * k_child + j`` lies in unit ``a``).
    """

    units: np.ndarray
    k: int
    own: np.ndarray
    children: tuple[UnitClass, ...] = ()

    @property
    def n(self) -> int:
        return int(self.units.shape[0])

    def walk(self) -> list[tuple[UnitClass, int, int]]:
        """``(class, depth, parent index)`` of this class and its descendants, parents first."""
        out: list[tuple[UnitClass, int, int]] = [(self, 0, -1)]
        i = 0
        while i < len(out):
            cls, depth, _ = out[i]
            out.extend((c, depth + 1, i) for c in cls.children)
            i += 1
        return out


@dataclass(frozen=True)
class Factor:
    """One symmetric factor: a root :class:`UnitClass` of ``k`` units, with a description and its depth."""

    name: str
    root: UnitClass
    layer: int  # smallest node depth it touches (the initial sweep goes from inputs to outputs)
    nodes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def k(self) -> int:
        return self.root.n


@dataclass(frozen=True)
class GenericFactor:
    """A direct factor of the quotient group that is not a product of symmetric groups: its elements (or,
    when it is too large to list, its generators) as node permutations, tried one at a time."""

    name: str
    elements: np.ndarray  # [q, N] node permutations (identity excluded)
    exhaustive: bool
    layer: int
    nodes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))


def reduction_positions(red, num_nodes: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """For every level ``d`` of the reduction (``0 .. len(levels)``, the last being the quotient): the level-d
    vertex of each graph node (``anc[d]``, -1 for fixed nodes), the node's position in that vertex's block
    (``pos[d]``) and each vertex's block size (``size[d]``).

    Positions follow the section of :class:`~symgraph.automorphisms.twins.TwinLevel.lift`: the r-th member of
    a class goes to the r-th member of its image, so blocks of twin vertices correspond position by position.
    """
    anc0 = np.full(num_nodes, -1, dtype=np.int64)
    keep = np.arange(num_nodes, dtype=np.int64) if red.keep is None else np.asarray(red.keep, dtype=np.int64)
    anc0[keep] = np.arange(keep.size, dtype=np.int64)
    anc, pos, size = [anc0], [np.zeros(num_nodes, dtype=np.int64)], [np.ones(keep.size, dtype=np.int64)]
    for lv in red.levels:
        a, p, s = anc[-1], pos[-1], size[-1]
        bs = s[lv.members]
        cum = np.cumsum(bs) - bs  # block offset of each member, counted from the first member of level
        offset = np.empty(lv.num_nodes, dtype=np.int64)
        offset[lv.members] = cum - cum[lv.start[lv.cls[lv.members]]]
        inside = a >= 0
        na = np.full(num_nodes, -1, dtype=np.int64)
        na[inside] = lv.cls[a[inside]]
        npos = np.zeros(num_nodes, dtype=np.int64)
        npos[inside] = offset[a[inside]] + p[inside]
        anc.append(na)
        pos.append(npos)
        size.append(np.bincount(lv.cls, weights=s, minlength=lv.num_classes).astype(np.int64))
    return anc, pos, size


class _Blocks:
    """Node blocks of the vertices of every level, in section order."""

    def __init__(self, red, num_nodes: int):
        self.red = red
        self.anc, self.pos, self.size = reduction_positions(red, num_nodes)
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, d: int, vertices: np.ndarray) -> np.ndarray:
        """``[len(vertices), m]`` nodes of the blocks of level-d ``vertices`` (equal block sizes required)."""
        vertices = np.asarray(vertices, dtype=np.int64)
        if d not in self._sorted:
            a, p = self.anc[d], self.pos[d]
            nodes = np.nonzero(a >= 0)[0]
            nodes = nodes[np.lexsort((p[nodes], a[nodes]))]
            start = np.zeros(self.size[d].size + 1, dtype=np.int64)
            start[1:] = np.cumsum(self.size[d])
            self._sorted[d] = (nodes, start)
        nodes, start = self._sorted[d]
        m = self.size[d][vertices]
        if m.size and not np.all(m == m[0]):
            raise SymgraphError(f"internal: Expected blocks of one size in a factor (got sizes {np.unique(m)})")
        width = int(m[0]) if m.size else 0
        return nodes[start[vertices][:, None] + np.arange(width, dtype=np.int64)]


def _twin_classes(red) -> list[tuple[int, int]]:
    """``(level, class)`` of every interchangeable class of two or more members, in factor_records order."""
    out = []
    for d, lv in enumerate(red.levels):
        if lv.interchangeable:
            out.extend((d, int(c)) for c in np.nonzero(lv.sizes > 1)[0].tolist())
    return out


class _TreeBuilder:
    """Builds the :class:`UnitClass` tree of a set of units: child classes are the twin classes inside them."""

    def __init__(self, blocks: _Blocks, num_nodes: int):
        self.blocks = blocks
        red = blocks.red
        self.classes = _twin_classes(red)
        # per interchangeable level: the class (id into self.classes) of each node's vertex, -1 if singleton
        self.class_at: dict[int, np.ndarray] = {}
        index = {dc: i for i, dc in enumerate(self.classes)}
        for d, lv in enumerate(red.levels):
            if not lv.interchangeable:
                continue
            a = blocks.anc[d]
            cid = np.full(num_nodes, -1, dtype=np.int64)
            inside = a >= 0
            ids = np.array([index.get((d, c), -1) for c in range(lv.num_classes)], dtype=np.int64)
            cid[inside] = ids[lv.cls[a[inside]]]
            self.class_at[d] = cid

    def members(self, d: int, c: int) -> np.ndarray:
        lv = self.blocks.red.levels[d]
        return lv.members[int(lv.start[c]) : int(lv.start[c]) + int(lv.sizes[c])]

    def build(self, units: np.ndarray, below: int, k: int | None = None) -> UnitClass:
        """The class of ``units`` (``[n, m]``, consistent positions) with children from levels < ``below``."""
        units = np.asarray(units, dtype=np.int64)
        n, m = units.shape
        first = units[0]
        best_level = np.full(m, -1, dtype=np.int64)
        best_class = np.full(m, -1, dtype=np.int64)
        for d in sorted(self.class_at):
            if d >= below:
                continue
            cid = self.class_at[d][first]
            hit = cid >= 0
            best_level[hit] = d  # levels ascend: the highest level containing the node wins
            best_class[hit] = cid[hit]
        children = []
        covered = np.zeros(m, dtype=bool)
        position = {int(x): t for t, x in enumerate(first.tolist())}
        for cid in _first_occurrences(best_class[best_class >= 0]):
            d, c = self.classes[cid]
            sub = self.blocks.of(d, self.members(d, c))  # [k_child, m_child] nodes inside unit 0
            rel = np.vectorize(position.__getitem__, otypes=[np.int64])(sub)
            covered[rel.reshape(-1)] = True
            k_child = int(sub.shape[0])
            child_units = units[:, rel].reshape(n * k_child, -1)
            children.append(self.build(child_units, d, k_child))
        own = units[:, ~covered]
        return UnitClass(units=units, k=n if k is None else k, own=own, children=tuple(children))


def _first_occurrences(x: np.ndarray) -> list[int]:
    _, idx = np.unique(x, return_index=True)
    return [int(v) for v in x[np.sort(idx)].tolist()]


def factors_of(aut, generic_limit: int = 5040) -> list[Factor | GenericFactor]:
    """The factors of ``aut`` (an :class:`~symgraph.AutomorphismGroup` of a parameter graph) as matching problems.

    One :class:`Factor` per interchangeable twin class (in ``aut.factor_records`` order, with its name) and per
    orbit of a symmetric quotient factor; one :class:`GenericFactor` per other quotient factor (its elements
    when there are at most ``generic_limit``, else its generators).

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> aut = symgraph.automorphism_group(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> [(f.name, f.k) for f in factors_of(aut)]
    [('S_4 on 0 outputs', 4)]
    """
    graph = aut.graph
    n = int(graph.num_nodes)
    red = aut.reduction
    blocks = _Blocks(red, n)
    builder = _TreeBuilder(blocks, n)
    layer = graph.node_layer.numpy() if hasattr(graph, "node_layer") else np.zeros(n, dtype=np.int64)
    records = aut.factor_records
    out: list[Factor | GenericFactor] = []
    for i, (d, c) in enumerate(builder.classes):
        units = blocks.of(d, builder.members(d, c))
        nodes = np.sort(units.reshape(-1))
        rec = records[i]
        if not np.array_equal(nodes, np.sort(np.asarray(rec["nodes"]))):
            raise SymgraphError("internal: Expected the factor's units to cover its factor_records nodes (got others)")
        out.append(Factor(rec["names"][0], builder.build(units, d), int(layer[nodes].min()), nodes))
    q = aut.quotient
    top = len(red.levels)
    for j, f in enumerate(q.factors):
        rec = records[len(builder.classes) + j]
        if f.symmetric:
            names = list(rec["names"])
            for o, orb in enumerate(f.orbits):
                cols = [orb] + [dep for root, dep in q.dependents if np.array_equal(root, orb)]
                units = np.concatenate([blocks.of(top, np.asarray(v, dtype=np.int64)) for v in cols], axis=1)
                nodes = np.sort(units.reshape(-1))
                name = names[o] if o < len(names) else f"S_{orb.size} on {nodes.size} nodes"
                out.append(Factor(name, builder.build(units, top), int(layer[nodes].min()), nodes))
        else:
            local = _generic_elements(f, generic_limit)
            perms = np.stack([_quotient_perm(q, f, g) for g in local]) if len(local) else np.zeros((0, q.n), np.int64)
            lifted = red.lift(perms) if perms.shape[0] else np.zeros((0, n), dtype=np.int64)
            lifted = np.asarray(lifted, dtype=np.int64).reshape(-1, n)
            moved = np.nonzero((lifted != np.arange(n)).any(axis=0))[0]
            out.append(
                GenericFactor(
                    rec["names"][0],
                    lifted,
                    exhaustive=f.order <= generic_limit,
                    layer=int(layer[moved].min()) if moved.size else 0,
                    nodes=moved,
                )
            )
    return out


def _generic_elements(f, limit: int) -> list[np.ndarray]:
    """Non-identity elements of a quotient factor (local permutations of ``f.points``), or its generators."""
    ident = np.arange(f.points.size)
    if f.order <= limit:
        G = f.sympy_group()
        elems = [np.asarray(g.array_form, dtype=np.int64) for g in G.generate()]
    else:
        elems = [np.asarray(g, dtype=np.int64) for g in f.generators]
        elems += [np.argsort(g) for g in elems]
    return [g for g in elems if not np.array_equal(g, ident)]


def _quotient_perm(q, f, local: np.ndarray) -> np.ndarray:
    """A quotient permutation acting as ``local`` on ``f.points``, extended to the orbits they determine."""
    perm = np.arange(q.n, dtype=np.int64)
    perm[f.points] = f.points[local]
    for root, dep in q.dependents:
        inv = np.full(q.n, -1, dtype=np.int64)
        inv[root] = np.arange(root.size)
        perm[dep] = dep[inv[perm[root]]]
    return perm


# ---------------------------------------------------------------------------------------------- slot tables
@dataclass
class ClassTables:
    """Slot tables of one class type of a factor tree (see :class:`FactorTables`)."""

    exact: np.ndarray  # [n, D] edge ids: slot q of unit a (complete: every unit has every slot)
    exact_other: np.ndarray  # [D] the fixed other end of slot q's edges (-1: inside the factor's units)
    cross: np.ndarray  # [n, Dc] edge ids or -1: edges to other units of the same factor (linearised)
    nodes: np.ndarray  # [n, m_own] own nodes (their node_weight rows are node slots)


@dataclass
class FactorTables:
    """Every parameter a factor's units touch, at slots shared by all units.

    For an edge with at least one end in the factor's units, the end lying in the deeper unit (the other end
    lies in an enclosing unit or outside) *owns* it: its slot is the owning end's position in its unit, the
    other end (a node outside, or a position in the common enclosing unit, which is mapped along), the
    colour and the direction. Those slots are ``exact``: moving unit ``a`` to ``b`` moves the edge at slot
    ``q`` of ``a`` to slot ``q`` of ``b``. Edges between two different units of the same class (a conv from a
    residual stream onto itself) move at both ends; they are listed from both ends in ``cross`` and enter
    the cost linearised (other end held in place), and move by lookup.
    """

    classes: list[ClassTables]
    parents: list[int]
    cross_edges: np.ndarray  # edge ids of all cross edges (each once)
    cross_keys: np.ndarray  # sorted (src * N + dst) * C + colour of cross edges
    cross_order: np.ndarray  # cross_edges[cross_order] matches cross_keys
    num_colors: int


def _index_dtype(num: int):
    return np.int32 if num < 2**31 - 1 else np.int64


class Adjacency:
    """Out- and in-edges of every node (CSR by source and by target), to list a factor's edges without a
    pass over the whole graph."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, num_nodes: int):
        self.src, self.dst = src, dst
        self.by_src, self.src_ptr = _csr(src, num_nodes)
        self.by_dst, self.dst_ptr = _csr(dst, num_nodes)

    def incident(self, nodes: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Edges with an end in ``nodes`` (``inside`` is the boolean mask of ``nodes``), each once."""
        out = _gather(self.by_src, self.src_ptr, nodes)
        inn = _gather(self.by_dst, self.dst_ptr, nodes)
        return np.concatenate([out, inn[~inside[self.src[inn]]]])


def _csr(key: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(key, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(key, minlength=n))
    return order, ptr


def _gather(order: np.ndarray, ptr: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    counts = ptr[nodes + 1] - ptr[nodes]
    total = int(counts.sum())
    starts = np.repeat(ptr[nodes] - (np.cumsum(counts) - counts), counts)
    return order[starts + np.arange(total, dtype=np.int64)]


def build_tables(
    factor: Factor, src: np.ndarray, dst: np.ndarray, color: np.ndarray, num_nodes: int, adjacency=None
) -> FactorTables:
    """The slot tables of ``factor`` on a graph given as edge arrays (structure only; no weights)."""
    walk = factor.root.walk()
    depth_count = max(d for _, d, _ in walk) + 1
    N = int(num_nodes)
    C = int(color.max()) + 1 if color.size else 1
    gid = np.full((depth_count, N), -1, dtype=np.int64)
    pos = np.full((depth_count, N), -1, dtype=np.int64)
    own_type = np.full(N, -1, dtype=np.int64)
    own_depth = np.full(N, -1, dtype=np.int64)
    offsets = []
    off = 0
    for ti, (cls, d, _) in enumerate(walk):
        offsets.append(off)
        n, m = cls.units.shape
        gid[d, cls.units.reshape(-1)] = off + np.repeat(np.arange(n, dtype=np.int64), m)
        pos[d, cls.units.reshape(-1)] = np.tile(np.arange(m, dtype=np.int64), n)
        own_type[cls.own.reshape(-1)] = ti
        own_depth[cls.own.reshape(-1)] = d
        off += n
    if adjacency is None:
        adjacency = Adjacency(src, dst, N)
    tree = factor.root.units.reshape(-1)
    inc = adjacency.incident(tree, own_depth >= 0)
    s, t_ = src[inc], dst[inc]
    gamma = np.full(inc.size, -1, dtype=np.int64)
    for d in range(depth_count):
        gs = gid[d, s]
        gamma[(gs == gid[d, t_]) & (gs >= 0)] = d
    ds, dd = own_depth[s], own_depth[t_]
    from_src = (ds > gamma) | ((ds == gamma) & (dd == gamma) & (gamma >= 0))
    from_dst = dd > gamma
    idt = _index_dtype(int(src.size))
    offsets_arr = np.asarray(offsets, dtype=np.int64)
    cross_all = []
    per_type: list[list[tuple]] = [[] for _ in walk]
    for flag, ends, direction in ((from_src, (s, t_), 0), (from_dst, (t_, s), 1)):
        sel = np.nonzero(flag)[0]
        if sel.size == 0:
            continue
        i, j = ends[0][sel], ends[1][sel]
        g, edge = gamma[sel], inc[sel]
        di = own_depth[i]
        exact = own_depth[j] <= g
        other = j.copy()
        inner = np.nonzero(g >= 0)[0]
        other[inner] = pos[g[inner], j[inner]]
        key = (((pos[di, i] * (depth_count + 1) + (g + 1)) * N + other) * C + color[edge]) * 2 + direction
        row = gid[di, i]
        if len(walk) == 1:
            per_type[0].append((row, key, edge, exact))
        else:
            ti = own_type[i]
            row -= offsets_arr[ti]
            for tj in np.nonzero(np.bincount(ti, minlength=len(walk)))[0].tolist():
                mine = ti == tj
                per_type[tj].append((row[mine], key[mine], edge[mine], exact[mine]))
        if not exact.all():
            cross_all.append(edge[~exact])
    classes: list[ClassTables] = []
    for ti, (cls, _, _) in enumerate(walk):
        parts = per_type[ti]
        row, key, edge, exact = (
            (np.concatenate([p[f] for p in parts]) if len(parts) > 1 else parts[0][f])
            if parts
            else np.zeros(0, np.int64)
            for f in range(4)
        )
        exact = exact.astype(bool)
        all_exact = bool(exact.all())
        if all_exact:
            table, slot_keys = _dense_table(cls.n, row, key, edge, complete=True, dtype=idt)
            cross = np.zeros((cls.n, 0), dtype=idt)
        else:
            table, slot_keys = _dense_table(cls.n, row[exact], key[exact], edge[exact], complete=True, dtype=idt)
            cross, _ = _dense_table(cls.n, row[~exact], key[~exact], edge[~exact], complete=False, dtype=idt)
        other_of = np.full(slot_keys.size, -1, dtype=np.int64)
        if slot_keys.size:
            # the slot's other end, decoded from its key: a node id for slots whose edges leave the factor
            gslot = (slot_keys // 2 // C // N) % (depth_count + 1) - 1
            oslot = (slot_keys // 2 // C) % N
            other_of = np.where(gslot < 0, oslot, -1)
        classes.append(ClassTables(table, other_of, cross, cls.own))
    cross_edges = np.unique(np.concatenate(cross_all)) if cross_all else np.zeros(0, dtype=np.int64)
    ck = (src[cross_edges] * N + dst[cross_edges]) * C + color[cross_edges]
    order = np.argsort(ck, kind="stable")
    return FactorTables(classes, [p for _, _, p in walk], cross_edges, ck[order], order, C)


def _dense_table(n: int, row, key, edge, complete: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``[n, D]`` table of ``edge`` at (row, slot of key); slots are the distinct keys in sorted order."""
    if key.size == 0:
        return np.zeros((n, 0), dtype=dtype), np.zeros(0, dtype=np.int64)
    if complete:
        first = row == 0
        slots = np.sort(key[first])
        D = slots.size
        col = np.searchsorted(slots, key)
        np.minimum(col, D - 1, out=col)
        counts = np.bincount(row, minlength=n)
        if key.size != n * D or not np.array_equal(slots[col], key) or not np.all(counts == D):
            raise SymgraphError(
                "internal: Expected every unit of a factor to touch the same parameter slots (got units that differ)"
            )
    else:
        slots, col = np.unique(key, return_inverse=True)
        col = col.reshape(-1)
        D = slots.size
    table = np.full(n * D, -1, dtype=dtype)
    table[row * D + col] = edge
    table = table.reshape(n, D)
    if complete and (table < 0).any():
        raise SymgraphError("internal: Expected one edge per unit and slot (got a slot twice)")
    return table, slots
