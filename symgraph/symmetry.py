"""The analytic permutation symmetry that encoders declare, as a group: its exact order and random elements.

Every encoder declares the known symmetry of its layer with :class:`~symgraph.builder.SymmetryDecl`s (kept in
``graph.meta["symmetries"]``). This module turns those declarations into a group acting on graph nodes:

1. **Classes.** ``"tie"`` declarations identify ``nodes[i]`` with ``other[i]``; the connected components of
   the ties are classes of nodes that move together (a residual stream, a norm and its input, q/k/qk nodes).
   A class that contains a fixed node (input, output, bias, position) never moves.
2. **Cells.** ``"perm"`` declarations say which classes may be permuted as a set. Two classes may be
   swapped by a within-cell permutation only if *every* ``"perm"`` declaration that covers one covers the
   other too, so the cells are the classes grouped by the set of declarations that cover them. This is how
   a GroupNorm (one ``"perm"`` per group) cuts the S_C that its convolution declared into its groups.
3. **Blocks.** ``"blocks"`` declarations ([B, n] nodes) let rows be permuted as wholes (heads, norm groups).
   Declarations whose rows share classes row by row (two GroupNorms on one residual stream, a chain of
   grouped convolutions) are one block structure: one row permutation moves all of them. A structure with a
   fixed class in a row is not permutable. Rows may carry structural nodes with no ``"perm"`` of their own
   (a head's or a norm group's node, a grouped convolution's input channels): they move only with their row.
   Nested structures (rows of one cutting across rows of another) raise :class:`~symgraph.errors.SymgraphError`.
4. **Copies.** ``"copies"`` declarations ([R, n] nodes) are rows that are *copies* of one another inside one
   row of a block structure: grouped-query attention's R query heads that read one key/value head. Their
   nodes are tied to the shared head (so a cell permutation moves all copies alike), and a copies declaration
   lets the rows be permuted among themselves on top of that (order R!). A row moves with the nodes tied to it
   through ties that reach no other row first (the query projection under a rotary embedding); nodes reached
   from several rows (the shared key/value head) stay where they are.

The group is (product over cells of S_cell) extended by the row permutations and the copy permutations, of
order ``prod(|cell|!) * prod(B!) * prod(R!)``. A node permutation is made from class permutations by moving one
node per class and propagating along the ties (``other[i]`` goes where ``nodes[i]`` goes).

Example
-------
>>> import torch.nn as nn, symgraph
>>> from symgraph.symmetry import analytic_order, random_analytic_permutation
>>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(),
...                                            nn.Linear(5, 2)))
>>> analytic_order(g) == 24 * 120
True
>>> g.is_automorphism(random_analytic_permutation(g, torch.Generator().manual_seed(0)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SymgraphError
from .graph import NeuralGraph

__all__ = ["AnalyticSymmetry", "analytic_symmetry", "analytic_order", "random_analytic_permutation"]


@dataclass(frozen=True)
class AnalyticSymmetry:
    """The declared symmetry of a graph, resolved into cells, block structures and ties (see module doc).

    ``cells[i]`` holds one representative node per class of the cell; ``blocks[i]`` is a list of [B, n] node
    arrays (declarations whose rows are permuted together); ``ties`` are the (nodes, other) pairs.
    """

    num_nodes: int
    cells: tuple[torch.Tensor, ...]
    blocks: tuple[tuple[torch.Tensor, ...], ...]
    ties: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    labels: dict
    copies: tuple[tuple[torch.Tensor, tuple], ...] = ()  # (rows [R, n], the ties that move with the rows)

    @property
    def order(self) -> int:
        """Exact group order: prod over cells of |cell|! times prod over block structures of B!."""
        out = 1
        for c in self.cells:
            out *= math.factorial(int(c.numel()))
        for decls in self.blocks:
            out *= math.factorial(int(decls[0].shape[0]))
        for rows, _ in self.copies:
            out *= math.factorial(int(rows.shape[0]))
        return out

    @property
    def factors(self) -> list[str]:
        """Human-readable factors, e.g. ``["S_4 (S_4 on 0 output units)", "S_2 (blocks: heads of attn)"]``."""
        out = [
            f"S_{int(c.numel())} ({self.labels.get(('cell', i), '')})"
            for i, c in enumerate(self.cells)
            if c.numel() > 1
        ]
        out += [
            f"S_{int(d[0].shape[0])} (blocks: {self.labels.get(('blocks', i), '')})"
            for i, d in enumerate(self.blocks)
            if d[0].shape[0] > 1
        ]
        out += [
            f"S_{int(r.shape[0])} (copies: {self.labels.get(('copies', i), '')})"
            for i, (r, _) in enumerate(self.copies)
            if r.shape[0] > 1
        ]
        return out

    # -------------------------------------------------------------- node permutations
    def _propagate(self, phi: torch.Tensor) -> torch.Tensor:
        """Extend a partial node map (``-1`` = unset) along the ties; unset nodes stay fixed."""
        sorted_ties = [(a, b, *torch.sort(a), *torch.sort(b)) for a, b in self.ties]
        changed = True
        while changed:
            changed = False
            for a, b, sa, ia, sb, ib in sorted_ties:
                for x, y, sx, ix in ((a, b, sa, ia), (b, a, sb, ib)):
                    known = phi[x] >= 0
                    if not bool(known.any()):
                        continue
                    target = phi[x[known]]
                    pos = torch.searchsorted(sx, target).clamp(max=sx.numel() - 1)
                    if not bool((sx[pos] == target).all()):
                        raise SymgraphError(
                            "Expected tied node sets to be mapped onto themselves (got a "
                            "declaration whose permutation leaves a tied set)"
                        )
                    new = y[ix[pos]]
                    cur = phi[y[known]]
                    if bool(((cur >= 0) & (cur != new)).any()):
                        raise SymgraphError(
                            "Expected consistent symmetry declarations (got two ties that move one node to two places)"
                        )
                    unset = cur < 0
                    if bool(unset.any()):
                        phi[y[known][unset]] = new[unset]
                        changed = True
        ident = torch.arange(self.num_nodes)
        return torch.where(phi >= 0, phi, ident)

    def cell_permutation(self, perms: list[torch.Tensor]) -> torch.Tensor:
        """Node permutation moving cell ``i``'s classes by ``perms[i]`` (index permutations)."""
        phi = torch.full((self.num_nodes,), -1, dtype=torch.long)
        for reps, p in zip(self.cells, perms):
            phi[reps] = reps[p]
        return self._propagate(phi)

    def block_permutation(self, perms: list[torch.Tensor]) -> torch.Tensor:
        """Node permutation moving the rows of block structure ``i`` by ``perms[i]``."""
        phi = torch.full((self.num_nodes,), -1, dtype=torch.long)
        for decls, p in zip(self.blocks, perms):
            for rows in decls:
                phi[rows.reshape(-1)] = rows[p].reshape(-1)
        return self._propagate(phi)

    def random_element(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniformly random element: random within-cell permutations, then a random row permutation."""
        inner = self.cell_permutation([torch.randperm(int(c.numel()), generator=generator) for c in self.cells])
        outer = self.block_permutation([torch.randperm(int(d[0].shape[0]), generator=generator) for d in self.blocks])
        copies = self.copy_permutation([torch.randperm(int(r.shape[0]), generator=generator) for r, _ in self.copies])
        return copies[outer[inner]]

    def copy_permutation(self, perms: list[torch.Tensor]) -> torch.Tensor:
        """Node permutation moving the rows of copies declaration ``i`` by ``perms[i]``, with the nodes tied to
        each row (the shared nodes stay)."""
        out = torch.arange(self.num_nodes)
        for (rows, ties), p in zip(self.copies, perms):
            phi = torch.full((self.num_nodes,), -1, dtype=torch.long)
            phi[rows.reshape(-1)] = rows[p].reshape(-1)
            phi = AnalyticSymmetry(self.num_nodes, (), (), ties, {})._propagate(phi)
            out = phi[out]
        return out


def _classes(num_nodes: int, ties) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not ties:
        return np.arange(num_nodes)
    src = torch.cat([a for a, _ in ties]).numpy()
    dst = torch.cat([b for _, b in ties]).numpy()
    adj = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(num_nodes, num_nodes))
    _, labels = connected_components(adj, directed=False)
    return labels


def analytic_symmetry(graph: NeuralGraph) -> AnalyticSymmetry:
    """Resolve ``graph.meta["symmetries"]`` into an :class:`AnalyticSymmetry` (see the module docstring).

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
    >>> analytic_symmetry(g).factors
    ['S_3 (S_3 on 0 output units)']
    """
    decls = list(graph.meta.get("symmetries", []))
    n = graph.num_nodes
    ties = []
    for d in decls:
        if d.kind == "tie":
            a, b = d.nodes.reshape(-1).long(), d.other.reshape(-1).long()
            if a.numel() != b.numel():
                raise SymgraphError(
                    f"Expected tie '{d.label}' between equal-length node sets (got {a.numel()} and {b.numel()})"
                )
            keep = a != b
            if bool(keep.any()):
                ties.append((a[keep], b[keep]))
    labels = _classes(n, ties)
    fixed_nodes = graph.fixed_mask.numpy()
    fixed_class = np.zeros(labels.max() + 1 if n else 0, dtype=bool)
    fixed_class[labels[fixed_nodes]] = True

    # cells: classes grouped by the set of "perm" declarations covering them
    signature: dict[int, list[int]] = {}
    rep: dict[int, int] = {}
    names: dict[int, str] = {}
    for i, d in enumerate(decls):
        if d.kind != "perm":
            continue
        nodes = d.nodes.reshape(-1).long().numpy()
        for node, c in zip(nodes.tolist(), labels[nodes].tolist()):
            if fixed_class[c]:
                continue
            sig = signature.setdefault(c, [])
            if not sig or sig[-1] != i:
                sig.append(i)
            rep.setdefault(c, node)
            names.setdefault(i, d.label)
    by_sig: dict[tuple[int, ...], list[int]] = {}
    for c, sig in signature.items():
        by_sig.setdefault(tuple(sig), []).append(c)
    cells, lab = [], {}
    for sig, classes in by_sig.items():
        lab[("cell", len(cells))] = names[sig[-1]]
        cells.append(torch.tensor(sorted(rep[c] for c in classes), dtype=torch.long))

    # blocks: rows as sets of classes. Structures that share classes row by row (one GroupNorm after another on
    # a residual stream, a chain of grouped convolutions) are one structure: the same row permutation moves all.
    structs: list[tuple[list[set], list[torch.Tensor], str]] = []
    for d in decls:
        if d.kind != "blocks":
            continue
        rows = d.nodes.long()
        if rows.dim() != 2:
            raise SymgraphError(f"Expected [B, n] nodes for blocks '{d.label}' (got shape {tuple(rows.shape)})")
        cur = ([set(labels[r.numpy()].tolist()) for r in rows], [rows], d.label)
        keep = []
        for other in structs:
            if any(a & b for a in cur[0] for b in other[0]):
                cur = _merge_structures(cur, other)
            else:
                keep.append(other)
        structs = keep + [cur]
    blocks = []
    for row_sets, aligned, label in structs:
        if len(row_sets) < 2 or any(fixed_class[c] for r in row_sets for c in r):
            continue
        lab[("blocks", len(blocks))] = label
        blocks.append(tuple(aligned))
    copies = []
    for d in decls:
        if d.kind != "copies":
            continue
        rows = d.nodes.long()
        if rows.dim() != 2:
            raise SymgraphError(f"Expected [R, n] nodes for copies '{d.label}' (got shape {tuple(rows.shape)})")
        if rows.shape[0] < 2 or bool(torch.as_tensor(fixed_nodes)[rows.reshape(-1)].any()):
            continue
        lab[("copies", len(copies))] = d.label
        copies.append((rows, _row_ties(n, ties, rows)))
    return AnalyticSymmetry(n, tuple(cells), tuple(blocks), tuple(ties), lab, tuple(copies))


def _row_ties(num_nodes: int, ties, rows: torch.Tensor) -> tuple:
    """The tie pairs that move with the rows of a copies declaration: the nodes reached from one row alone,
    breadth first along the ties (a node reached from two rows in one step is shared, and ends the search)."""
    if not ties:
        return ()
    src = torch.cat([torch.cat([a, b]) for a, b in ties]).numpy()
    dst = torch.cat([torch.cat([b, a]) for a, b in ties]).numpy()
    label = np.full(num_nodes, -1, dtype=np.int64)  # row index, -1 unreached, -2 shared
    for i, r in enumerate(rows):
        label[r.numpy()] = i
    while True:
        m = (label[src] >= 0) & (label[dst] == -1)
        if not m.any():
            break
        d, lab = dst[m], label[src[m]]
        lo = np.full(num_nodes, np.iinfo(np.int64).max)
        hi = np.full(num_nodes, -1)
        np.minimum.at(lo, d, lab)
        np.maximum.at(hi, d, lab)
        u = np.unique(d)
        label[u] = np.where(lo[u] == hi[u], lo[u], -2)
    out = []
    for a, b in ties:
        keep = torch.from_numpy((label[a.numpy()] >= 0) & (label[b.numpy()] >= 0))
        if bool(keep.any()):
            out.append((a[keep], b[keep]))
    return tuple(out)


def _merge_structures(a, b):
    """Merge two block structures whose rows overlap one to one; rows of ``b`` are re-ordered to ``a``'s."""
    rows_a, decls_a, label = a
    rows_b, decls_b, _ = b
    match = []
    for ra in rows_a:
        hits = [j for j, rb in enumerate(rows_b) if ra & rb]
        match.append(hits[0] if len(hits) == 1 else -1)
    if len(rows_a) != len(rows_b) or sorted(match) != list(range(len(rows_b))):
        raise SymgraphError(
            f"Expected block declarations that match row by row (got nested or overlapping row "
            f"structures of {len(rows_a)} and {len(rows_b)} rows, e.g. a grouped convolution with a "
            "GroupNorm of other groups): not supported by the analytic symmetry"
        )
    idx = torch.tensor(match)
    return ([ra | rows_b[j] for ra, j in zip(rows_a, match)], decls_a + [t[idx] for t in decls_b], label)


def analytic_order(graph: NeuralGraph) -> int:
    """Exact order of the group generated by the encoders' declarations (an ``int``, any size).

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> analytic_order(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1))))
    720
    """
    return analytic_symmetry(graph).order


def random_analytic_permutation(graph: NeuralGraph, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random node permutation from the declared analytic symmetry (``perm[i] = phi(i)``).

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1)))
    >>> perm = random_analytic_permutation(g, torch.Generator().manual_seed(1))
    >>> g.is_automorphism(perm)
    True
    """
    return analytic_symmetry(graph).random_element(generator)
