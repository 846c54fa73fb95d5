"""Computation graphs (paper Sec. 2.1.1, appendix C.1) and their evaluator (Eq. 7).

A computation graph has **one node per scalar neuron**: every input scalar (``C*H*W`` nodes for an image),
every output scalar of a linear or convolutional layer (one node per channel *and* spatial position), one bias
node per layer (activation 1), plus parameter-free nodes for residual sums, average pooling and elementwise
ops whose input is also used elsewhere. Edges carry weight values; a parameter scalar appears on *every* edge
that uses it (a convolution weight on one edge per spatial position), and the per-edge array ``edge_class``
records which parameter scalar that is (the weight-sharing partition ``S`` of appendix C.1). Parameter-free
edges (residual: 1 or -1, average pooling: 1/P, identity: 1) are constants, ``edge_class == -1``.

Edge colours are *structural* (layer kind, kernel position, residual/pooling constant), the same keys as the
parameter graph's where the layer exists there. They deliberately do **not** encode the weight-sharing class:
an automorphism must map classes onto classes (C.2, property 3), not fix each class. Colouring edges by class
would make every colour-preserving automorphism fix every weight, i.e. kill the hidden-neuron symmetries of an
MLP. Property 3 is checked by :meth:`ComputationGraph.respects_weight_sharing` (and hence by
``is_automorphism``), and :meth:`ComputationGraph.sharing_graph` builds a plain coloured graph (shared edges
subdivided and tied to one node per class) whose automorphisms are exactly the neural DAG automorphisms, for
nauty.

Node colours are ``(role, kind, activations)`` with role input/hidden/output/bias, as in the parameter graph.
``activations`` is the chain of elementwise ops applied to the node's pre-activation, in order (SIREN:
``("mul(30.0)", "sin")``); constants are written with ``repr`` so that the evaluator is exact. Eq. 7 has no
nonlinearity on output nodes; here a node's chain applies whatever its role (a model ending in a sigmoid).

Node ids are sorted by topological level (``node_layer``): level 0 holds the input nodes (ids ``0..d_in-1``,
in the row-major order of one input sample) and the bias nodes; every edge goes from a lower to a higher level.
The evaluator (Eq. 7) therefore runs one sparse matmul per level. Output nodes are listed in output order by
``output_index`` (ascending ids for the usual models, but not after a transpose).

Example
-------
>>> import torch, torch.nn as nn, symgraph
>>> model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double()
>>> x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
>>> cg = symgraph.computation_graph(model, x)
>>> cg.num_nodes, cg.num_edges   # 16 in + 8 conv + 3 out + 2 bias; 2*4*4 + 8 + 3*8 + 3
(29, 67)
>>> bool((cg(x) - model(x)).abs().max() < 1e-12)
True
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import (
    ACTIVATION_MODULES,
    activation_for_target,
    activation_function,
    constant_op_key,
    module_activation_key,
)
from .errors import ShapeMismatchError, SymgraphError, UnsupportedModuleError
from .graph import NeuralGraph, NodeGroup, ParamSlot
from .trace import ModelSpec, OpSpec, Ref, trace_model

__all__ = [
    "ComputationGraph",
    "SharedEdgeParamIndex",
    "computation_graph",
    "activation_function",
]

_ROLES = ("input", "hidden", "output", "bias")


# ====================================================================== the graph object
class SharedEdgeParamIndex:
    """Edge -> (parameter, flat index) for computation graphs, where one parameter sits on many edges.

    Duck-types :class:`symgraph.graph.EdgeParamIndex`: ``lookup(edges)`` gives (slot index or -1, flat index
    or -1) vectorised, ``index[e]`` gives ``(name, flat)`` or ``None`` for a constant edge.
    """

    def __init__(self, slots: tuple[ParamSlot, ...], edge_class: torch.Tensor):
        self.slots = tuple(s for s in slots if s.location == "shared")
        self.edge_class = edge_class
        self.num_edges = int(edge_class.numel())
        self._starts = torch.tensor([s.start for s in self.slots], dtype=torch.long)
        self._by_name = {s.name: i for i, s in enumerate(self.slots)}

    def __len__(self) -> int:
        return self.num_edges

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def lookup(self, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.edge_class[torch.as_tensor(edges, dtype=torch.long)]
        if len(self.slots) == 0:
            neg = torch.full_like(cls, -1)
            return neg, neg.clone()
        slot = (torch.searchsorted(self._starts, cls, right=True) - 1).clamp(min=0)
        flat = cls - self._starts[slot]
        const = cls < 0
        return slot.masked_fill(const, -1), flat.masked_fill(const, -1)

    def __getitem__(self, edge: int) -> tuple[str, int] | None:
        slot, flat = self.lookup(torch.tensor([int(edge)]))
        return None if int(slot) < 0 else (self.slots[int(slot)].name, int(flat))

    def edges_of(self, name: str) -> torch.Tensor:
        """All edge ids carrying some scalar of parameter ``name`` (a tensor: they are not contiguous)."""
        s = self.slots[self._by_name[name]]
        return ((self.edge_class >= s.start) & (self.edge_class < s.start + s.numel)).nonzero().flatten()

    def has_param(self) -> torch.Tensor:
        return self.edge_class >= 0

    @property
    def nbytes(self) -> int:
        return int(self.edge_class.nbytes + self._starts.nbytes)

    def __repr__(self) -> str:
        return f"SharedEdgeParamIndex({len(self.slots)} parameters over {self.num_edges} edges)"


@dataclass(repr=False, eq=False)
class ComputationGraph(NeuralGraph):
    """A computation graph (appendix C.1): a :class:`NeuralGraph` with ``kind="computation"`` plus:

    Attributes
    ----------
    edge_class : LongTensor [E]
        Weight-sharing class of each edge: the global index of the parameter scalar it carries, i.e.
        ``slot.start + flat`` for the slot (``location="shared"``) of its parameter; ``-1`` on constant edges.
        ``edge_param[e]`` gives ``(name, flat)``.
    input_index, output_index : LongTensor
        Node ids of one input sample / output sample, shaped like it (``input_shape[1:]``, ``output_shape[1:]``).
    param_node : LongTensor [N] or None
        The map to the parameter graph ``parameter_graph`` (paper C.5): neuron (channel c, position p) ->
        channel node c, bias node -> the layer's bias node, input scalar -> its input node; -1 where unmapped.
    param_edge : LongTensor [E] or None
        Image edge id in the parameter graph, -1 for edges contracted onto one node (average pooling).
    """

    edge_class: torch.Tensor | None = None
    input_index: torch.Tensor | None = None
    output_index: torch.Tensor | None = None
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    param_node: torch.Tensor | None = None
    param_edge: torch.Tensor | None = None
    parameter_graph: NeuralGraph | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def edge_param(self) -> SharedEdgeParamIndex:  # type: ignore[override]
        idx = self.__dict__.get("_shared_edge_param")
        if idx is None:
            idx = SharedEdgeParamIndex(self.slots, self.edge_class)
            self.__dict__["_shared_edge_param"] = idx
        return idx

    @property
    def num_classes(self) -> int:
        """Number of weight-sharing classes that occur on edges (distinct parameter scalars used)."""
        return int(torch.unique(self.edge_class[self.edge_class >= 0]).numel())

    @property
    def num_parameters(self) -> int:
        return sum(s.numel for s in self.slots if s.location == "shared")

    def class_sizes(self) -> torch.Tensor:
        """LongTensor [num_parameters]: on how many edges each parameter scalar sits (0: never used)."""
        cls = self.edge_class[self.edge_class >= 0]
        return torch.bincount(cls, minlength=self.num_parameters)

    def to_state_dict(
        self, edge_weight: torch.Tensor | None = None, node_weight: torch.Tensor | None = None, check: bool = True
    ):
        """The model's state dict read back from the edges (one representative edge per class).

        Parameter scalars that sit on no edge (kernel taps that only ever meet padding) keep their values from
        build time. With ``check``, raises ``ValueError`` if the edges of a class disagree.
        """
        ew = self.edge_weight if edge_weight is None else edge_weight
        if ew.shape[0] != self.num_edges:
            raise ShapeMismatchError(f"edge_weight of length {self.num_edges}", f"{tuple(ew.shape)}")
        mask = self.edge_class >= 0
        cls, val = self.edge_class[mask], ew[mask].detach()
        total = self.num_parameters
        lo = torch.full((total,), math.inf, dtype=torch.float64).scatter_reduce(0, cls, val.double(), "amin")
        hi = torch.full((total,), -math.inf, dtype=torch.float64).scatter_reduce(0, cls, val.double(), "amax")
        if check and bool((lo[cls] != hi[cls]).any()):
            raise ValueError("Expected equal values on all edges of a weight-sharing class (got differing values)")
        rep = torch.zeros(total, dtype=val.dtype)
        rep[cls] = val
        used = torch.zeros(total, dtype=torch.bool)
        used[cls] = True
        out: dict[str, torch.Tensor] = {}
        for name in self.state_keys:
            s = next(t for t in self.slots if t.name == name)
            if s.location != "shared":
                out[name] = self.extras[name].clone()
                continue
            base = self.extras[name].reshape(-1).clone()
            sl = slice(s.start, s.start + s.numel)
            base[used[sl]] = rep[sl][used[sl]].to(base.dtype)
            out[name] = base.reshape(s.shape)
        return OrderedDict(out)

    def with_weights(self, edge_weight: torch.Tensor | None = None, node_weight: torch.Tensor | None = None):
        """A computation graph of the same structure with other edge (or node) weights."""
        changes = {}
        if edge_weight is not None:
            changes["edge_weight"] = edge_weight
        if node_weight is not None:
            changes["node_weight"] = node_weight
        new = dataclasses.replace(self, **changes)
        if "_eval_plan" in self.__dict__ and node_weight is None:  # the plan depends on the structure only
            new.__dict__["_eval_plan"] = self.__dict__["_eval_plan"]
        return new

    # ------------------------------------------------------------------ automorphisms
    def respects_weight_sharing(self, perm: torch.Tensor) -> bool:
        """Paper C.2 property 3: the induced edge permutation maps weight-sharing classes onto classes.

        ``perm`` must preserve the coloured edge set (else ``False``). Checked both ways, so that the class map
        is a bijection and ``Phi(theta)`` is again a valid tied parameter vector.
        """
        try:
            eperm = self.edge_permutation(perm)
        except ValueError:
            return False
        src_c = self.edge_class
        dst_c = self.edge_class[eperm]
        if not torch.equal(src_c >= 0, dst_c >= 0):
            return False
        m = src_c >= 0
        return _is_function(src_c[m], dst_c[m], self.num_parameters) and _is_function(
            dst_c[m], src_c[m], self.num_parameters
        )

    def is_automorphism(self, perm: torch.Tensor) -> bool:
        """A neural DAG automorphism (C.2): edges, colours, fixed nodes *and* weight sharing preserved."""
        return super().is_automorphism(perm) and self.respects_weight_sharing(perm)

    def sharing_graph(self) -> NeuralGraph:
        """A plain coloured graph whose automorphisms, restricted to the first ``num_nodes`` nodes, are the
        neural DAG automorphisms of this computation graph (weight sharing included), for nauty.

        Every edge of a class used more than once becomes a path ``src -> m_e -> dst`` through a new node
        ``m_e`` (role hidden, colour from the edge colour), and a class node (role ``group``, coloured by its
        parameter) points to the ``m_e`` of its edges: an automorphism must then map classes to classes.
        Edges of singleton classes and constant edges stay direct. ``meta["num_original_nodes"]`` is ``N``,
        ``meta["edge_node"]`` [E] the subdivision node of each edge (-1 if direct), ``meta["class_node"]``
        [num_parameters] the class node of each parameter scalar (-1 if none).

        Example
        -------
        >>> import torch, torch.nn as nn, symgraph
        >>> cg = symgraph.computation_graph(nn.Sequential(nn.Conv1d(1, 2, 2)), torch.zeros(1, 1, 3))
        >>> cg.sharing_graph().num_nodes   # 8 neurons; 6 shared classes (4 weights, 2 biases) on 12 edges
        26
        """
        cached = self.__dict__.get("_sharing_graph")
        if cached is not None:
            return cached
        N, E = self.num_nodes, self.num_edges
        sizes = self.class_sizes()
        cls = self.edge_class
        shared = (cls >= 0) & (sizes[cls.clamp(min=0)] > 1)
        shared_classes = (sizes > 1).nonzero().flatten()
        n_edge_nodes, n_class = int(shared.sum()), int(shared_classes.numel())
        edge_node = torch.full((E,), -1, dtype=torch.long)
        edge_node[shared] = N + torch.arange(n_edge_nodes)
        class_node = torch.full((self.num_parameters,), -1, dtype=torch.long)
        class_node[shared_classes] = N + n_edge_nodes + torch.arange(n_class)
        # node colours: originals keep theirs; edge nodes by edge colour; class nodes by parameter name
        ncol_keys = list(self.node_color_keys)
        ecol_keys = list(self.edge_color_keys)
        ecol = self.edge_color.long()
        used_ecols = torch.unique(ecol[shared]).tolist()
        lut = torch.full((len(ecol_keys),), -1, dtype=torch.long)
        for c in used_ecols:
            lut[c] = len(ncol_keys)
            ncol_keys.append(("hidden", "shared edge", (), ecol_keys[c]))
        slot_lut = torch.full((len(self.edge_param.slots),), -1, dtype=torch.long)
        cls_slot = torch.zeros(self.num_parameters, dtype=torch.long)
        for i, s in enumerate(self.edge_param.slots):
            cls_slot[s.start : s.start + s.numel] = i
        for i in torch.unique(cls_slot[shared_classes]).tolist():
            slot_lut[i] = len(ncol_keys)
            ncol_keys.append(("group", "weight class", (), self.edge_param.slots[i].name))
        node_color = torch.cat([self.node_color, lut[ecol[shared]], slot_lut[cls_slot[shared_classes]]])
        k_in, k_out, k_cls = (len(ecol_keys), len(ecol_keys) + 1, len(ecol_keys) + 2)
        ecol_keys += [("shared", "in"), ("shared", "out"), ("shared", "class")]
        src, dst = self.edge_index
        m = edge_node[shared]
        edge_index = torch.cat(
            [
                self.edge_index[:, ~shared],
                torch.stack([src[shared], m]),
                torch.stack([m, dst[shared]]),
                torch.stack([class_node[cls[shared]], m]),
            ],
            1,
        )
        ones = torch.ones(n_edge_nodes, dtype=torch.int32)
        edge_color = torch.cat([self.edge_color[~shared], ones * k_in, ones * k_out, ones * k_cls])
        edge_weight = torch.cat(
            [
                self.edge_weight[~shared],
                self.edge_weight[shared],
                torch.ones(2 * n_edge_nodes, dtype=self.edge_weight.dtype),
            ]
        )
        lvl = self.node_layer
        node_layer = torch.cat([lvl, lvl[src[shared]], torch.zeros(n_class, dtype=torch.long)])
        groups = tuple(self.node_groups)
        if n_edge_nodes:
            groups += (NodeGroup("shared edge nodes", "hidden", N, n_edge_nodes, "", "shared edge"),)
        if n_class:
            groups += (NodeGroup("weight-sharing classes", "group", N + n_edge_nodes, n_class, "", "weight class"),)
        total = N + n_edge_nodes + n_class
        sg = NeuralGraph(
            edge_index=edge_index,
            edge_weight=edge_weight,
            edge_color=edge_color,
            node_color=node_color,
            node_weight=torch.zeros((total, 1), dtype=self.node_weight.dtype),
            node_layer=node_layer,
            edge_color_keys=tuple(ecol_keys),
            node_color_keys=tuple(ncol_keys),
            node_groups=groups,
            slots=(),
            state_keys=(),
            kind="computation-sharing",
            meta={"num_original_nodes": N, "edge_node": edge_node, "class_node": class_node},
        )
        self.__dict__["_sharing_graph"] = sg
        return sg

    def lift_to_sharing_graph(self, perm: torch.Tensor) -> torch.Tensor:
        """Extend a neural DAG automorphism of this graph to its :meth:`sharing_graph` (edge and class nodes).

        Raises ``ValueError`` if ``perm`` is not an automorphism (weight sharing included).
        """
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not self.is_automorphism(perm):
            raise ValueError("not a neural DAG automorphism of this computation graph")
        sg_meta = self.sharing_graph().meta
        edge_node, class_node = sg_meta["edge_node"], sg_meta["class_node"]
        eperm = self.edge_permutation(perm)
        total = self.num_nodes + int((edge_node >= 0).sum()) + int((class_node >= 0).sum())
        out = torch.arange(total)
        out[: self.num_nodes] = perm
        sh = edge_node >= 0
        out[edge_node[sh]] = edge_node[eperm[sh]]
        out[class_node[self.edge_class[sh]]] = class_node[self.edge_class[eperm[sh]]]
        return out

    # ------------------------------------------------------------------ parameter-graph map (C.5)
    def to_parameter_graph_map(self) -> tuple[torch.Tensor, torch.Tensor, NeuralGraph]:
        """``(param_node [N], param_edge [E], parameter_graph)``: the homomorphism of paper C.5."""
        if self.param_node is None or self.parameter_graph is None:
            raise SymgraphError(
                "no parameter-graph map: built with parameter_map=False or the parameter graph failed "
                f"({self.meta.get('parameter_map_error')})"
            )
        return self.param_node, self.param_edge, self.parameter_graph

    def is_parameter_graph_homomorphism(self, param_node: torch.Tensor | None = None) -> bool:
        """Does ``param_node`` (default: the stored map) map every parameter edge onto the parameter-graph edge
        holding the same parameter scalar, every residual/identity edge onto an edge of the same colour key, and
        every averaging edge (contracted) onto a single node?"""
        pn = self.param_node if param_node is None else torch.as_tensor(param_node, dtype=torch.long)
        pg = self.parameter_graph
        if pn is None or pg is None or pn.shape != (self.num_nodes,) or bool((pn < 0).any()):
            return False
        src, dst = pn[self.edge_index[0]], pn[self.edge_index[1]]
        has = self.edge_class >= 0
        pe = _param_graph_edge_of_class(self, pg)
        ok_param = (
            (pe[has] >= 0).all()
            and torch.equal(pg.edge_index[0, pe[has]], src[has])
            and torch.equal(pg.edge_index[1, pe[has]], dst[has])
        )
        if not ok_param:
            return False
        const = ~has
        kinds = [k[0] for k in self.edge_color_keys]
        pooled = torch.tensor([k in ("avgpool", "mean", "sum") for k in kinds], dtype=torch.bool)
        pooled = pooled[self.edge_color.long()]
        contracted = const & pooled
        if not torch.equal(src[contracted], dst[contracted]):
            return False
        rest = const & ~pooled
        img = _find_edges(pg, src[rest], dst[rest], [self.edge_color_keys[c] for c in self.edge_color[rest].tolist()])
        return bool((img >= 0).all())

    # ------------------------------------------------------------------ evaluation (Eq. 7)
    def _plan(self) -> dict:
        plan = self.__dict__.get("_eval_plan")
        if plan is not None:
            return plan
        lvl = self.node_layer
        L = int(lvl.max()) if lvl.numel() else 0
        ptr = torch.searchsorted(lvl, torch.arange(L + 2))
        src, dst = self.edge_index
        order = torch.argsort(dst, stable=True)
        eptr = torch.searchsorted(dst[order], ptr)
        acts = [tuple(k[2]) for k in self.node_color_keys]
        levels = []
        for ell in range(1, L + 1):
            lo, hi = int(ptr[ell]), int(ptr[ell + 1])
            eids = order[int(eptr[ell]) : int(eptr[ell + 1])]
            rows, cols = dst[eids] - lo, src[eids]
            if bool((cols >= lo).any()):
                raise SymgraphError("internal: an edge does not go from a lower to a higher level")
            colors = self.node_color[lo:hi]
            groups = []
            for c in torch.unique(colors).tolist():
                if acts[c]:
                    idx = (colors == c).nonzero().flatten()
                    groups.append((None if idx.numel() == hi - lo else idx, [activation_function(a) for a in acts[c]]))
            levels.append((lo, hi, eids, torch.stack([rows, cols]), groups))
        n0 = int(ptr[1])
        n_in = int(self.input_index.numel())
        if not torch.equal(self.input_index.reshape(-1), torch.arange(n_in)) or not bool(
            self.role_mask("bias")[n_in:n0].all()
        ):
            raise SymgraphError("internal: level 0 must hold the input nodes (first) and the bias nodes only")
        plan = {"levels": levels, "n0": n0, "n_in": n_in}
        self.__dict__["_eval_plan"] = plan
        return plan

    def activations(self, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        """All node activations ``h_i(x)`` of Eq. 7, shape [B, N] (differentiable in ``edge_weight``)."""
        plan = self._plan()
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ShapeMismatchError(
                f"an input of shape (B, {', '.join(map(str, self.input_shape[1:]))})", f"{tuple(x.shape)}"
            )
        ew = self.edge_weight if edge_weight is None else torch.as_tensor(edge_weight)
        if ew.shape != (self.num_edges,):
            raise ShapeMismatchError(f"edge_weight of shape ({self.num_edges},)", f"{tuple(ew.shape)}")
        dtype = torch.promote_types(ew.dtype, x.dtype) if x.is_floating_point() else ew.dtype
        B = x.shape[0]
        ew = ew.to(dtype=dtype, device=x.device)
        h = torch.cat(
            [x.reshape(B, -1).T.to(dtype), torch.ones(plan["n0"] - plan["n_in"], B, dtype=dtype, device=x.device)]
        )
        for lo, hi, eids, idx, groups in plan["levels"]:
            a = torch.sparse_coo_tensor(idx.to(x.device), ew[eids.to(x.device)], (hi - lo, lo), check_invariants=False)
            z = torch.sparse.mm(a, h)
            for rows, fns in groups:
                if rows is None:
                    for f in fns:
                        z = f(z)
                else:
                    rows = rows.to(x.device)
                    v = z[rows]
                    for f in fns:
                        v = f(v)
                    z = z.index_copy(0, rows, v)
            h = torch.cat([h, z])
        return h.T

    def evaluate(self, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 7/8: the network function on a batch ``x`` [B, *input_shape[1:]], optionally with substituted
        per-edge weights; returns [B, *output_shape[1:]].

        Example
        -------
        >>> import torch, torch.nn as nn, symgraph
        >>> m = nn.Linear(3, 2).double(); x = torch.randn(4, 3, dtype=torch.float64)
        >>> cg = symgraph.computation_graph(m, x)
        >>> bool(torch.allclose(cg.evaluate(x), m(x)))
        True
        """
        h = self.activations(x, edge_weight)
        return h[:, self.output_index.reshape(-1).to(h.device)].reshape(h.shape[0], *self.output_shape[1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluate(x)

    def __repr__(self) -> str:
        return (
            f"ComputationGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"parameters={self.num_parameters}, classes={self.num_classes}, "
            f"input_shape={tuple(self.input_shape)}, output_shape={tuple(self.output_shape)})"
        )


def _is_function(a: torch.Tensor, b: torch.Tensor, n: int) -> bool:
    """Is ``a[i] -> b[i]`` a well-defined function on the values of ``a`` (all ``b`` of one ``a`` equal)?"""
    if a.numel() == 0:
        return True
    big = torch.iinfo(torch.long).max
    lo = torch.full((n,), big, dtype=torch.long).scatter_reduce(0, a, b, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, a, b, "amax")
    return bool((lo[a] == hi[a]).all())


def _param_graph_edge_of_class(cg: ComputationGraph, pg: NeuralGraph) -> torch.Tensor:
    """For every computation edge, the parameter-graph edge holding the same parameter scalar (or -1)."""
    out = torch.full((cg.num_edges,), -1, dtype=torch.long)
    pslots = {s.name: s for s in pg.slots if s.location == "edge"}
    slot, flat = cg.edge_param.lookup(torch.arange(cg.num_edges))
    starts = torch.tensor(
        [pslots[s.name].start if s.name in pslots else -1 for s in cg.edge_param.slots] + [-1], dtype=torch.long
    )
    st = starts[slot]  # slot -1 -> the trailing -1
    ok = (slot >= 0) & (st >= 0)
    out[ok] = st[ok] + flat[ok]
    return out


def _find_edges(pg: NeuralGraph, src: torch.Tensor, dst: torch.Tensor, keys: list[tuple]) -> torch.Tensor:
    """Ids of parameter-graph edges (src, dst, colour key), -1 where there is none."""
    out = torch.full((src.numel(),), -1, dtype=torch.long)
    if src.numel() == 0:
        return out
    key_id = {k: i for i, k in enumerate(pg.edge_color_keys)}
    col = torch.tensor([key_id.get(k, -1) for k in keys], dtype=torch.long)
    n, c = pg.num_nodes, max(len(pg.edge_color_keys), 1)
    pkeys = pg.edge_keys()
    order = torch.argsort(pkeys)
    sk = pkeys[order]
    q = (src * n + dst) * c + col.clamp(min=0)
    pos = torch.searchsorted(sk, q).clamp(max=max(sk.numel() - 1, 0))
    hit = (col >= 0) & (src >= 0) & (dst >= 0) & (sk.numel() > 0) & (sk[pos] == q)
    out[hit] = order[pos[hit]]
    return out


# ====================================================================== construction
@dataclass(frozen=True)
class _Val:
    """A traced tensor in the computation graph: node ids shaped like one sample (batch dim dropped)."""

    nodes: torch.Tensor
    owned: bool = False  # nodes made for this value alone and read by nobody else: an activation may go in place


@dataclass(frozen=True)
class _Attr:
    name: str
    tensor: Any


@dataclass
class _Block:
    start: int
    count: int
    role: str
    kind: str
    name: str
    module: str
    level: int


class _Builder:
    """Accumulates node blocks and edge chunks (all tensor ops; no per-edge Python)."""

    def __init__(self, model: nn.Module):
        self.blocks: list[_Block] = []
        self.num_nodes = 0
        self.role = torch.zeros(0, dtype=torch.long)
        self.act = torch.zeros(0, dtype=torch.long)
        self.act_keys: list[tuple] = [()]
        self.block_starts: list[int] = []
        self.edges: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.color_ids: dict[tuple, int] = {}
        state = model.state_dict(keep_vars=True)
        self.state = state
        self.offsets: dict[str, int] = {}
        off = 0
        params = dict(model.named_parameters(remove_duplicate=True))
        self.param_ids = {id(p): n for n, p in params.items()}
        for k, v in state.items():
            if v.is_floating_point():
                self.offsets[k] = off
                off += v.numel()
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())

    # -------------------------------------------------------------- nodes
    def add_nodes(self, count: int, role: str, kind: str, name: str, module: str, sources: torch.Tensor | None):
        if count <= 0:
            raise ShapeMismatchError(f"a positive number of neurons for '{name}'", str(count))
        level = 0 if sources is None or sources.numel() == 0 else self.level_of(sources) + 1
        start = self.num_nodes
        self.blocks.append(_Block(start, count, role, kind, name, module, level))
        self.block_starts.append(start)
        self.num_nodes += count
        self.role = torch.cat([self.role, torch.full((count,), _ROLES.index(role), dtype=torch.long)])
        self.act = torch.cat([self.act, torch.zeros(count, dtype=torch.long)])
        return torch.arange(start, start + count)

    def level_of(self, nodes: torch.Tensor) -> int:
        starts = torch.tensor(self.block_starts, dtype=torch.long)
        levels = torch.tensor([b.level for b in self.blocks], dtype=torch.long)
        blk = torch.searchsorted(starts, torch.unique(nodes), right=True) - 1
        return int(levels[blk].max())

    def add_activation(self, nodes: torch.Tensor, act: str) -> None:
        nodes = torch.unique(nodes)
        old = torch.unique(self.act[nodes])
        lut = torch.arange(len(self.act_keys))
        lut_list = lut.tolist()
        for o in old.tolist():
            key = self.act_keys[o] + (act,)
            if key not in self.act_keys:
                self.act_keys.append(key)
            lut_list[o] = self.act_keys.index(key)
        self.act[nodes] = torch.tensor(lut_list, dtype=torch.long)[self.act[nodes]]

    # -------------------------------------------------------------- edges
    def color(self, key: tuple) -> int:
        return self.color_ids.setdefault(key, len(self.color_ids))

    def add_param_edges(self, src, dst, color, name: str, param: torch.Tensor, flat: torch.Tensor) -> None:
        """Edges carrying ``param.flatten()[flat]``; ``color`` an id or per-edge ids."""
        col = torch.as_tensor(color, dtype=torch.int32).expand(src.shape).reshape(-1).clone()
        src, dst, flat = src.reshape(-1), dst.reshape(-1), flat.reshape(-1)
        if name not in self.offsets:
            raise UnsupportedModuleError(name, "a weight that is not a floating-point entry of the state dict")
        w = param.detach().reshape(-1)[flat].to(self.dtype)
        self.edges.append((src, dst, col, w, flat + self.offsets[name]))

    def add_const_edges(self, src, dst, key: tuple, value) -> None:
        src, dst = src.reshape(-1), dst.reshape(-1)
        w = torch.as_tensor(value, dtype=self.dtype).expand(src.shape).clone()
        col = torch.full(src.shape, self.color(key), dtype=torch.int32)
        self.edges.append((src, dst, col, w, torch.full(src.shape, -1, dtype=torch.long)))

    def param_name(self, module_path: str, attr: str) -> str:
        return f"{module_path}.{attr}" if module_path else attr


def _resolve(vals: dict, a):
    if isinstance(a, Ref):
        return vals[a.name]
    if isinstance(a, tuple | list):
        return type(a)(_resolve(vals, x) for x in a)
    if isinstance(a, slice):
        return slice(_resolve(vals, a.start), _resolve(vals, a.stop), _resolve(vals, a.step))
    return a


def _where(op: OpSpec) -> str:
    return f"'{op.target}'" if op.op == "call_module" else f"op '{op.name}' ({op.describe()})"


def _val(x, op: OpSpec) -> _Val:
    if not isinstance(x, _Val):
        raise UnsupportedModuleError(op.name, f"{_where(op)} on a {type(x).__name__}, not a traced tensor")
    return x


def _out_shape(op: OpSpec) -> tuple[int, ...]:
    if op.shape is None:
        raise ShapeMismatchError("a tensor result with a known shape", "none", _where(op))
    return tuple(op.shape[1:])


# -------------------------------------------------------------- layers
def _linear(b: _Builder, op: OpSpec, x: _Val, weight, bias, wname: str, bname: str | None, module: str) -> _Val:
    n_out, n_in = weight.shape
    if x.nodes.dim() == 0 or x.nodes.shape[-1] != n_in:
        raise ShapeMismatchError(f"{n_in} input features on the last axis", f"shape {tuple(x.nodes.shape)}", _where(op))
    lead = tuple(x.nodes.shape[:-1])
    R = math.prod(lead)
    out = b.add_nodes(R * n_out, "hidden", "linear", f"{module or wname} outputs", module, x.nodes).view(R, n_out)
    src = x.nodes.reshape(R, 1, n_in).expand(R, n_out, n_in)
    dst = out.view(R, n_out, 1).expand(R, n_out, n_in)
    flat = torch.arange(n_out * n_in).view(1, n_out, n_in).expand(R, n_out, n_in)
    b.add_param_edges(src, dst, b.color(("linear",)), wname, weight, flat)
    if bias is not None:
        _bias(b, out, bias, bname, "linear", module, torch.arange(n_out).repeat(R))
    return _Val(out.reshape(*lead, n_out), owned=op.num_users == 1)


def _bias(b: _Builder, out: torch.Tensor, bias, bname: str, kind: str, module: str, flat: torch.Tensor) -> None:
    """One bias node per layer (activation 1, Eq. 7) with an edge to every neuron of the layer."""
    bnode = b.add_nodes(1, "bias", kind, f"{module or bname} bias", module, None)
    b.add_param_edges(bnode.expand(out.numel()), out.reshape(-1), b.color(("bias", kind)), bname, bias, flat)


def _combine(coords: list[torch.Tensor], valid: list[torch.Tensor], in_sizes: tuple[int, ...]):
    """Per-dim [O_d, K_d] input coordinates and validity -> flat [O, K] input positions and validity.

    Position and kernel orders are row-major over the dims, which matches the flat order of a conv weight's
    kernel axes and of the output's spatial axes.
    """
    n = len(coords)
    strides = [math.prod(in_sizes[d + 1 :]) for d in range(n)]
    pos = torch.zeros([1] * (2 * n), dtype=torch.long)
    ok = torch.ones([1] * (2 * n), dtype=torch.bool)
    for d in range(n):
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = coords[d].shape
        pos = pos + coords[d].clamp(0, in_sizes[d] - 1).view(shape) * strides[d]
        ok = ok & valid[d].view(shape)
    O = math.prod(c.shape[0] for c in coords)
    K = math.prod(c.shape[1] for c in coords)
    pos, ok = torch.broadcast_tensors(pos, ok)
    return pos.reshape(O, K), ok.reshape(O, K)


def _window_coords(S: int, O: int, k: int, stride: int, pad: int, dil: int, mode: str = "zeros"):
    c = torch.arange(O).view(O, 1) * stride - pad + torch.arange(k).view(1, k) * dil
    if mode == "zeros":
        return c, (c >= 0) & (c < S)
    if mode == "circular":
        return c.remainder(S), torch.ones_like(c, dtype=torch.bool)
    if mode == "replicate":
        return c.clamp(0, S - 1), torch.ones_like(c, dtype=torch.bool)
    if mode == "reflect":
        if S == 1:
            return torch.zeros_like(c), torch.ones_like(c, dtype=torch.bool)
        period = 2 * (S - 1)
        r = c.remainder(period)
        return torch.where(r < S, r, period - r), torch.ones_like(c, dtype=torch.bool)
    raise UnsupportedModuleError("", f"padding mode '{mode}'")


def _conv(b: _Builder, op: OpSpec, m: Any, x: _Val, path: str) -> _Val:
    """A convolution ``m`` (an nn.ConvNd or a namespace with the same attributes, for F.convNd)."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedModuleError(op.target, "transposed convolutions have no computation-graph builder yet")
    nd = len(m.kernel_size)
    w = m.weight
    c_out, cin_g = w.shape[:2]
    G = m.groups
    if x.nodes.dim() != nd + 1 or x.nodes.shape[0] != cin_g * G:
        raise ShapeMismatchError(
            f"a ({cin_g * G}, <{nd} spatial dims>) input per sample", f"{tuple(x.nodes.shape)}", _where(op)
        )
    S = tuple(x.nodes.shape[1:])
    O = _out_shape(op)[1:]
    if isinstance(m.padding, str):
        pads = [0 if m.padding == "valid" else m.dilation[d] * (m.kernel_size[d] - 1) // 2 for d in range(nd)]
    else:
        pads = list(m.padding)
    coords, valid = zip(
        *[
            _window_coords(S[d], O[d], m.kernel_size[d], m.stride[d], pads[d], m.dilation[d], m.padding_mode)
            for d in range(nd)
        ],
        strict=True,
    )
    pos, ok = _combine(list(coords), list(valid), S)
    K = pos.shape[1]
    q_idx, k_idx = ok.nonzero(as_tuple=True)  # valid (output position, kernel tap) pairs
    V = q_idx.numel()
    nO = math.prod(O)
    kind = f"conv{nd}d"
    out = b.add_nodes(c_out * nO, "hidden", kind, f"{path} outputs", path, x.nodes).view(c_out, nO)
    opg = c_out // G
    oc = torch.arange(c_out).view(c_out, 1, 1)
    ic = torch.arange(cin_g).view(1, cin_g, 1)
    in_nodes = x.nodes.reshape(cin_g * G, -1)
    src = in_nodes[(oc // opg) * cin_g + ic, pos[q_idx, k_idx].view(1, 1, V)]
    dst = out[oc, q_idx.view(1, 1, V)].expand(c_out, cin_g, V)
    flat = (oc * cin_g + ic) * K + k_idx.view(1, 1, V)
    pad_key = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    key = (kind, tuple(m.kernel_size), tuple(m.stride), pad_key, tuple(m.dilation), G, m.padding_mode)
    kpos = torch.cartesian_prod(*[torch.arange(k) for k in m.kernel_size]).view(K, nd).tolist()
    lut = torch.tensor([b.color(("conv", *key, tuple(k))) for k in kpos], dtype=torch.int32)
    b.add_param_edges(src, dst, lut[k_idx].view(1, 1, V).expand(c_out, cin_g, V), m.weight_name, w, flat)
    if m.bias is not None:
        _bias(b, out, m.bias, m.bias_name, kind, path, torch.arange(c_out).repeat_interleave(nO))
    return _Val(out.view(c_out, *O), owned=op.num_users == 1)


def _average(
    b: _Builder, op: OpSpec, x: _Val, nd: int, coords, valid, in_win, module: str, kind: str, divisor_override=None
) -> _Val:
    """Windowed averaging over the last ``nd`` axes: constant edges of weight 1/divisor (per output position).

    ``in_win`` [O, K] marks window entries inside the padded input (they count in the divisor when padding is
    included), ``valid`` entries inside the input (they get an edge).
    """
    lead = tuple(x.nodes.shape[:-nd])
    S = tuple(x.nodes.shape[-nd:])
    pos, ok = _combine(list(coords), list(valid), S)
    O = _out_shape(op)[len(lead) :]
    nO, R = math.prod(O), math.prod(lead)
    if divisor_override:
        div = torch.full((nO,), int(divisor_override), dtype=torch.long)
    else:
        div = in_win.sum(1)
    q_idx, k_idx = ok.nonzero(as_tuple=True)
    V = q_idx.numel()
    out = b.add_nodes(R * nO, "hidden", kind, f"{module or op.name} ({kind})", module, x.nodes).view(R, nO)
    src = x.nodes.reshape(R, -1)[:, pos[q_idx, k_idx]]
    dst = out[:, q_idx]
    d = div[q_idx].view(1, V).expand(R, V).reshape(-1)
    for dv in torch.unique(d).tolist():  # one colour per distinct constant (few)
        sel = d == dv
        b.add_const_edges(src.reshape(-1)[sel], dst.reshape(-1)[sel], ("avgpool", int(dv)), 1.0 / dv)
    return _Val(out.view(*lead, *O), owned=op.num_users == 1)


def _avg_pool(
    b: _Builder,
    op: OpSpec,
    x: _Val,
    nd: int,
    kernel,
    stride,
    padding,
    ceil_mode,
    include_pad,
    divisor_override,
    module: str,
) -> _Val:
    def tup(v):
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    kernel, padding = tup(kernel), tup(padding)
    stride = tup(stride) if stride not in (None, (), []) else kernel
    S = tuple(x.nodes.shape[-nd:])
    O = _out_shape(op)[-nd:]
    coords, valid, inwin = [], [], []
    for d in range(nd):
        c, v = _window_coords(S[d], O[d], kernel[d], stride[d], padding[d], 1)
        coords.append(c)
        valid.append(v)
        inwin.append(c < S[d] + padding[d])  # window entries past the padded input never count (ceil_mode)
    _, okp = _combine(coords, inwin, S)
    _, okv = _combine(coords, valid, S)
    return _average(b, op, x, nd, coords, valid, okp if include_pad else okv, module, "avgpool", divisor_override)


def _adaptive_avg_pool(b: _Builder, op: OpSpec, x: _Val, nd: int, module: str) -> _Val:
    S = tuple(x.nodes.shape[-nd:])
    O = _out_shape(op)[-nd:]
    coords, valid = [], []
    for d in range(nd):
        o = torch.arange(O[d])
        start = (o * S[d]) // O[d]
        end = ((o + 1) * S[d] + O[d] - 1) // O[d]
        kmax = int((end - start).max())
        c = start.view(-1, 1) + torch.arange(kmax).view(1, -1)
        coords.append(c)
        valid.append(c < end.view(-1, 1))
    _, ok = _combine(coords, valid, S)
    return _average(b, op, x, nd, coords, valid, ok, module, "avgpool")


def _reduce(b: _Builder, op: OpSpec, x: _Val, dims, keepdim: bool, mean: bool) -> _Val:
    rank = x.nodes.dim() + 1
    if dims is None:
        raise UnsupportedModuleError(op.name, "a reduction over all dims (it would mix the batch)")
    dims = sorted({d % rank for d in ((dims,) if isinstance(dims, int) else tuple(dims))})
    if 0 in dims:
        raise UnsupportedModuleError(op.name, "a reduction over the batch dim")
    red = [d - 1 for d in dims]
    keep = [d for d in range(x.nodes.dim()) if d not in red]
    t = x.nodes.permute(*keep, *red)
    Kp = math.prod(x.nodes.shape[d] for d in keep)
    R = math.prod(x.nodes.shape[d] for d in red)
    t = t.reshape(Kp, R)
    kind = "mean" if mean else "sum"
    out = b.add_nodes(Kp, "hidden", kind, f"{op.name} ({kind})", "", x.nodes)
    b.add_const_edges(t, out.view(Kp, 1).expand(Kp, R), ("mean", R) if mean else ("sum",), 1.0 / R if mean else 1.0)
    return _Val(out.reshape(_out_shape(op)), owned=op.num_users == 1)


def _elementwise(b: _Builder, op: OpSpec, x: _Val, act: str) -> _Val:
    """Record ``act`` on ``x``'s nodes in place when they are owned hidden nodes, else on new nodes."""
    if x.owned and bool((b.role[x.nodes] == _ROLES.index("hidden")).all()):
        b.add_activation(x.nodes, act)
        return _Val(x.nodes, owned=op.num_users == 1)
    uniq, inverse = torch.unique(x.nodes, return_inverse=True)
    new = b.add_nodes(uniq.numel(), "hidden", "act", f"{_where(op)} {act}", "", uniq)
    b.add_const_edges(uniq, new, ("identity", "elementwise"), 1.0)
    b.add_activation(new, act)
    return _Val(new[inverse], owned=op.num_users == 1)


def _add(b: _Builder, op: OpSpec, a, c, sub: bool) -> _Val:
    if isinstance(a, int | float) and isinstance(c, _Val):
        return _elementwise(b, op, c, constant_op_key("rsub" if sub else "add", a))
    if isinstance(c, int | float) and isinstance(a, _Val):
        return _elementwise(b, op, a, constant_op_key("sub" if sub else "add", c))
    if not (isinstance(a, _Val) and isinstance(c, _Val)):
        raise UnsupportedModuleError(op.name, "adding a parameter or buffer tensor (e.g. a positional embedding)")
    try:
        na, nc = torch.broadcast_tensors(a.nodes, c.nodes)
    except RuntimeError:
        raise ShapeMismatchError(
            f"operands that broadcast (got {tuple(a.nodes.shape)})", f"{tuple(c.nodes.shape)}", _where(op)
        ) from None
    if tuple(na.shape) != _out_shape(op):
        raise UnsupportedModuleError(op.name, "an addition that broadcasts over the batch dim")
    out = b.add_nodes(
        na.numel(),
        "hidden",
        "sum",
        f"{op.name} (residual sum)",
        "",
        torch.cat([a.nodes.reshape(-1), c.nodes.reshape(-1)]),
    )
    shared = bool(torch.isin(a.nodes, c.nodes).any())
    key_a = ("residual", 0) if shared else ("residual",)
    key_c = ("residual", "sub" if sub else 1) if (shared or sub) else ("residual",)
    b.add_const_edges(na, out, key_a, 1.0)
    b.add_const_edges(nc, out, key_c, -1.0 if sub else 1.0)
    return _Val(out.view(na.shape), owned=op.num_users == 1)


def _scale(b: _Builder, op: OpSpec, a, c, div: bool) -> _Val:
    if isinstance(a, _Val) and isinstance(c, int | float):
        return _elementwise(b, op, a, constant_op_key("div" if div else "mul", c))
    if isinstance(c, _Val) and isinstance(a, int | float):
        return _elementwise(b, op, c, constant_op_key("rdiv" if div else "mul", a))
    raise UnsupportedModuleError(op.name, "a product of two tensors (gating, attention) in a computation graph")


def _reshape(op: OpSpec, x: _Val, batch: int) -> _Val:
    shape = op.shape
    if shape is None or shape[0] != batch or math.prod(shape[1:]) != x.nodes.numel():
        raise UnsupportedModuleError(op.name, f"a reshape to {shape} that does not keep the batch dim")
    return _Val(x.nodes.reshape(shape[1:]), owned=x.owned and op.num_users == 1)


def _permute_dims(op: OpSpec, x: _Val, dims: list[int]) -> _Val:
    rank = x.nodes.dim() + 1
    dims = [d % rank for d in dims]
    if dims[0] != 0:
        raise UnsupportedModuleError(op.name, "a permutation of dims that moves the batch dim")
    return _Val(x.nodes.permute(*[d - 1 for d in dims[1:]]), owned=x.owned and op.num_users == 1)


_POOL_AVG = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_POOL_ADAPT = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_F_AVG = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_F_ADAPT = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_F_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_IDENTITY_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, "contiguous", "clone", "detach"}


