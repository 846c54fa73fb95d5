"""`NeuralGraph`: the single data model of symgraph.

A NeuralGraph is a directed multigraph whose edges carry the parameters of a neural network (one edge per
scalar parameter, plus parameter-free edges of weight 1 for residual connections and structural ties) and
whose nodes are neurons (features, channels), bias nodes and a few structural nodes (attention heads,
normalisation groups). Parameters that act per neuron (norm gamma/beta, running statistics) are stored on
nodes, in ``node_weight`` columns.

Memory layout. Parameters are laid out *contiguously and in their own flat order*: the edges of parameter
``p`` are the edge ids ``[slot.start, slot.start + slot.numel)`` and edge ``slot.start + k`` carries
``p.flatten()[k]``. The edge -> parameter map (``edge_param``) is therefore a table of per-parameter offsets,
never a per-edge object, and ``to_state_dict`` is a set of views: bit-identical by construction.
Per edge we store ``edge_index`` (2 x int64), ``edge_weight`` (the parameters' dtype) and ``edge_color``
(int32: 24 bytes per edge for float32 models). ``edge_color`` is int32 rather than int64 to keep to that
budget; it indexes and embeds like a LongTensor in torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import torch

__all__ = [
    "NeuralGraph",
    "ParamSlot",
    "NodeGroup",
    "EdgeParamIndex",
    "EdgeKey",
    "NodeKey",
    "Activation",
    "ConvSettings",
    "declare_vocabulary",
    "declared_edge_kinds",
    "declared_node_kinds",
    "ROLES",
    "FIXED_ROLES",
    "AFTER",
]

#: Structural roles of nodes. The first element of every node colour key is one of these.
ROLES = ("input", "hidden", "output", "bias", "head", "group", "position", "token")
#: Roles whose nodes every neural DAG automorphism fixes (paper, appendix C.2; positions are inputs too).
FIXED_ROLES = frozenset({"input", "output", "bias", "position"})
#: First element of the trailing entry of a key whose value went through structural ops (``EdgeKey.after``).
AFTER = "after"


# ---------------------------------------------------------------------------------------------- colour keys
class ConvSettings(NamedTuple):
    """The settings of a convolution that its edge colours carry (``EdgeKey.settings`` of family ``conv``)."""

    kernel_size: tuple
    stride: tuple
    padding: Any
    dilation: tuple
    groups: int
    padding_mode: str


class EdgeKey(tuple):
    """The colour of an edge, with named fields; as a tuple it *is* its flat form (``flat()``).

    Fields: ``family`` (the encoder family: ``"linear"``, ``"conv"``, ``"bias"``, ``"residual"``,
    ``"attention"``, ...), ``role`` (a string naming the edge's part within the family, e.g. ``"q"``,
    ``"flat"``, ``"conv2d"``; or None), ``settings`` (the family's other settings: a
    :class:`ConvSettings`, a residual operand index, a norm's eps...), ``kernel`` (``(kernel_size,
    offset)`` of a convolution weight), ``position`` (``(P, p)``: flatten position p of P), ``after`` (the
    structural ops of the value the edges read, :func:`symgraph.builder.structural_op` records).

    The flat tuple is ``(family, [role], *settings, [offset], [P, p], [("after", *after)])``: the keys of
    before typed keys, so that colour ids, nauty's input and ``gmn`` key hashes are unchanged.

    >>> k = EdgeKey("linear", "flat", position=(4, 1))
    >>> k == ("linear", "flat", 4, 1), k.position, k.family
    (True, (4, 1), 'linear')
    """

    def __new__(
        cls,
        family: str,
        role: str | None = None,
        settings: tuple = (),
        kernel: tuple | None = None,
        position: tuple | None = None,
        after: tuple = (),
    ):
        flat = (family,) + ((role,) if role is not None else ()) + tuple(settings)
        flat += ((kernel[1],) if kernel is not None else ()) + (tuple(position) if position is not None else ())
        flat += ((AFTER, *after),) if after else ()
        self = super().__new__(cls, flat)
        self.__dict__.update(
            family=family, role=role, settings=settings, kernel=kernel, position=position, after=tuple(after)
        )
        return self

    family: str
    role: str | None
    settings: tuple
    kernel: tuple | None
    position: tuple | None
    after: tuple

    def flat(self) -> tuple:
        return tuple(self)

    def replace(self, **changes) -> EdgeKey:
        fields = {k: self.__dict__[k] for k in ("family", "role", "settings", "kernel", "position", "after")}
        fields.update(changes)
        return EdgeKey(**fields)

    def __reduce__(self):
        return (EdgeKey, (self.family, self.role, self.settings, self.kernel, self.position, self.after))

    @classmethod
    def from_flat(cls, key: tuple) -> EdgeKey:
        """An encoder's plain tuple as a key: ``(family, [role], *settings, [("after", ...)])``."""
        if isinstance(key, EdgeKey):
            return key
        key = tuple(key)
        after: tuple = ()
        if key and isinstance(key[-1], tuple) and key[-1][:1] == (AFTER,):
            key, after = key[:-1], key[-1][1:]
        role = key[1] if len(key) > 1 and isinstance(key[1], str) else None
        return cls(key[0], role, key[2:] if role is not None else key[1:], after=after)


