"""`GraphBuilder`: encoders add node and edge blocks here; `finalize()` makes a `NeuralGraph`.

Edges are added as *blocks* whose contents are written straight into preallocated tensors at finalize
time (``fill(src, dst, color)`` on views of the final arrays), so building a 25M-edge graph allocates each
edge tensor once. A block that carries a parameter copies it flat into ``edge_weight``; its edges must
therefore be emitted in the parameter's own flat order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import SymgraphError
from .graph import AFTER, EdgeKey, NeuralGraph, NodeGroup, NodeKey, ParamSlot

__all__ = ["GraphBuilder", "Features", "SymmetryDecl", "AFTER", "with_ops", "structural_op"]

FillFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _canon(v):
    """A hashable value with a stable ``repr`` (lists, sizes and nested tuples become tuples)."""
    if isinstance(v, torch.Size | list | tuple):
        return tuple(_canon(u) for u in v)
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return float(v)
    if isinstance(v, slice):
        return ("slice", _canon(v.start), _canon(v.stop), _canon(v.step))
    return repr(v)


def structural_op(name: str, in_shape, out_shape, *args) -> tuple:
    """The record of one parameter-free structural op: ``(name, in_shape, out_shape, *args)``.

    The record says everything the op does to a value, so two values whose records (and nodes) are equal
    are equal: e.g. ``("max_pool2d", (1, 8, 4, 4), (1, 8, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1), False)``.
    """
    return (name, _canon(tuple(in_shape)), _canon(tuple(out_shape)), *(_canon(a) for a in args))


def with_ops(key: tuple, ops: tuple) -> tuple:
    """``key`` for an edge (or node) block that consumes a value after the structural ops ``ops``.

    Unchanged when there are none, so that graphs without structural ops keep their colours. An
    :class:`~symgraph.graph.EdgeKey` gets them in its ``after`` field; a plain tuple a trailing
    ``("after", *ops)`` entry (the same flat form).
    """
    if not ops:
        return key
    if isinstance(key, EdgeKey):
        return key.replace(after=key.after + tuple(ops))
    return (*key, (AFTER, *ops))


def _one_to_one(ends: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether the node pairs ``(a[k], b[k])`` of all ``ends`` form a bijection between their two node sets."""
    a = torch.cat([e[0] for e in ends])
    b = torch.cat([e[1] for e in ends])
    pairs = torch.unique(torch.stack([a, b]), dim=1)
    return pairs.shape[1] == torch.unique(pairs[0]).numel() == torch.unique(pairs[1]).numel()


def _storage_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's memory (storage, offset, shape, strides, dtype); None for meta or empty ones."""
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


@dataclass(frozen=True)
class Features:
    """How a traced tensor's feature axis maps onto graph nodes.

    ``nodes[f]`` is the node carrying feature index ``f`` along ``axis``; ``pos[f]`` (0..num_pos-1) is the
    position that feature had before a flatten merged spatial positions into the feature axis (a linear
    layer after ``flatten`` gets one edge colour per position, so that a channel permutation moves a whole
    block of columns). ``owned`` says the nodes were created for this value alone (an activation may then be
    recorded on them in place).

    ``ops`` are the parameter-free structural ops (pooling, reductions over positions, padding,
    interpolation, shifts, flips, slices, reshapes of the positions; :func:`structural_op` records) applied
    since ``nodes`` were made: the value is ``ops(node values)``, not the node values. Every encoder that
    consumes the value puts ``ops`` into its colour keys (:func:`with_ops`) or gets new nodes for it first
    (:meth:`symgraph.trace.EncodeContext.materialize`), so that a layer after a pool never looks like the
    same layer without it. Encoders that make new nodes return values with ``ops == ()``.
    """

    nodes: torch.Tensor
    shape: tuple[int, ...]
    axis: int = -1
    pos: torch.Tensor | None = None
    num_pos: int = 1
    owned: bool = False
    ops: tuple = ()

    @property
    def size(self) -> int:
        return int(self.nodes.numel())

    def unique_nodes(self) -> torch.Tensor:
        if self.num_pos == 1:
            return self.nodes
        return torch.unique_consecutive(self.nodes)


@dataclass(frozen=True)
class SymmetryDecl:
    """An encoder's declaration of the analytic permutation symmetry of its layer.

    kind:
      - ``"perm"``: the nodes ``nodes`` may be permuted arbitrarily among themselves (S_n), as a set.
      - ``"tie"``: ``nodes`` and ``other`` (same length) must be permuted by the same permutation
        (residual streams, norms applied in place).
      - ``"blocks"``: ``nodes`` is [B, n]: B blocks permutable as wholes (heads, norm groups); the
        permutation within blocks is declared separately.
    """

    kind: str
    nodes: torch.Tensor
    label: str
    other: torch.Tensor | None = None
    module: str = ""


