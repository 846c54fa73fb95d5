"""The ``torch.export`` front end: an ``ExportedProgram`` (or the ATen ``GraphModule`` of a ``.pt2`` file) ->
the same :class:`~symgraph.trace.ModelSpec` the torch.fx front end produces, encoded by the same encoders.

torch.fx cannot trace most Hugging Face models (data-dependent control flow, item assignment on proxies);
``torch.export.export(model, args, strict=False)`` runs the model's Python code on fake tensors and records
high-level ATen ops (``aten.linear``, ``aten.conv2d``, ``aten.layer_norm``, ``aten.embedding``,
``aten.scaled_dot_product_attention``, ...). This module turns that graph into ``OpSpec``\\ s:

- **modules with a registered encoder** (``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ...) are exported
  with ``preserve_module_call_signature``, so the program records exactly what each call received and
  returned; the ATen ops inside such a call are collapsed back into one ``call_module`` op with those
  arguments: the op the fx front end would have recorded for that leaf, handled by the same encoder;
- **every other ATen op** is mapped by :data:`ATEN_OPS` to the functional form the encoders register
  (``aten.linear`` -> ``F.linear``, ``aten.add`` -> ``operator.add``, ``aten.view`` -> ``"view"``, ...).
  Ops whose encoders are registered for modules only (convolutions, norms, embeddings) become a
  ``call_module`` op on a stand-in ``torch.nn`` module built from the op's arguments and holding the
  program's own parameter tensors (:data:`STANDIN_OPS`);
- **parameters and buffers** are resolved through the program's graph signature (or, in a ``.pt2``
  ``GraphModule``, its ``get_attr`` targets) to their state_dict names, so ``to_state_dict()`` is
  bit-identical to ``model.state_dict()``;
- **input-independent values** (attention masks built from constants, ``arange`` position ids, lifted
  constants, non-persistent buffers) are evaluated now (constant folding) and reach the encoders as constants;
- **embedding ids computed from the inputs without parameters** (RoBERTa's position ids from
  ``input_ids != padding_idx``, ``cumsum``, ``gather``) become one ``input_index`` op when only embeddings
  read them: automorphisms fix the inputs, so such ids never change (``_Converter._fuse_input_indices``);
- anything else raises :class:`~symgraph.errors.UnsupportedModuleError` naming the ATen op and the module
  path (from the node's ``nn_module_stack``).

Example
-------
>>> import torch, torch.nn as nn, symgraph
>>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
>>> g = symgraph.parameter_graph(m, example_input=torch.zeros(1, 3), tracer="export")
>>> g.meta["tracer"], g.num_edges
('export', 26)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

from .errors import ShapeMismatchError, TraceError, UnsupportedModuleError
from .registry import encoder_for_function, encoder_for_module
from .trace import ModelSpec, OpSpec, Ref

__all__ = [
    "ATEN_OPS",
    "AtenMapping",
    "STANDIN_OPS",
    "StandIn",
    "constant_mask_kind",
    "ProgramView",
    "export_model",
    "is_aten_graph_module",
    "program_spec",
    "graph_module_spec",
    "CONSTANT_PREFIX",
]

#: Folded constants reach the encoders as ``get_attr`` ops of this name prefix on the :class:`ProgramView`.
CONSTANT_PREFIX = "_symgraph_constant_"


# ---------------------------------------------------------------------------------------------- the op table
@dataclass(frozen=True)
class AtenMapping:
    """How one ATen op is recorded: ``opcode`` and ``target`` of the OpSpec, and an optional argument adapter
    ``adapt(args, kwargs, node) -> (args, kwargs)`` (e.g. ``aten.select(x, d, i)`` -> ``x[:, ..., i]``)."""

    opcode: str
    target: Any
    adapt: Callable | None = None


def _rank(node_arg) -> int:
    val = node_arg.meta.get("val") if isinstance(node_arg, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        raise ShapeMismatchError("a tensor operand with a recorded shape", f"{type(val).__name__}")
    return val.dim()


def _view(args, kwargs, node):
    return (args[0], tuple(node.meta["val"].shape)), {}


def _select(args, kwargs, node):
    x, dim, idx = args[0], args[1], args[2]
    return (x, (slice(None),) * (dim % _rank(x)) + (idx,)), {}


def _slice(args, kwargs, node):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    start = args[2] if len(args) > 2 else kwargs.get("start")
    end = args[3] if len(args) > 3 else kwargs.get("end")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    size = x.meta["val"].shape[dim]
    start = None if start in (None, 0) else start
    end = None if end is None or end >= size else end
    step = None if step == 1 else step
    return (x, (slice(None),) * (dim % _rank(x)) + (slice(start, end, step),)), {}


def _drop_kwargs(*names):
    def adapt(args, kwargs, node):
        return args, {k: v for k, v in kwargs.items() if k not in names}

    return adapt


def _first_arg(args, kwargs, node):
    return (args[0],), {}


def _add_like(args, kwargs, node):
    alpha = kwargs.get("alpha", 1)
    if alpha != 1:
        if isinstance(args[1], int | float):
            return (args[0], args[1] * alpha), {}
        raise UnsupportedModuleError(_module_path(node), f"'{_aten_name(node.target)}' with alpha={alpha}")
    return tuple(args[:2]), {}


def _rsub(args, kwargs, node):
    a, b = _add_like(args, kwargs, node)[0]
    return (b, a), {}


def _softmax(args, kwargs, node):
    return (args[0], args[1]), {}


def _mean(args, kwargs, node):
    kw = {k: v for k, v in kwargs.items() if k == "keepdim"}
    return tuple(args[:3]), kw


def _sdpa(args, kwargs, node):
    names = ("attn_mask", "dropout_p", "is_causal")
    kw = dict(zip(names, args[3:]))
    kw.update(kwargs)
    return tuple(args[:3]), {k: v for k, v in kw.items() if not (k == "enable_gqa" and v is False)}


def constant_mask_kind(mask: torch.Tensor, q_len: int, k_len: int) -> str | None:
    """What a constant attention mask does: ``"none"`` (it masks nothing: all True, or all 0 when added),
    ``"causal"`` (exactly ``is_causal=True``: position i sees positions <= i), or None (anything else).

    Additive masks count as masking an entry only where it is -inf or at most half the dtype's lowest value
    (where softmax's exponent underflows to exactly 0, as in Hugging Face's masks).
    """
    try:
        m = mask.expand(*mask.shape[:-2], q_len, k_len)
    except RuntimeError:
        return None
    if m.dtype == torch.bool:
        keep = m
    elif m.is_floating_point():
        low = torch.finfo(m.dtype).min / 2
        if not bool(((m == 0) | (m <= low)).all()):
            return None
        keep = m == 0
    else:
        return None
    if bool(keep.all()):
        return "none"
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril()
    if bool((keep == causal).all()):
        return "causal"
    return None


def _pool(args, kwargs, node):
    """aten's pooling ops spell "stride = kernel size" as an empty list; the functionals as None."""
    args = list(args)
    if len(args) > 2 and isinstance(args[2], list | tuple) and len(args[2]) == 0:
        args[2] = None
    return tuple(args), kwargs