def _call_module(b: _Builder, op: OpSpec, m: nn.Module, args: tuple, kw: dict, batch: int):
    x = args[0] if args else kw.get("input")
    if isinstance(m, nn.Linear):
        return _linear(
            b,
            op,
            _val(x, op),
            m.weight,
            m.bias,
            f"{op.target}.weight",
            f"{op.target}.bias" if m.bias is not None else None,
            op.target,
        )
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        spec = SimpleNamespace(
            kernel_size=m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            padding_mode=m.padding_mode,
            weight=m.weight,
            bias=m.bias,
            weight_name=f"{op.target}.weight",
            bias_name=f"{op.target}.bias",
        )
        return _conv(b, op, spec, _val(x, op), op.target)
    if isinstance(m, ACTIVATION_MODULES):
        return _elementwise(b, op, _val(x, op), module_activation_key(m))
    if isinstance(m, _IDENTITY_MODULES):
        return _Val(_val(x, op).nodes, owned=_val(x, op).owned and op.num_users == 1)
    if isinstance(m, nn.Flatten):
        return _reshape(op, _val(x, op), batch)
    if type(m) in _POOL_AVG:
        return _avg_pool(
            b,
            op,
            _val(x, op),
            _POOL_AVG[type(m)],
            m.kernel_size,
            m.stride,
            m.padding,
            m.ceil_mode,
            m.count_include_pad,
            getattr(m, "divisor_override", None),
            op.target,
        )
    if type(m) in _POOL_ADAPT:
        return _adaptive_avg_pool(b, op, _val(x, op), _POOL_ADAPT[type(m)], op.target)
    raise UnsupportedModuleError(
        op.target,
        f"no computation-graph builder for {type(m).__module__}."
        f"{type(m).__qualname__} (supported: Linear, Conv1d/2d/3d, elementwise "
        "activations, flatten/reshape, dropout/identity, average pooling, mean, residual add)",
        "Computation graphs support the layers of appendix C.1 only; use symgraph.parameter_graph for other models.",
    )