#: numbers inside an activation's arguments (``mul(30)``, ``leaky_relu(0.01)``, ``hardtanh(-2,2)``)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class Activation(str):
    """An elementwise op on a node, as its name string (``"leaky_relu(0.01)"``) with named fields: ``name``
    (``"leaky_relu"``, lower case) and ``number`` (the first number among its arguments, or None).

    The activation encoders emit names as strings; they are read into fields once, here, where the
    graph's keys are defined.

    >>> a = Activation("hardtanh(-2,2)")
    >>> a == "hardtanh(-2,2)", a.name, a.number
    (True, 'hardtanh', -2.0)
    """

    def __new__(cls, text: str):
        if isinstance(text, Activation):
            return text
        self = super().__new__(cls, text)
        self.name = text.split("(", 1)[0].strip().lower()
        m = _NUMBER.search(text.split("(", 1)[1]) if "(" in text else None
        self.number = float(m.group()) if m else None
        return self

    def __reduce__(self):
        return (Activation, (str(self),))


class NodeKey(tuple):
    """The colour of a node, with named fields; as a tuple it is its flat form ``(role, kind, activations,
    *extra)``: ``role`` (:data:`ROLES`), ``kind`` (the layer kind an encoder declared, e.g. ``"conv2d"``),
    ``activations`` (a tuple of :class:`Activation`, in order) and ``extra`` (the encoder's settings).

    >>> k = NodeKey("hidden", "linear", (Activation("relu"),))
    >>> k == ("hidden", "linear", ("relu",)), k.activations[0].name
    (True, 'relu')
    """

    def __new__(cls, role: str, kind: str, activations: tuple = (), extra: tuple = ()):
        acts = tuple(Activation(a) for a in activations)
        self = super().__new__(cls, (role, kind, acts, *extra))
        self.__dict__.update(role=role, kind=kind, activations=acts, extra=tuple(extra))
        return self

    role: str
    kind: str
    activations: tuple
    extra: tuple

    def flat(self) -> tuple:
        return (self.role, self.kind, tuple(str(a) for a in self.activations), *self.extra)

    def __reduce__(self):
        return (NodeKey, (self.role, self.kind, tuple(str(a) for a in self.activations), self.extra))

    @classmethod
    def from_flat(cls, key: tuple) -> NodeKey:
        """A plain ``(role, kind, activations, *extra)`` tuple as a key."""
        if isinstance(key, NodeKey):
            return key
        acts = key[2] if len(key) > 2 and isinstance(key[2], tuple) else ()
        return cls(key[0], key[1] if len(key) > 1 else "other", acts, tuple(key[3:]))


_EDGE_KINDS: dict[str, set] = {}
_NODE_KINDS: set[str] = set()


