"""`parameter_graph(model)`: any ``nn.Module`` -> :class:`~symgraph.graph.NeuralGraph`."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from .builder import GraphBuilder
from .cli_util import one_line
from .errors import ShapeMismatchError, SymgraphError, TraceError, UnsupportedModuleError
from .graph import NeuralGraph
from .trace import EncodeContext, ModelSpec, _example_inputs, encode_model, trace_model

__all__ = ["parameter_graph", "encode_parameter_graph", "TRACERS"]

#: The front ends: ``"fx"`` (torch.fx symbolic tracing), ``"export"`` (torch.export, non-strict), ``"auto"``.
TRACERS = ("auto", "fx", "export")


def parameter_graph(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    encoding: str = "sound",
    tracer: str = "auto",
    example_kwargs: dict | None = None,
) -> NeuralGraph:
    """The parameter graph of ``model``: every parameter (and buffer) is one edge or one node feature.

    Parameters
    ----------
    model : nn.Module
        Any module torch.fx can trace or torch.export can export; modules with a registered encoder are
        leaves. An ATen ``GraphModule`` (``ExportedProgram.module()``, a ``.pt2`` file loaded by
        :func:`symgraph.io.load_model`) is encoded from its own graph.
    example_input, input_shape
        Needed where shapes matter (convolutions followed by flatten, transformers); inferred where the
        model says what it takes (see :func:`symgraph.trace.resolve_example_input`). ``example_input``
        may be a tuple of several positional inputs (torch.export front end).
    encoding : {"sound", "paper"}
        ``"paper"`` builds the paper's original encodings (identical Q/K/V edges, GroupNorm without group
        nodes, indistinguishable DeepSets edges) so that reports can show where they are unsound.
    tracer : {"auto", "fx", "export"}
        The front end. ``"fx"``: torch.fx symbolic tracing. ``"export"``: ``torch.export.export(...,
        strict=False)`` (see :mod:`symgraph.export`), which also takes the Hugging Face models fx cannot
        trace. ``"auto"`` (default): fx, and torch.export when fx cannot trace the model (a
        :class:`~symgraph.errors.TraceError`) or an encoder refuses an op of fx's trace (an
        :class:`~symgraph.errors.UnsupportedModuleError`; fx's error is raised if export fails too), when
        there are several or keyword inputs, or for an ATen ``GraphModule``. The one used is ``g.meta["tracer"]``.
    example_kwargs : dict, optional
        Keyword inputs of the example call (e.g. ``{"attention_mask": mask}``); torch.export only.

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    >>> g.num_edges == 4 * 8 + 8 + 8 * 1 + 1
    True
    >>> all((g.to_state_dict()[k] == v).all() for k, v in nn.Sequential().state_dict().items())
    True
    """
    if not isinstance(model, nn.Module):
        raise ShapeMismatchError("an nn.Module", type(model).__name__)
    state = model.state_dict(keep_vars=True)
    if not state:
        raise ShapeMismatchError("a model with parameters", f"{type(model).__name__} with none")
    if encoding not in ("sound", "paper"):
        raise ShapeMismatchError("encoding 'sound' or 'paper'", repr(encoding))
    if tracer not in TRACERS:
        raise ShapeMismatchError(f"tracer one of {TRACERS}", repr(tracer))
    g = _parameter_graph(model, example_input, input_shape, encoding, tracer, example_kwargs)
    params = dict(model.named_parameters())
    extra = {s.name for s in g.slots if s.location == "extra"}  # (a tied second name shares its first's place)
    unused = [k for k in (g.meta or {}).get("unencoded", ()) if k in params and k in extra]
    if not unused or model.training:
        return g
    # parameters the eval-mode forward never reads may be read in train mode (GoogLeNet's and Inception-v3's
    # auxiliary heads): their Φ would be left out, and train-mode outputs would change. Encode the train-mode
    # forward instead, which reads them; a model whose train-mode forward cannot be encoded is refused.
    # (torch.fx traces the mode the model is in; torch.export always traces eval mode, so the retry is fx's)
    model.train()
    try:
        if tracer == "export":
            raise TraceError("torch.export traces eval mode only")
        g_train = _parameter_graph(model, example_input, input_shape, encoding, "fx", example_kwargs)
    except SymgraphError as exc:
        raise UnsupportedModuleError(
            unused[0],
            f"parameters not read in eval mode ({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}) "
            f"that the train-mode forward may read, and that forward cannot be encoded ({one_line(exc)})",
            "Remove the unused parameters, or register an encoder for the op named.",
        ) from None
    finally:
        model.train(False)
    extra = {s.name for s in g_train.slots if s.location == "extra"}
    still = [k for k in (g_train.meta or {}).get("unencoded", ()) if k in params and k in extra]
    if len(still) == len(unused):
        return g  # parameters unused in both modes: the eval graph is the graph of both
    g_train.meta["mode"] = "train"
    return g_train


def _parameter_graph(model, example_input, input_shape, encoding, tracer, example_kwargs) -> NeuralGraph:
    spec, encode_root, used = _front_end(model, example_input, input_shape, tracer, example_kwargs)
    try:
        return encode_parameter_graph(model, spec, encoding, encode_root=encode_root, tracer=used)[0]
    except UnsupportedModuleError as fx_refusal:
        if tracer != "auto" or used != "fx":
            raise
        # fx traced the model but an encoder refused one of its ops: the export front end sees the same
        # function as ATen ops and fuses more patterns (e.g. position ids computed from the tokens); if it
        # fails too, fx's message (which names the module) is the one reported
        try:
            spec, encode_root, used = _export_front_end(model, example_input, input_shape, example_kwargs)
            return encode_parameter_graph(model, spec, encoding, encode_root=encode_root, tracer=used)[0]
        except (TraceError, UnsupportedModuleError):
            pass
        raise fx_refusal


def encode_parameter_graph(
    model: nn.Module,
    spec: ModelSpec,
    encoding: str = "sound",
    encode_root: nn.Module | None = None,
    tracer: str = "fx",
) -> tuple[NeuralGraph, EncodeContext]:
    """The parameter graph of an already traced ``model``, with the encoding context (the encoded value of
    every op, which :func:`symgraph.computation_graph` maps its neurons through, paper C.5).

    ``encode_root`` is the module the encoders read (the :class:`symgraph.export.ProgramView` of a
    torch.export spec; ``model`` itself for fx), ``tracer`` the front end that made ``spec``."""
    state = model.state_dict(keep_vars=True)
    builder = GraphBuilder(kind="parameter", encoding=encoding)
    ctx = encode_model(model if encode_root is None else encode_root, spec, builder)
    unencoded = [k for k in state if not builder.has_slot(k)]
    for k in unencoded:
        builder.add_extra(k, state[k].detach(), is_buffer=k not in dict(model.named_parameters()))
    g = builder.finalize(
        tuple(state.keys()),
        spec=spec,
        meta={"model_type": type(model).__name__, "unencoded": unencoded, "encoding": encoding, "tracer": tracer},
    )
    return g, ctx


def _front_end(model, example_input, input_shape, tracer: str, example_kwargs) -> tuple[ModelSpec, nn.Module, str]:
    """(spec, the module the encoders read, the front end used): see ``tracer`` in :func:`parameter_graph`."""
    from . import export as _export

    if _export.is_aten_graph_module(model):
        if tracer == "fx":
            raise TraceError(
                f"{type(model).__name__} is an ATen graph (torch.export); torch.fx cannot trace it: use "
                "tracer='export' or 'auto'"
            )
        spec, view = _export.graph_module_spec(model)
        return spec, view, "export"
    several = isinstance(example_input, tuple | list)
    if tracer == "fx" and (several or example_kwargs):
        raise ShapeMismatchError("one tensor input for tracer='fx'", "several or keyword inputs; use tracer='export'")
    fx_error = None
    if tracer in ("auto", "fx") and not several and not example_kwargs:
        try:
            spec, _ = trace_model(model, example_input, input_shape)
            return spec, model, "fx"
        except TraceError as exc:
            if tracer == "fx":
                raise
            fx_error = exc
    try:
        return _export_front_end(model, example_input, input_shape, example_kwargs)
    except TraceError as exc:
        if fx_error is None:
            raise
        # both front ends failed: fx's message names the module and the remedy; export's says why it failed too
        export_text = str(exc).replace(f"could not export {type(model).__name__}", "could not export it either")
        raise TraceError(f"{fx_error} {export_text}") from None


def _export_front_end(model, example_input, input_shape, example_kwargs) -> tuple[ModelSpec, nn.Module, str]:
    from . import export as _export
    from .input_shapes import remember_example_input

    if isinstance(example_input, tuple | list):
        candidates = [tuple(example_input)]
    elif example_input is None and input_shape is None and example_kwargs:
        candidates = [()]
    else:
        candidates = [(x,) for x in _example_inputs(model, example_input, input_shape)]
    kwargs = dict(example_kwargs or {})
    if "use_cache" not in kwargs and "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False  # a key/value cache is state for the next call, not part of this function
    for i, args in enumerate(candidates):
        try:
            ep = _export.export_model(model, args, kwargs)
            break
        except TraceError:
            if i + 1 == len(candidates):
                raise
    if args and isinstance(args[0], torch.Tensor):
        remember_example_input(model, args[0])  # later builds without an input get the same graph
    spec, view = _export.program_spec(ep, model)
    return spec, view, "export"
