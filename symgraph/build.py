"""`parameter_graph(model)`: any ``nn.Module`` -> :class:`~symgraph.graph.NeuralGraph`."""

from __future__ import annotations

import torch
import torch.nn as nn

from .builder import GraphBuilder
from .errors import ShapeMismatchError
from .graph import NeuralGraph
from .trace import EncodeContext, ModelSpec, encode_model, trace_model

__all__ = ["parameter_graph", "encode_parameter_graph"]


def parameter_graph(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    encoding: str = "sound",
) -> NeuralGraph:
    """The parameter graph of ``model``: every parameter (and buffer) is one edge or one node feature.

    Parameters
    ----------
    model : nn.Module
        Any module torch.fx can trace; modules with a registered encoder are leaves.
    example_input, input_shape
        Needed where shapes matter (convolutions followed by flatten, transformers). For models whose
        first layer is ``nn.Linear`` the input shape is inferred.
    encoding : {"sound", "paper"}
        ``"paper"`` builds the paper's original encodings (identical Q/K/V edges, GroupNorm without group
        nodes, indistinguishable DeepSets edges) so that reports can show where they are unsound.

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
    spec, _ = trace_model(model, example_input, input_shape)
    return encode_parameter_graph(model, spec, encoding)[0]


def encode_parameter_graph(
    model: nn.Module, spec: ModelSpec, encoding: str = "sound"
) -> tuple[NeuralGraph, EncodeContext]:
    """The parameter graph of an already traced ``model``, with the encoding context (the encoded value of
    every op, which :func:`symgraph.computation_graph` maps its neurons through, paper C.5)."""
    state = model.state_dict(keep_vars=True)
    builder = GraphBuilder(kind="parameter", encoding=encoding)
    ctx = encode_model(model, spec, builder)
    unencoded = [k for k in state if not builder.has_slot(k)]
    for k in unencoded:
        builder.add_extra(k, state[k].detach(), is_buffer=k not in dict(model.named_parameters()))
    g = builder.finalize(
        tuple(state.keys()),
        spec=spec,
        meta={"model_type": type(model).__name__, "unencoded": unencoded, "encoding": encoding},
    )
    return g, ctx
