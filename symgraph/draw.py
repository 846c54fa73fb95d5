"""`draw`: a NeuralGraph (or a model) as a layered matplotlib picture, or as a per-group summary when big.

Small graphs are drawn node by node: x is the depth (``node_layer``), nodes of one depth are spread along y
(a small gap between node groups), each layer's bias node sits half a column to the left of the neurons it
feeds, as a square (normalisation-group and attention-head nodes likewise). Every edge is drawn on its own:
a :class:`~matplotlib.patches.FancyArrowPatch` with an arrowhead in small graphs, one polyline of a shared
``LineCollection`` in larger ones (thousands of edges in under a second). Parallel edges (one per kernel
position of a convolution, say) are arcs of different curvature, so none hides another; edges that skip a
column (residual streams) arc over the nodes in between. The edge colour is the edge's *structural* colour
(kernel position, q/k/v role, bias, residual dashed, ...), its width grows with ``|weight|``; nodes are
coloured by role, by automorphism orbit, by depth or by given values.

Graphs with more than ``max_nodes`` nodes (or ``max_edges`` edges) are never drawn node by node: each node
group (or each depth, when there are more than ``max_boxes`` groups) becomes one box with its node count, and
one arrow per pair of boxes carries the number of edges between them (and how many edge colours); long chains
of boxes wrap into bands.

What was drawn is recorded on the Axes, ``ax._symgraph_artists = {"mode", "nodes", "edges", "boxes",
"links"}``; :func:`drawn_counts` recounts it from the artists themselves (tests compare both with the graph).

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> import torch.nn as nn, symgraph
>>> fig, ax = symgraph.draw(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
>>> ax._symgraph_artists["nodes"], ax._symgraph_artists["edges"]
(11, 26)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .graph import NeuralGraph

__all__ = [
    "draw",
    "layered_layout",
    "edge_styles",
    "node_colors",
    "drawn_counts",
    "ROLE_COLORS",
    "NODE_GID",
    "EDGE_GID",
    "BOX_GID",
    "LINK_GID",
]

#: Colour per node role (colour-blind friendly, after Tableau 10).
ROLE_COLORS = {
    "input": "#4E79A7",
    "hidden": "#F28E2B",
    "output": "#59A14F",
    "bias": "#E15759",
    "head": "#B07AA1",
    "group": "#9C755F",
    "position": "#FF9DA7",
    "token": "#76B7B2",
}
_ROLE_MARKERS = {"bias": "s", "head": "D", "group": "h", "position": "p", "token": "^"}
_FALLBACK_NODE = "#BAB0AC"
# source nodes drawn beside the layer they feed rather than in a column of their own
_SIDE_ROLES = ("bias", "group", "head")

#: ``gid`` of the artists ``draw`` makes, so that callers can find and count them.
NODE_GID, EDGE_GID, BOX_GID, LINK_GID = "symgraph-nodes", "symgraph-edge", "symgraph-box", "symgraph-link"

# q/k/v/o roles of attention edges: the same hue whatever the layer, so heads read at a glance
_QKV_COLORS = {"q": "#4E79A7", "k": "#F28E2B", "v": "#59A14F", "o": "#B07AA1"}
_QKV_NAMES = {
    "q": "q",
    "query": "q",
    "k": "k",
    "key": "k",
    "v": "v",
    "value": "v",
    "o": "o",
    "out": "o",
    "out_proj": "o",
}
_KERNEL_COLORS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#BCBD22", "#17BECF")
_FAMILY_COLORS = {
    "linear": "#6B6B6B",
    "bias": "#E15759",
    "residual": "#222222",
    "identity": "#7F7F7F",
    "norm": "#17BECF",
    "group": "#9C755F",
    "position": "#FF9DA7",
    "head": "#B07AA1",
    "deepsets": "#8CD17D",
    "grid": "#D37295",
}


# ---------------------------------------------------------------------------------------------- inputs
def _as_graph(obj: Any, example_input=None, input_shape=None) -> NeuralGraph:
    """A NeuralGraph from a graph, a wrapper holding one (``.graph``) or an ``nn.Module``."""
    if isinstance(obj, NeuralGraph):
        return obj
    if isinstance(obj, torch.nn.Module):
        from .build import parameter_graph

        return parameter_graph(obj, example_input=example_input, input_shape=input_shape)
    inner = getattr(obj, "graph", None)
    if isinstance(inner, NeuralGraph):
        return inner
    needed = ("edge_index", "edge_color", "edge_color_keys", "node_color", "node_color_keys", "node_layer")
    if all(hasattr(obj, a) for a in needed):  # duck-typed graphs (e.g. a computation graph class)
        return obj
    raise TypeError(
        f"Expected a NeuralGraph, an object with the NeuralGraph fields or an nn.Module (got {type(obj).__name__})"
    )


def _node_roles(g) -> np.ndarray:
    roles = np.array([k[0] if k else "?" for k in g.node_color_keys] or ["?"], dtype=object)
    return roles[g.node_color.numpy()] if g.num_nodes else np.zeros(0, dtype=object)


def _orbit_ids(g, orbits) -> np.ndarray | None:
    """Orbit id per node (-1 for none given) from orbits, an object with ``.orbits``, or True (computed)."""
    if orbits is None or orbits is False:
        return None
    if orbits is True:
        from .automorphisms import automorphism_group

        orbits = automorphism_group(g).orbits
    if hasattr(orbits, "orbits"):
        orbits = orbits.orbits
    ids = np.full(g.num_nodes, -1, dtype=np.int64)
    for i, orb in enumerate(orbits):
        nodes = np.asarray(torch.as_tensor(orb, dtype=torch.long).reshape(-1))
        if nodes.size and (nodes.min() < 0 or nodes.max() >= g.num_nodes):
            raise ValueError(f"Expected orbit node ids in [0, {g.num_nodes}) (got orbit {i}: {nodes.tolist()[:8]})")
        ids[nodes] = i
    return ids


# ---------------------------------------------------------------------------------------------- layout
def _bias_columns(g, roles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of 'side' source nodes (bias) and, for each node, the smallest depth among its successors."""
    n = g.num_nodes
    layer = g.node_layer.numpy().astype(float)
    side = np.isin(roles, _SIDE_ROLES)
    succ_min = np.full(n, np.inf)
    if g.num_edges:
        src, dst = g.edge_index.numpy()
        np.minimum.at(succ_min, src, layer[dst])
    return side, succ_min


