"""Phi on real models: apply a node permutation of the parameter graph to a model's parameters and buffers.

``permute_model`` reads the model's *current* state into the graph layout, applies
:meth:`NeuralGraph.permute` (edge ``(phi(i), phi(j), c)`` takes the value of ``(i, j, c)``; node-stored
entries such as BatchNorm's gamma, beta and running statistics move with their nodes) and loads the
result into a deep copy. ``check_function_preservation`` compares the two models in float64, in train and
eval mode, including the running statistics a train-mode forward updates.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from .errors import ShapeMismatchError

__all__ = ["permute_model", "check_function_preservation", "graph_with_model_weights"]


def graph_with_model_weights(graph, model: nn.Module):
    """``graph`` (same structure) carrying ``model``'s current parameters and buffers."""
    state = model.state_dict()
    # the model's dtype wins (a float64 copy of a float32 model must not be rounded through the graph)
    dtype = graph.edge_weight.dtype
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        dtype = floats[0]
        for d in floats[1:]:
            dtype = torch.promote_types(dtype, d)
    ew = graph.edge_weight.to(dtype).clone()
    nw = graph.node_weight.to(dtype).clone()
    extras = dict(graph.extras)
    for s in graph.slots:
        if s.name not in state:
            raise ShapeMismatchError(f"state entry '{s.name}' in the model", "a model without it")
        t = state[s.name].detach()
        if tuple(t.shape) != tuple(s.shape):
            raise ShapeMismatchError(f"'{s.name}' of shape {tuple(s.shape)}", f"{tuple(t.shape)}")
        if s.location == "edge":
            ew[s.start : s.start + s.numel] = t.reshape(-1).to(ew.dtype)
        elif s.location == "node":
            nw[s.start : s.start + s.numel, s.column] = t.reshape(-1).to(nw.dtype)
        else:
            extras[s.name] = t.clone()
    return graph.with_weights(ew, nw, extras=extras)


def _state_like(graph, like: dict) -> dict:
    """``graph``'s state in the dtypes of ``like`` (``to_state_dict`` would cast to the dtypes the graph was
    built with: a float32 graph must not round a float64 model's permuted weights)."""
    out = {}
    for s in graph.slots:
        if s.location == "edge":
            t = graph.edge_weight[s.start : s.start + s.numel]
        elif s.location == "node":
            t = graph.node_weight[s.start : s.start + s.numel, s.column]
        else:
            t = graph.extras[s.name]
        out[s.name] = t.detach().reshape(s.shape).to(like[s.name].dtype).clone()
    return out


def permute_model(
    model: nn.Module,
    perm: torch.Tensor,
    example_input=None,
    graph=None,
    input_shape: tuple[int, ...] | None = None,
    check: bool = True,
) -> nn.Module:
    """A deep copy of ``model`` with Phi(perm) applied to its parameters and buffers.

    Parameters
    ----------
    model : nn.Module
    perm : LongTensor [N]
        Node permutation of the parameter graph (``perm[i]`` = image of ``i``); must be an automorphism.
    example_input, input_shape
        Used to build the parameter graph when ``graph`` is not given. Without them the input is inferred
        (:func:`symgraph.input_shapes.infer_example_input`), which includes the input the model's last
        parameter graph was built with: after ``aut = automorphism_group(cnn, input_shape=s)``,
        ``permute_model(cnn, aut.random_element())`` builds the same graph.
    graph : NeuralGraph or AutomorphismGroup, optional
        The model's parameter graph, or the group computed on it (``aut``: its ``aut.graph`` is used); its
        structure is used, the weights are read from ``model``. Saves rebuilding the graph.
    check : bool
        Refuse permutations that are not automorphisms (``ValueError``). With ``check=False`` any
        permutation that maps the coloured edge set onto itself is applied, even one moving fixed nodes
        (used by negative controls).

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> p = torch.tensor([0, 1, 3, 4, 2, 5, 6, 7])   # rotate the 3 hidden units (nodes 2, 3, 4)
    >>> x = torch.randn(5, 2)
    >>> torch.allclose(symgraph.permute_model(m, p)(x), m(x), atol=1e-6)
    True
    """
    graph = _parameter_graph_of(model, graph, example_input, input_shape)
    g = graph_with_model_weights(graph, model)
    state = model.state_dict()
    new_state = OrderedDict(_state_like(g.permute(torch.as_tensor(perm, dtype=torch.long), check=check), state))
    # the modules' state versions: some modules' loaders need them (torchvision's MNASNet refuses a state
    # without its version)
    new_state._metadata = getattr(state, "_metadata", None)
    out = copy.deepcopy(model)
    # strict=False, then our own check: a torch.export GraphModule asks for its non-persistent buffers (e.g.
    # position ids) in load_state_dict although its state_dict leaves them out; they are kept as they are
    missing, unexpected = out.load_state_dict(new_state, strict=False)
    lost = [k for k in missing if k in state] + list(unexpected)
    if lost:
        raise RuntimeError(f"permute_model: the permuted state does not match the model's keys ({lost[:3]})")
    return out