def _call_function(b: _Builder, op: OpSpec, args: tuple, kw: dict, batch: int):
    t = op.target
    act = activation_for_target(t)
    if act is not None:
        return _elementwise(b, op, _val(args[0], op), act.key(tuple(args[1:]), kw))
    if t in (operator.add, operator.iadd, torch.add, "add", operator.sub, operator.isub, torch.sub, "sub"):
        if kw.get("alpha", 1) != 1:
            raise UnsupportedModuleError(op.name, "torch.add with alpha != 1")
        return _add(
            b,
            op,
            args[0],
            args[1] if len(args) > 1 else kw.get("other"),
            t in (operator.sub, operator.isub, torch.sub, "sub"),
        )
    if t in (operator.mul, operator.imul, torch.mul, "mul", operator.truediv, torch.div, "div"):
        return _scale(
            b, op, args[0], args[1] if len(args) > 1 else kw.get("other"), t in (operator.truediv, torch.div, "div")
        )
    if t in _IDENTITY_FUNCS:
        x = _val(args[0], op)
        return _Val(x.nodes, owned=x.owned and op.num_users == 1)
    if t in (
        torch.flatten,
        "flatten",
        "view",
        "reshape",
        torch.reshape,
        "unsqueeze",
        torch.unsqueeze,
        "squeeze",
        torch.squeeze,
    ):
        return _reshape(op, _val(args[0], op), batch)
    if t in ("permute", torch.permute):
        dims = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
        return _permute_dims(op, _val(args[0], op), list(kw.get("dims", dims)))
    if t in ("transpose", torch.transpose):
        x = _val(args[0], op)
        rank = x.nodes.dim() + 1
        d0, d1 = args[1] % rank, args[2] % rank
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return _permute_dims(op, x, perm)
    if t in ("mean", torch.mean, "sum", torch.sum):
        dims = args[1] if len(args) > 1 else kw.get("dim")
        keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
        return _reduce(b, op, _val(args[0], op), dims, keep, t in ("mean", torch.mean))
    if t in _F_AVG:
        nd = _F_AVG[t]
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        defaults = dict(zip(names, (None, None, 0, False, True, None), strict=True))
        vals = {**defaults, **dict(zip(names, args[1:], strict=False)), **{k: v for k, v in kw.items() if k in names}}
        return _avg_pool(
            b,
            op,
            _val(args[0], op),
            nd,
            vals["kernel_size"],
            vals["stride"],
            vals["padding"],
            vals["ceil_mode"],
            vals["count_include_pad"],
            vals["divisor_override"],
            "",
        )
    if t in _F_ADAPT:
        return _adaptive_avg_pool(b, op, _val(args[0], op), _F_ADAPT[t], "")
    if t in ("size", "dim"):
        x = _val(args[0], op)
        shape = (batch, *x.nodes.shape)
        if t == "dim":
            return len(shape)
        d = args[1] if len(args) > 1 else kw.get("dim")
        return shape if d is None else shape[d]
    if t is getattr and args[1] == "shape":
        return (batch, *_val(args[0], op).nodes.shape)
    if t is operator.getitem and isinstance(args[0], tuple | list):
        return args[0][args[1]]
    if t in _F_CONV:
        names = ("weight", "bias", "stride", "padding", "dilation", "groups")
        vals = {
            "bias": None,
            "stride": 1,
            "padding": 0,
            "dilation": 1,
            "groups": 1,
            **dict(zip(names, args[1:], strict=False)),
            **{k: v for k, v in kw.items() if k in names},
        }
        w, bias = vals["weight"], vals["bias"]
        if not isinstance(w, _Attr) or (bias is not None and not isinstance(bias, _Attr)):
            raise UnsupportedModuleError(op.name, "a functional convolution with computed weights")
        nd = _F_CONV[t]

        def tup(v):
            return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

        pad = vals["padding"] if isinstance(vals["padding"], str) else tup(vals["padding"])
        spec = SimpleNamespace(
            kernel_size=tuple(w.tensor.shape[2:]),
            stride=tup(vals["stride"]),
            padding=pad,
            dilation=tup(vals["dilation"]),
            groups=vals["groups"],
            padding_mode="zeros",
            weight=w.tensor,
            bias=None if bias is None else bias.tensor,
            weight_name=w.name,
            bias_name=None if bias is None else bias.name,
        )
        return _conv(b, op, spec, _val(args[0], op), w.name.rsplit(".", 1)[0] if "." in w.name else "")
    if t in (F.linear, torch._C._nn.linear):
        w = args[1] if len(args) > 1 else kw.get("weight")
        bias = args[2] if len(args) > 2 else kw.get("bias")
        if not isinstance(w, _Attr) or (bias is not None and not isinstance(bias, _Attr)):
            raise UnsupportedModuleError(op.name, "F.linear with computed weights")
        return _linear(
            b,
            op,
            _val(args[0], op),
            w.tensor,
            None if bias is None else bias.tensor,
            w.name,
            None if bias is None else bias.name,
            w.name.rsplit(".", 1)[0] if "." in w.name else "",
        )
    name = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
    raise UnsupportedModuleError(
        op.name,
        f"no computation-graph builder for the operation '{name}' ({op.op})",
        "Computation graphs support the layers of appendix C.1 only; use symgraph.parameter_graph for other models.",
    )


