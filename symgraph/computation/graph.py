"""The computation-graph data model (paper appendix C.1): :class:`ComputationGraph` and its edge -> parameter map.

A computation graph has one node per scalar neuron and one edge per use of a weight: a parameter scalar sits on
every edge that uses it (a convolution weight on one edge per spatial position). ``edge_class`` records which
scalar that is (the weight-sharing partition ``S`` of appendix C.1); constant edges (residual, pooling,
identity) have class -1. How graphs are made is in :mod:`.lowering`, how they are evaluated in :mod:`.evaluate`,
the map onto the parameter graph in :mod:`.homomorphism`, the graph for nauty in
:mod:`symgraph.automorphisms.sharing`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError, SymgraphError
from ..graph import EdgeParamIndex, NeuralGraph, ParamSlot
from . import evaluate as _evaluate
from . import homomorphism as _homomorphism

__all__ = ["ComputationGraph", "SharedEdgeParamIndex"]


class SharedEdgeParamIndex(EdgeParamIndex):
    """Edge -> (parameter, flat index) for computation graphs, where one parameter sits on many edges.

    An :class:`symgraph.graph.EdgeParamIndex` whose edges are found through ``edge_class`` instead of contiguous
    ranges: ``lookup(edges)`` gives (slot index or -1, flat index or -1) vectorised, ``index[e]`` gives
    ``(name, flat)`` or ``None`` for a constant edge, ``edges_of(name)`` a tensor of edge ids.
    """

    def __init__(self, slots: tuple[ParamSlot, ...], edge_class: torch.Tensor):
        self.slots = tuple(s for s in slots if s.location == "shared")
        self.edge_class = edge_class
        self.num_edges = int(edge_class.numel())
        self._starts = torch.tensor([s.start for s in self.slots], dtype=torch.long)
        self._by_name = {s.name: i for i, s in enumerate(self.slots)}

    def lookup(self, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.edge_class[torch.as_tensor(edges, dtype=torch.long)]
        if len(self.slots) == 0:
            neg = torch.full_like(cls, -1)
            return neg, neg.clone()
        slot = (torch.searchsorted(self._starts, cls, right=True) - 1).clamp(min=0)
        flat = cls - self._starts[slot]
        const = cls < 0
        return slot.masked_fill(const, -1), flat.masked_fill(const, -1)

    def edges_of(self, name: str) -> torch.Tensor:  # type: ignore[override]
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
        if _evaluate.PLAN_KEY in self.__dict__ and node_weight is None:  # the plan depends on the structure only
            new.__dict__[_evaluate.PLAN_KEY] = self.__dict__[_evaluate.PLAN_KEY]
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
        """The plain coloured graph whose automorphisms are this graph's neural DAG automorphisms (weight
        sharing included), for nauty: :func:`symgraph.automorphisms.sharing.sharing_graph` (cached).

        Example
        -------
        >>> import torch, torch.nn as nn, symgraph
        >>> cg = symgraph.computation_graph(nn.Sequential(nn.Conv1d(1, 2, 2)), torch.zeros(1, 1, 3))
        >>> cg.sharing_graph().num_nodes   # 8 neurons; 6 shared classes (4 weights, 2 biases) on 12 edges
        26
        """
        from ..automorphisms.sharing import sharing_graph

        cached = self.__dict__.get("_sharing_graph")
        if cached is None:
            cached = self.__dict__["_sharing_graph"] = sharing_graph(self)
        return cached

    def lift_to_sharing_graph(self, perm: torch.Tensor) -> torch.Tensor:
        """Extend a neural DAG automorphism to :meth:`sharing_graph`
        (:func:`symgraph.automorphisms.sharing.lift_to_sharing_graph`)."""
        from ..automorphisms.sharing import lift_to_sharing_graph

        return lift_to_sharing_graph(self, perm)

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
        """Is ``param_node`` (default: the stored map) the homomorphism of paper C.5 onto the parameter graph?
        See :func:`symgraph.computation.homomorphism.is_parameter_graph_homomorphism`."""
        return _homomorphism.is_parameter_graph_homomorphism(self, param_node)

    # ------------------------------------------------------------------ evaluation (Eq. 7)
    def activations(self, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        """All node activations ``h_i(x)`` of Eq. 7, shape [B, N] (:func:`.evaluate.activations`)."""
        return _evaluate.activations(self, x, edge_weight)

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
        return _evaluate.evaluate(self, x, edge_weight)

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
