"""The one input type of every metanet: parameter graphs batched with their weight-space template.

:func:`gmn.graph_to_data` turns a :class:`~symgraph.graph.NeuralGraph` into a :class:`WeightSpaceData`: the
GMN's node and edge features (:mod:`gmn.data`) plus what the other metanets read off the same object,

- the parameters as a set (``param_edge``, ``param_slot``, ``node_param_*``; :meth:`WeightSpaceData.param_elements`
  for DeepSets, DMC and StatNN), and
- the *chain template* (``chain``, a :class:`ChainSpec`, and ``chain_edge``): for an MLP or CNN that is a chain
  of dense layers, each layer's weight and bias with their sizes and the edges that hold their entries, in
  layer order (NP-NFN and DWSNet stack these into weight-space tensors, as nfn's ``WeightSpaceFeatures``; see
  :meth:`WeightSpaceData.chain_groups`). Other architectures get a ``ChainSpec`` that says why they are not
  a chain.

A batch is ``WeightSpaceBatch.from_data_list(datas)`` (or ``torch_geometric.data.Batch.from_data_list``, or
:func:`weight_space_loader`): graphs of any architectures side by side. Every index attribute declares how
batching shifts it (:data:`INDEX_ATTRIBUTES`, read by ``__inc__``/``__cat_dim__``), so in a batch
``node_param_node`` indexes the batch's nodes and ``param_edge``/``chain_edge`` its edges directly; nothing
adds per-graph offsets by hand. ``param_slot``/``node_param_slot`` are positions of a tensor *within its
graph* (they are not shifted: the dense ``[graph, slot]`` layouts of StatNN and the GMN's per-tensor pooling
index ``graph * T + slot``).

Example
-------
>>> import torch.nn as nn, symgraph, gmn
>>> gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in (3, 4)]
>>> batch = WeightSpaceBatch.from_data_list([gmn.graph_to_data(g) for g in gs])
>>> batch.num_graphs, batch.chain[1].shapes
(2, ((4, 2, 1, True), (1, 4, 1, True)))
>>> int(batch.param_edge[13]), int(gs[0].num_edges) * 2  # the second graph's first parameter edge
(26, 26)
>>> [tuple(g.edges.shape) for g in batch.chain_groups()]  # one group per layer shape: [graphs, parameters]
[(1, 13), (1, 17)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from symgraph.graph import ConvSettings, NeuralGraph

from .errors import UnsupportedArchitectureError

__all__ = [
    "INDEX_ATTRIBUTES",
    "UnsupportedArchitectureError",
    "ChainLayer",
    "ChainSpec",
    "ChainGroup",
    "ParamElements",
    "WeightSpaceData",
    "WeightSpaceBatch",
    "weight_space_loader",
]

#: How batching shifts each index attribute: ``"node"`` by the graph's number of nodes, ``"edge"`` by its
#: number of (forward + reverse) edges, ``"position"`` not at all (a position inside the graph).
INDEX_ATTRIBUTES: dict[str, str] = {
    "edge_index": "node",
    "node_param_node": "node",
    "param_edge": "edge",
    "chain_edge": "edge",
    "param_slot": "position",
    "node_param_slot": "position",
    "node_param_column": "position",
}

_DENSE_KINDS = ("linear", "conv")


@dataclass(frozen=True)
class ChainLayer:
    """One dense layer of a chain: weight and optional bias (state_dict names), sizes, folded kernel size."""

    weight: str
    bias: str | None
    n_out: int
    n_in: int
    kernel: int

    @property
    def numel(self) -> int:
        """Entries of the weight and the bias."""
        return self.n_out * self.n_in * self.kernel + (self.n_out if self.bias is not None else 0)


@dataclass(frozen=True)
class ChainSpec:
    """A parameter graph read as a chain of dense layers (the template of NP-NFN and DWSNet).

    ``layers`` is empty when the graph is no such chain; ``needs``/``got`` then say why (the message of
    :meth:`error`). Widths may differ between networks of one ``signature`` (depth, folded kernel sizes,
    which layers have biases); ``shapes`` adds the widths.

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> ChainSpec.read(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))).shapes
    ((3, 2, 1, True), (1, 3, 1, True))
    >>> ChainSpec.read(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)))).is_chain
    False
    """

    layers: tuple[ChainLayer, ...] = ()
    needs: str = ""
    got: str = ""

    @property
    def is_chain(self) -> bool:
        return bool(self.layers)

    @property
    def signature(self) -> tuple:
        """What an NP-NFN depends on: depth, folded kernel sizes and which layers have biases."""
        return tuple((s.kernel, s.bias is not None) for s in self.layers)

    @property
    def shapes(self) -> tuple:
        return tuple((s.n_out, s.n_in, s.kernel, s.bias is not None) for s in self.layers)

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.layers)

    def error(self, metanet: str = "NP-NFN") -> UnsupportedArchitectureError:
        """Why this graph is not a chain, as the error ``metanet`` raises."""
        return UnsupportedArchitectureError(metanet, self.needs, self.got)

    @classmethod
    def from_graph(cls, g: NeuralGraph) -> ChainSpec:
        """Read the chain of dense layers of ``g``; :class:`UnsupportedArchitectureError` if it is none."""
        spec = cls.read(g)
        if not spec.is_chain:
            raise spec.error()
        return spec

    @classmethod
    def read(cls, g: NeuralGraph) -> ChainSpec:
        """Read the chain of dense layers of ``g``, or a spec without layers that says why it is none.

        Chains are MLPs and CNNs made of ``Linear``/``Conv`` layers (with or without biases), elementwise
        activations, pooling and flatten, wired sequentially; residual connections, normalisation layers,
        attention, DeepSets layers, grouped convolutions and branches are not.
        """
        try:
            return cls(cls._layers(g))
        except UnsupportedArchitectureError as e:
            return cls((), e.needs, e.got)

    @staticmethod
    def _layers(g: NeuralGraph) -> tuple[ChainLayer, ...]:
        name = "NP-NFN"
        node_slots = [s.name for s in g.slots if s.location == "node"]
        if node_slots:
            raise UnsupportedArchitectureError(
                name, "an MLP or CNN without normalisation layers", f"node-stored parameters {node_slots[:3]}"
            )
        keys = g.edge_keys_typed
        for k in keys:
            if k.family not in (*_DENSE_KINDS, "bias"):
                raise UnsupportedArchitectureError(
                    name,
                    "only linear, convolution and bias edges",
                    f"an edge of kind {k.flat()[:2]!r} (residual, attention, ...)",
                )
            if k.family == "conv" and isinstance(k.settings, ConvSettings) and k.settings.groups != 1:
                raise UnsupportedArchitectureError(name, "convolutions with groups=1", f"groups={k.settings.groups}")
        has = g.edge_param.has_param()
        if not bool(has.all()):
            raise UnsupportedArchitectureError(name, "every edge to carry a parameter", "parameter-free edges")
        layers: list[dict] = []
        src_all, dst_all = g.edge_index
        for s in g.edge_param.slots:
            sl = slice(s.start, s.start + s.numel)
            kinds = {keys[c].family for c in torch.unique(g.edge_color[sl]).tolist()}
            src, dst = src_all[sl], dst_all[sl]
            if kinds == {"bias"}:
                rows = dst
                match = [L for L in layers if torch.equal(L["rows"], rows)]
                if len(match) != 1 or match[0]["bias"] is not None:
                    raise UnsupportedArchitectureError(name, "one bias per dense layer", f"bias '{s.name}'")
                match[0]["bias"] = s.name
                continue
            if len(kinds) != 1 or len(s.shape) < 2:
                raise UnsupportedArchitectureError(name, "dense weight tensors", f"'{s.name}' of shape {s.shape}")
            n_out = s.shape[0]
            per_row = s.numel // n_out
            rows = dst.view(n_out, per_row)[:, 0]
            if kinds == {"conv"}:
                n_in, K = s.shape[1], math.prod(s.shape[2:])
                cols = src.view(n_out, n_in, K)[0, :, 0]
            else:
                col_nodes = src.view(n_out, per_row)[0]
                cols = torch.unique_consecutive(col_nodes)
                n_in = cols.numel()
                K = per_row // max(n_in, 1)
                if n_in * K != per_row or not torch.equal(col_nodes, cols.repeat_interleave(K)):
                    raise UnsupportedArchitectureError(name, "a dense layer on a flattened chain", f"'{s.name}'")
            layers.append(dict(weight=s.name, bias=None, rows=rows, cols=cols, n_out=n_out, n_in=n_in, K=K))
        if not layers:
            raise UnsupportedArchitectureError(name, "at least one dense layer", "none")
        if not torch.equal(layers[0]["cols"], g.input_nodes):
            raise UnsupportedArchitectureError(name, "a first layer reading the input nodes", "other wiring")
        for a, b in zip(layers[:-1], layers[1:]):
            if not torch.equal(a["rows"], b["cols"]):
                raise UnsupportedArchitectureError(
                    name, "a sequential chain of layers", f"'{b['weight']}' not reading the outputs of '{a['weight']}'"
                )
        if not torch.equal(layers[-1]["rows"], g.output_nodes):
            raise UnsupportedArchitectureError(name, "a last layer writing the output nodes", "other wiring")
        return tuple(ChainLayer(L["weight"], L["bias"], L["n_out"], L["n_in"], L["K"]) for L in layers)

    def edges(self, g: NeuralGraph) -> Tensor:
        """Edge ids of the chain's parameters in layer order (``W_0`` flat, ``b_0``, ``W_1``, ...) ``[num_params]``."""
        ep = g.edge_param
        ranges = []
        for s in self.layers:
            ranges.append(ep.edges_of(s.weight))
            if s.bias is not None:
                ranges.append(ep.edges_of(s.bias))
        if not ranges:
            return torch.zeros(0, dtype=torch.long)
        starts = torch.tensor([r.start for r in ranges], dtype=torch.long)
        sizes = torch.tensor([len(r) for r in ranges], dtype=torch.long)
        first = torch.cumsum(sizes, 0) - sizes
        return torch.arange(int(sizes.sum())) - torch.repeat_interleave(first - starts, sizes)

    def to_plain(self) -> tuple:
        """Plain tuples (loadable with ``torch.load(weights_only=True)``); :meth:`from_plain` inverts it."""
        return (tuple((s.weight, s.bias, s.n_out, s.n_in, s.kernel) for s in self.layers), self.needs, self.got)

    @classmethod
    def from_plain(cls, plain: Sequence) -> ChainSpec:
        layers, needs, got = plain
        return cls(tuple(ChainLayer(*layer) for layer in layers), needs, got)