def _pad_mode(mode: str):
    def adapt(args, kwargs, node):
        return (args[0], tuple(args[1]), mode), {}

    return adapt


def _constant_pad(args, kwargs, node):
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    return (args[0], tuple(args[1]), "constant", value), {}


def _pad(args, kwargs, node):
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    return (args[0], tuple(args[1]), mode) + ((value,) if value is not None else ()), {}


def _upsample(mode: str, align: bool):
    """``aten.upsample_<mode>(x, output_size, [align_corners,] scales...)`` -> ``F.interpolate``."""

    def adapt(args, kwargs, node):
        vals = list(args[1:])
        size = vals.pop(0) if vals else kwargs.get("output_size")
        align_corners = (vals.pop(0) if vals else kwargs.get("align_corners")) if align else None
        scales = vals[0] if len(vals) == 1 and isinstance(vals[0], list | tuple | type(None)) else vals or None
        kw = {"mode": mode}
        if size is not None:
            kw["size"] = tuple(size)
        elif scales is not None:
            kw["scale_factor"] = tuple(float(s) for s in scales)
        if align:
            kw["align_corners"] = align_corners
        return (args[0],), kw

    return adapt


_ACTIVATIONS = {
    "relu": F.relu,
    "relu_": F.relu,
    "gelu": F.gelu,
    "gelu_": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "silu_": F.silu,
    "sin": torch.sin,
    "cos": torch.cos,
    "exp": torch.exp,
    "neg": operator.neg,
    "elu": F.elu,
    "celu": F.celu,
    "selu": F.selu,
    "leaky_relu": F.leaky_relu,
    "softplus": F.softplus,
    "mish": F.mish,
    "hardtanh": F.hardtanh,
    "hardtanh_": F.hardtanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "softsign": F.softsign,
    "log_sigmoid": F.logsigmoid,
}

#: ATen op (overload packet name, e.g. ``"linear"`` for ``aten.linear.default``) -> how it is recorded.
#: Extending it: ``ATEN_OPS["my_op"] = AtenMapping("call_function", my_fn)`` with ``my_fn`` registered by
#: ``@symgraph.register_function(my_fn)``; or register an encoder for the raw op
#: (``@symgraph.register_function(torch.ops.aten.my_op.default)``), which is used as is.
ATEN_OPS: dict[str, AtenMapping] = {
    "linear": AtenMapping("call_function", F.linear),
    "scaled_dot_product_attention": AtenMapping("call_function", F.scaled_dot_product_attention, _sdpa),
    "matmul": AtenMapping("call_function", operator.matmul),
    "bmm": AtenMapping("call_function", operator.matmul),
    "mm": AtenMapping("call_function", operator.matmul),
    "softmax": AtenMapping("call_function", F.softmax, _softmax),
    "_softmax": AtenMapping("call_function", F.softmax, _softmax),
    "add": AtenMapping("call_function", operator.add, _add_like),
    "add_": AtenMapping("call_function", operator.add, _add_like),
    "sub": AtenMapping("call_function", operator.sub, _add_like),
    "rsub": AtenMapping("call_function", operator.sub, _rsub),
    "mul": AtenMapping("call_function", operator.mul),
    "mul_": AtenMapping("call_function", operator.mul),
    "div": AtenMapping("call_function", operator.truediv),
    "pow": AtenMapping("call_function", operator.pow),
    "view": AtenMapping("call_method", "view", _view),
    "reshape": AtenMapping("call_method", "view", _view),
    "_unsafe_view": AtenMapping("call_method", "view", _view),
    "unflatten": AtenMapping("call_method", "view", _view),
    "squeeze": AtenMapping("call_method", "view", _view),
    "unsqueeze": AtenMapping("call_method", "view", _view),
    "flatten": AtenMapping("call_function", torch.flatten),
    "transpose": AtenMapping("call_function", torch.transpose),
    "permute": AtenMapping("call_function", torch.permute),
    "t": AtenMapping("call_method", "t"),
    "expand": AtenMapping("call_method", "expand", _first_arg),
    "repeat": AtenMapping("call_method", "repeat", _first_arg),
    "select": AtenMapping("call_function", operator.getitem, _select),
    "slice": AtenMapping("call_function", operator.getitem, _slice),
    "cat": AtenMapping("call_function", torch.cat),
    "concat": AtenMapping("call_function", torch.cat),
    "split": AtenMapping("call_function", torch.split),
    "split_with_sizes": AtenMapping("call_function", torch.split),
    "chunk": AtenMapping("call_function", torch.chunk),
    "unbind": AtenMapping("call_function", torch.unbind),
    "mean": AtenMapping("call_function", torch.mean, _mean),
    "sum": AtenMapping("call_function", torch.sum, _mean),
    "amax": AtenMapping("call_function", torch.amax, _mean),
    "dropout": AtenMapping("call_function", F.dropout, _first_arg),
    "native_dropout": AtenMapping("call_function", F.dropout, _first_arg),
    "clone": AtenMapping("call_method", "clone", _first_arg),
    "contiguous": AtenMapping("call_method", "contiguous", _first_arg),
    "alias": AtenMapping("call_method", "clone", _first_arg),
    "detach": AtenMapping("call_method", "detach", _first_arg),
    "lift_fresh_copy": AtenMapping("call_method", "clone", _first_arg),
    "_to_copy": AtenMapping("call_method", "to", _first_arg),
    "to": AtenMapping("call_method", "to", _first_arg),
    "type_as": AtenMapping("call_method", "to", _first_arg),
    "amin": AtenMapping("call_function", torch.amin, _mean),
    "roll": AtenMapping("call_function", torch.roll),
    "flip": AtenMapping("call_function", torch.flip),
    "adaptive_avg_pool1d": AtenMapping("call_function", F.adaptive_avg_pool1d),
    "adaptive_avg_pool2d": AtenMapping("call_function", F.adaptive_avg_pool2d),
    "adaptive_avg_pool3d": AtenMapping("call_function", F.adaptive_avg_pool3d),
    "avg_pool1d": AtenMapping("call_function", F.avg_pool1d, _pool),
    "avg_pool2d": AtenMapping("call_function", F.avg_pool2d, _pool),
    "avg_pool3d": AtenMapping("call_function", F.avg_pool3d, _pool),
    "max_pool1d": AtenMapping("call_function", F.max_pool1d, _pool),
    "max_pool2d": AtenMapping("call_function", F.max_pool2d, _pool),
    "max_pool3d": AtenMapping("call_function", F.max_pool3d, _pool),
    "pad": AtenMapping("call_function", F.pad, _pad),
    "constant_pad_nd": AtenMapping("call_function", F.pad, _constant_pad),
    **{f"reflection_pad{d}d": AtenMapping("call_function", F.pad, _pad_mode("reflect")) for d in (1, 2, 3)},
    **{f"replication_pad{d}d": AtenMapping("call_function", F.pad, _pad_mode("replicate")) for d in (1, 2, 3)},
    "_pad_circular": AtenMapping("call_function", F.pad, _pad_mode("circular")),
    **{
        f"upsample_nearest{d}d": AtenMapping("call_function", F.interpolate, _upsample("nearest", False))
        for d in (1, 2, 3)
    },
    **{
        f"_upsample_nearest_exact{d}d": AtenMapping("call_function", F.interpolate, _upsample("nearest-exact", False))
        for d in (1, 2, 3)
    },
    "upsample_linear1d": AtenMapping("call_function", F.interpolate, _upsample("linear", True)),
    "upsample_bilinear2d": AtenMapping("call_function", F.interpolate, _upsample("bilinear", True)),
    "upsample_bicubic2d": AtenMapping("call_function", F.interpolate, _upsample("bicubic", True)),
    "upsample_trilinear3d": AtenMapping("call_function", F.interpolate, _upsample("trilinear", True)),
    "rms_norm": AtenMapping("call_function", F.rms_norm),
    **{name: AtenMapping("call_function", fn) for name, fn in _ACTIVATIONS.items()},
}