def _parameter_graph_of(model: nn.Module, graph, example_input, input_shape):
    """``graph`` itself, the graph of a group (``aut.graph``), or the model's parameter graph built here."""
    if graph is not None and not hasattr(graph, "edge_index") and hasattr(graph, "graph"):
        graph = graph.graph  # an AutomorphismGroup
    if graph is not None:
        kind = getattr(graph, "kind", "parameter")
        if kind != "parameter":
            raise ShapeMismatchError(
                "the model's parameter graph (or a group computed on it)", f"a {kind} graph's group or graph"
            )
        return graph
    from .build import parameter_graph

    return parameter_graph(model, example_input=example_input, input_shape=input_shape)


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _tensors(v)]
    return []


def _to_double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, list | tuple):
        return type(x)(_to_double(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_double(v) for k, v in x.items()}
    return x


def _set_mode(model: nn.Module, mode: str) -> None:
    model.train(mode == "train")
    if mode == "train":
        # dropout masks are drawn per position, so identical seeds give *different* masks to permuted
        # units: the function is preserved in distribution only. Compare with dropout switched off.
        for mod in model.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.eval()


_FUNCTIONAL_DROPOUTS = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")


@contextlib.contextmanager
def _functional_dropout_off() -> Iterator[None]:
    """``F.dropout`` and friends as the identity inside the block (dropout called as a function, e.g. in
    torchvision's Inception auxiliary heads, for the same reason as the modules in :func:`_set_mode`), and
    ``F.scaled_dot_product_attention`` with ``dropout_p=0`` (its dropout of the attention probabilities draws
    per-head masks, which differ between permuted heads)."""
    import torch.nn.functional as F

    saved = {name: getattr(F, name) for name in (*_FUNCTIONAL_DROPOUTS, "scaled_dot_product_attention")}
    sdpa = saved["scaled_dot_product_attention"]

    def sdpa_without_dropout(query, key, value, attn_mask=None, dropout_p=0.0, *args, **kwargs):
        # the attention-probability dropout inside SDPA (Hugging Face models pass dropout_p in train mode)
        return sdpa(query, key, value, attn_mask, 0.0, *args, **kwargs)

    try:
        for name in _FUNCTIONAL_DROPOUTS:
            setattr(F, name, lambda input, *args, **kwargs: input)
        F.scaled_dot_product_attention = sdpa_without_dropout
        yield
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)


class _NoDowncasts(torch.overrides.TorchFunctionMode):
    """Casts of float64 tensors to a lower-precision float are the identity inside the block.

    Some models cast on purpose inside their forward (Hugging Face's RMS norms compute their statistics in
    float32 even in a float64 model). The float64 check would then measure float32 rounding, which differs
    between permuted orders of a reduction (~1e-8), instead of the function. Keeping those values in float64
    evaluates the same arithmetic function at float64 precision."""

    _CASTS = {
        torch.Tensor.to,
        torch.Tensor.float,
        torch.Tensor.half,
        torch.Tensor.bfloat16,
        torch.Tensor.type,
        torch.Tensor.type_as,
        torch.ops.aten._to_copy.default,
        torch.ops.aten.to.dtype,
        torch.ops.aten.to.dtype_layout,
        torch.ops.aten.to.device,
    }
    _LOW = (torch.float32, torch.float16, torch.bfloat16)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self._CASTS and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            if args[0].dtype == torch.float64 and out.dtype in self._LOW:
                return args[0].to(device=out.device)
        return out


