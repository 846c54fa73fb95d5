"""torch.fx tracing of any ``nn.Module`` into a :class:`ModelSpec`, and the encoding walk.

``trace_model(model, example_input)`` symbolically traces the model (modules with a registered encoder are
leaves), propagates shapes with the example input, and records every op as a frozen :class:`OpSpec`.
``encode_model`` then walks the ops in order, calling the registered encoder of each one with the encoded
values of its inputs; encoders add nodes and edges to a :class:`~symgraph.builder.GraphBuilder`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .builder import Features, GraphBuilder, SymmetryDecl, with_ops
from .errors import ShapeMismatchError, TraceError, UnsupportedModuleError
from .input_shapes import infer_example_input, remember_example_input
from .registry import encoder_for_function, encoder_for_module, reads_ops

__all__ = [
    "ModelSpec",
    "OpSpec",
    "LazyInput",
    "ParamRef",
    "EncodeContext",
    "trace_model",
    "encode_model",
    "resolve_example_input",
]


@dataclass(frozen=True)
class OpSpec:
    """One traced operation: fx node name, opcode, target, argument references and the output shape."""

    name: str
    op: str  # placeholder | call_module | call_function | call_method | get_attr | output
    target: Any
    args: tuple
    kwargs: tuple  # sorted (key, value) pairs
    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    num_users: int

    @property
    def kw(self) -> dict:
        return dict(self.kwargs)

    def describe(self) -> str:
        t = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", repr(self.target))
        return f"{self.op} {t}"


@dataclass(frozen=True)
class ModelSpec:
    """The wiring of a traced model: its ops (in topological order) and the input shape used."""

    ops: tuple[OpSpec, ...]
    input_shape: tuple[int, ...]
    model_type: str
    state_keys: tuple[str, ...]

    def modules(self) -> list[str]:
        return [o.target for o in self.ops if o.op == "call_module"]


@dataclass(frozen=True)
class Ref:
    """Reference to the value produced by another op (by fx node name)."""

    name: str


@dataclass(frozen=True)
class LazyInput:
    """A model input (or a parameter-free reshaping of it) whose input nodes are not created yet.

    ``ops`` records every parameter-free op applied to the input so far (reshapes and transposes too: which
    axis holds the features is not known yet); inputs reached through different ops get different input
    nodes (fixed by every automorphism), so that ``conv(x)`` and ``conv(pool(x))`` never read the same nodes.
    """

    shape: tuple[int, ...]
    name: str
    flatten_from: int | None = None  # the input was flattened from this dim on
    ops: tuple = ()


@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer reached through ``get_attr``.

    ``tensor`` may be a view of the stored tensor that only inserts or removes dims of size 1 (timm's
    ``x.mul(self.gamma.reshape(1, -1, 1, 1))``): its flat order is the stored one; ``stored`` is the tensor in
    the state_dict's shape, for the parameter's slot.
    """

    name: str
    tensor: torch.Tensor
    state_shape: tuple[int, ...] | None = None

    @property
    def stored(self) -> torch.Tensor:
        return self.tensor if self.state_shape is None else self.tensor.reshape(self.state_shape)

    def reshaped(self, shape: tuple[int, ...]) -> ParamRef | None:
        """This parameter viewed with ``shape`` when that only inserts/removes size-1 dims, else None."""
        shape = tuple(int(s) for s in shape)
        if [s for s in shape if s != 1] != [s for s in self.tensor.shape if s != 1]:
            return None
        if math.prod(shape) != self.tensor.numel():
            return None
        base = tuple(self.tensor.shape) if self.state_shape is None else self.state_shape
        return ParamRef(self.name, self.tensor.reshape(shape), base)