def _build(model: nn.Module, spec: ModelSpec) -> tuple[_Builder, dict, _Val, tuple, tuple]:
    b = _Builder(model)
    vals: dict[str, Any] = {}
    batch = spec.input_shape[0]
    inp: _Val | None = None
    out: _Val | None = None
    for op in spec.ops:
        if op.op == "placeholder":
            if op.shape is None:
                vals[op.name] = None
                continue
            if inp is not None:
                raise UnsupportedModuleError(op.name, "a second tensor input (computation graphs take one input)")
            shape = tuple(op.shape[1:])
            nodes = b.add_nodes(math.prod(shape), "input", "input", f"input {op.name}", "", None)
            inp = _Val(nodes.view(shape), owned=False)
            vals[op.name] = inp
            continue
        if op.op == "get_attr":
            obj: Any = model
            for part in op.target.split("."):
                obj = getattr(obj, part)
            vals[op.name] = _Attr(op.target, obj)
            continue
        if op.op == "output":
            res = _resolve(vals, op.args[0])
            if not isinstance(res, _Val):
                raise UnsupportedModuleError(
                    op.name,
                    f"a model output of type {type(res).__name__} (computation graphs need a single tensor output)",
                )
            out = _mark_output(b, res)
            continue
        args = _resolve(vals, op.args)
        kw = {k: _resolve(vals, v) for k, v in op.kwargs}
        if op.op == "call_module":
            vals[op.name] = _call_module(b, op, model.get_submodule(op.target), tuple(args), kw, batch)
        else:
            vals[op.name] = _call_function(b, op, tuple(args), kw, batch)
    if inp is None or out is None:
        raise ShapeMismatchError("a model with one tensor input and one tensor output", "none")
    return b, vals, out, tuple(spec.input_shape), (batch, *out.nodes.shape)