def check_function_preservation(
    model: nn.Module,
    perm: torch.Tensor,
    inputs,
    modes: Iterable[str] = ("train", "eval"),
    graph=None,
    example_input=None,
    input_shape=None,
    seed: int = 0,
) -> float:
    """Largest absolute difference between ``model`` and ``permute_model(model, perm)``, in float64.

    Both models are deep copies converted to float64. In ``"train"`` mode the comparison also covers the
    buffers the forward pass updates (BatchNorm running statistics): those of the permuted model must equal
    the original's updated buffers permuted by the same Phi. The RNG is seeded identically before each
    forward; dropout (modules, ``F.dropout`` calls and SDPA's ``dropout_p``) is switched off in train mode
    (see ``_set_mode``). Casts of float64 values to float32/16 inside the forward (Hugging Face's RMS norms)
    are kept in float64 (:class:`_NoDowncasts`), so the check measures the function, not float32 rounding.
    ``perm`` need not be an automorphism (this is a checker): a permutation that moves fixed nodes but maps
    the coloured edge set onto itself is applied as it is; one that does not even map the edge set onto
    itself has no Phi, and the result is ``inf``. ``graph`` may be the model's parameter graph or the group
    computed on it (``aut``); without it the graph is built with ``example_input`` / ``input_shape``, else
    with ``inputs[:1]``.

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> aut = symgraph.automorphism_group(m)
    >>> symgraph.check_function_preservation(m, aut.random_element(), torch.randn(4, 2)) < 1e-12
    True
    """
    base = copy.deepcopy(model).double()
    x = _to_double(inputs)
    if graph is None:
        ex = _to_double(example_input) if example_input is not None else None
        if ex is None and input_shape is None and isinstance(x, torch.Tensor):
            ex = x[:1]
        graph = _parameter_graph_of(base, None, ex, input_shape)
    else:
        graph = _parameter_graph_of(base, graph, None, None)
    perm = torch.as_tensor(perm, dtype=torch.long)
    try:
        permuted = permute_model(base, perm, graph=graph, check=False)
    except ValueError:
        return math.inf
    args = x if isinstance(x, tuple) else (x,)
    worst = 0.0
    for mode in modes:
        if mode not in ("train", "eval"):
            raise ShapeMismatchError("modes among 'train' and 'eval'", repr(mode))
        a, b = copy.deepcopy(base), copy.deepcopy(permuted)
        _set_mode(a, mode)
        _set_mode(b, mode)
        dropout_off = _functional_dropout_off() if mode == "train" else contextlib.nullcontext()
        with torch.no_grad(), dropout_off, _NoDowncasts():
            torch.manual_seed(seed)
            ya = a(*args)
            torch.manual_seed(seed)
            yb = b(*args)
        ta, tb = _tensors(ya), _tensors(yb)
        if len(ta) != len(tb):
            raise ShapeMismatchError(f"{len(ta)} output tensors", f"{len(tb)}")
        for p, q in zip(ta, tb, strict=True):
            worst = max(worst, float((p.double() - q.double()).abs().max()) if p.numel() else 0.0)
        if mode == "train":
            # the updated buffers of the original, permuted, must be the permuted model's updated buffers
            got = b.state_dict()
            expect = _state_like(graph_with_model_weights(graph, a).permute(perm, check=False), got)
            for name, t in expect.items():
                if t.is_floating_point() and name in got:
                    worst = max(worst, float((t.double() - got[name].double()).abs().max()) if t.numel() else 0.0)
    return worst