def layered_layout(graph, gap: float = 0.6, bias_offset: float = 0.45) -> np.ndarray:
    """Node positions ``[N, 2]``: x = depth, y spread within a depth; bias nodes left of what they feed.

    Nodes of one depth are stacked top to bottom in node-id order (node groups are contiguous), with ``gap``
    extra space between groups, and centred on y = 0. A bias node goes to x = (depth of its first successor)
    - ``bias_offset``, below the nodes of that column.

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> pos = layered_layout(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))))
    >>> pos.shape   # 2 inputs, 3 hidden, 1 output, 2 bias nodes
    (8, 2)
    """
    g = _as_graph(graph)
    n = g.num_nodes
    roles = _node_roles(g)
    layer = g.node_layer.numpy().astype(float)
    side, succ_min = _bias_columns(g, roles)
    side &= np.isfinite(succ_min)
    gid = g.node_group_index().numpy() if hasattr(g, "node_group_index") else np.zeros(n, dtype=np.int64)
    pos = np.zeros((n, 2))
    pos[:, 0] = layer
    main = ~side
    # within a column: rank by node id, plus a gap each time the group changes
    order = np.lexsort((np.arange(n), layer))
    order = order[main[order]]
    col = layer[order]
    new_col = np.r_[True, col[1:] != col[:-1]]
    grp = gid[order]
    new_grp = np.r_[True, grp[1:] != grp[:-1]] & ~new_col
    col_id = np.cumsum(new_col) - 1
    step = 1.0 + gap * new_grp
    step[new_col] = 0.0
    y = np.cumsum(step)
    col_start = y[new_col][col_id]
    y = y - col_start
    col_max = np.zeros(col_id.max() + 1 if col_id.size else 0)
    np.maximum.at(col_max, col_id, y)
    pos[order, 1] = -(y - col_max[col_id] / 2.0)
    # bias nodes: below the lowest neuron they feed
    if side.any():
        src, dst = g.edge_index.numpy()
        low = np.full(n, np.inf)
        np.minimum.at(low, src, pos[dst, 1])
        bias_nodes = np.nonzero(side)[0]
        bx = succ_min[bias_nodes] - bias_offset
        by = low[bias_nodes] - 0.9
        # several bias nodes in one column (rare) are stacked
        for x in np.unique(bx):
            hit = bias_nodes[bx == x]
            base = min(by[bx == x].min(), pos[main & (np.abs(pos[:, 0] - x) < 0.5), 1].min(initial=0.0) - 0.9)
            pos[hit, 0] = x
            pos[hit, 1] = base - np.arange(hit.size)
    return pos


# ---------------------------------------------------------------------------------------------- styles
def _kernel_index(kpos: tuple, ksize: tuple) -> tuple[int, int]:
    idx = 0
    for p, k in zip(kpos, ksize):
        idx = idx * int(k) + int(p)
    return idx, int(math.prod(int(k) for k in ksize))


def _qkv_role(key: tuple) -> str | None:
    for part in key:
        if isinstance(part, str) and part.lower() in _QKV_NAMES:
            return _QKV_NAMES[part.lower()]
    return None