def _mark_output(b: _Builder, v: _Val) -> _Val:
    nodes = v.nodes.reshape(-1)
    hidden = bool((b.role[nodes] == _ROLES.index("hidden")).all())
    if hidden and torch.unique(nodes).numel() == nodes.numel():
        b.role[nodes] = _ROLES.index("output")
        return v
    # outputs that are inputs or repeated: give them their own output nodes (as the parameter graph does)
    new = b.add_nodes(nodes.numel(), "output", "output", "output", "", nodes)
    b.add_const_edges(nodes, new, ("identity", "output"), 1.0)
    return _Val(new.view(v.nodes.shape))


# -------------------------------------------------------------- parameter-graph map
def _parameter_graph_and_values(model: nn.Module, spec: ModelSpec):
    """The parameter graph of the same trace, with the encoded value of every op (for the C.5 map)."""
    from .builder import GraphBuilder
    from .trace import encode_model

    pb = GraphBuilder(kind="parameter")
    ctx = encode_model(model, spec, pb)
    state = model.state_dict(keep_vars=True)
    unencoded = [k for k in state if not pb.has_slot(k)]
    params = dict(model.named_parameters())
    for k in unencoded:
        pb.add_extra(k, state[k].detach(), is_buffer=k not in params)
    pg = pb.finalize(
        tuple(state.keys()),
        spec=spec,
        meta={"model_type": type(model).__name__, "unencoded": unencoded, "encoding": "sound"},
    )
    return pg, ctx.values