#: ATen ops with several outputs of which only the first is a value of the model (the rest are indices or
#: masks): ``getitem(op, 0)`` is the op's value itself, any other output used is unsupported.
FIRST_OUTPUT_OPS = {
    "max_pool1d_with_indices": AtenMapping("call_function", F.max_pool1d, _pool),
    "max_pool2d_with_indices": AtenMapping("call_function", F.max_pool2d, _pool),
    "max_pool3d_with_indices": AtenMapping("call_function", F.max_pool3d, _pool),
    "adaptive_max_pool1d": AtenMapping("call_function", F.adaptive_max_pool1d, _first_arg),
    "adaptive_max_pool2d": AtenMapping("call_function", F.adaptive_max_pool2d, _first_arg),
    "adaptive_max_pool3d": AtenMapping("call_function", F.adaptive_max_pool3d, _first_arg),
    "native_dropout": AtenMapping("call_function", F.dropout, _first_arg),
}

#: Ops that never carry a value of the model (shape checks, metadata asserts): dropped.
IGNORED_OPS = frozenset(
    {
        "_assert_tensor_metadata",
        "_assert_scalar",
        "_assert_async",
        "sym_constrain_range",
        "sym_constrain_range_for_size",
        "_functional_sym_constrain_range",
        "_functional_sym_constrain_range_for_size",
    }
)


#: Ops whose value depends only on their tensor operand's shape and dtype (``input_ids.new_ones(...)``,
#: ``torch.zeros_like(x)``): constants of the program even when that operand is an input.
SHAPE_ONLY_OPS = frozenset({"new_ones", "new_zeros", "new_full", "ones_like", "zeros_like", "full_like"})


def _aten_name(target) -> str:
    """``aten.linear.default`` -> ``"aten.linear"``; other targets by their name."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}"
    return getattr(target, "__name__", str(target))


def _packet(target) -> str | None:
    return target._opname if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten" else None


def _module_stack(node: fx.Node) -> list[tuple[str, str, str]]:
    """``[(key, path, type name), ...]`` from the outermost module to the innermost."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, value in stack.items():
        path, ty = value if isinstance(value, tuple | list) else (str(value), "")
        ty = ty if isinstance(ty, str) else f"{ty.__module__}.{ty.__qualname__}"
        out.append((str(key), str(path), ty))
    return out


def _module_path(node: fx.Node) -> str:
    stack = [s for s in _module_stack(node) if s[1]]
    return stack[-1][1] if stack else ""


def _call_id(key: str, path: str) -> str:
    """The module-call id torch.export uses in ``module_call_graph`` (``"l"``, then ``"l@1"`` for a second call)."""
    return path + ("@" + key.rsplit("@", 1)[1] if "@" in key else "")


# ---------------------------------------------------------------------------------------------- stand-in modules
def _owner(fqns: Mapping[str, str | None], where: str) -> str:
    """The common owner path of ``{attr: fqn}`` (every fqn must be ``owner.attr``), or raise."""
    owners = set()
    for attr, fqn in fqns.items():
        if fqn is None:
            continue
        owner, _, name = fqn.rpartition(".")
        if name != attr:
            raise UnsupportedModuleError(
                where,
                f"a parameter '{fqn}' used as the {attr} of a layer that is not a registered module "
                f"(the encoders name it '<module>.{attr}')",
            )
        owners.add(owner)
    if len(owners) > 1:
        raise UnsupportedModuleError(where, f"one layer's parameters from several modules ({sorted(owners)})")
    return owners.pop() if owners else ""


def _set_tensor(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    if name in module._parameters:
        if isinstance(tensor, nn.Parameter) or tensor is None:
            module._parameters[name] = tensor
            return
        del module._parameters[name]
        module.register_buffer(name, tensor)
        return
    module._buffers[name] = tensor


def _args_of(node: fx.Node, names: tuple[str, ...], defaults: tuple) -> dict[str, Any]:
    vals = dict(zip(names, defaults))
    vals.update(zip(names, node.args))
    vals.update({k: v for k, v in node.kwargs.items() if k in names})
    return vals


def _conv_standin(node, tensors, fqns):
    a = _args_of(
        node,
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        (None, None, None, 1, 0, 1, 1),
    )
    w = tensors["weight"]
    nd = w.dim() - 2
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]

    def tup(v):
        if isinstance(v, str):  # padding="same" / "valid"
            return v
        v = (v,) if isinstance(v, int) else tuple(v)
        return v * nd if len(v) == 1 else v

    m = cls(
        w.shape[1] * a["groups"],
        w.shape[0],
        tuple(w.shape[2:]),
        stride=tup(a["stride"]),
        padding=tup(a["padding"]),
        dilation=tup(a["dilation"]),
        groups=a["groups"],
        bias=tensors.get("bias") is not None,
        device="meta",
    )
    _set_tensor(m, "weight", w)
    if tensors.get("bias") is not None:
        _set_tensor(m, "bias", tensors["bias"])
    return m, (a["input"],)