def edge_styles(edge_color_keys: Sequence[tuple]) -> list[dict]:
    """One style per edge colour key: ``{"color", "linestyle", "label"}`` (labels are legend entries).

    Kernel positions get a qualitative colour each (the same position has the same colour in every
    convolution), flatten positions a sequential colour, q/k/v/o roles fixed hues, residual edges are black
    and dashed; any other family gets a colour of its own.

    Example
    -------
    >>> edge_styles([("linear",), ("residual",)])[1]["linestyle"]
    '--'
    """
    import matplotlib as mpl

    tab20 = mpl.colormaps["tab20"].colors
    out = []
    for key in edge_color_keys:
        fam = str(key[0]) if key else "?"
        style = {"color": _FAMILY_COLORS.get(fam), "linestyle": "-", "label": fam}
        role = _qkv_role(key)
        if fam == "conv" and len(key) >= 4 and isinstance(key[-1], tuple):
            ksize = key[2] if isinstance(key[2], tuple) else (key[2],)
            i, k = _kernel_index(key[-1], ksize)
            # tab10 without its red and grey (bias and plain weights use those)
            style["color"] = _KERNEL_COLORS[i] if k <= len(_KERNEL_COLORS) else mpl.colormaps["turbo"](i / (k - 1))
            style["label"] = f"kernel {tuple(int(p) for p in key[-1])}"
        elif fam == "linear" and len(key) >= 4 and key[1] == "flat":
            p, P = int(key[3]), int(key[2])
            style["color"] = mpl.colormaps["viridis"](p / max(P - 1, 1))
            style["label"] = f"flatten pos {p}"
        elif fam == "linear":
            style["label"] = "weight"
        elif fam == "bias":
            style["label"] = "bias"
        elif fam == "residual":
            style["linestyle"] = "--"
            style["label"] = "residual (weight 1)"
        elif fam == "identity":
            style["linestyle"] = ":"
            style["label"] = "identity (weight 1)"
        elif fam == "norm" and "group" in key[1:]:
            style["color"] = _FAMILY_COLORS["group"]
            style["label"] = "group → neuron"
        elif fam == "norm" and len(key) > 1:
            style["label"] = f"norm ({key[1]})"
        elif "head" in key[1:]:
            style["color"] = _FAMILY_COLORS["head"] if key[-1] != "v" else "#D4A6C8"
            style["label"] = f"head → {key[-1]}" if key[-1] != "head" else "head"
        elif role is not None:
            style["color"] = _QKV_COLORS[role]
            style["label"] = f"{fam} {role}" if fam not in _QKV_NAMES else role
        if style["color"] is None:
            style["color"] = tab20[sum(map(ord, fam)) % 20]
            extra = ", ".join(str(p) for p in key[1:3])
            style["label"] = f"{fam} {extra}".strip()
        out.append(style)
    return out


def node_colors(graph, by="role", orbit_ids: np.ndarray | None = None) -> tuple[list, list[tuple[str, Any]]]:
    """A colour per node and the legend entries ``[(label, colour)]``, by "role", "orbit" or "layer".

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> cols, legend = node_colors(symgraph.parameter_graph(nn.Linear(2, 1)))
    >>> [label for label, _ in legend]
    ['input', 'output', 'bias']
    """
    import matplotlib as mpl

    g = _as_graph(graph)
    roles = _node_roles(g)
    if not isinstance(by, str):  # per-node values (e.g. a metanet's node embedding), on a colour map
        vals = np.asarray(torch.as_tensor(by, dtype=torch.float64).reshape(-1))
        if vals.shape != (g.num_nodes,):
            raise ValueError(f"Expected {g.num_nodes} node values for node_color_by (got shape {vals.shape})")
        lo, hi = float(vals.min(initial=0.0)), float(vals.max(initial=1.0))
        cmap = mpl.colormaps["coolwarm"]
        scaled = (vals - lo) / (hi - lo) if hi > lo else np.full_like(vals, 0.5)
        return [cmap(v) for v in scaled], [(f"{lo:.2g}", cmap(0.0)), (f"{hi:.2g}", cmap(1.0))]
    if by == "role":
        cols = [ROLE_COLORS.get(r, _FALLBACK_NODE) for r in roles]
        seen = dict.fromkeys(roles.tolist())
        return cols, [(r, ROLE_COLORS.get(r, _FALLBACK_NODE)) for r in seen]
    if by == "layer":
        layer = g.node_layer.numpy()
        top = max(int(layer.max(initial=0)), 1)
        cmap = mpl.colormaps["viridis"]
        cols = [cmap(v / top) for v in layer]
        return cols, [(f"depth {d}", cmap(d / top)) for d in sorted(set(layer.tolist()))][:8]
    if by == "orbit":
        if orbit_ids is None:
            raise ValueError("node_color_by='orbit' needs orbits (orbits=True or a list of node-id tensors)")
        # distinct hues first (tab10 without grey), then their light variants
        palette = [c for i, c in enumerate(mpl.colormaps["tab10"].colors) if i != 7]
        palette += [c for i, c in enumerate(mpl.colormaps["tab20"].colors) if i % 2 and i != 15]
        sizes = np.bincount(orbit_ids[orbit_ids >= 0], minlength=1) if (orbit_ids >= 0).any() else np.zeros(1)
        # colour only non-trivial orbits, in order of first appearance; fixed nodes stay light grey
        first = {}
        for i in orbit_ids.tolist():
            if i >= 0 and sizes[i] > 1 and i not in first:
                first[i] = len(first)
        cols = ["#D9D9D9" if first.get(i) is None else palette[first[i] % len(palette)] for i in orbit_ids.tolist()]
        legend = [("fixed node", "#D9D9D9")] if (sizes[orbit_ids[orbit_ids >= 0]] <= 1).any() else []
        legend += [(f"orbit of {int(sizes[i])}", palette[j % len(palette)]) for i, j in list(first.items())[:9]]
        return cols, legend
    raise ValueError(f"Expected node_color_by in 'role', 'orbit', 'layer' (got {by!r})")


