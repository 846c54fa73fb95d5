"""nauty on coloured directed multigraphs: parallel edges and edge colours encoded exactly.

pynauty takes a simple (di)graph with a vertex partition: it silently merges parallel edges and has no edge
colours. Parameter graphs are multigraphs whose parallel edges differ in colour (a conv layer joins two
channels by one edge per kernel position), so handing them to pynauty as they are loses structure and
reports too large a group (see :func:`naive_autgrp`, kept as the negative control of the tests).

The exact encoding used here (nauty user guide, "vertex-coloured graphs with edge colours"):

1. *collapse* the parallel edges between each ordered pair ``(u, v)`` into one edge labelled by the
   multiset of their colours; distinct multisets are numbered ``1 .. L``;
2. *layer* the graph: ``b = ceil(log2(L + 1))`` copies of the vertex set, copy ``t`` of ``v`` is vertex
   ``t * n + v``; the copies of each vertex are joined by a vertical path; the edge ``(u, v)`` with label
   ``l`` is present in copy ``t`` iff bit ``t`` of ``l`` is set; vertex colours are ``(colour, t)``.

Every automorphism of the layered digraph maps copy ``t`` onto itself (the colour says which copy), moves
the copies of a vertex together (vertical paths), and therefore induces on copy 0 a permutation preserving
every label bit: exactly the automorphisms of the edge-labelled multigraph. Direction: vertices are
coloured by their depth (longest path from a source), an automorphism invariant that orients every edge of
a DAG (from smaller to larger depth), so the undirected layered graph has the same automorphisms and nauty
can use its strong undirected refinement; graphs with cycles are first turned into an undirected graph with
the same automorphisms (:func:`undirected_form`, checked on a directed 3-cycle in the tests). What reaches
nauty is checked for well-formedness first (:func:`check_nauty_input`); with a time limit the search runs in
a forked child process that is killed at the deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import select
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ShapeMismatchError, SymgraphError
from ..progress import Progress

__all__ = [
    "NautyResult",
    "collapse_parallel_edges",
    "dag_depth",
    "graph_arrays",
    "layered_autgrp",
    "nauty_autgrp",
    "refine_colors",
    "undirected_form",
    "naive_autgrp",
    "check_nauty_input",
    "MalformedNautyInputError",
    "multiset_hash",
    "unique_int",
    "argsort_int",
]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic): a near-random, fixed function of its input."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


#: Keys per chunk of the hashes: a few temporaries of 2 MB each, next to edge lists of hundreds of MB.
HASH_CHUNK = 1 << 18


def multiset_hash(keys: np.ndarray, groups: np.ndarray, num_groups: int, salt: int = 0) -> np.ndarray:
    """Hash of the multiset of ``keys`` in each group (sum of mixed keys, wrapping): order-independent.

    Used only to *propose* equal multisets; every caller verifies a proposal exactly.
    """
    keys = np.asarray(keys)
    out = torch.zeros(num_groups, dtype=torch.int64)
    step = HASH_CHUNK  # in chunks: the mixing temporaries stay small next to the tens of millions of edges
    for lo in range(0, keys.size, step):
        h = _mix(keys[lo : lo + step].astype(np.uint64) ^ np.uint64(salt)).view(np.int64)
        g = torch.from_numpy(np.ascontiguousarray(groups[lo : lo + step], dtype=np.int64))
        # int64 scatter_add wraps around like uint64 addition: same bits, so the sum is a multiset hash
        out.scatter_add_(0, g, torch.from_numpy(h))
    return out.numpy()


def multiset_hash_pairs(
    hi: np.ndarray, mult: int, lo: np.ndarray, groups: np.ndarray, num_groups: int, salt: int = 0
) -> np.ndarray:
    """:func:`multiset_hash` of the keys ``hi * mult + lo`` (formed in int64, chunk by chunk: the edge-sized
    key array is never made; ``hi``, ``lo`` may be int32)."""
    out = torch.zeros(num_groups, dtype=torch.int64)
    step = HASH_CHUNK
    for a in range(0, hi.size, step):
        key = hi[a : a + step].astype(np.int64)
        key *= mult
        key += lo[a : a + step]
        h = _mix(key.view(np.uint64) ^ np.uint64(salt)).view(np.int64)
        g = torch.from_numpy(np.ascontiguousarray(groups[a : a + step], dtype=np.int64))
        out.scatter_add_(0, g, torch.from_numpy(h))
    return out.numpy()


def unique_int(x: np.ndarray, return_counts: bool = False, return_inverse: bool = False):
    """Sorted unique int64 values (and inverse, counts) by sorting in torch: numpy's hash-based unique is far
    slower on the tens of millions of edge keys of a ResNet; keys that fit are sorted as int32 (about twice as
    fast again)."""
    t = _as_sort_tensor(x)
    out = torch.unique(t, sorted=True, return_inverse=return_inverse, return_counts=return_counts)
    if not (return_counts or return_inverse):
        return out.numpy().astype(np.int64, copy=False)
    vals = [out[0].numpy().astype(np.int64, copy=False)]
    vals += [o.numpy().astype(np.int64, copy=False) for o in out[1:]]
    return tuple(vals)


def argsort_int(x: np.ndarray) -> np.ndarray:
    """Stable argsort of integer keys (torch's sort; int32 keys where they fit)."""
    return torch.sort(_as_sort_tensor(x), stable=True).indices.numpy()


def _as_sort_tensor(x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    if x.size and x.dtype != np.int32 and int(x.min()) >= -(2**31) and int(x.max()) < 2**31:
        return torch.from_numpy(x.astype(np.int32))
    return torch.from_numpy(x.astype(np.int64, copy=False))


@dataclass(frozen=True)
class NautyResult:
    """What nauty returned, restricted to the original vertices.

    ``generators`` [k, n] (``g[i]`` = image of ``i``), ``orbits`` [n] (orbit id = smallest member),
    ``grpsize`` nauty's floating order ``(mantissa, exponent10)``, ``seconds`` wall time of the search.
    """

    generators: np.ndarray
    orbits: np.ndarray
    grpsize: tuple[float, int]
    seconds: float
    num_labels: int = 1
    num_layers: int = 1

    @property
    def log10_order(self) -> float:
        return math.log10(self.grpsize[0]) + self.grpsize[1]


def graph_arrays(graph) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(n, src, dst, edge_colour, vertex_colour)`` of a NeuralGraph-like object, fixed nodes made unique.

    Fixed nodes (input, output, bias, position: ``graph.fixed_mask``) each get a colour of their own, as the
    neural DAG automorphisms of the paper (appendix C.2) fix them pointwise.
    """
    n = int(graph.num_nodes)
    ei = graph.edge_index
    src = ei[0].numpy().astype(np.int64)
    dst = ei[1].numpy().astype(np.int64)
    ecol = graph.edge_color.numpy().astype(np.int64)
    vcol = np.asarray(graph.node_color.numpy(), dtype=np.int64).copy()
    fixed = np.asarray(graph.fixed_mask.numpy(), dtype=bool)
    base = int(vcol.max()) + 1 if n else 0
    vcol[fixed] = base + np.nonzero(fixed)[0]
    return n, src, dst, ecol, _compact(vcol)


def _compact(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(-1)


def collapse_parallel_edges(n: int, src, dst, color) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Merge the parallel edges of each ordered pair into one edge labelled by their colour multiset.

    Returns ``(u, v, label, num_labels)`` with labels in ``1 .. num_labels``; equal multisets get equal
    labels, different multisets different labels (proposed by hashing, then checked element by element).

    Example
    -------
    >>> u, v, lab, L = collapse_parallel_edges(2, [0, 0, 0], [1, 1, 1], [3, 1, 2])
    >>> (u.tolist(), v.tolist(), lab.tolist(), L)
    ([0], [1], [1], 1)
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    color = np.asarray(color, dtype=np.int64)
    if src.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), e.copy(), 0
    pair = src * n + dst
    order = np.lexsort((color, pair))
    pair_s, col_s = pair[order], color[order]
    uniq, first, inv, counts = np.unique(pair_s, return_index=True, return_inverse=True, return_counts=True)
    h = multiset_hash(col_s, inv, uniq.size, salt=0x5BD1E995)
    cand = np.unique(np.stack([h, counts]), axis=1, return_inverse=True)[1].reshape(-1)
    # exact check: every pair's sorted colour list equals that of the first pair with the same candidate
    rep = np.full(cand.max() + 1, -1, dtype=np.int64)
    rep[cand[::-1]] = np.arange(uniq.size)[::-1]
    pos_in_group = np.arange(pair_s.size) - first[inv]
    ok = col_s == col_s[first[rep[cand[inv]]] + pos_in_group]
    if not ok.all():  # hash collision: fall back to explicit tuples (never seen in practice)
        groups = np.split(col_s, first[1:])
        table: dict[tuple, int] = {}
        cand = np.array([table.setdefault(tuple(g.tolist()), len(table)) for g in groups], dtype=np.int64)
    label = _compact(cand) + 1
    return uniq // n, uniq % n, label, int(label.max())


def dag_depth(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Longest-path depth from the sources (an automorphism invariant); None if the graph has a cycle.

    Kahn's algorithm by frontiers: each edge is touched once (O(E) in all, one numpy pass per level).
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if src.size > 1 and not bool(np.all(src[1:] >= src[:-1])):  # quotient edge lists come sorted already
        order = argsort_int(src)
        s_sorted, d_sorted = src[order], dst[order]
    else:
        s_sorted, d_sorted = src, dst
    starts = np.searchsorted(s_sorted, np.arange(n + 1))
    indeg = np.bincount(dst, minlength=n)
    depth = np.zeros(n, dtype=np.int64)
    frontier = np.nonzero(indeg == 0)[0]
    seen = frontier.size
    while frontier.size:
        lo, hi = starts[frontier], starts[frontier + 1]
        cnt = hi - lo
        if cnt.sum() == 0:
            break
        idx = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
        tgt = d_sorted[idx]
        np.maximum.at(depth, tgt, np.repeat(depth[frontier] + 1, cnt))
        hit = np.bincount(tgt, minlength=n)
        indeg = indeg - hit
        frontier = np.nonzero((indeg == 0) & (hit > 0))[0]
        seen += frontier.size
    return depth if seen == n else None


class MalformedNautyInputError(SymgraphError):
    """Internal: what was about to reach nauty is not a well-formed coloured graph (a bug upstream, never
    the user's input): a vertex in no colour cell or in two, an asymmetric adjacency, or layered sizes that
    do not add up."""


def check_nauty_input(
    num_vertices: int, src: np.ndarray, dst: np.ndarray, cells: list[np.ndarray], n: int, layers: int
) -> None:
    """Cheap well-formedness checks of a layered graph before nauty sees it (raise
    :class:`MalformedNautyInputError`).

    * every vertex ``0 .. num_vertices - 1`` lies in exactly one colour cell, and each cell in one layer;
    * the adjacency ``src -> dst`` is symmetric (nauty searches it as an undirected graph), without loops,
      with every vertex in range;
    * ``num_vertices == n * layers`` and every edge stays inside one layer or joins copy ``t`` of a vertex
      to copy ``t + 1`` (the vertical paths).

    Example
    -------
    >>> check_nauty_input(2, np.array([0, 1]), np.array([1, 0]), [np.array([0, 1])], 2, 1)   # fine
    >>> check_nauty_input(2, np.array([0, 1]), np.array([1, 0]), [np.array([0])], 2, 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    symgraph.automorphisms.nauty.MalformedNautyInputError: internal: ... in exactly one colour cell ...
    """

    def bad(expected: str, got: str) -> MalformedNautyInputError:
        return MalformedNautyInputError(f"internal: Expected {expected} (got {got})")

    if num_vertices != n * layers:
        raise bad(f"{n} vertices x {layers} layers = {n * layers} vertices", str(num_vertices))
    flat = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
    if flat.size != num_vertices or not np.array_equal(np.sort(flat), np.arange(num_vertices)):
        raise bad(
            "every vertex of the graph for nauty in exactly one colour cell",
            f"{flat.size} cell entries for {num_vertices} vertices",
        )
    if any(c.size and c.min() // max(n, 1) != c.max() // max(n, 1) for c in cells):
        raise bad("each colour cell inside one layer", "a cell spanning layers")
    if src.size:
        if min(int(src.min()), int(dst.min())) < 0 or max(int(src.max()), int(dst.max())) >= num_vertices:
            raise bad(f"edge ends in 0 .. {num_vertices - 1}", "an edge end out of range")
        if bool(np.any(src == dst)):
            raise bad("no self-loops in the graph for nauty", f"{int(np.count_nonzero(src == dst))}")
        fwd = np.sort(src * num_vertices + dst)
        back = np.sort(dst * num_vertices + src)
        if not np.array_equal(fwd, back):
            raise bad("a symmetric adjacency for nauty's undirected search", "an edge without its reverse")
        ls, ld = src // n, dst // n
        vertical = (np.abs(ld - ls) == 1) & (src % n == dst % n)
        if not bool(np.all((ls == ld) | vertical)):
            raise bad("edges inside one layer or along the vertical paths", "an edge across layers")


def _autgrp_bounded(g, progress: Progress | None):
    """``pynauty.autgrp(g)``, in a forked child process when a time limit is set (nauty is one C call that
    cannot be interrupted; the child is killed at the deadline and :class:`TimeLimitError` raised)."""
    import pynauty

    return _bounded(lambda: pynauty.autgrp(g), progress)


def _bounded(work, progress: Progress | None):
    """``work()``, in a forked child process killed at the deadline when ``progress`` has a time limit (the
    result comes back pickled; :class:`TimeLimitError` is raised at the deadline)."""
    remaining = None if progress is None else progress.remaining()
    if remaining is None:
        return work()
    if remaining <= 0:
        raise progress.expired()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, send, exit without running the parent's cleanup handlers
        code = 1
        try:
            os.close(rfd)
            data = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + remaining
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise progress.expired()
            ready, _, _ = select.select([rfd], [], [], min(left, 0.5))
            if ready:
                data = os.read(rfd, 1 << 20)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise SymgraphError(f"internal: Expected the nauty child process to exit cleanly (got status {status})")
    return pickle.loads(b"".join(chunks))


def layered_autgrp(
    n: int,
    u,
    v,
    label,
    vertex_color,
    num_labels: int | None = None,
    progress: Progress | None = None,
) -> NautyResult:
    """Automorphisms of a graph with integer edge labels ``>= 1`` and vertex colours (layered encoding).

    nauty only ever searches undirected graphs here (its digraph refinement only looks at out-neighbourhoods
    and searched for minutes on graphs of a few dozen vertices): the caller orients the edges first (depth
    colours, or :func:`undirected_form`), and ``u -> v`` is the same edge as ``v -> u``.

    Parameters
    ----------
    n : int
        Number of vertices.
    u, v, label : array-like
        One edge per pair (collapse parallel edges first), label in ``1 .. num_labels``.
    vertex_color : array-like of int
        Colour classes every automorphism preserves.
    progress : Progress, optional
        Stage ``"nauty"``; with a time limit the search runs in a forked child killed at the deadline.

    Example
    -------
    >>> r = layered_autgrp(3, [0, 0], [1, 2], [1, 2], [0, 1, 1])   # differently labelled: no swap
    >>> r.grpsize
    (1.0, 0)
    """
    import pynauty

    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    vc = _compact(np.asarray(vertex_color, dtype=np.int64)) if n else np.zeros(0, dtype=np.int64)
    if label.size and label.min() < 1:
        raise ShapeMismatchError("edge labels >= 1", f"min label {int(label.min())}")
    L = int(num_labels if num_labels is not None else (label.max() if label.size else 0))
    b = max(1, math.ceil(math.log2(L + 1)))
    if n == 0:
        return NautyResult(np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), (1.0, 0), 0.0, L, b)
    srcs, dsts = [], []
    for t in range(b):
        on = ((label >> t) & 1).astype(bool)
        srcs.append(u[on] + t * n)
        dsts.append(v[on] + t * n)
        if t + 1 < b:  # vertical path joining the copies of every vertex
            srcs.append(np.arange(n, dtype=np.int64) + t * n)
            dsts.append(np.arange(n, dtype=np.int64) + (t + 1) * n)
    S0 = np.concatenate(srcs)
    D0 = np.concatenate(dsts)
    S = np.concatenate([S0, D0])  # both directions: the adjacency nauty searches, symmetric by construction
    D = np.concatenate([D0, S0])
    order = np.argsort(S, kind="stable")
    S, D = S[order], D[order]
    ncol = int(vc.max()) + 1
    cell = (np.arange(b, dtype=np.int64).reshape(b, 1) * ncol + vc.reshape(1, n)).reshape(-1)
    cell_order = np.argsort(cell, kind="stable")
    cuts = np.nonzero(np.diff(cell[cell_order]))[0] + 1
    cells = np.split(cell_order, cuts)
    check_nauty_input(n * b, S, D, cells, n, b)
    keys, starts = np.unique(S, return_index=True)
    adj = dict(zip(keys.tolist(), (a.tolist() for a in np.split(D, starts[1:])), strict=True)) if S.size else {}
    g = pynauty.Graph(n * b, directed=False, adjacency_dict=adj, vertex_coloring=[set(p.tolist()) for p in cells])
    t0 = time.perf_counter()
    stage = progress.stage("nauty", f"{n * b} vertices, {b} layers") if progress else contextlib.nullcontext()
    with stage:
        gens, size1, size2, orbits, _ = _autgrp_bounded(g, progress)
    secs = time.perf_counter() - t0
    gens_arr = np.asarray(gens, dtype=np.int64).reshape(-1, n * b)[:, :n] if gens else np.zeros((0, n), np.int64)
    return NautyResult(gens_arr, np.asarray(orbits, dtype=np.int64)[:n], (float(size1), int(size2)), secs, L, b)


def refine_colors(n: int, u, v, label, vertex_color, max_rounds: int | None = None) -> np.ndarray:
    """Colour refinement (1-dimensional Weisfeiler-Leman) of a digraph with edge labels.

    Each round recolours a vertex by its colour and the multisets of ``(label, neighbour colour)`` over its
    out- and its in-edges, until the number of colours stops growing. The classes are automorphism-invariant
    sets (each round's colour is a fixed function of data every automorphism preserves; a hash collision
    could only make the partition coarser, never wrong), so *any* numbering of them is an invariant
    colouring; they are numbered by (input colour, smallest member), which depends on the partition alone,
    not on how labels are numbered.

    Example
    -------
    >>> refine_colors(4, [0, 1, 2], [1, 2, 3], [1, 1, 1], [0, 0, 0, 0]).tolist()   # a directed path
    [0, 1, 2, 3]
    >>> refine_colors(4, [0, 1, 2, 3], [1, 2, 3, 0], [1, 1, 1, 1], [0, 0, 0, 0]).tolist()   # a cycle
    [0, 0, 0, 0]
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    vc0 = _compact(np.asarray(vertex_color, dtype=np.int64)) if n else np.zeros(0, dtype=np.int64)
    if n == 0 or u.size == 0:
        return vc0
    vc = vc0
    k = int(vc.max()) + 1
    for _ in range(max_rounds or n):
        out_key = (label * (k + 1) + vc[v]) * 2
        in_key = (label * (k + 1) + vc[u]) * 2 + 1
        h = multiset_hash(np.concatenate([out_key, in_key]), np.concatenate([u, v]), n, salt=0x51ED)
        new = np.unique(np.stack([vc, h], axis=1), axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
        k_new = int(new.max()) + 1
        vc = new
        if k_new == k:
            break
        k = k_new
    mins = np.full(k, n, dtype=np.int64)
    np.minimum.at(mins, vc, np.arange(n, dtype=np.int64))
    order = np.lexsort((mins, vc0[mins]))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k, dtype=np.int64)
    return rank[vc]


def undirected_form(n: int, u, v, label, vertex_color) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An undirected, vertex- and edge-labelled graph with exactly the automorphisms of a labelled digraph.

    pynauty's digraph mode refines by out-neighbourhoods only and can search for minutes on graphs of a few
    dozen vertices (a residual block whose stream was contracted by the twin reduction is a small cyclic
    graph: 33 vertices took over 20 s), so nauty only ever sees undirected graphs. A DAG is oriented by
    depth colours (:func:`nauty_autgrp`); any digraph is oriented here:

    1. a self-loop's label moves into its vertex's colour; the colours are then refined
       (:func:`refine_colors`), which every automorphism preserves;
    2. an edge between vertices of different colours is oriented by the colours: the pair ``{a, b}`` with
       ``colour(a) < colour(b)`` gets the label ``(label(a -> b), label(b -> a))`` (0 where absent);
    3. an arc ``a -> b`` between vertices of equal colour is subdivided: a new vertex ``m`` coloured by the
       arc's label, joined to ``a`` by a *tail* edge and to ``b`` by a *head* edge.

    Automorphisms of the result map original vertices to original vertices (the new ones have colours of
    their own) and preserve every oriented label and every tail/head pair, hence every arc with its label;
    conversely an automorphism of the digraph extends uniquely (``m_ab -> m_{g(a) g(b)}``). The first ``n``
    vertices are the original ones.

    Returns ``(n2, a, b, label2, colour2)`` with one undirected edge per pair and labels ``>= 1``.

    Example
    -------
    >>> n2, a, b, lab, vc = undirected_form(3, [0, 1, 2], [1, 2, 0], [1, 1, 1], [0, 0, 0])  # a 3-cycle
    >>> n2   # refinement cannot split the cycle: every arc is subdivided
    6
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    vc = _compact(np.asarray(vertex_color, dtype=np.int64)) if n else np.zeros(0, dtype=np.int64)
    loop = u == v
    if loop.any():
        loop_lab = np.zeros(n, dtype=np.int64)
        loop_lab[u[loop]] = label[loop]
        vc = _compact(vc * (int(loop_lab.max()) + 1) + loop_lab)
        u, v, label = u[~loop], v[~loop], label[~loop]
    vc = refine_colors(n, u, v, label, vc)
    L = int(label.max()) if label.size else 0
    same = vc[u] == vc[v]
    # 2. oriented pairs: lo -> hi by colour, both directions' labels in one
    du, dv, dl = u[~same], v[~same], label[~same]
    fwd = vc[du] < vc[dv]
    lo = np.where(fwd, du, dv)
    hi = np.where(fwd, dv, du)
    pair = lo * n + hi
    uniq, inv = np.unique(pair, return_inverse=True)
    lab_f = np.zeros(uniq.size, dtype=np.int64)
    lab_b = np.zeros(uniq.size, dtype=np.int64)
    lab_f[inv[fwd]] = dl[fwd]
    lab_b[inv[~fwd]] = dl[~fwd]
    combined = lab_f * (L + 1) + lab_b  # >= 1: every pair has at least one arc
    # 3. subdivided arcs between equal colours: codes above every combined label for tail and head edges
    su, sv, sl = u[same], v[same], label[same]
    k = su.size
    mids = n + np.arange(k, dtype=np.int64)
    tail_code = (L + 1) ** 2
    head_code = tail_code + 1
    a = np.concatenate([uniq // n, su, mids])
    b = np.concatenate([uniq % n, mids, sv])
    codes = np.concatenate([combined, np.full(k, tail_code), np.full(k, head_code)])
    ncol = int(vc.max()) + 1 if n else 0
    colour = np.concatenate([vc, ncol + sl])
    return n + k, a, b, _compact(codes) + 1, _compact(colour)


def nauty_autgrp(
    n: int, src, dst, color, vertex_color, use_depth: bool = True, progress: Progress | None = None
) -> NautyResult:
    """Exact automorphism group of a vertex- and edge-coloured directed multigraph (no twin reduction).

    nauty always searches an undirected graph: a DAG with its depth in the vertex colours (every edge goes
    from a smaller to a larger longest-path depth, and automorphisms preserve depth), any other digraph in
    the exact undirected form of :func:`undirected_form`.

    Example
    -------
    >>> # two parallel edges 0->1 of colours 0 and 1, and one 0->2 of colour 0: 1 and 2 are not swappable
    >>> nauty_autgrp(3, [0, 0, 0], [1, 1, 2], [0, 1, 0], [0, 1, 1]).grpsize
    (1.0, 0)
    """
    if progress is not None and progress.remaining() is not None and n:
        # with a time limit the whole of it runs in the child killed at the deadline: on a raw graph of tens of
        # millions of edges the layered construction itself (sorts, pynauty's adjacency) takes minutes
        with progress.stage("nauty", f"{n} vertices, {np.size(src)} edges, in a child process"):
            return _bounded(lambda: nauty_autgrp(n, src, dst, color, vertex_color, use_depth), progress)
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if n == 0:
        return layered_autgrp(0, [], [], [], [])
    u, v, lab, L = collapse_parallel_edges(n, src, dst, color)
    vc = np.asarray(vertex_color, dtype=np.int64)
    depth = dag_depth(n, u, v) if use_depth else None
    if depth is not None:
        vc = _compact(vc * (int(depth.max()) + 1) + depth)
        return layered_autgrp(n, u, v, lab, vc, L, progress=progress)
    n2, a, b, lab2, vc2 = undirected_form(n, u, v, lab, vc)
    res = layered_autgrp(n2, a, b, lab2, vc2, progress=progress)
    if n2 == n:
        return res
    return NautyResult(res.generators[:, :n], res.orbits[:n], res.grpsize, res.seconds, res.num_labels, res.num_layers)


def naive_autgrp(graph) -> NautyResult:
    """NEGATIVE CONTROL: pynauty on the plain digraph (parallel edges merged, edge colours dropped).

    Wrong by design on multigraphs such as conv layers; the tests show it reports a larger group.
    """
    n, src, dst, _, vc = graph_arrays(graph)
    u, v, _, _ = collapse_parallel_edges(n, src, dst, np.zeros_like(src))
    return nauty_autgrp(n, u, v, np.zeros_like(u), vc)