def _norm_standin(node, tensors, fqns, instance: bool):
    a = _args_of(
        node,
        ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"),
        (None, None, None, None, None, False, 0.1, 1e-5),
    )
    x = a["input"]
    rank = _rank(x)
    C = x.meta["val"].shape[1]
    family = (
        {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}
        if instance
        else {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    )
    if rank not in family:
        raise UnsupportedModuleError(_module_path(node), f"'{_aten_name(node.target)}' of a {rank}-D input")
    m = family[rank](
        C,
        eps=float(a["eps"]),
        momentum=a["momentum"],
        affine=tensors.get("weight") is not None,
        track_running_stats=tensors.get("running_mean") is not None,
        device="meta",
    )
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if tensors.get(attr) is not None:
            _set_tensor(m, attr, tensors[attr])
    if "num_batches_tracked" in m._buffers:
        _set_tensor(m, "num_batches_tracked", tensors.get("num_batches_tracked"))
    return m, (x,)


def _layer_norm_standin(node, tensors, fqns):
    a = _args_of(node, ("input", "normalized_shape", "weight", "bias", "eps"), (None, None, None, None, 1e-5))
    m = nn.LayerNorm(
        tuple(a["normalized_shape"]),
        eps=float(a["eps"]),
        elementwise_affine=tensors.get("weight") is not None,
        bias=tensors.get("bias") is not None,
        device="meta",
    )
    for attr in ("weight", "bias"):
        if tensors.get(attr) is not None:
            _set_tensor(m, attr, tensors[attr])
    return m, (a["input"],)


def _group_norm_standin(node, tensors, fqns):
    a = _args_of(node, ("input", "num_groups", "weight", "bias", "eps"), (None, None, None, None, 1e-5))
    C = a["input"].meta["val"].shape[1]
    m = nn.GroupNorm(int(a["num_groups"]), C, eps=float(a["eps"]), affine=tensors.get("weight") is not None)
    m = m.to("meta")
    for attr in ("weight", "bias"):
        if tensors.get(attr) is not None:
            _set_tensor(m, attr, tensors[attr])
    return m, (a["input"],)


def _embedding_standin(node, tensors, fqns):
    a = _args_of(node, ("weight", "indices", "padding_idx"), (None, None, -1))
    w = tensors["weight"]
    pad = None if a["padding_idx"] in (-1, None) else int(a["padding_idx"])
    m = nn.Embedding(w.shape[0], w.shape[1], padding_idx=pad, device="meta")
    _set_tensor(m, "weight", w)
    return m, (a["indices"],)


@dataclass(frozen=True)
class StandIn:
    """An ATen op recorded as a ``call_module`` on a stand-in ``torch.nn`` module: which of its arguments are
    the module's tensors (``{attr: argument position}``), and how the module is built."""

    tensors: tuple[tuple[str, int], ...]
    build: Callable


#: ATen ops whose encoders are registered for ``torch.nn`` modules only.
STANDIN_OPS: dict[str, StandIn] = {
    "conv1d": StandIn((("weight", 1), ("bias", 2)), _conv_standin),
    "conv2d": StandIn((("weight", 1), ("bias", 2)), _conv_standin),
    "conv3d": StandIn((("weight", 1), ("bias", 2)), _conv_standin),
    "batch_norm": StandIn(
        (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)),
        lambda n, t, f: _norm_standin(n, t, f, instance=False),
    ),
    "instance_norm": StandIn(
        (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)),
        lambda n, t, f: _norm_standin(n, t, f, instance=True),
    ),
    "layer_norm": StandIn((("weight", 2), ("bias", 3)), _layer_norm_standin),
    "group_norm": StandIn((("weight", 2), ("bias", 3)), _group_norm_standin),
    "embedding": StandIn((("weight", 0),), _embedding_standin),
}


# ---------------------------------------------------------------------------------------------- the view
class ProgramView(nn.Module):
    """What the encoders see as ``ctx.model`` for an exported program: the model (or the ``.pt2`` module),
    plus the stand-in modules of :data:`STANDIN_OPS` at their paths and the folded constants.

    Nothing is copied: parameters are the model's own tensors.
    """

    def __init__(self, base: nn.Module, standins: dict[str, nn.Module], constants: dict[str, torch.Tensor]):
        super().__init__()
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_standins", standins)
        object.__setattr__(self, "_constants", constants)

    def get_submodule(self, target: str) -> nn.Module:
        if target in self._standins:
            return self._standins[target]
        return self._base.get_submodule(target) if target else self._base

    def __getattr__(self, name: str):
        consts = self.__dict__.get("_constants", {})
        if name in consts:
            return consts[name]
        return getattr(self.__dict__["_base"], name)

    def __repr__(self) -> str:
        base = type(self._base).__name__
        return f"ProgramView({base}, standins={len(self._standins)}, constants={len(self._constants)})"


# ---------------------------------------------------------------------------------------------- export
def _leaf_paths(model: nn.Module) -> list[str]:
    """Paths of the outermost submodules with a registered leaf encoder (what fx makes leaves)."""
    from . import encoders  # noqa: F401  (registers the built-in encoders)

    out: list[str] = []
    for path, m in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in out):
            continue
        fn = encoder_for_module(m)
        leaf = getattr(fn, "leaf", True)  # a bool, or a predicate of the module (as in trace._Tracer)
        if fn is not None and (leaf(m) if callable(leaf) else leaf):
            out.append(path)
    return out


