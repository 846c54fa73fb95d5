"""Lowering a traced model to its computation graph: the lowering registry, its context and the walk.

The model is traced once by :func:`symgraph.trace.trace_model` (the trace the parameter graph is encoded from).
The walk visits its ops in order and calls the lowering registered for each one, exactly as
:func:`symgraph.trace.encode_model` calls encoders: module types are looked up along the MRO (or by qualified
name), functional targets by the callable or method name (:func:`symgraph.registry.module_lookup`). A lowering
has the encoder signature ``lower(ctx, op, module, args) -> value`` (keyword arguments as a trailing dict) and
adds neurons and edges to ``ctx.builder``, the same :class:`~symgraph.builder.GraphBuilder` parameter graphs are
made with; the values it returns are :class:`Neurons`, the node ids of one sample. The built-in lowerings are in
:mod:`.layers`. Users add their own with::

    @register_lowering(MyLayer)
    def lower_my_layer(ctx, op, module, args):
        x = ctx.neurons(args[0])
        ...

:func:`computation_graph` then orders the nodes by topological level (the evaluator of Eq. 7 runs one sparse
matmul per level), records the weight-sharing class of every edge and maps the graph onto the parameter graph
of the same trace (paper C.5, :mod:`.homomorphism`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..builder import GraphBuilder
from ..errors import ShapeMismatchError, SymgraphError, UnsupportedModuleError
from ..graph import NodeGroup, ParamSlot
from ..registry import function_lookup, module_lookup
from ..trace import ModelSpec, OpSpec, ParamRef, _get_attr, _resolve, trace_model
from . import homomorphism
from .graph import ComputationGraph

__all__ = [
    "Neurons",
    "LoweringContext",
    "register_lowering",
    "register_lowering_by_name",
    "register_lowering_function",
    "lowering_for_module",
    "lowering_for_function",
    "lower_model",
    "computation_graph",
]

UNSUPPORTED_HINT = (
    "Computation graphs support the layers of appendix C.1 only; use symgraph.parameter_graph for other models, "
    "or register a lowering with @symgraph.computation.register_lowering(YourModuleType)."
)

_MODULE_LOWERINGS: dict[type, Callable] = {}
_NAMED_MODULE_LOWERINGS: dict[str, Callable] = {}
_FUNCTION_LOWERINGS: dict[Any, Callable] = {}


# ====================================================================== the registry
def register_lowering(*module_types: type):
    """Decorator registering a computation-graph lowering for ``nn.Module`` types (keyed as encoders are)."""
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"Expected an nn.Module subclass (got {t!r})")

    def deco(fn: Callable) -> Callable:
        for t in module_types:
            _MODULE_LOWERINGS[t] = fn
        return fn

    return deco


def register_lowering_by_name(*qualified_names: str):
    """Decorator registering a lowering for module classes named ``"package.module.Class"``."""

    def deco(fn: Callable) -> Callable:
        for name in qualified_names:
            _NAMED_MODULE_LOWERINGS[name] = fn
        return fn

    return deco


def register_lowering_function(*targets: Any):
    """Decorator registering a lowering for ``call_function``/``call_method`` targets (callables or method
    names as strings)."""

    def deco(fn: Callable) -> Callable:
        for t in targets:
            _FUNCTION_LOWERINGS[t] = fn
        return fn

    return deco


def lowering_for_module(module: nn.Module) -> Callable | None:
    return module_lookup(_MODULE_LOWERINGS, module, _NAMED_MODULE_LOWERINGS)


def lowering_for_function(target: Any) -> Callable | None:
    return function_lookup(_FUNCTION_LOWERINGS, target)


# ====================================================================== values and context
@dataclass(frozen=True)
class Neurons:
    """A traced tensor in the computation graph: node ids shaped like one sample (the batch dim dropped).

    ``owned``: the nodes were made for this value alone and nobody else reads them, so an elementwise op may be
    recorded on them in place.
    """

    nodes: torch.Tensor
    owned: bool = False


@dataclass
class LoweringContext:
    """What lowerings see: the builder, the model and trace, the lowered values, and helpers.

    Edges go through :meth:`add_param_edges` (each edge carries one parameter scalar; its weight-sharing class
    is that scalar's global index) and :meth:`add_const_edges` (parameter-free, class -1).
    """

    builder: GraphBuilder
    model: nn.Module
    spec: ModelSpec
    values: dict[str, Any] = field(default_factory=dict)
    op: OpSpec | None = None
    #: global index of the first scalar of every floating-point state entry (the weight-sharing classes)
    offsets: dict[str, int] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    #: per edge block: (first edge id, weights, classes)
    edge_data: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.spec.input_shape[0]

    def where(self) -> str:
        op = self.op
        if op is None:
            return "<model>"
        return f"'{op.target}'" if op.op == "call_module" else f"op '{op.name}' ({op.describe()})"

    def neurons(self, value) -> Neurons:
        """``value`` as :class:`Neurons`; a typed error naming the op for anything else."""
        if not isinstance(value, Neurons):
            raise UnsupportedModuleError(
                self.op.name, f"{self.where()} on a {type(value).__name__}, not a traced tensor"
            )
        return value

    def out_shape(self) -> tuple[int, ...]:
        """The current op's output shape per sample."""
        if self.op.shape is None:
            raise ShapeMismatchError("a tensor result with a known shape", "none", self.where())
        return tuple(self.op.shape[1:])

    def result(self, nodes: torch.Tensor, owned: bool = True) -> Neurons:
        """The op's value on ``nodes``: owned (an activation may go in place) when made here and read once."""
        return Neurons(nodes, owned=owned and self.op.num_users == 1)

    def add_neurons(
        self, count: int, role: str, kind: str, name: str, module: str = "", sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``count`` new nodes one level above the deepest of ``sources`` (level 0 without sources)."""
        if count <= 0:
            raise ShapeMismatchError(f"a positive number of neurons for '{name}'", str(count))
        level = 0 if sources is None or sources.numel() == 0 else self.builder.level_of(sources) + 1
        return self.builder.add_nodes(count, role, kind, name, module=module, level=level)

    def color(self, key: tuple) -> int:
        return self.builder.edge_color(key)

    def add_param_edges(self, src, dst, color, name: str, param: torch.Tensor, flat: torch.Tensor) -> None:
        """Edges carrying ``param.flatten()[flat]``; ``color`` an id or per-edge ids."""
        col = torch.as_tensor(color, dtype=torch.int32).expand(src.shape).reshape(-1).clone()
        src, dst, flat = src.reshape(-1), dst.reshape(-1), flat.reshape(-1)
        if name not in self.offsets:
            raise UnsupportedModuleError(name, "a weight that is not a floating-point entry of the state dict")
        w = param.detach().reshape(-1)[flat].to(self.dtype)
        self._add(src, dst, col, w, flat + self.offsets[name])

    def add_const_edges(self, src, dst, key: tuple, value) -> None:
        """Parameter-free edges of weight ``value`` coloured ``key``."""
        src, dst = src.reshape(-1), dst.reshape(-1)
        w = torch.as_tensor(value, dtype=self.dtype).expand(src.shape).clone()
        self._add(src, dst, self.color(key), w, torch.full(src.shape, -1, dtype=torch.long))

    def _add(self, src, dst, color, weight, cls) -> None:
        edges = self.builder.add_edges(src, dst, color)
        self.edge_data.append((edges.start, weight, cls))


def _state_offsets(model: nn.Module) -> dict[str, int]:
    offsets, off = {}, 0
    for k, v in model.state_dict(keep_vars=True).items():
        if v.is_floating_point():
            offsets[k] = off
            off += v.numel()
    return offsets


# ====================================================================== the walk
def _mark_output(ctx: LoweringContext, v: Neurons) -> Neurons:
    b = ctx.builder
    nodes = v.nodes.reshape(-1)
    hidden = all(b.role(i) == "hidden" for i in nodes.tolist())
    if hidden and torch.unique(nodes).numel() == nodes.numel():
        b.set_role(nodes, "output")
        return v
    # outputs that are inputs or repeated: give them their own output nodes (as the parameter graph does)
    new = ctx.add_neurons(nodes.numel(), "output", "output", "output", "", nodes)
    ctx.add_const_edges(nodes, new, ("identity", "output"), 1.0)
    return Neurons(new.view(v.nodes.shape))


def lower_model(model: nn.Module, spec: ModelSpec) -> tuple[LoweringContext, Neurons, Neurons]:
    """Walk the traced ops, dispatching each to its lowering; returns the context, the input and the output."""
    from . import layers  # noqa: F401  (registers the built-in lowerings)

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    ctx = LoweringContext(GraphBuilder(kind="computation"), model, spec, offsets=_state_offsets(model), dtype=dtype)
    inp: Neurons | None = None
    out: Neurons | None = None
    for op in spec.ops:
        ctx.op = op
        if op.op == "placeholder":
            if op.shape is None:
                ctx.values[op.name] = None
                continue
            if inp is not None:
                raise UnsupportedModuleError(op.name, "a second tensor input (computation graphs take one input)")
            shape = tuple(op.shape[1:])
            inp = Neurons(ctx.add_neurons(math.prod(shape), "input", "input", f"input {op.name}").view(shape))
            ctx.values[op.name] = inp
            continue
        if op.op == "get_attr":
            t = _get_attr(model, op.target)
            ctx.values[op.name] = ParamRef(op.target, t)
            continue
        if op.op == "output":
            res = _resolve(ctx, op.args[0])
            if not isinstance(res, Neurons):
                raise UnsupportedModuleError(
                    op.name,
                    f"a model output of type {type(res).__name__} (computation graphs need a single tensor output)",
                )
            out = _mark_output(ctx, res)
            continue
        args = _resolve(ctx, op.args)
        if op.kwargs:
            args = tuple(args) + ({k: _resolve(ctx, v) for k, v in op.kwargs},)
        if op.op == "call_module":
            module = model.get_submodule(op.target)
            fn = lowering_for_module(module)
            if fn is None:
                raise UnsupportedModuleError(
                    op.target,
                    f"no computation-graph lowering for {type(module).__module__}.{type(module).__qualname__} "
                    "(supported: Linear, Conv1d/2d/3d, elementwise activations, flatten/reshape, dropout/identity, "
                    "average pooling, mean, residual add)",
                    UNSUPPORTED_HINT,
                )
        else:
            module = None
            fn = lowering_for_function(op.target)
            if fn is None:
                t = op.target
                name = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
                raise UnsupportedModuleError(
                    op.name, f"no computation-graph lowering for the operation '{name}' ({op.op})", UNSUPPORTED_HINT
                )
        ctx.values[op.name] = fn(ctx, op, module, tuple(args))
    if inp is None or out is None:
        raise ShapeMismatchError("a model with one tensor input and one tensor output", "none")
    return ctx, inp, out


# ====================================================================== the public entry point
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
    from ..build import encode_parameter_graph

    if not isinstance(model, nn.Module):
        raise ShapeMismatchError("an nn.Module", type(model).__name__)
    if not any(True for _ in model.parameters()):
        raise ShapeMismatchError("a model with parameters", f"{type(model).__name__} with none")
    spec, _ = trace_model(model, example_input, input_shape)
    ctx, inp, out = lower_model(model, spec)
    g = ctx.builder.finalize(())
    N, E = g.num_nodes, g.num_edges
    # ------------------------------------------------ per-edge weights and weight-sharing classes
    weight = torch.ones(E, dtype=ctx.dtype)
    edge_class = torch.full((E,), -1, dtype=torch.long)
    for start, w, cls in ctx.edge_data:
        weight[start : start + w.numel()] = w
        edge_class[start : start + cls.numel()] = cls
    # ------------------------------------------------ slots (all scalars of a parameter share one class range)
    state = model.state_dict(keep_vars=True)
    params = {n for n, _ in model.named_parameters()}
    slots, extras = [], {}
    for k, v in state.items():
        loc, start = ("shared", ctx.offsets[k]) if k in ctx.offsets else ("extra", 0)
        slots.append(ParamSlot(k, loc, start, v.numel(), tuple(v.shape), v.dtype, is_buffer=k not in params))
        extras[k] = v.detach().clone()
    # ------------------------------------------------ the C.5 map (lowering ids)
    pg = pmap = None
    map_error = None
    if parameter_map:
        try:
            pg, pctx = encode_parameter_graph(model, spec)
        except SymgraphError as exc:  # the parameter graph lacks an encoder the computation graph has
            map_error = str(exc)
        else:
            neurons = {k: v.nodes for k, v in ctx.values.items() if isinstance(v, Neurons)}
            pmap = homomorphism.provisional_node_map(neurons, pctx.values, spec, N)
    # ------------------------------------------------ relabel nodes by level (topological blocks)
    order = torch.argsort(g.node_layer, stable=True)
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(N)
    # node colours: the builder's keys, ids renumbered in order of first appearance in the new numbering
    uniq, inv = torch.unique(g.node_color[order], return_inverse=True)
    first = torch.full((uniq.numel(),), N, dtype=torch.long).scatter_reduce(0, inv, torch.arange(N), "amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.numel())
    node_keys = [None] * uniq.numel()
    for u, r in zip(uniq.tolist(), rank.tolist(), strict=True):
        node_keys[r] = g.node_color_keys[u]
    groups = sorted(
        (NodeGroup(x.name, x.role, int(new_id[x.start]), x.count, x.module, x.kind) for x in g.node_groups),
        key=lambda x: x.start,
    )
    cg = ComputationGraph(
        edge_index=new_id[g.edge_index],
        edge_weight=weight,
        edge_color=g.edge_color,
        node_color=rank[inv],
        node_weight=torch.zeros((N, 1), dtype=ctx.dtype),
        node_layer=g.node_layer[order],
        edge_color_keys=g.edge_color_keys,
        node_color_keys=tuple(node_keys),
        node_groups=tuple(groups),
        slots=tuple(slots),
        state_keys=tuple(state.keys()),
        extras=extras,
        kind="computation",
        spec=spec,
        meta={"model_type": type(model).__name__, "parameter_map_error": map_error},
        edge_class=edge_class,
        input_index=new_id[inp.nodes],
        output_index=new_id[out.nodes],
        input_shape=tuple(spec.input_shape),
        output_shape=(ctx.batch, *out.nodes.shape),
    )
    if pg is not None:
        homomorphism.attach_parameter_map(cg, pg, pmap, new_id)
    return cg