# ---------------------------------------------------------------------------------------------- drawing
def _parallel_rank(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each edge: how many edges share its (src, dst) pair, and its rank among them (stable)."""
    key = src.astype(np.int64) * max(n, 1) + dst
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.r_[True, ks[1:] != ks[:-1]]
    grp = np.cumsum(start) - 1
    first = np.nonzero(start)[0]
    counts = np.diff(np.r_[first, ks.size])
    rank = np.empty(key.size, dtype=np.int64)
    rank[order] = np.arange(ks.size) - first[grp]
    mult = np.empty(key.size, dtype=np.int64)
    mult[order] = counts[grp]
    return mult, rank


def _edge_widths(g, lw_range: tuple[float, float]) -> np.ndarray:
    w = np.abs(g.edge_weight.detach().double().numpy()) if g.num_edges else np.zeros(0)
    try:
        has = g.edge_param.has_param().numpy()
    except Exception:  # graphs without a parameter index: treat all edges as weighted
        has = np.ones(g.num_edges, dtype=bool)
    lo, hi = lw_range
    top = w[has].max(initial=0.0)
    widths = np.full(g.num_edges, (lo + hi) / 2)
    if top > 0:
        widths[has] = lo + (hi - lo) * w[has] / top
    return widths


def _edge_collections(ax, p0, p2, rad, widths, ecol, styles, samples: int = 13) -> None:
    """Edges without arrowheads, vectorised: one LineCollection per edge colour, one polyline per edge.

    A curved edge is the quadratic Bézier of matplotlib's ``arc3`` connection (control point at the midpoint
    plus ``rad`` times the perpendicular ``(dy, -dx)``), here taken in data coordinates.
    """
    from matplotlib.collections import LineCollection

    d = p2 - p0
    ctrl = (p0 + p2) / 2 + rad[:, None] * np.stack([d[:, 1], -d[:, 0]], axis=1)
    curved = rad != 0
    t = np.linspace(0.0, 1.0, samples)[None, :, None]
    for c in np.unique(ecol).tolist():
        st = styles[c]
        for bent in (False, True):
            sel = np.nonzero((ecol == c) & (curved == bent))[0]
            if sel.size == 0:
                continue
            if bent:
                a, b, q = p0[sel, None], p2[sel, None], ctrl[sel, None]
                segs = (1 - t) ** 2 * a + 2 * (1 - t) * t * q + t**2 * b
            else:
                segs = np.stack([p0[sel], p2[sel]], axis=1)
            coll = LineCollection(
                list(segs),
                colors=[st["color"]],
                linewidths=widths[sel],
                linestyles=st["linestyle"],
                alpha=0.8,
                zorder=1,
            )
            coll.set_gid(EDGE_GID)
            ax.add_collection(coll, autolim=False)


def _legend(ax, node_entries, edge_entries) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=c, markeredgecolor="#333333", markersize=7, label=lbl)
        for lbl, c in node_entries
    ]
    handles += [Line2D([], [], color=s["color"], ls=s["linestyle"], lw=1.8, label=s["label"]) for s in edge_entries]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=7,
            frameon=False,
            ncol=1 if len(handles) <= 12 else 2,
        )


def _draw_full(ax, g, pos, ncols, node_legend, *, node_size, lw_range, arrows, legend, group_labels, max_rad):
    from matplotlib.patches import FancyArrowPatch

    n, m = g.num_nodes, g.num_edges
    roles = _node_roles(g)
    styles = edge_styles(g.edge_color_keys)
    src, dst = g.edge_index.numpy() if m else (np.zeros(0, int), np.zeros(0, int))
    mult, rank = _parallel_rank(src, dst, n)
    # parallel edges fan out by a fixed perpendicular offset (data units), whatever their length: arc3's rad is
    # relative to the edge length, so long edges get a proportionally smaller rad instead of huge bulges
    length = np.hypot(*(pos[dst] - pos[src]).T) if m else np.zeros(0)
    offset = np.minimum(0.1 * (mult - 1), max_rad) * (rank / np.maximum(mult - 1, 1) - 0.5) * 2
    rad = np.where(mult > 1, offset / np.maximum(length, 1.0), 0.0)
    # edges that skip a column (residual streams) arc above the nodes in between instead of crossing them
    span = pos[dst, 0] - pos[src, 0] if m else np.zeros(0)
    rad = rad + np.where(span > 1.5, -0.35, 0.0)
    widths = _edge_widths(g, lw_range)
    ecol = g.edge_color.numpy()
    use_arrows = (m <= 250) if arrows == "auto" else bool(arrows)
    if use_arrows:
        shrink = math.sqrt(node_size) / 2 + 1
        for e in range(m):
            st = styles[ecol[e]]
            patch = FancyArrowPatch(
                tuple(pos[src[e]]),
                tuple(pos[dst[e]]),
                connectionstyle=f"arc3,rad={rad[e]:.4f}",
                arrowstyle="-|>",
                mutation_scale=7,
                color=st["color"],
                linestyle=st["linestyle"],
                linewidth=float(widths[e]),
                alpha=0.8,
                shrinkA=shrink,
                shrinkB=shrink,
                zorder=1,
            )
            patch.set_gid(EDGE_GID)
            ax.add_artist(patch)  # not add_patch: its per-patch data-limit update is slow, limits are set below
    elif m:
        _edge_collections(ax, pos[src], pos[dst], rad, widths, ecol, styles)
    drawn = 0
    for role in dict.fromkeys(roles.tolist()):
        sel = np.nonzero(roles == role)[0]
        coll = ax.scatter(
            pos[sel, 0],
            pos[sel, 1],
            s=node_size,
            c=[ncols[i] for i in sel],
            marker=_ROLE_MARKERS.get(role, "o"),
            edgecolors="#333333",
            linewidths=0.7,
            zorder=3,
        )
        coll.set_gid(NODE_GID)
        drawn += sel.size
    if group_labels and getattr(g, "node_groups", None):
        top = pos[:, 1].max(initial=0.0)
        seen = set()
        for grp in g.node_groups:
            if grp.role in _SIDE_ROLES:
                continue
            x = float(np.median(pos[grp.start : grp.stop, 0]))
            if x in seen:
                continue
            seen.add(x)
            ax.text(x, top + 0.8, _short(_group_label(grp), 18), ha="center", va="bottom", fontsize=7, color="#444444")
    ax.set_xlim(pos[:, 0].min(initial=0) - 0.6, pos[:, 0].max(initial=0) + 0.6)
    ax.set_ylim(pos[:, 1].min(initial=0) - 0.8, pos[:, 1].max(initial=0) + 1.6)
    if legend:
        used = sorted(set(ecol.tolist()))
        entries, labels = [], set()
        for c in used:
            if styles[c]["label"] not in labels:
                labels.add(styles[c]["label"])
                entries.append(styles[c])
        _legend(ax, node_legend, entries[:18])
    return {"mode": "full", "nodes": drawn, "edges": m, "boxes": 0, "links": 0}


def _group_label(grp) -> str:
    """Short caption of a node group: 'input', or 'module: kind' ('fc1: linear', 'add: sum')."""
    if grp.role in ("input", "position", "token") and not grp.module:
        return grp.role
    mod = grp.module or grp.name.split(" ")[0]
    return f"{mod}: {grp.kind}" if grp.kind else mod


def _group_title(grp) -> str:
    """A node group's module path ('stages.1.0.conv1'), or its role for model inputs."""
    if grp.role in ("input", "position", "token") and not grp.module:
        return grp.role
    return grp.module or grp.name.split(" ")[0]