@dataclass(frozen=True)
class ChainGroup:
    """Graphs of one batch whose chains have the same shapes: they stack into weight-space tensors.

    ``graphs`` [B] (their positions in the batch), ``spec`` (their common :class:`ChainSpec`), ``edges``
    [B, P] (the batch's edge ids of each graph's chain parameters, in layer order).
    """

    graphs: Tensor
    spec: ChainSpec
    edges: Tensor

    def weights(self, values: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """``W_l`` [B, n_l, n_{l-1}, K_l] and ``b_l`` [B, n_l, 1] (or None; contiguous) from per-edge ``values``
        [E_batch] (e.g. ``batch.edge_attr[:, 0]``)."""
        flat = values[self.edges]
        b = flat.shape[0]
        Ws, bs, o = [], [], 0
        for s in self.spec.layers:
            n = s.n_out * s.n_in * s.kernel
            Ws.append(flat[:, o : o + n].reshape(b, s.n_out, s.n_in, s.kernel).contiguous())
            o += n
            if s.bias is None:
                bs.append(None)
            else:
                bs.append(flat[:, o : o + s.n_out].reshape(b, s.n_out, 1).contiguous())
                o += s.n_out
        return Ws, bs

    def params(self, values: Tensor) -> dict[str, Tensor]:
        """Stacked parameters ``{weight: [B, n_out, n_in, K], bias: [B, n_out]}`` (state_dict names)."""
        Ws, bs = self.weights(values)
        out: dict[str, Tensor] = {}
        for s, W, bias in zip(self.spec.layers, Ws, bs):
            out[s.weight] = W
            if bias is not None:
                out[s.bias] = bias.view(bias.shape[0], s.n_out)
        return out

    def flatten(self, Ws: Sequence[Tensor], bs: Sequence[Tensor | None], channels: int) -> Tensor:
        """Inverse of :meth:`weights` for outputs with ``channels`` per entry: ``[B, P, channels]``.

        ``Ws[l]`` is ``[B, n_out, n_in, K * channels]`` (or any shape with the entries in (o, i, k, c) order),
        ``bs[l]`` ``[B, n_out, channels]``.
        """
        b = self.edges.shape[0]
        parts = []
        for s, W, bias in zip(self.spec.layers, Ws, bs):
            parts.append(W.reshape(b, s.n_out * s.n_in * s.kernel, channels))
            if s.bias is not None:
                parts.append(bias.reshape(b, s.n_out, channels))
        return torch.cat(parts, 1)


@dataclass(frozen=True)
class ParamElements:
    """Every parameter of a batch, sorted by graph (stable: edge-stored first, in edge order).

    ``value`` [M]; ``graph`` [M]; ``tensor`` [M] (``graph * max_tensors + slot``); ``kind`` [M]
    (:data:`gmn.data.EDGE_KIND_VOCAB` id; ``"norm"`` for node-stored parameters); ``depth`` [M];
    ``attr`` [M, EDGE_FLOAT_DIM] (the edge's float features; for node-stored parameters zeros but the value);
    ``num_graphs``, ``max_tensors``.
    """

    value: Tensor
    graph: Tensor
    tensor: Tensor
    kind: Tensor
    depth: Tensor
    attr: Tensor
    num_graphs: int
    max_tensors: int


class WeightSpaceData(Data):
    """One parameter graph as metanet input (built by :func:`gmn.graph_to_data`; attributes in :mod:`gmn.data`).

    Batches of these (:class:`WeightSpaceBatch`, or any ``torch_geometric`` batch of them) have the same
    methods: every method below works on one graph and on a batch alike.
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        what = INDEX_ATTRIBUTES.get(key)
        if what == "node":
            return self.num_nodes
        if what == "edge":
            return self.edge_index.size(1)
        if what == "position":
            return 0
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "edge_index":
            return -1
        if key in INDEX_ATTRIBUTES:
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)

    # ------------------------------------------------------------------------------------------ layout
    @property
    def graph_count(self) -> int:
        """Number of graphs (1 for a single graph)."""
        return int(getattr(self, "num_graphs", None) or 1)

    @property
    def node_graph(self) -> Tensor:
        """Graph of every node ``[N]`` (the batch vector; zeros for a single graph)."""
        b = getattr(self, "batch", None)
        if b is None:
            return torch.zeros(self.x.shape[0], dtype=torch.long, device=self.x.device)
        return b

    @property
    def chains(self) -> list[ChainSpec]:
        """The :class:`ChainSpec` of every graph, in batch order."""
        c = self.chain
        return list(c) if isinstance(c, list | tuple) else [c]

    def forward_rows(self, edges: Tensor) -> Tensor:
        """Rows of ``edges`` (forward edge ids of the batch) in forward-edge order, the order of per-parameter
        outputs ``[num_forward_edges_in_batch, d]`` (graph by graph, each graph's edges in its order)."""
        rank = torch.cumsum(self.edge_is_forward.long(), 0) - 1
        return rank[edges]

    def param_elements(self) -> ParamElements:
        """The parameters as elements of a set (see :class:`ParamElements`): DeepSets, DMC and StatNN read these.

        Example
        -------
        >>> import torch.nn as nn, symgraph, gmn
        >>> d = gmn.graph_to_data(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))))
        >>> el = d.param_elements()
        >>> el.value.shape, el.max_tensors  # 9 edge-stored values, 12 norm values and buffers
        (torch.Size([21]), 6)
        """
        from .data import EDGE_FLOAT_DIM, EDGE_KIND_VOCAB, MAX_DEPTH

        node_graph = self.node_graph
        dev = self.edge_attr.device
        G = self.graph_count
        pe = self.param_edge
        e_graph = node_graph[self.edge_index[1][pe]]
        e_attr = self.edge_attr[pe]
        e_cat = self.edge_cat[pe]
        counts = self.num_param_tensors
        T = int(counts.max()) if isinstance(counts, Tensor) and counts.numel() else int(counts)
        T = max(T, 1)
        e_tensor = e_graph * T + self.param_slot
        n_node = self.node_param_node
        n_graph = node_graph[n_node]
        n_val = self.node_param_values.to(e_attr.dtype)
        n_attr = torch.zeros(n_val.numel(), EDGE_FLOAT_DIM, dtype=e_attr.dtype, device=dev)
        n_attr[:, 0] = n_val
        n_kind = torch.full_like(n_graph, EDGE_KIND_VOCAB.index("norm"))
        n_depth = self.x_cat[n_node, 4].clamp(max=MAX_DEPTH - 1) if n_val.numel() else n_graph
        graph = torch.cat([e_graph, n_graph])
        order = torch.argsort(graph, stable=True)
        return ParamElements(
            value=torch.cat([e_attr[:, 0], n_val])[order],
            graph=graph[order],
            tensor=torch.cat([e_tensor, n_graph * T + self.node_param_slot])[order],
            kind=torch.cat([e_cat[:, 0].long(), n_kind])[order],
            depth=torch.cat([e_cat[:, 2].long(), n_depth])[order],
            attr=torch.cat([e_attr, n_attr])[order],
            num_graphs=G,
            max_tensors=T,
        )

    def chain_groups(self, metanet: str = "NP-NFN") -> list[ChainGroup]:
        """The graphs grouped by chain shapes, in order of first appearance (computed once per batch).

        Raises :class:`UnsupportedArchitectureError` (naming ``metanet``) if a graph is not a chain.
        """
        specs = self.chains
        for s in specs:
            if not s.is_chain:
                raise s.error(metanet)
        edges = self.chain_edge
        cached = self.__dict__.get("_chain_groups")
        if cached is not None and cached[0] == edges.device:
            return cached[1]
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(specs):
            groups.setdefault(s.shapes, []).append(i)
        sizes = [s.num_params for s in specs]
        out = []
        if len(groups) == 1:
            idx = torch.arange(len(specs), device=edges.device)
            out.append(ChainGroup(idx, specs[0], edges.view(len(specs), sizes[0])))
        else:
            starts = [0]
            for n in sizes[:-1]:
                starts.append(starts[-1] + n)
            for members in groups.values():
                rows = torch.stack([edges[starts[i] : starts[i] + sizes[i]] for i in members])
                out.append(ChainGroup(torch.tensor(members, device=edges.device), specs[members[0]], rows))
        self.__dict__["_chain_groups"] = (edges.device, out)
        return out


class _BatchMeta(type(Batch), type(WeightSpaceData)):
    """Batch's metaclass (torch_geometric's dynamic inheritance) combined with Data's (ABCMeta)."""


class WeightSpaceBatch(Batch, WeightSpaceData, metaclass=_BatchMeta):
    """A batch of :class:`WeightSpaceData` (graphs of any architectures): what every metanet takes.

    ``WeightSpaceBatch.from_data_list(datas)`` builds one; :meth:`from_graphs` builds the data too. A plain
    ``torch_geometric.data.Batch.from_data_list(datas)`` has the same attributes and methods (inherited from
    :class:`WeightSpaceData`), so metanets accept it as well.

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> b = WeightSpaceBatch.from_graphs([g, g])
    >>> isinstance(b, WeightSpaceBatch), b.num_graphs, tuple(b.chain_groups()[0].edges.shape)
    (True, 2, (2, 13))
    """

    @classmethod
    def from_graphs(cls, graphs: Sequence[NeuralGraph], **kwargs: Any) -> WeightSpaceBatch:
        """:func:`gmn.graph_to_data` of every graph (``kwargs``: its options), batched."""
        from .data import graph_to_data

        return cls.from_data_list([graph_to_data(g, **kwargs) for g in graphs])


def weight_space_loader(
    datas: Sequence[WeightSpaceData], batch_size: int = 32, shuffle: bool = False, **kwargs: Any
) -> torch.utils.data.DataLoader:
    """A ``torch.utils.data.DataLoader`` yielding :class:`WeightSpaceBatch` (shuffles as torch_geometric's does).

    >>> import torch.nn as nn, symgraph, gmn
    >>> d = gmn.graph_to_data(symgraph.parameter_graph(nn.Linear(2, 1)))
    >>> [b.num_graphs for b in weight_space_loader([d, d, d], batch_size=2)]
    [2, 1]
    """
    return torch.utils.data.DataLoader(
        list(datas), batch_size=batch_size, shuffle=shuffle, collate_fn=WeightSpaceBatch.from_data_list, **kwargs
    )