def export_model(model: nn.Module, args: tuple, kwargs: dict | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export(model, args, kwargs, strict=False)`` in eval mode, with the call signatures of the
    registered leaf modules preserved (see the module docstring); without them if export refuses them.

    Raises :class:`~symgraph.errors.TraceError` with torch.export's first line when the model cannot be exported.
    """
    was_training = model.training
    model.eval()
    try:
        leaves = tuple(_leaf_paths(model))
        try:
            return torch.export.export(model, args, kwargs or {}, strict=False, preserve_module_call_signature=leaves)
        except Exception:  # noqa: BLE001 - e.g. a leaf called with non-tensor outputs: export without them
            if not leaves:
                raise
            return torch.export.export(model, args, kwargs or {}, strict=False)
    except Exception as exc:  # torch.export raises many types; users get one clear error
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TraceError(
            f"torch.export could not export {type(model).__name__} (non-strict): {type(exc).__name__}: {text}"
        ) from None
    finally:
        model.train(was_training)


def is_aten_graph_module(model: nn.Module) -> bool:
    """True for a ``GraphModule`` of ATen ops (what ``ExportedProgram.module()`` and ``.pt2`` files give)."""
    if not isinstance(model, fx.GraphModule):
        return False
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes)


def program_spec(ep: torch.export.ExportedProgram, model: nn.Module) -> tuple[ModelSpec, ProgramView]:
    """The :class:`ModelSpec` of an exported ``model`` and the module its encoders read (a :class:`ProgramView`)."""
    sig = ep.graph_signature
    state: dict[str, str] = {}
    consts: dict[str, torch.Tensor] = {}
    persistent = set(model.state_dict().keys())
    for name, fqn in {**sig.inputs_to_parameters, **sig.inputs_to_buffers}.items():
        if fqn in persistent:
            state[name] = fqn
        else:  # a non-persistent buffer: a constant of the program (e.g. position ids)
            consts[name] = _get(model, fqn)
    for name, fqn in sig.inputs_to_lifted_tensor_constants.items():
        consts[name] = ep.constants[fqn]
    user_inputs = list(sig.user_inputs)
    sigs = {}
    for entry in ep.module_call_graph:
        if entry.fqn and entry.signature is not None:
            sigs[entry.fqn] = entry.signature
    conv = _Converter(ep.graph, model, state, consts, user_inputs, list(sig.user_outputs), sigs)
    return conv.run()


def graph_module_spec(gm: fx.GraphModule) -> tuple[ModelSpec, ProgramView]:
    """The :class:`ModelSpec` of an ATen ``GraphModule`` (``ExportedProgram.module()``, a loaded ``.pt2``)."""
    state: dict[str, str] = {}
    consts: dict[str, torch.Tensor] = {}
    persistent = set(gm.state_dict().keys())
    user_inputs, user_outputs = [], []
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            if n.target in persistent:
                state[n.name] = n.target
            else:
                value = _get(gm, n.target)
                if not isinstance(value, torch.Tensor):
                    raise UnsupportedModuleError(n.target, f"a non-tensor attribute ({type(value).__name__})")
                consts[n.name] = value
        elif n.op == "placeholder":
            user_inputs.append(n.name)
        elif n.op == "output":
            user_outputs = [a.name if isinstance(a, fx.Node) else a for a in pytree.tree_leaves(n.args[0])]
    conv = _Converter(gm.graph, gm, state, consts, user_inputs, user_outputs, {})
    return conv.run()


def _get(model: nn.Module, fqn: str):
    obj: Any = model
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj


def _meta(node: fx.Node) -> tuple[tuple[int, ...] | None, torch.dtype | None]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape), val.dtype
    return None, None


def _is_random(target) -> bool:
    tags = getattr(target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


class _Converter:
    """One pass over an ATen graph, emitting OpSpecs in topological order (see the module docstring)."""

    def __init__(self, graph, model, state, consts, user_inputs, user_outputs, sigs):
        self.graph = graph
        self.model = model
        self.state = state  # node name -> state_dict name (parameters and persistent buffers)
        # node name -> value (folded); copies, so that folding an in-place op never touches the model's buffers
        self.consts = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in consts.items()}
        self.user_inputs = user_inputs
        self.user_outputs = user_outputs
        self.sigs = sigs
        self.nodes = {n.name: n for n in graph.nodes}
        self.ops: list[OpSpec] = []
        self.emitted: set[str] = set()
        self.alias: dict[str, str] = {}
        self.standins: dict[str, nn.Module] = {}
        self.view_consts: dict[str, torch.Tensor] = {}
        self.blocked: list[tuple[str, str, str]] = []  # (aten op, module path, module type)
        self.group_of: dict[str, str] = {}  # node name -> call id of its collapsed leaf module
        self.groups_done: set[str] = set()
        self._find_groups()
        self.fused: dict[str, tuple] = {}  # node name -> (target, args, kwargs) of a decomposed functional
        self.absorbed: set[str] = set()  # the nodes of its decomposition, not emitted
        self._fuse_input_indices()
        self._fuse_normalize()
        self._fuse_rotary()

    # -------------------------------------------------------------------------- decomposed functionals
    def _fuse_normalize(self) -> None:
        """``F.normalize(x, p, dim, eps)``, which export decomposes into ``x / linalg_vector_norm(x, p, [dim],
        keepdim=True).clamp_min(eps).expand_as(x)``, back into one op (each inner value read only by the next)."""

        def only(n, packet):
            return isinstance(n, fx.Node) and _packet(n.target) == packet and len(n.users) == 1

        for n in self.graph.nodes:
            if n.op != "call_function" or _packet(n.target) != "div" or len(n.args) != 2 or n.kwargs:
                continue
            x, d = n.args
            inner = []
            if only(d, "expand_as") and d.args[1] is x:
                inner.append(d)
                d = d.args[0]
            if not (only(d, "clamp_min") and len(d.args) == 2 and isinstance(d.args[1], int | float)):
                continue
            eps, norm = d.args[1], d.args[0]
            if not (only(norm, "linalg_vector_norm") and norm.args[0] is x and not norm.kwargs):
                continue
            p, dims, keep = (list(norm.args[1:]) + [2, None, False])[:3]
            if not (keep and isinstance(dims, list | tuple) and len(dims) == 1):
                continue
            inner += [d, norm]
            self.fused[n.name] = (F.normalize, (x,), {"p": float(p), "dim": int(dims[0]), "eps": float(eps)})
            self.absorbed.update(m.name for m in inner)

    def _fuse_rotary(self) -> None:
        """Llama's rotary embedding ``x * cos + cat(-x[..., d/2:], x[..., :d/2]) * sin``, decomposed by export
        into mul/slice/neg/cat/mul/add, back into one op (:func:`symgraph.encoders.attention.rotary_embedding`).
        Only the structure is matched here; the encoder checks that ``cos`` and ``sin`` are constants."""
        from .encoders.attention import rotary_embedding

        def only(n, packet):
            return isinstance(n, fx.Node) and _packet(n.target) == packet and len(n.users) == 1

        def last_slice(n, x, start, end):
            if not (only(n, "slice") and n.args[0] is x):
                return False
            rank, d = _rank(x), x.meta["val"].shape[-1]
            dim, lo, hi = (list(n.args[1:4]) + [0, None, None])[:3]
            step = n.args[4] if len(n.args) > 4 else 1
            hi = d if hi is None or hi >= d else hi
            return dim % rank == rank - 1 and (lo or 0) == start and hi == end and step == 1

        def split_mul(n):
            if not only(n, "mul") or len(n.args) != 2 or not all(isinstance(a, fx.Node) for a in n.args):
                return None
            return n.args

        for n in self.graph.nodes:
            if n.op != "call_function" or _packet(n.target) != "add" or len(n.args) != 2 or n.kwargs:
                continue
            pa, pb = split_mul(n.args[0]), split_mul(n.args[1])
            if pa is None or pb is None:
                continue
            for m1, m2 in ((pa, pb), (pb, pa)):
                hit = None
                for x, cos in (m1, m1[::-1]):
                    for cat, sin in (m2, m2[::-1]):
                        if not (only(cat, "cat") and isinstance(x.meta.get("val"), torch.Tensor)):
                            continue
                        pieces = cat.args[0]
                        dim = cat.args[1] if len(cat.args) > 1 else 0
                        d = x.meta["val"].shape[-1]
                        if len(pieces) != 2 or dim % _rank(x) != _rank(x) - 1 or d % 2:
                            continue
                        neg, low = pieces
                        if not (only(neg, "neg") and last_slice(neg.args[0], x, d // 2, d)):
                            continue
                        if last_slice(low, x, 0, d // 2):
                            hit = (x, cos, sin, [n.args[0], n.args[1], cat, neg, neg.args[0], low])
                if hit is not None:
                    x, cos, sin, inner = hit
                    self.fused[n.name] = (rotary_embedding, (x, cos, sin), {})
                    self.absorbed.update(m.name for m in inner)
                    break

    # -------------------------------------------------------------------------- leaf-module groups
    def _find_groups(self) -> None:
        members: dict[str, list[fx.Node]] = {}
        for n in self.graph.nodes:
            if n.op != "call_function":
                continue
            for key, path, _ in _module_stack(n):
                cid = _call_id(key, path)
                if cid in self.sigs:
                    members.setdefault(cid, []).append(n)
                    break
        for cid, nodes in members.items():
            inside = {n.name for n in nodes}
            outs = {a.name for a in self.sigs[cid].outputs if hasattr(a, "name")}
            leaks = [n for n in nodes if n.name not in outs and any(u.name not in inside for u in n.users)]
            noops = [n for n in leaks if self._is_noop_of_input(n, inside)]
            if len(noops) < len(leaks):
                continue  # values of the call used outside it that it does not return: map its ops one by one
            for n in noops:
                self.alias[n.name] = self.alias.get(n.args[0].name, n.args[0].name)
            for n in nodes:
                self.group_of[n.name] = cid

    #: ops that return their operand unchanged when dtype and shape stay the same
    _NOOP_OPS = frozenset({"to", "_to_copy", "alias", "clone", "contiguous", "detach", "type_as", "lift_fresh_copy"})

    def _is_noop_of_input(self, n: fx.Node, inside: set[str]) -> bool:
        """Whether ``n`` is a call's input unchanged (``x.to(torch.float32)`` of a float32 ``x`` at the top of
        Hugging Face's RMS norms): torch.export records the caller's later uses of ``x`` (the residual) on it,
        so it leaks out of the call; made an alias of the input, the call can still be one op."""
        src = n.args[0] if n.args else None
        if _packet(n.target) not in self._NOOP_OPS or not isinstance(src, fx.Node) or src.name in inside:
            return False
        a, b = src.meta.get("val"), n.meta.get("val")
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)

    def _emit_group(self, cid: str) -> None:
        sig = self.sigs[cid]
        inside = {k for k, v in self.group_of.items() if v == cid}
        flat = []
        for a in sig.inputs:
            if hasattr(a, "name") and type(a).__name__ == "TensorArgument":
                flat.append(self._ref(self.nodes[a.name]))
            elif type(a).__name__ == "ConstantArgument":
                flat.append(a.value)
            else:
                raise UnsupportedModuleError(cid, f"a module input of kind {type(a).__name__}")
        args, kwargs = pytree.tree_unflatten(flat, sig.in_spec)
        path = cid.split("@", 1)[0]
        outs = [getattr(a, "name", None) for a in sig.outputs]
        structure = pytree.tree_unflatten(list(range(len(outs))), sig.out_spec)
        users = lambda name: [u for u in self.nodes[name].users if u.name not in inside]  # noqa: E731
        if isinstance(structure, int):
            name = outs[0]
            if name not in inside:
                return  # the call returns its input (nn.Identity, eval-mode dropout): refs to it stay as they are
            shape, dtype = _meta(self.nodes[name])
            self._add(
                OpSpec(
                    name,
                    "call_module",
                    path,
                    tuple(args),
                    tuple(sorted(kwargs.items())),
                    shape,
                    dtype,
                    len(users(name)),
                )
            )
            return
        name = self._unique(cid.replace(".", "_").replace("@", "_") + "_call")
        n_used = sum(1 for o in outs if o in inside and users(o))
        self._add(OpSpec(name, "call_module", path, tuple(args), tuple(sorted(kwargs.items())), None, None, n_used))
        self._emit_getitems(name, structure, outs, inside, users)

    def _emit_getitems(self, parent: str, structure, outs, inside, users) -> None:
        items = structure.items() if isinstance(structure, dict) else enumerate(structure)
        for key, sub in items:
            if isinstance(sub, int):
                out = outs[sub]
                if out not in inside:
                    continue  # the call returns one of its inputs (or a parameter): refs to it stay as they are
                shape, dtype = _meta(self.nodes[out])
                self._add(
                    OpSpec(
                        out, "call_function", operator.getitem, (Ref(parent), key), (), shape, dtype, len(users(out))
                    )
                )
            else:
                name = self._unique(f"{parent}_{key}")
                self._add(OpSpec(name, "call_function", operator.getitem, (Ref(parent), key), (), None, None, 1))
                self._emit_getitems(name, sub, outs, inside, users)

    # -------------------------------------------------------------------------- helpers
    def _unique(self, name: str) -> str:
        base, k = name, 0
        while name in self.nodes or name in self.emitted:
            k += 1
            name = f"{base}_{k}"
        return name

    def _add(self, op: OpSpec) -> None:
        self.ops.append(op)
        self.emitted.add(op.name)

    def _ref(self, a):
        if isinstance(a, fx.Node):
            name = self.alias.get(a.name, a.name)
            if name in self.consts:
                value = self.consts[name]
                if not isinstance(value, torch.Tensor):
                    return value
                if value.dim() == 0:  # a scalar constant (x * torch.tensor(2.0)): a plain number
                    return value.item()
                if name not in self.emitted:
                    attr = CONSTANT_PREFIX + name
                    self.view_consts[attr] = value
                    node = self.nodes.get(name)
                    self._add(
                        OpSpec(
                            name,
                            "get_attr",
                            attr,
                            (),
                            (),
                            tuple(value.shape),
                            value.dtype,
                            len(node.users) if node is not None else 1,
                        )
                    )
                return Ref(name)
            if name in self.state and name not in self.emitted:
                node = self.nodes[name]
                shape, dtype = _meta(node)
                self._add(OpSpec(name, "get_attr", self.state[name], (), (), shape, dtype, len(node.users)))
            return Ref(name)
        if isinstance(a, tuple | list):
            return type(a)(self._ref(x) for x in a)
        if isinstance(a, dict):
            return {k: self._ref(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self._ref(a.start), self._ref(a.stop), self._ref(a.step))
        return a

    def _real(self, a):
        """The folded value of a constant argument."""
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, fx.Node):
            return self.consts[self.alias.get(a.name, a.name)]
        if isinstance(a, tuple | list):
            return type(a)(self._real(x) for x in a)
        if isinstance(a, dict):
            return {k: self._real(v) for k, v in a.items()}
        return a

    def _is_const(self, n: fx.Node) -> bool:
        if (
            not isinstance(n.target, torch._ops.OpOverload | torch._ops.OpOverloadPacket)
            and n.target is not operator.getitem
        ):
            return False
        if _is_random(n.target):
            return False
        deps = n.all_input_nodes
        if _packet(n.target) in SHAPE_ONLY_OPS:
            deps = deps[1:]
        return all(self.alias.get(d.name, d.name) in self.consts for d in deps)

    def _block(self, n: fx.Node, what: str | None = None) -> None:
        stack = [s for s in _module_stack(n) if s[1]]
        path, ty = (stack[-1][1], stack[-1][2]) if stack else ("", "")
        self.blocked.append((what or _aten_name(n.target), path, ty))

    # -------------------------------------------------------------------------- the pass
    def run(self) -> tuple[ModelSpec, ProgramView]:
        first_input = None
        for n in self.graph.nodes:
            if n.op == "placeholder" and n.name in self.user_inputs:
                shape, dtype = _meta(n)
                if shape is None and "val" in n.meta and not isinstance(n.meta["val"], torch.Tensor):
                    self.consts[n.name] = n.meta["val"]  # a constant user input (e.g. return_dict=False)
                    continue
                if first_input is None and shape is not None:
                    first_input = shape
                self._add(
                    OpSpec(
                        n.name, "placeholder", n.target, (), (), shape, None if shape is None else dtype, len(n.users)
                    )
                )
        for n in self.graph.nodes:
            if n.op in ("placeholder", "get_attr"):
                continue
            if n.op == "output":
                outs = tuple(
                    self._ref(self.nodes[o]) if isinstance(o, str) and o in self.nodes else o for o in self.user_outputs
                )
                self._add(OpSpec("output", "output", "output", (outs,), (), None, None, 0))
                continue
            if n.op == "call_module":  # ExportedProgram.module()'s input guard: no value of the model
                if n.users:
                    raise UnsupportedModuleError(str(n.target), "a module call inside an ATen graph")
                continue
            if n.name in self.absorbed:
                continue
            if n.name in self.group_of:
                cid = self.group_of[n.name]
                if cid not in self.groups_done:
                    self.groups_done.add(cid)
                    self._emit_group(cid)
                continue
            self._convert(n)
        if self.blocked:
            ops = sorted({b[0] for b in self.blocked})
            aten, path, ty = self.blocked[0]
            where = f"module '{path}' ({ty})" if path else "the model's own forward"
            more = f" ({len(self.blocked)} unsupported ops in all: {', '.join(ops)})" if len(self.blocked) > 1 else ""
            raise UnsupportedModuleError(
                path,
                f"no encoder for the ATen operation '{aten}' (torch.export front end) in {where}{more}",
                "Register an encoder for the module that uses it with @symgraph.register_encoder(ModuleType), "
                "or map the ATen op to a registered function in symgraph.export.ATEN_OPS.",
            )
        input_shape = first_input if first_input is not None else ()
        model_type = type(self.model).__name__
        spec = ModelSpec(tuple(self.ops), tuple(input_shape), model_type, tuple(self.model.state_dict().keys()))
        return spec, ProgramView(self.model, self.standins, self.view_consts)

    def _convert(self, n: fx.Node) -> None:
        target = n.target
        name = _packet(target)
        if n.name in self.fused:
            fn, args, kwargs = self.fused[n.name]
            shape, dtype = _meta(n)
            refs = self._ref(args), tuple(sorted(kwargs.items()))
            self._add(OpSpec(n.name, "call_function", fn, *refs, shape, dtype, len(n.users)))
            return
        if target is operator.getitem:
            src = n.args[0]
            src_name = self.alias.get(src.name, src.name) if isinstance(src, fx.Node) else None
            if src_name in self.consts:
                self.consts[n.name] = self.consts[src_name][n.args[1]]
                return
            if isinstance(src, fx.Node) and _packet(src.target) in FIRST_OUTPUT_OPS:
                if n.args[1] == 0:
                    self.alias[n.name] = src_name
                elif n.users:
                    self._block(n, f"{_aten_name(src.target)} output {n.args[1]}")
                return
        if name is not None and name.endswith("_") and not name.startswith("_"):
            first = n.args[0] if n.args else None
            if not isinstance(first, fx.Node) or len(first.users) != 1 or first.name in self.state:
                # an in-place op is recorded (or folded) as its out-of-place form: right only when nothing
                # else reads the mutated operand, directly or through a view of it, and it is not a weight
                self._block(n, f"{_aten_name(target)} (in place, on a value read elsewhere)")
                return
        mutates_const = name is not None and name.endswith("_") and self._is_const(n)
        if name in IGNORED_OPS or (not n.users and name is not None and not mutates_const):
            return  # a metadata assert, or a value nothing reads: no part of the model's function
        # an in-place op on a constant (``mask[0] = False``: copy_ into a view of it) is folded, which mutates
        # the folded constant through the view, as the program does; dropping it would lose the mutation
        if self._is_const(n):
            args = n.args
            if name in SHAPE_ONLY_OPS and isinstance(args[0], fx.Node) and args[0].name not in self.consts:
                val = args[0].meta["val"]  # only its shape and dtype matter
                args = (torch.zeros(val.shape, dtype=val.dtype),) + tuple(args[1:])
            try:
                self.consts[n.name] = target(*self._real(args), **self._real(n.kwargs))
                return
            except Exception:  # noqa: BLE001 - not evaluable now: encode it like any other op
                pass
        shape, dtype = _meta(n)
        if target is operator.getitem:
            self._add(
                OpSpec(
                    n.name,
                    "call_function",
                    operator.getitem,
                    (self._ref(n.args[0]), n.args[1]),
                    (),
                    shape,
                    dtype,
                    len(n.users),
                )
            )
            return
        if name == "where" and self._fold_where(n):
            return
        if name in STANDIN_OPS:
            self._standin(n, name, shape, dtype)
            return
        mapping = ATEN_OPS.get(name) or FIRST_OUTPUT_OPS.get(name)
        if mapping is None:
            if encoder_for_function(target) is not None or encoder_for_function(
                getattr(target, "overloadpacket", None)
            ):
                raw = target if encoder_for_function(target) is not None else target.overloadpacket
                self._add(
                    OpSpec(
                        n.name,
                        "call_function",
                        raw,
                        self._ref(tuple(n.args)),
                        tuple(sorted(self._ref(dict(n.kwargs)).items())),
                        shape,
                        dtype,
                        len(n.users),
                    )
                )
                return
            self._block(n)
            return
        if mapping.opcode == "call_function" and encoder_for_function(mapping.target) is None:
            self._block(n)
            return
        if mapping.opcode == "call_method" and encoder_for_function(mapping.target) is None:
            self._block(n)
            return
        args, kwargs = tuple(n.args), dict(n.kwargs)
        if mapping.adapt is not None:
            args, kwargs = mapping.adapt(args, kwargs, n)
        if name == "scaled_dot_product_attention":
            kwargs = self._fold_mask(args, kwargs)
        if mapping.target == "view" and isinstance(args[0], fx.Node) and _meta(args[0])[0] == shape:
            mapping, args, kwargs = AtenMapping("call_method", "clone"), (args[0],), {}  # a no-op reshape
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory", "layout", "memory_format")}
        self._add(
            OpSpec(
                n.name,
                mapping.opcode,
                mapping.target,
                self._ref(tuple(args)),
                tuple(sorted(self._ref(kwargs).items())),
                shape,
                dtype,
                len(n.users),
            )
        )

    def _fold_where(self, n: fx.Node) -> bool:
        """``torch.where(cond, x, other)`` with a constant ``cond`` that selects ``x`` everywhere (a padding mask
        of ones, as T5 builds without an attention mask) is ``x`` itself, when broadcasting keeps ``x``'s shape."""
        cond, x = n.args[0], n.args[1] if len(n.args) > 1 else None
        if not isinstance(cond, fx.Node) or not isinstance(x, fx.Node) or cond.name == x.name:
            return False
        value = self.consts.get(self.alias.get(cond.name, cond.name))
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or not bool(value.all()):
            return False
        if _meta(x)[0] != _meta(n)[0]:
            return False
        self.alias[n.name] = self.alias.get(x.name, x.name)
        return True

    def _fold_mask(self, args, kwargs) -> dict:
        """A constant mask that masks nothing is dropped; a constant causal mask becomes ``is_causal=True``."""
        mask = kwargs.get("attn_mask")
        if not isinstance(mask, fx.Node) or self.alias.get(mask.name, mask.name) not in self.consts:
            return kwargs
        value = self.consts[self.alias.get(mask.name, mask.name)]
        q_len, k_len = args[0].meta["val"].shape[-2], args[1].meta["val"].shape[-2]
        kind = constant_mask_kind(value, q_len, k_len) if isinstance(value, torch.Tensor) else None
        if kind is None or (kind == "causal" and kwargs.get("is_causal")):
            return kwargs
        out = {k: v for k, v in kwargs.items() if k != "attn_mask"}
        if kind == "causal":
            out["is_causal"] = True
        return out

    def _standin(self, n: fx.Node, name: str, shape, dtype) -> None:
        rule = STANDIN_OPS[name]
        tensors: dict[str, torch.Tensor | None] = {}
        fqns: dict[str, str | None] = {}
        vals = dict(zip(range(len(n.args)), n.args))
        for attr, pos in rule.tensors:
            a = vals.get(pos, n.kwargs.get(attr))
            if a is None:
                tensors[attr], fqns[attr] = None, None
                continue
            if not isinstance(a, fx.Node) or a.name not in self.state:
                self._block(n, f"{_aten_name(n.target)} with a computed or constant {attr}")
                return
            fqns[attr] = self.state[a.name]
            tensors[attr] = _get(self.model, self.state[a.name])
        where = _module_path(n) or n.name
        try:
            owner = _owner(fqns, where)
        except UnsupportedModuleError:
            self._block(n, f"{_aten_name(n.target)} with parameters not named <module>.weight/bias")
            return
        if not any(v is not None for v in fqns.values()):
            owner = where if where not in self.standins else self._unique(n.name)
        elif not owner:
            self._block(n, f"{_aten_name(n.target)} on parameters of the root module (name them in a submodule)")
            return
        if name in ("batch_norm", "instance_norm") and owner:
            nbt = f"{owner}.num_batches_tracked"
            if nbt in self.model.state_dict():
                tensors["num_batches_tracked"] = _get(self.model, nbt)
        module, inputs = rule.build(n, tensors, fqns)
        existing = self.standins.get(owner)
        if existing is not None and repr(existing) != repr(module):
            self._block(n, f"{_aten_name(n.target)} reusing '{owner}' with other settings")
            return
        self.standins[owner] = module
        self._add(OpSpec(n.name, "call_module", owner, self._ref(tuple(inputs)), (), shape, dtype, len(n.users)))

    # -------------------------------------------------------------------------- embedding ids from inputs
    def _fuse_input_indices(self) -> None:
        """An embedding index computed from model inputs and constants only (RoBERTa's position ids:
        ``cumsum(input_ids.ne(pad)) * input_ids.ne(pad) + pad``, and its token-type ids gathered at them) becomes
        one :func:`symgraph.encoders.embedding.input_index` op, its parameter-free ATen ops absorbed.

        Sound because automorphisms fix the inputs and never touch constants or integer buffers: the index is
        the same before and after any automorphism, and the embedding encoder gives every table row its own
        fixed node. Indices that depend on a parameter, and ops whose value is also used elsewhere, are left
        to the ordinary conversion (and refused there when no encoder reads them).
        """
        from .encoders.embedding import input_index

        free: dict[str, frozenset[str]] = {}  # parameter-free node -> the user inputs it depends on
        for n in self.graph.nodes:
            if n.op == "placeholder" or n.op == "get_attr":
                if n.name in self.user_inputs:
                    free[n.name] = frozenset({n.name})
                elif n.name in self.consts:
                    free[n.name] = frozenset()
                elif n.name in self.state:
                    t = _get(self.model, self.state[n.name])
                    if isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex()):
                        free[n.name] = frozenset()  # an integer buffer: never a parameter, never permuted
            elif (
                n.op == "call_function"
                and isinstance(n.target, torch._ops.OpOverload)
                and not _is_random(n.target)
                and not (_packet(n.target) or "").endswith("_")
                and all(d.name in free for d in n.all_input_nodes)
            ):
                free[n.name] = frozenset().union(*(free[d.name] for d in n.all_input_nodes))

        def is_index_use(u, idx) -> bool:
            return _packet(u.target) == "embedding" and len(u.args) > 1 and u.args[1] is idx and u.args[0] is not idx

        candidates = {}
        for n in self.graph.nodes:
            if n.op != "call_function" or _packet(n.target) != "embedding" or len(n.args) < 2:
                continue
            idx = n.args[1]
            if isinstance(idx, fx.Node) and idx.op == "call_function" and free.get(idx.name):
                candidates[idx.name] = idx  # computed from inputs (constants alone are folded)
        while candidates:
            absorbed = self._absorbed_by(candidates)
            # an index read by anything but embeddings (and the computations absorbed) stays an ordinary op
            bad = [
                k
                for k, idx in candidates.items()
                if not all(
                    is_index_use(u, idx) or u.name in absorbed or _packet(u.target) in IGNORED_OPS for u in idx.users
                )
            ]
            if not bad:
                break
            for k in bad:
                del candidates[k]
        else:
            return
        for k in candidates:
            inputs = tuple(self.nodes[i] for i in sorted(free[k]))
            self.fused[k] = (input_index, inputs, {})
        self.absorbed.update(absorbed)

    def _absorbed_by(self, fused: Mapping[str, fx.Node]) -> set[str]:
        """The ancestors of ``fused`` whose every use is inside the fused computations (metadata asserts aside)."""
        absorbed: set[str] = set()
        stack = [d for f in fused.values() for d in f.all_input_nodes]
        while stack:
            a = stack.pop()
            if a.op != "call_function" or a.name in absorbed or a.name in fused or a.name in self.absorbed:
                continue
            if all(u.name in absorbed or u.name in fused or _packet(u.target) in IGNORED_OPS for u in a.users):
                absorbed.add(a.name)
                stack.extend(a.all_input_nodes)
        return absorbed