class _Tracer(fx.Tracer):
    # buffers read in forward (e.g. constant pixel coordinates) become get_attr ops, so ops taking them with
    # traced sizes (``buf.expand(x.shape[0], -1, -1)``) trace instead of failing on a real tensor
    proxy_buffer_attributes = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed_at: tuple[str, type] | None = None  # innermost module whose forward failed to trace

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = (self.path_of_module(m), type(m))
            raise

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        fn = encoder_for_module(m)
        leaf = getattr(fn, "leaf", True)  # a bool, or a predicate of the module (traced through when False)
        if fn is not None and (leaf(m) if callable(leaf) else leaf):
            return True
        return super().is_leaf_module(m, qualname)


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def resolve_example_input(model: nn.Module, example_input=None, input_shape=None) -> torch.Tensor:
    """The example input: given, built from ``input_shape``, or inferred from the model
    (:func:`symgraph.input_shapes.infer_example_input`: the last input its graph was built with, its
    ``example_input_shape``, Hugging Face / timm / torchvision configuration, or its first layer).

    Example
    -------
    >>> import torch.nn as nn
    >>> resolve_example_input(nn.Sequential(nn.Linear(5, 2))).shape
    torch.Size([1, 5])
    """
    return _example_inputs(model, example_input, input_shape)[0]


def _example_inputs(model: nn.Module, example_input=None, input_shape=None) -> list[torch.Tensor]:
    """The example input, then larger alternatives to try when an inferred shape is too small."""
    if example_input is not None:
        return [example_input]
    dtype = _model_dtype(model)
    if input_shape is not None:
        # e.g. token ids (torch.long): the model's own record, else what inference says its input is
        given = getattr(model, "example_input_dtype", None)
        if given is None:
            guess = infer_example_input(model)
            given = guess.dtype if guess is not None else None
        return [torch.zeros(tuple(int(s) for s in input_shape), dtype=given or dtype)]
    guess = infer_example_input(model)
    if guess is None:
        raise ShapeMismatchError(
            "an example input or input_shape for this model (its input could not be inferred: it has no "
            "example_input_shape, no Hugging Face/timm/torchvision configuration, and its first layer is neither "
            "nn.Linear nor a convolution with adaptive pooling before the head)",
            f"neither for {type(model).__name__}",
        )
    return [torch.zeros(s, dtype=guess.dtype or dtype) for s in (guess.shape,) + guess.alternatives]