def _short_left(name: str, k: int) -> str:
    """Keep the end of a module path, which says most ('…0.conv1')."""
    return name if len(name) <= k else "…" + name[-(k - 1) :]


def _short(name: str, k: int) -> str:
    return name if len(name) <= k else name[: k - 1] + "…"


def _summary_units(g, roles: np.ndarray, max_boxes: int) -> tuple[np.ndarray, list[dict], str]:
    """Unit (box) id per node and the units: node groups, or one box per (depth, bias or not) if too many."""
    groups = list(getattr(g, "node_groups", ()) or ())
    n = g.num_nodes
    if groups and len(groups) <= max_boxes:
        uid = g.node_group_index().numpy().copy()
        units = [
            {"name": grp.name, "label": _group_title(grp), "kind": grp.kind, "role": grp.role, "count": grp.count}
            for grp in groups
        ]
        if (uid < 0).any():  # nodes outside any group get one box
            units.append(
                {"name": "other", "label": "other", "kind": "", "role": "hidden", "count": int((uid < 0).sum())}
            )
            uid[uid < 0] = len(units) - 1
        return uid, units, "group"
    # per depth; side nodes (bias, group, head) count at the depth of what they feed, in a box of their own
    side, succ_min = _bias_columns(g, roles)
    side &= np.isfinite(succ_min)
    depth = np.where(side, succ_min, g.node_layer.numpy().astype(float)).astype(np.int64)
    key = depth * 2 + side
    uniq, uid = np.unique(key, return_inverse=True)
    uid = uid.reshape(n)
    gidx = g.node_group_index().numpy() if groups else np.full(n, -1)
    units = []
    for u, k in enumerate(uniq.tolist()):
        sel = uid == u
        rs = dict.fromkeys(roles[sel].tolist())
        role = next((r for r in ("input", "output", "hidden", "head", "group", "bias") if r in rs), next(iter(rs)))
        name = f"depth {k // 2}" + (" side" if k % 2 else "")
        # caption: the modules whose nodes sit at this depth (first one, and how many more)
        mods = list(dict.fromkeys(_group_title(groups[i]) for i in np.unique(gidx[sel]).tolist() if i >= 0))
        label = (mods[0] + (f" +{len(mods) - 1}" if len(mods) > 1 else "")) if mods else name
        units.append(
            {
                "name": name,
                "label": label,
                "kind": f"depth {k // 2}",
                "role": role,
                "roles": "+".join(rs),
                "count": int(sel.sum()),
            }
        )
    return uid, units, "depth"