def declare_vocabulary(edges: dict[str, tuple] | None = None, node_kinds: tuple[str, ...] = ()) -> None:
    """Called by each encoder module: the edge families (with the roles they use) and node kinds it emits.

    Consumers that give each kind its own feature (``gmn.graph_to_data``) check their vocabularies against
    these (``tests/test_gmn_data.py``), so a new kind never falls silently into an "other" bucket.
    """
    for fam, roles in (edges or {}).items():
        _EDGE_KINDS.setdefault(fam, set()).update(r for r in roles if r is not None)
    _NODE_KINDS.update(node_kinds)


def declared_edge_kinds() -> dict[str, frozenset]:
    """Edge family -> the roles declared for it (see :func:`declare_vocabulary`)."""
    return {k: frozenset(v) for k, v in _EDGE_KINDS.items()}


def declared_node_kinds() -> frozenset[str]:
    return frozenset(_NODE_KINDS)


@dataclass(frozen=True)
class ParamSlot:
    """Where one state_dict entry lives in the graph.

    ``location`` is ``"edge"`` (edge ids ``start .. start+numel-1`` in flat order), ``"node"`` (column
    ``column`` of ``node_weight`` at node ids ``start .. start+numel-1`` in flat order) or ``"extra"``
    (kept verbatim in ``NeuralGraph.extras``: e.g. BatchNorm's ``num_batches_tracked``).
    """

    name: str
    location: str
    start: int
    numel: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    column: int = 0
    is_buffer: bool = False


@dataclass(frozen=True)
class NodeGroup:
    """A contiguous block of nodes with one meaning, e.g. 'fc1 output units' or 'conv1 bias node'."""

    name: str
    role: str
    start: int
    count: int
    module: str = ""
    kind: str = ""

    @property
    def stop(self) -> int:
        return self.start + self.count


def _slot_values(s: ParamSlot, ew: torch.Tensor, nw: torch.Tensor) -> torch.Tensor:
    return ew[s.start : s.start + s.numel] if s.location == "edge" else nw[s.start : s.start + s.numel, s.column]