def _parameter_map(b: _Builder, vals: dict, spec: ModelSpec, model: nn.Module):
    """Provisional-id node map computation -> parameter graph, from the per-op encoded values of both walks."""
    from .builder import Features

    pg, pvals = _parameter_graph_and_values(model, spec)
    pmap = torch.full((b.num_nodes,), -1, dtype=torch.long)
    for op in spec.ops:
        mine, theirs = vals.get(op.name), pvals.get(op.name)
        if not isinstance(mine, _Val) or not isinstance(theirs, Features) or op.shape is None:
            continue
        ax = theirs.axis % len(op.shape) - 1  # per-sample axis of the features
        if ax < 0 or mine.nodes.dim() <= ax or theirs.nodes.numel() != mine.nodes.shape[ax]:
            continue
        view = [1] * mine.nodes.dim()
        view[ax] = -1
        img = theirs.nodes.view(view).expand_as(mine.nodes).reshape(-1)
        n = mine.nodes.reshape(-1)
        free = pmap[n] < 0
        pmap[n[free]] = img[free]
    return pg, pmap


def _input_map(pg: NeuralGraph, shape: tuple[int, ...]) -> torch.Tensor:
    """Input scalar -> parameter-graph input node, from the parameter graph's input group (-1 if unclear).

    The parameter graph makes one input node per feature along the axis its first reader uses: channels
    (axis 1, convolutions), the last axis (linear layers), or every scalar (a flatten came first).
    """
    n_in = math.prod(shape)
    out = torch.full(tuple(shape), -1, dtype=torch.long)
    groups = [g for g in pg.node_groups if g.role == "input" and g.kind == "input"]
    if len(groups) != 1:
        return out.reshape(-1)
    g = groups[0]
    m = re.search(r"\[axis (\d+)\]$", g.name)
    ax = int(m.group(1)) - 1 if m else -2
    if g.count == n_in and (ax == len(shape) - 1 or ax < 0 or len(shape) == 1):
        return torch.arange(g.start, g.start + n_in)
    if 0 <= ax < len(shape) and g.count == shape[ax]:
        view = [1] * len(shape)
        view[ax] = -1
        return (g.start + torch.arange(g.count)).view(view).expand(tuple(shape)).reshape(-1)
    return out.reshape(-1)