@dataclass
class _EdgeBlock:
    count: int
    fill: FillFn
    weight: torch.Tensor | None  # flat values, or None for parameter-free edges (weight 1)
    slot_name: str | None
    start: int = 0


@dataclass
class _NodeBlock:
    role: str
    kind: str
    count: int
    name: str
    module: str
    extra: tuple = ()


@dataclass
class GraphBuilder:
    """Accumulates nodes, edges, parameter slots and symmetry declarations."""

    kind: str = "parameter"
    #: "sound" (default: our encodings, whose automorphisms all preserve the function) or "paper" (the
    #: paper's original drawings: identical Q/K/V edges, GroupNorm without group nodes, DeepSets edges of one
    #: colour), kept to show where those are unsound. Encoders read it.
    encoding: str = "sound"
    _node_blocks: list[_NodeBlock] = field(default_factory=list)
    _edge_blocks: list[_EdgeBlock] = field(default_factory=list)
    _edge_color_ids: dict[tuple, int] = field(default_factory=dict)
    _slots: dict[str, ParamSlot] = field(default_factory=dict)
    _node_values: list[tuple[torch.Tensor, int, torch.Tensor]] = field(default_factory=list)
    _node_columns: list[str] = field(default_factory=list)
    _extras: dict[str, torch.Tensor] = field(default_factory=dict)
    symmetries: list[SymmetryDecl] = field(default_factory=list)
    num_nodes: int = 0
    num_edges: int = 0
    _act: list[tuple] = field(default_factory=list)  # per node: tuple of activation names
    _level: list[int] = field(default_factory=list)
    _roles: list[str] = field(default_factory=list)
    _weight_dtype: torch.dtype | None = None
    #: later uses of a parameter already placed (a module applied several times): one slot per use, same name
    _aliases: list[ParamSlot] = field(default_factory=list)
    _by_storage: dict[tuple, str] = field(default_factory=dict)  # placed tensors, for tied state names
    #: (first name, slot) for a tensor placed again under another state_dict name (tied weights)
    _tied_uses: list[tuple[str, ParamSlot]] = field(default_factory=list)

    # ------------------------------------------------------------------ nodes
    def add_nodes(
        self, count: int, role: str, kind: str, name: str, module: str = "", level: int = 0, extra: tuple = ()
    ) -> torch.Tensor:
        """Add ``count`` nodes of one role/kind; returns their ids (a contiguous range)."""
        if count <= 0:
            raise SymgraphError(f"Expected a positive node count for '{name}' (got {count})")
        start = self.num_nodes
        self._node_blocks.append(_NodeBlock(role, kind, count, name, module, extra))
        self.num_nodes += count
        self._act.extend([()] * count)
        self._level.extend([level] * count)
        self._roles.extend([role] * count)
        return torch.arange(start, start + count)

    def level_of(self, nodes: torch.Tensor) -> int:
        """Largest layer index among ``nodes``."""
        if nodes.numel() == 0:
            return 0
        return max(self._level[i] for i in torch.unique(nodes).tolist())

    def set_level(self, nodes: torch.Tensor, level: int) -> None:
        for i in nodes.tolist():
            self._level[i] = level

    def role(self, node: int) -> str:
        return self._roles[node]

    def add_activation(self, nodes: torch.Tensor, act: str) -> None:
        for i in torch.unique(nodes).tolist():
            self._act[i] = self._act[i] + (act,)

    def activation(self, node: int) -> tuple:
        return self._act[node]

    def set_role(self, nodes: torch.Tensor, role: str) -> None:
        for i in torch.unique(nodes).tolist():
            self._roles[i] = role

    # ------------------------------------------------------------------ colours
    def edge_color(self, key: EdgeKey | tuple) -> int:
        """Id of an edge colour key (assigned in order of first use: deterministic per traversal).

        A plain tuple ``(family, [role], *settings)`` is read as an :class:`~symgraph.graph.EdgeKey`
        (``EdgeKey.from_flat``); equal flat forms are one colour.
        """
        cid = self._edge_color_ids.get(key)
        if cid is None:
            cid = len(self._edge_color_ids)
            self._edge_color_ids[EdgeKey.from_flat(key)] = cid
        return cid

    def edge_colors(self, keys: list[tuple]) -> torch.Tensor:
        return torch.tensor([self.edge_color(k) for k in keys], dtype=torch.int32)

    # ------------------------------------------------------------------ edges
    def add_edge_block(
        self,
        count: int,
        fill: FillFn,
        param: torch.Tensor | None = None,
        param_name: str | None = None,
        is_buffer: bool = False,
    ) -> range:
        """Add ``count`` edges whose src/dst/colour ``fill`` writes into given int64/int64/int32 views.

        With ``param``, edge ``k`` of the block carries ``param.flatten()[k]`` and the block becomes the
        parameter's slot (so the block must enumerate the parameter in flat order).
        """
        if param is not None:
            if param.numel() != count:
                raise SymgraphError(f"Expected {param.numel()} edges for parameter '{param_name}' (got {count})")
            self._place(
                ParamSlot(
                    param_name, "edge", self.num_edges, count, tuple(param.shape), param.dtype, is_buffer=is_buffer
                ),
                self._tied_first(param, param_name),
            )
            self._note_storage(param, param_name)
            self._note_dtype(param.dtype)
        start = self.num_edges
        flat = None if param is None else param.detach().reshape(-1)
        self._edge_blocks.append(_EdgeBlock(count, fill, flat, param_name, start))
        self.num_edges += count
        return range(start, start + count)

    def add_edges(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        color: torch.Tensor | int,
        param: torch.Tensor | None = None,
        param_name: str | None = None,
        is_buffer: bool = False,
    ) -> range:
        """Add explicit edges (tensors already built); ``color`` is an id or a per-edge id tensor."""
        src = torch.as_tensor(src, dtype=torch.long).reshape(-1)
        dst = torch.as_tensor(dst, dtype=torch.long).reshape(-1)
        if src.shape != dst.shape:
            raise SymgraphError(f"Expected src and dst of equal length (got {src.numel()} and {dst.numel()})")
        col = color

        def fill(s, d, c):
            s.copy_(src)
            d.copy_(dst)
            if isinstance(col, int):
                c.fill_(col)
            else:
                c.copy_(torch.as_tensor(col, dtype=torch.int32).expand(src.shape))

        return self.add_edge_block(src.numel(), fill, param, param_name, is_buffer)

    def add_dense(
        self, src_map: torch.Tensor, dst_nodes: torch.Tensor, color: torch.Tensor | int, param, param_name: str
    ) -> range:
        """Edges for a dense [out, in] weight: edge (o, i) goes src_map[i] -> dst_nodes[o], in flat order.

        ``color`` is an id or a per-column [in] id tensor (positions after a flatten).
        """
        n_out, n_in = dst_nodes.numel(), src_map.numel()

        def fill(s, d, c):
            s.view(n_out, n_in).copy_(src_map.view(1, n_in).expand(n_out, n_in))
            d.view(n_out, n_in).copy_(dst_nodes.view(n_out, 1).expand(n_out, n_in))
            if isinstance(color, int):
                c.fill_(color)
            else:
                c.view(n_out, n_in).copy_(color.to(torch.int32).view(1, n_in).expand(n_out, n_in))

        return self.add_edge_block(n_out * n_in, fill, param, param_name)

    # ------------------------------------------------------------------ node-stored parameters
    def node_column(self, name: str) -> int:
        if name not in self._node_columns:
            self._node_columns.append(name)
        return self._node_columns.index(name)

    def add_node_param(self, nodes: torch.Tensor, column: str, param: torch.Tensor, name: str, is_buffer=False):
        """Store ``param`` (flat order) on ``nodes`` (contiguous ids) in node_weight column ``column``."""
        nodes = torch.as_tensor(nodes, dtype=torch.long)
        if param.numel() != nodes.numel():
            raise SymgraphError(f"Expected {nodes.numel()} values for '{name}' (got {param.numel()})")
        if nodes.numel() and not torch.equal(nodes, torch.arange(int(nodes[0]), int(nodes[0]) + nodes.numel())):
            raise SymgraphError(f"node-stored parameter '{name}' needs contiguous nodes")
        col = self.node_column(column)
        self._place(
            ParamSlot(
                name,
                "node",
                int(nodes[0]) if nodes.numel() else 0,
                param.numel(),
                tuple(param.shape),
                param.dtype,
                column=col,
                is_buffer=is_buffer,
            ),
            self._tied_first(param, name),
        )
        self._note_storage(param, name)
        self._note_dtype(param.dtype)
        self._node_values.append((nodes, col, param.detach().reshape(-1)))

    def add_extra(self, name: str, value: torch.Tensor, is_buffer: bool = True) -> None:
        """Keep a state entry that has no place in the graph (e.g. ``num_batches_tracked``) verbatim."""
        if name in self._slots and self._slots[name].location == "extra":
            return  # a module applied again: its verbatim entry is kept once
        placed = self._by_storage.get(_storage_key(value))
        if placed is not None and name not in self._slots:
            # another state name of a tensor placed under its first name (``nn.Sequential(lin, relu, lin)``
            # lists ``0.weight`` and ``2.weight``, fx calls ``0`` twice): the same place, not a verbatim copy
            self._slots[name] = dataclasses.replace(self._slots[placed], name=name)
            return
        self._claim(name)
        self._slots[name] = ParamSlot(
            name, "extra", 0, value.numel(), tuple(value.shape), value.dtype, is_buffer=is_buffer
        )
        self._extras[name] = value.detach().clone()

    def has_slot(self, name: str) -> bool:
        return name in self._slots

    def _claim(self, name: str | None) -> None:
        if name is None:
            raise SymgraphError("a parameter block needs a name")
        if name in self._slots:
            raise SymgraphError(
                f"state entry '{name}' is kept verbatim and also used by a layer; each state entry needs one place"
            )

    def _note_storage(self, param: torch.Tensor, name: str) -> None:
        key = _storage_key(param)
        if key is not None:
            self._by_storage.setdefault(key, name)

    def _tied_first(self, param: torch.Tensor, name: str | None) -> str | None:
        """The first state name ``param``'s tensor was placed under, when that is another name (tied weights)."""
        placed = self._by_storage.get(_storage_key(param))
        return placed if placed is not None and placed != name and placed in self._slots else None

    def _place(self, slot: ParamSlot, tied_to: str | None = None) -> None:
        """Record ``slot``: the parameter's first use, or a later use of the same parameter (weight sharing).

        A later use (a module applied several times, one ``nn.Linear`` called twice) gets a slot of its own
        with the same name: a full second edge (or node) set. ``finalize`` joins each use to the first by
        parameter-free share edges and ties, so that every automorphism permutes all uses alike (the
        weight-sharing condition of appendix C.2) and ``to_state_dict`` has one tensor per name.
        """
        if slot.name is None:
            raise SymgraphError("a parameter block needs a name")
        first = self._slots.get(slot.name)
        if first is None:
            self._slots[slot.name] = slot
            other = self._slots.get(tied_to) if tied_to is not None else None
            if other is not None and (other.location, other.numel, other.dtype) == (
                slot.location,
                slot.numel,
                slot.dtype,
            ):
                # one tensor under two names (GPT-2's lm_head = wte, a user's ``c.weight = a.weight``): the
                # second name's slot is joined to the first by share edges too (see ``_share``)
                self._tied_uses.append((tied_to, slot))
            return
        if (first.location, first.shape, first.dtype, first.is_buffer) != (
            slot.location,
            slot.shape,
            slot.dtype,
            slot.is_buffer,
        ):
            raise SymgraphError(
                f"Expected every use of parameter '{slot.name}' to be stored alike (got a {first.location} "
                f"slot of shape {first.shape} and a {slot.location} slot of shape {slot.shape})"
            )
        self._aliases.append(slot)

    def _note_dtype(self, dtype: torch.dtype) -> None:
        if not dtype.is_floating_point:
            return
        self._weight_dtype = dtype if self._weight_dtype is None else torch.promote_types(self._weight_dtype, dtype)

    def declare(self, decl: SymmetryDecl) -> None:
        self.symmetries.append(decl)

    # ------------------------------------------------------------------ finalize
    def finalize(self, state_keys: tuple[str, ...], spec=None, meta=None) -> NeuralGraph:
        E, N = self.num_edges, self.num_nodes
        dtype = self._weight_dtype or torch.get_default_dtype()
        edge_index = torch.empty((2, E), dtype=torch.long)
        edge_color = torch.empty(E, dtype=torch.int32)
        edge_weight = torch.empty(E, dtype=dtype)
        for blk in self._edge_blocks:
            sl = slice(blk.start, blk.start + blk.count)
            blk.fill(edge_index[0, sl], edge_index[1, sl], edge_color[sl])
            if blk.weight is None:
                edge_weight[sl] = 1.0
            else:
                edge_weight[sl].copy_(blk.weight)
        symmetries = list(self.symmetries)
        if self._aliases or self._tied_uses:
            edge_index, edge_color, edge_weight, ties = self._share(edge_index, edge_color, edge_weight)
            symmetries += ties
        ncols = max(len(self._node_columns), 1)
        node_weight = torch.zeros((N, ncols), dtype=dtype)
        for nodes, col, vals in self._node_values:
            node_weight[nodes, col] = vals.to(dtype)
        # node colours: NodeKey(role, kind, activations, extra), ids in order of first appearance
        key_ids: dict[tuple, int] = {}
        node_keys: list[NodeKey] = []
        node_color = torch.empty(N, dtype=torch.long)
        groups = []
        i = 0
        for blk in self._node_blocks:
            for j in range(i, i + blk.count):
                flat = (self._roles[j], blk.kind, self._act[j], *blk.extra)
                cid = key_ids.get(flat)
                if cid is None:
                    cid = key_ids[flat] = len(key_ids)
                    node_keys.append(NodeKey(self._roles[j], blk.kind, self._act[j], blk.extra))
                node_color[j] = cid
            groups.append(NodeGroup(blk.name, self._roles[i], i, blk.count, blk.module, blk.kind))
            i += blk.count
        node_layer = torch.tensor(self._level, dtype=torch.long) if N else torch.zeros(0, dtype=torch.long)
        missing = [k for k in state_keys if k not in self._slots]
        if missing:
            raise SymgraphError(f"internal: state entries without a place in the graph: {missing[:5]}")
        return NeuralGraph(
            edge_index=edge_index,
            edge_weight=edge_weight,
            edge_color=edge_color,
            node_color=node_color,
            node_weight=node_weight,
            node_layer=node_layer,
            edge_color_keys=tuple(self._edge_color_ids),
            node_color_keys=tuple(node_keys),
            node_groups=tuple(groups),
            slots=tuple(self._slots[k] for k in state_keys) + tuple(self._aliases),
            state_keys=tuple(state_keys),
            extras=dict(self._extras),
            node_weight_columns=tuple(self._node_columns),
            kind=self.kind,
            spec=spec,
            meta=dict(meta or {}, symmetries=symmetries),
        )

    def _share(self, edge_index, edge_color, edge_weight):
        """Share edges and ties for the later uses of shared parameters (see :meth:`_place`).

        Entry ``k`` of a parameter sits on edge ``(s, d)`` in its first use and ``(s', d')`` in a later one;
        a parameter-free edge ``s -> s'`` and ``d -> d'`` (colour ``("identity", "share")``, deduplicated) makes
        every automorphism move the two uses' nodes alike, so that it maps entry ``k``'s edges of all uses
        onto the edges of one entry ``k'`` (the weight-sharing condition). The same pairs are declared as
        ties: the analytic symmetry moves the uses together too. Returns the extended edge arrays and the ties.
        """
        ties, pairs = [], []
        uses = [(a.name, a, False) for a in self._aliases] + [(first, a, True) for first, a in self._tied_uses]
        for first_name, a, tied in uses:
            f = self._slots[first_name]
            if a.location == "edge" and f.location == "edge":
                ends = [
                    (edge_index[r, f.start : f.start + f.numel], edge_index[r, a.start : a.start + a.numel])
                    for r in (0, 1)
                ]
                if tied and not _one_to_one(ends):
                    # a tied tensor read the other way round (an embedding table [V, D] from token nodes to
                    # features, reused as a head weight [V, D] from features to outputs): pair the ends crosswise
                    ends = [(ends[0][0], ends[1][1]), (ends[1][0], ends[0][1])]
                    if not _one_to_one(ends):
                        continue  # no node map carries one use onto the other: the group-level check refuses
            elif a.location == "node" and f.location == "node":
                ends = [(torch.arange(f.start, f.start + f.numel), torch.arange(a.start, a.start + a.numel))]
            else:
                continue  # stored on edges once and on nodes once: left to the group-level check
            use = torch.cat([torch.stack(e) for e in ends], dim=1)
            use = torch.unique(use[:, use[0] != use[1]], dim=1)
            if use.shape[1]:
                # one tie per use: a one-to-one map from the first use's nodes (what symmetry.py's ties are)
                ties.append(SymmetryDecl("tie", use[0], f"weight sharing of {a.name}", other=use[1], module=a.name))
                pairs.append(use)
        if not pairs:
            return edge_index, edge_color, edge_weight, []
        pairs = torch.unique(torch.cat(pairs, dim=1), dim=1)
        color = self.edge_color(EdgeKey("identity", "share"))
        edge_index = torch.cat([edge_index, pairs], dim=1)
        edge_color = torch.cat([edge_color, torch.full((pairs.shape[1],), color, dtype=torch.int32)])
        edge_weight = torch.cat([edge_weight, torch.ones(pairs.shape[1], dtype=edge_weight.dtype)])
        return edge_index, edge_color, edge_weight, ties