def _meta_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` whose parameters and buffers live on the meta device (no data copied)."""
    memo: dict[int, Any] = {}
    for t in list(gm.parameters()) + list(gm.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(gm, memo)


@dataclass(frozen=True)
class _TensorMeta:
    """Shape and dtype of one traced tensor value (what the encoders read)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _tensor_meta(value: Any) -> tuple[Any, bool]:
    """(``value`` with every tensor replaced by its :class:`_TensorMeta`, whether it held a tensor)."""
    if isinstance(value, torch.Tensor):
        return _TensorMeta(tuple(value.shape), value.dtype), True
    if isinstance(value, tuple | list):
        items = [_tensor_meta(v) for v in value]
        return tuple(m for m, _ in items), any(f for _, f in items)
    if isinstance(value, dict):
        items = {k: _tensor_meta(v) for k, v in value.items()}
        return {k: m for k, (m, _) in items.items()}, any(f for _, f in items.values())
    return value, False


class _ShapeInterpreter(fx.Interpreter):
    """Runs the traced graph and records each node's output shape and dtype in ``node.meta["tensor_meta"]``.

    torch.fx's own ``ShapeProp`` imports ``torch._dynamo`` and sympy on its first use (about 1.3 s before any
    work); this records only what the encoders need.
    """

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        meta, found = _tensor_meta(result)
        if found:
            n.meta["tensor_meta"] = meta
        return result


#: Below this many multiply-adds (parameters x input positions) a real forward pass on the example input costs
#: microseconds, and shapes are propagated for real; above it, on the meta device (no arithmetic). The meta
#: path's first use imports torch._dynamo and sympy (about 1.3 s, through ``torch._check`` in meta kernels),
#: which a small model's CLI run must not pay.
REAL_SHAPE_PROP_WORK = 50_000_000


def _shape_work(model: nn.Module, x: torch.Tensor) -> int:
    positions = 1
    for s in tuple(x.shape)[2:]:
        positions *= int(s)
    return sum(p.numel() for p in model.parameters()) * max(1, positions)


def _run_meta(gm: fx.GraphModule, x: torch.Tensor) -> None:
    meta_gm = _meta_copy(gm)
    meta_gm.eval()
    with torch.no_grad():
        _ShapeInterpreter(meta_gm).run(x.to("meta"))
    for n, mn in zip(gm.graph.nodes, meta_gm.graph.nodes):
        if "tensor_meta" in mn.meta:
            n.meta["tensor_meta"] = mn.meta["tensor_meta"]


def _run_real(gm: fx.GraphModule, x: torch.Tensor) -> None:
    with torch.no_grad():
        _ShapeInterpreter(gm).run(x)


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, x: torch.Tensor) -> None:
    """Shapes of every traced value: by a real forward pass in eval mode when that is cheap (see
    :data:`REAL_SHAPE_PROP_WORK`), else on the meta device (a deep CNN's forward pass would dominate the build
    time); each path falls back to the other."""
    was_training = model.training
    real_first = x.device.type != "meta" and _shape_work(model, x) <= REAL_SHAPE_PROP_WORK
    first, second = (_run_real, _run_meta) if real_first else (_run_meta, _run_real)
    try:
        model.eval()
        try:
            first(gm, x)
            return
        except Exception:  # noqa: BLE001 - e.g. an op without a meta kernel: try the other path below
            pass
        second(gm, x)
    except Exception as exc:
        raise ShapeMismatchError(
            "an input the model accepts",
            f"{type(exc).__name__} with input shape {tuple(x.shape)}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from None
    finally:
        model.train(was_training)


def _to_ref(a):
    if isinstance(a, fx.Node):
        return Ref(a.name)
    if isinstance(a, tuple | list):
        return type(a)(_to_ref(x) for x in a)
    if isinstance(a, dict):
        return tuple(sorted((k, _to_ref(v)) for k, v in a.items()))
    if isinstance(a, slice):
        return slice(_to_ref(a.start), _to_ref(a.stop), _to_ref(a.step))
    return a


def _trace_failure(model: nn.Module, failed_at, exc: Exception) -> str:
    """One message naming the module path, the construct that broke tracing, and the leaf-encoder remedy."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "control flow" in text or "iteration" in text.lower() or "bool" in text.lower():
        construct = "data-dependent control flow (an if/for/len/bool on a traced tensor)"
    else:
        construct = "an unsupported construct"
    path, mtype = failed_at if failed_at is not None else ("", type(model))
    where = f"module '{path}' ({mtype.__name__})" if path else f"the model's own forward ({type(model).__name__})"
    return (
        f"torch.fx could not trace {type(model).__name__}: {construct} in {where}: {type(exc).__name__}: "
        f"{text}. Data-dependent control flow or an unsupported construct: make the offending submodule a "
        f"leaf with @symgraph.register_encoder({mtype.__name__}) and encode it yourself."
    )


def trace_model(model: nn.Module, example_input=None, input_shape=None) -> tuple[ModelSpec, fx.GraphModule]:
    """Trace ``model`` with torch.fx and propagate shapes; returns the spec and the GraphModule."""
    candidates = _example_inputs(model, example_input, input_shape)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; users get one clear error
        raise TraceError(_trace_failure(model, tracer.failed_at, exc)) from None
    gm = fx.GraphModule(model, graph)
    for i, x in enumerate(candidates):
        try:
            _propagate_shapes(gm, model, x)
            break
        except ShapeMismatchError:
            if i + 1 == len(candidates):
                raise
    remember_example_input(model, x)  # later builds without an input (permute_model, ...) get the same graph
    ops = []
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        dtype = meta.dtype if meta is not None and hasattr(meta, "dtype") else None
        ops.append(
            OpSpec(
                name=n.name,
                op=n.op,
                target=n.target,
                args=_to_ref(tuple(n.args)),
                kwargs=_to_ref(dict(n.kwargs)),
                shape=shape,
                dtype=dtype,
                num_users=len(n.users),
            )
        )
    spec = ModelSpec(tuple(ops), tuple(x.shape), type(model).__name__, tuple(model.state_dict().keys()))
    return spec, gm


@dataclass
class EncodeContext:
    """What encoders see: the builder, the model, the encoded values, and helpers."""

    builder: GraphBuilder
    model: nn.Module
    spec: ModelSpec
    values: dict[str, Any] = field(default_factory=dict)
    op: OpSpec | None = None
    input_nodes: dict[tuple, torch.Tensor] = field(default_factory=dict)

    # -------------------------------------------------------------- helpers for encoders
    def features(self, value, axis: int = -1) -> Features:
        """The value's feature nodes along ``axis``; creates input nodes for a model input on first use."""
        if isinstance(value, Features):
            return value
        if isinstance(value, LazyInput):
            shape = value.shape
            ax = axis % len(shape)
            n = shape[ax]
            # one set of input nodes per (input, shape, axis): an input read by several layers (q, k and v of
            # attention, a coordinate input concatenated after a grid lookup) is the same graph input
            key = (value.name, tuple(shape), ax, value.flatten_from, value.ops)
            nodes = self.input_nodes.get(key)
            if nodes is None:
                after = f" after {', '.join(o[0] for o in value.ops)}" if value.ops else ""
                nodes = self.builder.add_nodes(n, "input", "input", f"input {value.name}[axis {ax}]{after}", level=0)
                self.input_nodes[key] = nodes
            return Features(nodes, shape, axis=ax, owned=False)
        op = self.op.describe() if self.op is not None else "an op"
        if isinstance(value, ParamRef):
            what = f"'{op}' applied to the parameter or buffer '{value.name}' itself (not to an activation)"
        else:
            what = f"'{op}' of a {type(value).__name__} value (no encoder handles this op on it)"
        raise UnsupportedModuleError(
            self.module_path() or (self.op.name if self.op is not None else ""),
            what,
            "Wrap the code in a module and register an encoder for it with "
            "@symgraph.register_encoder(YourModuleType), or register the function with "
            "@symgraph.register_function(fn) (see README, 'Adding an encoder').",
        )

    def param(self, module_path: str, attr: str) -> tuple[str, torch.Tensor]:
        name = f"{module_path}.{attr}" if module_path else attr
        return name, getattr(self.model.get_submodule(module_path) if module_path else self.model, attr)

    def where(self) -> str:
        if self.op is None:
            return "<model>"
        if self.op.op == "call_module":
            return f"'{self.op.target}'"
        return f"op '{self.op.name}' ({self.op.describe()})"

    def module_path(self) -> str:
        return self.op.target if self.op is not None and self.op.op == "call_module" else ""

    def new_hidden(self, n: int, kind: str, name: str, src_nodes: torch.Tensor | None = None, extra=()) -> torch.Tensor:
        level = (self.builder.level_of(src_nodes) + 1) if src_nodes is not None else 1
        return self.builder.add_nodes(n, "hidden", kind, name, module=self.module_path(), level=level, extra=extra)

    def identity_edges(self, src: torch.Tensor, dst: torch.Tensor, key: tuple) -> None:
        """Parameter-free edges of weight 1 (residual connections, structural ties)."""
        self.builder.add_edges(src, dst, self.builder.edge_color(key))

    def materialize(self, value):
        """``value`` on nodes of its own when it carries structural ops (``Features.ops``), else itself.

        One new node per channel, joined to the channel's node by a parameter-free edge coloured
        ``("structural", ("after", *ops))`` (and the node colour carries the ops too): the node's value is
        the op applied to the channel, so two channels are interchangeable only together with their ops.
        The new nodes are tied to the old ones (a channel permutation commutes with per-channel ops).
        """
        if not isinstance(value, Features) or not value.ops:
            return value
        uniq, inverse = torch.unique(value.nodes, return_inverse=True)
        after = with_ops((), value.ops)
        names = ", ".join(o[0] for o in value.ops)
        new = self.new_hidden(uniq.numel(), "structural", f"{self.where()} after {names}", uniq, extra=after)
        self.identity_edges(uniq, new, with_ops(("structural",), value.ops))
        self.builder.declare(SymmetryDecl("tie", uniq, f"{names} at {self.where()}", other=new))
        return Features(new[inverse], value.shape, value.axis, value.pos, value.num_pos, owned=True)


def _resolve(ctx: EncodeContext, a):
    if isinstance(a, Ref):
        return ctx.values[a.name]
    if isinstance(a, tuple | list):
        return type(a)(_resolve(ctx, x) for x in a)
    if isinstance(a, slice):
        return slice(_resolve(ctx, a.start), _resolve(ctx, a.stop), _resolve(ctx, a.step))
    return a


def _mark_outputs(ctx: EncodeContext, value) -> None:
    b = ctx.builder
    if isinstance(value, tuple | list):
        for v in value:
            _mark_outputs(ctx, v)
        return
    if isinstance(value, dict):
        for v in value.values():
            _mark_outputs(ctx, v)
        return
    if isinstance(value, LazyInput):
        value = ctx.features(value, -1)
    if not isinstance(value, Features):
        return
    value = ctx.materialize(value)
    nodes = value.unique_nodes()
    if any(b.role(int(i)) != "hidden" for i in nodes.tolist()):
        # outputs that are inputs (or already outputs): give them their own output nodes
        new = b.add_nodes(nodes.numel(), "output", "output", "output", level=b.level_of(nodes) + 1)
        ctx.identity_edges(nodes, new, ("identity", "output"))
        return
    b.set_role(nodes, "output")


def encode_model(model: nn.Module, spec: ModelSpec, builder: GraphBuilder) -> EncodeContext:
    """Walk the traced ops, dispatching each to its encoder."""
    from . import encoders  # noqa: F401  (registers the built-in encoders)

    ctx = EncodeContext(builder, model, spec)
    for op in spec.ops:
        ctx.op = op
        if op.op == "placeholder":
            ctx.values[op.name] = LazyInput(op.shape, op.name) if op.shape is not None else None
            continue
        if op.op == "get_attr":
            t = _get_attr(model, op.target)
            ctx.values[op.name] = ParamRef(op.target, t) if isinstance(t, torch.Tensor) else t
            continue
        if op.op == "output":
            _mark_outputs(ctx, _resolve(ctx, op.args[0]))
            continue
        args = _resolve(ctx, op.args)
        if op.kwargs:
            kwargs = {k: _resolve(ctx, v) for k, v in op.kwargs}
            args = tuple(args) + (kwargs,)
        if op.op == "call_module":
            module = model.get_submodule(op.target)
            fn = encoder_for_module(module)
            if fn is None:
                raise UnsupportedModuleError(
                    op.target, f"no encoder for module type {type(module).__module__}.{type(module).__qualname__}"
                )
        else:
            module = None
            fn = encoder_for_function(op.target)
            if fn is None and _is_namedtuple_class(op.target):
                # a namedtuple of outputs (torchvision's GoogLeNetOutputs, InceptionOutputs): a tuple of values
                pos = tuple(a for a in args if not isinstance(a, dict))
                kw = next((a for a in args if isinstance(a, dict)), {})
                ctx.values[op.name] = pos + tuple(kw[f] for f in op.target._fields[len(pos) :] if f in kw)
                continue
            if fn is None:
                name = op.target if isinstance(op.target, str) else getattr(op.target, "__name__", repr(op.target))
                raise UnsupportedModuleError(
                    op.name,
                    f"no encoder for the operation '{name}' ({op.op})",
                    "Wrap the code that uses it in a module and register an encoder for that module with "
                    "@symgraph.register_encoder(YourModuleType), or register the function with "
                    "@symgraph.register_function(fn).",
                )
        if not reads_ops(module, op.target):
            args = _materialized(ctx, args)
        ctx.values[op.name] = fn(ctx, op, module, args)
    return ctx


def _is_namedtuple_class(t) -> bool:
    return isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields")


def _materialized(ctx: EncodeContext, a):
    """``a`` with every value that carries structural ops on nodes of its own (see ``materialize``)."""
    if isinstance(a, Features):
        return ctx.materialize(a)
    if isinstance(a, tuple | list):
        return type(a)(_materialized(ctx, x) for x in a)
    if isinstance(a, dict):
        return {k: _materialized(ctx, v) for k, v in a.items()}
    return a


def _get_attr(model: nn.Module, target: str):
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_kwargs(args: tuple) -> tuple[tuple, dict]:
    """Encoders receive kwargs as a trailing dict; split them off."""
    if args and isinstance(args[-1], dict):
        return tuple(args[:-1]), args[-1]
    return tuple(args), {}