class EdgeParamIndex:
    """Maps edges to (parameter, flat index) through per-parameter offsets (no per-edge storage).

    >>> # g.edge_param[e] -> ("fc1.weight", 17) or None for a parameter-free edge
    """

    def __init__(self, slots: tuple[ParamSlot, ...], num_edges: int):
        self.slots = tuple(s for s in slots if s.location == "edge")
        self.num_edges = num_edges
        starts = [s.start for s in self.slots]
        order = sorted(range(len(starts)), key=starts.__getitem__)
        self.slots = tuple(self.slots[i] for i in order)
        self._starts = torch.tensor([s.start for s in self.slots], dtype=torch.long)
        self._stops = torch.tensor([s.start + s.numel for s in self.slots], dtype=torch.long)
        self._by_name = {s.name: i for i, s in enumerate(self.slots)}

    def __len__(self) -> int:
        return self.num_edges

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def lookup(self, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectorised: for edge ids, (slot index or -1, flat index into that parameter or -1)."""
        edges = torch.as_tensor(edges, dtype=torch.long)
        if len(self.slots) == 0:
            neg = torch.full_like(edges, -1)
            return neg, neg.clone()
        pos = torch.searchsorted(self._starts, edges, right=True) - 1
        posc = pos.clamp(min=0)
        inside = (pos >= 0) & (edges < self._stops[posc])
        slot = torch.where(inside, posc, torch.full_like(posc, -1))
        flat = torch.where(inside, edges - self._starts[posc], torch.full_like(edges, -1))
        return slot, flat

    def __getitem__(self, edge: int) -> tuple[str, int] | None:
        slot, flat = self.lookup(torch.tensor([int(edge)]))
        if int(slot) < 0:
            return None
        return self.slots[int(slot)].name, int(flat)

    def edges_of(self, name: str) -> range:
        """The edge ids holding parameter ``name`` (in its flat order)."""
        s = self.slots[self._by_name[name]]
        return range(s.start, s.start + s.numel)

    def has_param(self) -> torch.Tensor:
        """Boolean mask [E]: which edges carry a parameter."""
        mask = torch.zeros(self.num_edges, dtype=torch.bool)
        for s in self.slots:
            mask[s.start : s.start + s.numel] = True
        return mask

    @property
    def nbytes(self) -> int:
        return int(self._starts.numel() * 16)

    def __repr__(self) -> str:
        return f"EdgeParamIndex({len(self.slots)} parameters over {self.num_edges} edges)"


@dataclass
class NeuralGraph:
    """A neural network as a coloured, weighted directed multigraph (see module docstring).

    Build one with :func:`symgraph.parameter_graph`; do not fill the fields by hand.

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> g.num_nodes, g.num_edges   # 3 in + 4 hidden + 2 out + 2 bias nodes; 12+4+8+2 edges
    (11, 26)
    """

    edge_index: torch.Tensor  # [2, E] int64, forward direction (input -> output)
    edge_weight: torch.Tensor  # [E] parameter value, 1.0 on parameter-free edges
    edge_color: torch.Tensor  # [E] int32 into edge_color_keys
    node_color: torch.Tensor  # [N] int64 into node_color_keys
    node_weight: torch.Tensor  # [N, F] per-node parameters, 0 where none
    node_layer: torch.Tensor  # [N] int64 depth (longest path from an input or source node)
    edge_color_keys: tuple[tuple, ...]
    node_color_keys: tuple[tuple, ...]
    node_groups: tuple[NodeGroup, ...]
    slots: tuple[ParamSlot, ...]
    state_keys: tuple[str, ...]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    node_weight_columns: tuple[str, ...] = ()
    kind: str = "parameter"
    spec: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes and views
    @property
    def num_nodes(self) -> int:
        return int(self.node_color.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def __post_init__(self):
        # the graph is an invariant once built: its caches (cached_property) may be computed at any time.
        # Subclasses opt in (symgraph.computation.ComputationGraph still sets its maps after construction).
        if type(self) is NeuralGraph:
            object.__setattr__(self, "_built", True)

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_built"):
            raise AttributeError(
                f"NeuralGraph fields are set at construction only (got an assignment to '{name}'): use "
                "with_weights(...) or dataclasses.replace(...) for a graph with other values"
            )
        object.__setattr__(self, name, value)

    @cached_property
    def edge_param(self) -> EdgeParamIndex:
        return EdgeParamIndex(self.slots, self.num_edges)

    @cached_property
    def edge_keys_typed(self) -> tuple[EdgeKey, ...]:
        """``edge_color_keys`` as :class:`EdgeKey` objects (built so by the builder; plain tuples read once)."""
        return tuple(EdgeKey.from_flat(k) for k in self.edge_color_keys)

    @cached_property
    def node_keys_typed(self) -> tuple[NodeKey, ...]:
        """``node_color_keys`` as :class:`NodeKey` objects."""
        return tuple(NodeKey.from_flat(k) for k in self.node_color_keys)

    @cached_property
    def node_role(self) -> list[str]:
        """Role name of every node (input, hidden, output, bias, head, group, position, token)."""
        roles = [k.role for k in self.node_keys_typed]
        return [roles[c] for c in self.node_color.tolist()]

    def role_mask(self, *roles: str) -> torch.Tensor:
        """Boolean mask [N] of the nodes whose role is one of ``roles``."""
        hit = torch.tensor([k.role in roles for k in self.node_keys_typed], dtype=torch.bool)
        if hit.numel() == 0:
            return torch.zeros(self.num_nodes, dtype=torch.bool)
        return hit[self.node_color]

    @property
    def input_nodes(self) -> torch.Tensor:
        return self.role_mask("input").nonzero().flatten()

    @property
    def output_nodes(self) -> torch.Tensor:
        return self.role_mask("output").nonzero().flatten()

    @property
    def fixed_mask(self) -> torch.Tensor:
        """Nodes that every automorphism fixes (input, output, bias and position nodes)."""
        return self.role_mask(*FIXED_ROLES)

    def nbytes(self) -> dict[str, int]:
        """Bytes held by the graph's tensors, per tensor and in total."""
        out = {
            "edge_index": self.edge_index.nbytes,
            "edge_weight": self.edge_weight.nbytes,
            "edge_color": self.edge_color.nbytes,
            "node_color": self.node_color.nbytes,
            "node_weight": self.node_weight.nbytes,
            "node_layer": self.node_layer.nbytes,
            "edge_param": self.edge_param.nbytes,
        }
        out["total"] = sum(out.values())
        return out

    def group_of(self, node: int) -> NodeGroup | None:
        for grp in self.node_groups:
            if grp.start <= node < grp.stop:
                return grp
        return None

    def node_group_index(self) -> torch.Tensor:
        """LongTensor [N]: index into ``node_groups`` of each node's group."""
        out = torch.full((self.num_nodes,), -1, dtype=torch.long)
        for i, grp in enumerate(self.node_groups):
            out[grp.start : grp.stop] = i
        return out

    # ------------------------------------------------------------------ inverse
    def to_state_dict(self, edge_weight: torch.Tensor | None = None, node_weight: torch.Tensor | None = None):
        """The exact inverse: an OrderedDict equal (bit for bit) to the model's state_dict.

        ``edge_weight``/``node_weight`` substitute new values (e.g. edited by a metanet) in the same layout.
        """
        ew = self.edge_weight if edge_weight is None else edge_weight
        nw = self.node_weight if node_weight is None else node_weight
        if ew.shape[0] != self.num_edges:
            raise ValueError(f"Expected edge_weight of length {self.num_edges} (got {tuple(ew.shape)})")
        by_name: dict[str, list[ParamSlot]] = {}
        for s in self.slots:  # a shared parameter has one slot per use (symgraph.builder), the first one first
            by_name.setdefault(s.name, []).append(s)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name in self.state_keys:
            s, *later = by_name[name]
            if s.location == "extra":
                out[name] = self.extras[name].clone()
                continue
            t = _slot_values(s, ew, nw)
            for u in later:
                if not torch.equal(_slot_values(u, ew, nw), t):
                    raise ValueError(
                        f"Expected equal copies of the shared parameter '{name}' in every use (got different "
                        "values: these weights are not those of one model)"
                    )
            out[name] = t.detach().to(s.dtype).reshape(s.shape).clone()
        return out

    def with_weights(
        self,
        edge_weight: torch.Tensor | None = None,
        node_weight: torch.Tensor | None = None,
        extras: dict[str, torch.Tensor] | None = None,
    ):
        """A graph of the same structure with other weights (same layout), and other ``extras`` if given."""
        changes: dict[str, Any] = {}
        if edge_weight is not None:
            changes["edge_weight"] = edge_weight
        if node_weight is not None:
            changes["node_weight"] = node_weight
        if extras is not None:
            changes["extras"] = extras
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ permutations
    def edge_keys(self) -> torch.Tensor:
        """One int64 key per edge, (src, dst, colour) -> key; unique in a well-formed graph."""
        n, c = self.num_nodes, max(len(self.edge_color_keys), 1)
        if n * n * c >= 2**62:
            raise OverflowError("graph too large for int64 edge keys")
        src, dst = self.edge_index
        return (src * n + dst) * c + self.edge_color.long()

    def edge_permutation(self, perm: torch.Tensor) -> torch.Tensor:
        """The edge permutation phi^e induced by a node permutation phi (``perm[i] = phi(i)``).

        Returns ``eperm`` with edge ``e = (i, j, c)`` mapped to edge ``eperm[e] = (phi(i), phi(j), c)``.
        Raises ``ValueError`` if ``perm`` does not map the edge set onto itself (not an automorphism).
        """
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.shape != (self.num_nodes,):
            raise ValueError(f"Expected a permutation of {self.num_nodes} nodes (got shape {tuple(perm.shape)})")
        keys = self.edge_keys()
        order = torch.argsort(keys)
        sorted_keys = keys[order]
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise ValueError("graph has duplicate (src, dst, colour) edges: edge permutation is ambiguous")
        n, c = self.num_nodes, max(len(self.edge_color_keys), 1)
        src, dst = self.edge_index
        new_keys = (perm[src] * n + perm[dst]) * c + self.edge_color.long()
        pos = torch.searchsorted(sorted_keys, new_keys).clamp(max=max(keys.numel() - 1, 0))
        if keys.numel() and not bool((sorted_keys[pos] == new_keys).all()):
            raise ValueError("permutation does not preserve the coloured edge set: not an automorphism")
        return order[pos]

    def is_automorphism(self, perm: torch.Tensor) -> bool:
        """Edge-, colour- and fixed-node-preserving? (the paper's neural DAG automorphism, C.2)."""
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.shape != (self.num_nodes,) or not torch.equal(torch.sort(perm).values, torch.arange(self.num_nodes)):
            return False
        if not torch.equal(self.node_color[perm], self.node_color):
            return False
        fixed = self.fixed_mask
        if not torch.equal(perm[fixed], torch.arange(self.num_nodes)[fixed]):
            return False
        try:
            self.edge_permutation(perm)
        except ValueError:
            return False
        return True

    def permute(self, perm: torch.Tensor, check: bool = True) -> NeuralGraph:
        """Phi applied to the weights: edge ``(phi(i), phi(j), c)`` gets the value of ``(i, j, c)``.

        Node-stored parameters move with their nodes. The structure (edge_index, colours) is unchanged,
        so ``to_state_dict()`` of the result is the permuted model's state_dict.
        """
        perm = torch.as_tensor(perm, dtype=torch.long)
        if check and not self.is_automorphism(perm):
            raise ValueError("not an automorphism of this graph (edges, colours or fixed nodes not preserved)")
        eperm = self.edge_permutation(perm)
        new_ew = torch.empty_like(self.edge_weight)
        new_ew[eperm] = self.edge_weight
        new_nw = torch.empty_like(self.node_weight)
        new_nw[perm] = self.node_weight
        return self.with_weights(new_ew, new_nw)

    # ------------------------------------------------------------------ exports
    def to_pyg(self):
        """A ``torch_geometric.data.Data`` with the raw graph (see ``gmn.graph_to_data`` for features)."""
        from torch_geometric.data import Data

        return Data(
            edge_index=self.edge_index,
            edge_weight=self.edge_weight,
            edge_color=self.edge_color.long(),
            node_color=self.node_color,
            node_weight=self.node_weight,
            node_layer=self.node_layer,
            num_nodes=self.num_nodes,
        )

    def to_networkx(self):
        """A ``networkx.MultiDiGraph``; node/edge attributes: colour, colour key, role, layer, weight."""
        import networkx as nx

        g = nx.MultiDiGraph()
        roles = self.node_role
        layers = self.node_layer.tolist()
        ncol = self.node_color.tolist()
        nw = self.node_weight.tolist()
        for i in range(self.num_nodes):
            g.add_node(
                i,
                color=ncol[i],
                color_key=self.node_color_keys[ncol[i]],
                role=roles[i],
                layer=layers[i],
                weight=nw[i],
            )
        src, dst = self.edge_index.tolist()
        ecol = self.edge_color.tolist()
        ew = self.edge_weight.tolist()
        for e in range(self.num_edges):
            g.add_edge(src[e], dst[e], key=e, color=ecol[e], color_key=self.edge_color_keys[ecol[e]], weight=ew[e])
        return g

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        lines = [
            f"{self.kind} graph: {self.num_nodes} nodes, {self.num_edges} edges, "
            f"{len(self.node_color_keys)} node colours, {len(self.edge_color_keys)} edge colours",
        ]
        once = {s.name: s for s in self.slots}.values()  # a shared parameter has one slot per use
        n_params = sum(s.numel for s in once if s.location != "extra" and not s.is_buffer)
        n_buf = sum(s.numel for s in once if s.is_buffer)
        lines.append(f"parameters: {n_params} (+{n_buf} buffer entries), {len(self.state_keys)} state_dict entries")
        b = self.nbytes()
        per_edge = (b["edge_index"] + b["edge_weight"] + b["edge_color"]) / max(self.num_edges, 1)
        lines.append(f"memory: {b['total'] / 2**20:.2f} MiB ({per_edge:.1f} bytes per edge)")
        lines.append("node groups:")
        for grp in self.node_groups:
            lines.append(f"  {grp.name:<40s} {grp.role:<8s} {grp.count:>7d}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"NeuralGraph(kind={self.kind!r}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"node_colors={len(self.node_color_keys)}, edge_colors={len(self.edge_color_keys)})"
        )