# ====================================================================== public entry point
def computation_graph(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    parameter_map: bool = True,
) -> ComputationGraph:
    """The computation graph of ``model`` for inputs shaped like ``example_input`` (paper appendix C.1).

    Parameters
    ----------
    model : nn.Module
        A feedforward model made of ``nn.Linear``, ``nn.Conv1d/2d/3d`` (stride, padding incl. 'same' and
        non-zero padding modes, dilation, groups), elementwise activations (also ``x * c``, ``x + c``),
        flatten/view/reshape/permute, dropout/identity, average pooling (``AvgPool``, ``AdaptiveAvgPool``,
        ``mean``/``sum`` over non-batch dims) and residual additions. Other ops raise
        :class:`~symgraph.errors.UnsupportedModuleError`. Evaluated as in eval mode (dropout is identity).
    example_input, input_shape
        One batch (dim 0 is the batch) or its shape; the graph depends on the spatial size.
    parameter_map : bool
        Also build ``symgraph.parameter_graph`` of the model and the map onto it (``param_node``,
        ``param_edge``, ``parameter_graph``; paper C.5). If the parameter graph cannot be built (e.g. a bare
        functional convolution), those stay ``None`` and ``meta["parameter_map_error"]`` says why.

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> cg = symgraph.computation_graph(nn.Sequential(nn.Conv1d(1, 1, 2, stride=2)), torch.zeros(1, 1, 4))
    >>> cg.num_edges, cg.num_classes   # 2 positions x 2 taps + 2 bias edges; 3 parameters
    (6, 3)
    """
    if not isinstance(model, nn.Module):
        raise ShapeMismatchError("an nn.Module", type(model).__name__)
    if not any(True for _ in model.parameters()):
        raise ShapeMismatchError("a model with parameters", f"{type(model).__name__} with none")
    spec, _ = trace_model(model, example_input, input_shape)
    b, vals, out, in_shape, out_shape = _build(model, spec)
    # ------------------------------------------------ edges
    if b.edges:
        src, dst, col, w, cls = (torch.cat(t) for t in zip(*b.edges, strict=True))
    else:
        src = dst = cls = torch.zeros(0, dtype=torch.long)
        col, w = torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=b.dtype)
    # ------------------------------------------------ slots and state kept for unused scalars / buffers
    slots, extras = [], {}
    params = {n for n, _ in model.named_parameters()}
    for k, v in b.state.items():
        if k in b.offsets:
            slots.append(
                ParamSlot(k, "shared", b.offsets[k], v.numel(), tuple(v.shape), v.dtype, is_buffer=k not in params)
            )
        else:
            slots.append(ParamSlot(k, "extra", 0, v.numel(), tuple(v.shape), v.dtype, is_buffer=k not in params))
        extras[k] = v.detach().clone()
    # ------------------------------------------------ the C.5 map (provisional ids)
    pg = pmap = None
    map_error = None
    if parameter_map:
        try:
            pg, pmap = _parameter_map(b, vals, spec, model)
        except SymgraphError as exc:  # the parameter graph lacks an encoder the computation graph has
            map_error = str(exc)
    # ------------------------------------------------ relabel nodes by level (topological blocks)
    level = torch.cat([torch.full((blk.count,), blk.level, dtype=torch.long) for blk in b.blocks])
    order = torch.argsort(level, stable=True)
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(order.numel())
    edge_index = torch.stack([new_id[src], new_id[dst]])
    # node colours (role, kind, activations), ids in order of first appearance in the new numbering
    kinds = sorted({blk.kind for blk in b.blocks})
    kind_of = torch.cat([torch.full((blk.count,), kinds.index(blk.kind), dtype=torch.long) for blk in b.blocks])
    A = len(b.act_keys)
    combo = (b.role * len(kinds) + kind_of) * A + b.act
    combo = combo[order]
    uniq, inv = torch.unique(combo, return_inverse=True)
    first = torch.full((uniq.numel(),), combo.numel(), dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(combo.numel()), "amin"
    )
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.numel())
    node_color = rank[inv]
    keys = [None] * uniq.numel()
    for u, r in zip(uniq.tolist(), rank.tolist(), strict=True):
        role, rest = divmod(u, len(kinds) * A)
        kind, act = divmod(rest, A)
        keys[r] = (_ROLES[role], kinds[kind], b.act_keys[act])
    groups = sorted(
        (
            NodeGroup(blk.name, _ROLES[int(b.role[blk.start])], int(new_id[blk.start]), blk.count, blk.module, blk.kind)
            for blk in b.blocks
        ),
        key=lambda g: g.start,
    )
    param_node = param_edge = None
    cg = ComputationGraph(
        edge_index=edge_index,
        edge_weight=w,
        edge_color=col,
        node_color=node_color,
        node_weight=torch.zeros((b.num_nodes, 1), dtype=b.dtype),
        node_layer=level[order],
        edge_color_keys=tuple(b.color_ids),
        node_color_keys=tuple(keys),
        node_groups=tuple(groups),
        slots=tuple(slots),
        state_keys=tuple(b.state.keys()),
        extras=extras,
        kind="computation",
        spec=spec,
        meta={"model_type": type(model).__name__, "parameter_map_error": map_error},
        edge_class=cls,
        input_index=new_id[vals[next(o.name for o in spec.ops if o.op == "placeholder" and o.shape is not None)].nodes],
        output_index=new_id[out.nodes],
        input_shape=in_shape,
        output_shape=out_shape,
    )
    if pg is not None:
        param_node = torch.full((b.num_nodes,), -1, dtype=torch.long)
        param_node[new_id] = pmap
        param_node[cg.input_index.reshape(-1)] = _input_map(pg, cg.input_index.shape)
        # input scalars (and any node the op values did not reach) take the image forced by their parameter
        # edges: the parameter graph has exactly one edge per parameter scalar
        pe = _param_graph_edge_of_class(cg, pg)
        for end in (0, 1):
            n = cg.edge_index[end]
            sel = (pe >= 0) & (param_node[n] < 0)
            param_node[n[sel]] = pg.edge_index[end, pe[sel]]
        param_edge = pe.clone()
        const = pe < 0
        if bool(const.any()):
            s, d = param_node[cg.edge_index[0, const]], param_node[cg.edge_index[1, const]]
            keys_c = [cg.edge_color_keys[c] for c in cg.edge_color[const].tolist()]
            param_edge[const] = _find_edges(pg, s, d, keys_c)
        cg.param_node, cg.param_edge, cg.parameter_graph = param_node, param_edge, pg
    return cg