def _draw_summary(ax, g, orbit_ids, *, max_boxes, legend, wrap_columns=8):
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    roles = _node_roles(g)
    uid, units, per = _summary_units(g, roles, max_boxes)
    U = len(units)
    layer = g.node_layer.numpy().astype(float)
    side, succ_min = _bias_columns(g, roles)
    # unit column: median depth; a bias unit joins the column of what it feeds, below the neurons
    is_side = np.zeros(U, dtype=bool)
    depth = np.zeros(U)
    for u in range(U):
        sel = uid == u
        is_side[u] = bool(side[sel].all() and np.isfinite(succ_min[sel]).all())
        depth[u] = succ_min[sel].min() if is_side[u] else float(np.median(layer[sel]))
    cols = np.unique(depth)
    k = np.searchsorted(cols, depth)  # empty depths take no room
    # long chains wrap into bands of ``wrap`` columns, read left to right, top to bottom
    wrap = int(cols.size if cols.size <= 1.5 * wrap_columns else wrap_columns)
    band = k // wrap
    step = 2.2  # column pitch: room for a box (1.24 wide) and an edge-count label between boxes
    cx = (k % wrap).astype(float) * step
    uy = np.zeros(U)
    for c in np.unique(k):
        col = np.nonzero(k == c)[0]
        col = np.r_[col[~is_side[col]], col[is_side[col]]]
        uy[col] = (col.size - 1) / 2.0 - np.arange(col.size)
    stack = np.bincount(k).max(initial=1)
    band_h = stack + 1.4
    uy = uy - band * band_h
    half_w = np.where(is_side, 0.35, 0.62)
    half_h = np.where(is_side, 0.22, 0.32)
    links = 0
    peak = -np.inf
    if g.num_edges:
        src, dst = g.edge_index.numpy()
        pair = uid[src].astype(np.int64) * U + uid[dst]
        pairs, inv, counts = np.unique(pair, return_inverse=True, return_counts=True)
        ecol = g.edge_color.numpy().astype(np.int64)
        C = len(g.edge_color_keys) + 1
        pc, pc_counts = np.unique(inv.reshape(-1) * C + ecol, return_counts=True)
        p_of, c_of = pc // C, pc % C
        n_col = np.bincount(p_of, minlength=pairs.size)
        # most common edge colour of each pair gives the link its colour
        order = np.lexsort((-pc_counts, p_of))
        first = np.r_[True, p_of[order][1:] != p_of[order][:-1]]
        best = np.empty(pairs.size, dtype=np.int64)
        best[p_of[order][first]] = c_of[order][first]
        styles = edge_styles(g.edge_color_keys)
        cmax = max(float(np.log1p(counts.max())), 1.0)
        for i, (p, c) in enumerate(zip(pairs.tolist(), counts.tolist())):
            a, b = divmod(p, U)
            if a == b:
                continue  # edges inside one box: none in parameter graphs
            st = styles[best[i]]
            if k[a] == k[b]:  # same column (a bias feeding its layer): vertical
                sgn = 1.0 if uy[b] > uy[a] else -1.0
                pa, pb, rad = (cx[a], uy[a] + sgn * half_h[a]), (cx[b], uy[b] - sgn * half_h[b]), 0.0
            elif band[a] != band[b]:  # into a later band: from the bottom of a to the top of b
                pa, pb, rad = (cx[a], uy[a] - half_h[a]), (cx[b], uy[b] + half_h[b]), 0.0
            elif cx[b] - cx[a] <= 1.05 * step:
                pa, pb, rad = (cx[a] + half_w[a], uy[a]), (cx[b] - half_w[b], uy[b]), 0.0
            else:  # a skip: leave and enter through the tops, arcing over the boxes in between
                pa, pb = (cx[a], uy[a] + half_h[a]), (cx[b], uy[b] + half_h[b])
                lo, hi = min(cx[a], cx[b]), max(cx[a], cx[b])
                between = (cx > lo) & (cx < hi) & (band == band[a])
                top = (uy + half_h)[between].max(initial=-np.inf)
                lift = max(top - max(pa[1], pb[1]), 0.0) + 0.3
                rad = -2.0 * lift / (pb[0] - pa[0])  # a quadratic arc peaks at half its control offset
                peak = max(peak, max(pa[1], pb[1]) + lift)
            patch = FancyArrowPatch(
                pa,
                pb,
                arrowstyle="-|>",
                mutation_scale=9,
                connectionstyle=f"arc3,rad={rad}",
                color=st["color"],
                linestyle=st["linestyle"],
                linewidth=0.6 + 3.0 * np.log1p(c) / cmax,
                alpha=0.75,
                zorder=1,
                shrinkA=0,
                shrinkB=0,
            )
            patch.set_gid(LINK_GID)
            ax.add_patch(patch)
            links += 1
            label = f"{c:,}" + (f" ({n_col[i]} colours)" if n_col[i] > 1 else "")
            mx, my = (pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2
            if rad:
                my += -rad * (pb[0] - pa[0]) / 2
            ax.text(
                mx,
                my,
                label,
                ha="center",
                va="center",
                fontsize=6,
                color="#333333",
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
            )
    for u, unit in enumerate(units):
        box = FancyBboxPatch(
            (cx[u] - half_w[u], uy[u] - half_h[u]),
            2 * half_w[u],
            2 * half_h[u],
            boxstyle="round,pad=0.0,rounding_size=0.06",
            fc=ROLE_COLORS.get(unit["role"], _FALLBACK_NODE),
            ec="#333333",
            lw=0.8,
            alpha=0.9,
            zorder=2,
        )
        box.set_gid(BOX_GID)
        ax.add_patch(box)
        if is_side[u]:
            text = f"{unit.get('roles', unit['role'])} ×{unit['count']}"
        else:
            kind = f"{unit['kind']} · " if unit["kind"] and unit["kind"] != unit["role"] else ""
            text = f"{_short_left(unit['label'], 19)}\n{kind}{unit['count']:,} {unit['role']}"
        if orbit_ids is not None:
            n_orb = np.unique(orbit_ids[uid == u]).size
            text += f"\n{n_orb} orbit{'s' if n_orb != 1 else ''}"
        ax.text(cx[u], uy[u], text, ha="center", va="center", fontsize=6, zorder=3)
    ax.set_xlim(cx.min(initial=0) - 0.8, cx.max(initial=0) + 0.8)
    ax.set_ylim(uy.min(initial=0) - 0.6, max(uy.max(initial=0) + 0.6, peak + 0.3))
    if legend:
        seen = dict.fromkeys(u["role"] for u in units)
        _legend(ax, [(r, ROLE_COLORS.get(r, _FALLBACK_NODE)) for r in seen], [])
    return {
        "mode": "summary",
        "nodes": 0,
        "edges": 0,
        "boxes": U,
        "links": links,
        "per": per,
        "columns": int(min(cols.size, wrap)),
        "rows": int(stack),
        "bands": int(band.max(initial=0)) + 1,
    }


def draw(
    graph_or_model,
    ax=None,
    orbits=False,
    example_input: torch.Tensor | None = None,
    node_color_by: str | None = None,
    max_nodes: int = 300,
    *,
    input_shape: tuple[int, ...] | None = None,
    max_edges: int = 1500,
    max_boxes: int = 40,
    wrap_columns: int = 8,
    title: str | None = None,
    legend: bool = True,
    group_labels: bool = True,
    arrows: bool | str = "auto",
    node_size: float | None = None,
    edge_width: tuple[float, float] = (0.3, 2.6),
    max_rad: float = 0.35,
):
    """Draw a NeuralGraph (or a model's parameter graph) on a matplotlib Axes; returns ``(fig, ax)``.

    Parameters
    ----------
    graph_or_model : NeuralGraph, object with its fields, or nn.Module
        A module is turned into its parameter graph (``example_input``/``input_shape`` as for
        :func:`symgraph.parameter_graph`).
    ax : matplotlib Axes, optional
        Drawn into; a new figure sized to the graph otherwise.
    orbits : bool, list of node-id tensors, or an object with ``.orbits``
        ``True`` computes :func:`symgraph.automorphism_group` of the graph. Implies ``node_color_by="orbit"``.
    node_color_by : {"role", "orbit", "layer"} or array [N], optional
        Node colouring; default "orbit" when orbits are given, else "role". An array of per-node values
        (e.g. a metanet's node embedding) is shown on a colour map.
    max_nodes, max_edges : int
        Above either, the graph is summarised: one box per node group (per depth beyond ``max_boxes``
        groups) with its node count, one arrow per pair of boxes with the number of edges between them;
        more than ``wrap_columns`` columns of boxes wrap into bands.
    title, legend, group_labels : optional decorations.
    arrows : "auto", True or False
        Arrowheads on edges ("auto": only with at most 250 edges). With arrowheads every edge is a
        FancyArrowPatch; without, edges of one colour share a LineCollection (one polyline per edge), which
        draws thousands of edges in well under a second.
    node_size, edge_width, max_rad
        Marker area (points²), line-width range mapped from ``|weight|``, largest arc curvature of parallel
        edges.

    Returns
    -------
    (fig, ax); ``ax._symgraph_artists`` records ``mode`` ("full" or "summary") and the numbers of ``nodes``,
    ``edges``, ``boxes`` and ``links`` drawn.

    Example
    -------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch.nn as nn, symgraph
    >>> fig, ax = symgraph.draw(nn.Sequential(nn.Linear(400, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> ax._symgraph_artists["mode"], ax._symgraph_artists["boxes"]
    ('summary', 5)
    """
    import matplotlib.pyplot as plt

    g = _as_graph(graph_or_model, example_input, input_shape)
    orbit_ids = _orbit_ids(g, orbits)
    by = node_color_by if node_color_by is not None else ("orbit" if orbit_ids is not None else "role")
    summary = g.num_nodes > max_nodes or g.num_edges > max_edges
    if not summary:
        pos = layered_layout(g)
        ncols, node_legend = node_colors(g, by, orbit_ids)
    if ax is None:
        if summary:
            size = (8.0, 4.0)  # resized below, once the boxes are laid out
        else:
            width = np.ptp(pos[:, 0]) if g.num_nodes else 1.0
            height = np.ptp(pos[:, 1]) if g.num_nodes else 1.0
            size = (min(max(2.0 + 1.5 * width, 5.0), 16.0), min(max(1.6 + 0.42 * height, 3.5), 14.0))
        fig, ax = plt.subplots(figsize=size)
        own = True
    else:
        fig, own = ax.figure, False
    if summary:
        info = _draw_summary(ax, g, orbit_ids, max_boxes=max_boxes, legend=legend, wrap_columns=wrap_columns)
        if own:
            fig.set_size_inches(
                min(max(2.5 + 1.75 * info["columns"], 5.0), 20.0),
                min(max(1.2 + 0.8 * (info["rows"] + 1.4) * info["bands"], 3.0), 16.0),
            )
    else:
        if node_size is None:
            node_size = float(np.clip(2400.0 / max(g.num_nodes, 1), 30.0, 170.0))
        info = _draw_full(
            ax,
            g,
            pos,
            ncols,
            node_legend,
            node_size=node_size,
            lw_range=edge_width,
            arrows=arrows,
            legend=legend,
            group_labels=group_labels,
            max_rad=max_rad,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title is None:
        title = f"{g.kind} graph: {g.num_nodes:,} nodes, {g.num_edges:,} edges"
        if summary:
            title += f" (summary: one box per {info['per']})"
    if title:
        ax.set_title(title, fontsize=10)
    ax._symgraph_artists = info
    if own:
        fig.tight_layout()
    return fig, ax


def drawn_counts(ax) -> dict[str, int]:
    """Recount what :func:`draw` put on ``ax`` from its artists: node markers, edge arrows, boxes and links.

    Example
    -------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch.nn as nn, symgraph
    >>> _, ax = symgraph.draw(nn.Linear(2, 2))
    >>> drawn_counts(ax)
    {'nodes': 5, 'edges': 6, 'boxes': 0, 'links': 0}
    """
    from matplotlib.collections import LineCollection

    nodes = sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == NODE_GID)
    count = {EDGE_GID: 0, BOX_GID: 0, LINK_GID: 0}
    # big graphs draw their edges as line collections: one segment (polyline) per edge
    count[EDGE_GID] += sum(
        len(c.get_segments()) for c in ax.collections if c.get_gid() == EDGE_GID and isinstance(c, LineCollection)
    )
    for p in ax.patches:
        if p.get_gid() in count:
            count[p.get_gid()] += 1
    return {"nodes": int(nodes), "edges": count[EDGE_GID], "boxes": count[BOX_GID], "links": count[LINK_GID]}
