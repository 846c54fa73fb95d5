"""``symgraph.align(reference, model)``: weight matching over a model's exact automorphism group.

The group of ``model``'s parameter graph (:func:`symgraph.automorphism_group`) says which units permute
together; :mod:`symgraph.align.problem` turns its factors into assignment problems and
:mod:`symgraph.align.descent` solves them by coordinate descent. The permutation found is an element of the
group, so the aligned model is ``Phi(perm)`` of the model (parameters and buffers) and computes the same
function.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..errors import ShapeMismatchError, SymgraphError
from .descent import Descent
from .problem import factors_of

__all__ = ["align", "weight_matching", "objective", "AlignResult", "check_same_architecture", "METHODS"]

METHODS = ("weights",)


@dataclass
class AlignResult:
    """Everything :func:`weight_matching` found and measured.

    ``aligned`` is ``Phi(perm)`` of the model; ``perm`` a LongTensor [N] node permutation in ``group``;
    ``objective_before``/``objective_after`` are ``<theta_ref, theta_model>`` before and after (float64, over
    all parameters and node-stored buffers); ``iterations`` counts passes over all factors (the initial sweep
    not included); ``seconds`` holds the time of each phase and ``total``.
    """

    aligned: nn.Module
    perm: torch.Tensor
    objective_before: float
    objective_after: float
    iterations: int
    converged: bool
    steps: int
    factors: list[str]
    group: object = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def relative_gain(self) -> float:
        """``(after - before) / |before|`` (inf when the objective started at 0 and rose)."""
        if self.objective_before == 0:
            return 0.0 if self.objective_after == 0 else float("inf")
        return (self.objective_after - self.objective_before) / abs(self.objective_before)

    def as_dict(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "relative_gain": self.relative_gain,
            "iterations": self.iterations,
            "converged": self.converged,
            "steps": self.steps,
            "num_factors": len(self.factors),
            "factors": list(self.factors),
            "seconds": dict(self.seconds),
        }


def check_same_architecture(reference: nn.Module, model: nn.Module) -> None:
    """Raise :class:`~symgraph.ShapeMismatchError` naming the first state entry where the two differ.

    Example
    -------
    >>> import torch.nn as nn
    >>> check_same_architecture(nn.Linear(2, 3), nn.Linear(2, 3))
    >>> try:
    ...     check_same_architecture(nn.Linear(2, 4), nn.Linear(2, 3))
    ... except ShapeMismatchError as e:
    ...     print(e)
    align: Expected the reference's 'weight' of shape (3, 2) as in the model (got shape (4, 2))
    """
    for name, what in (("reference", reference), ("model", model)):
        if not isinstance(what, nn.Module):
            raise ShapeMismatchError(f"the {name} to be an nn.Module", type(what).__name__, "align")
    ref, mod = reference.state_dict(), model.state_dict()
    for k, v in mod.items():
        if k not in ref:
            raise ShapeMismatchError(f"the reference to have the model's {k!r}", "a reference without it", "align")
        if tuple(ref[k].shape) != tuple(v.shape):
            raise ShapeMismatchError(
                f"the reference's {k!r} of shape {tuple(v.shape)} as in the model",
                f"shape {tuple(ref[k].shape)}",
                "align",
            )
    extra = [k for k in ref if k not in mod]
    if extra:
        raise ShapeMismatchError(f"only the model's {len(mod)} state entries in the reference", repr(extra[0]), "align")


def _structure_difference(ref_graph, graph) -> str | None:
    """The first difference between two parameter graphs' structures (not their weights), or None."""
    if ref_graph.num_nodes != graph.num_nodes:
        return f"{ref_graph.num_nodes} nodes instead of {graph.num_nodes}"
    if ref_graph.num_edges != graph.num_edges:
        return f"{ref_graph.num_edges} edges instead of {graph.num_edges}"
    roles_ref = [ref_graph.node_color_keys[c] for c in ref_graph.node_color.tolist()]
    roles = [graph.node_color_keys[c] for c in graph.node_color.tolist()]
    if roles_ref != roles:
        bad = next(i for i, (a, b) in enumerate(zip(roles_ref, roles, strict=True)) if a != b)
        grp = graph.group_of(bad)
        return f"other node roles (first at node {bad}{', ' + grp.name if grp else ''})"
    ids: dict = {}
    keys_ref = np.asarray([ids.setdefault(k, len(ids)) for k in ref_graph.edge_color_keys], dtype=np.int64)
    keys = np.asarray([ids.setdefault(k, len(ids)) for k in graph.edge_color_keys], dtype=np.int64)
    same = (ref_graph.edge_index == graph.edge_index).all(dim=0)
    if len(keys_ref) and len(keys):
        same &= torch.from_numpy(keys_ref[ref_graph.edge_color.numpy()] == keys[graph.edge_color.numpy()])
    if not bool(same.all()):
        e = int(torch.nonzero(~same).flatten()[0])
        where = graph.edge_param[e]
        return f"other wiring (first at edge {e}" + (f" of {where[0]!r})" if where else ", a parameter-free edge)")
    if [(s.name, s.location, s.start, s.numel, s.column) for s in ref_graph.slots] != [
        (s.name, s.location, s.start, s.numel, s.column) for s in graph.slots
    ]:
        return "another parameter layout"
    return None


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _arrays(graph, model: nn.Module, ignore: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(edge_weight, node_weight)`` of ``model`` in ``graph``'s layout; parameter-free edges and the
    state entries named in ``ignore`` (exact names or module prefixes) set to 0."""
    from ..permute import graph_with_model_weights

    g = graph_with_model_weights(graph, model)
    ew = g.edge_weight.detach().to(torch.float64).numpy().copy()
    nw = g.node_weight.detach().to(torch.float64).numpy().copy().reshape(graph.num_nodes, -1)
    ew[~graph.edge_param.has_param().numpy()] = 0.0
    for s in graph.slots:
        if not _matches(s.name, ignore):
            continue
        if s.location == "edge":
            ew[s.start : s.start + s.numel] = 0.0
        elif s.location == "node":
            nw[s.start : s.start + s.numel, s.column] = 0.0
    return ew, nw


def weight_matching(
    reference: nn.Module,
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    method: str = "weights",
    max_iter: int = 100,
    seed: int = 0,
    group=None,
    sweep: bool = True,
    nested: bool = True,
    ignore: Collection[str] = (),
    check_structure: bool = True,
) -> AlignResult:
    """Weight matching of ``model`` onto ``reference`` over ``model``'s automorphism group, with statistics.

    :func:`align` is this function returning ``(aligned, perm)``. The extra options are for studies and
    tests: ``group`` reuses an :class:`~symgraph.AutomorphismGroup` of the model's parameter graph (aligning
    many models of one architecture); ``sweep=False`` starts the descent at the identity, as Git Re-Basin
    does; ``nested=False`` scores blocks (heads, norm groups) by their section alone, without optimising
    their inner units; ``ignore`` leaves the named state entries (or module prefixes) out of the objective;
    ``check_structure=False`` skips building the reference's parameter graph (state entries and shapes are
    still compared).

    Example
    -------
    >>> import torch, symgraph
    >>> from symgraph.align import weight_matching
    >>> from symgraph.models import build_model
    >>> _ = torch.manual_seed(0)
    >>> a = build_model("mlp", hidden=(16,)).double()
    >>> aut = symgraph.automorphism_group(a)
    >>> b = symgraph.permute_model(a, aut.random_element(torch.Generator().manual_seed(0)))
    >>> res = weight_matching(a, b, group=aut)
    >>> res.objective_after >= res.objective_before, res.converged
    (True, True)
    >>> all(torch.equal(res.aligned.state_dict()[k], v) for k, v in a.state_dict().items())
    True
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ShapeMismatchError(f"method in {METHODS}", repr(method), "align")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ShapeMismatchError("max_iter >= 1", repr(max_iter), "align")
    check_same_architecture(reference, model)
    from ..build import parameter_graph

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if group is None:
        graph = parameter_graph(model, example_input=example_input, input_shape=input_shape)
    else:
        graph = group.graph
    seconds["graph"] = time.perf_counter() - t
    if check_structure:
        t = time.perf_counter()
        ex = example_input
        if ex is None and input_shape is None and graph.spec is not None:
            ex = torch.zeros(tuple(graph.spec.input_shape))
        pairs = [("reference", reference)] + ([("model", model)] if group is not None else [])
        for name, other in pairs:
            other_graph = parameter_graph(other, example_input=_like(ex, other), input_shape=input_shape)
            diff = _structure_difference(other_graph, graph)
            if diff is not None:
                what = "the model's architecture" if name == "reference" else "the group's architecture"
                raise ShapeMismatchError(f"a {name} of {what}", f"a parameter graph with {diff}", "align")
        seconds["check"] = time.perf_counter() - t
    t = time.perf_counter()
    if group is None:
        from ..automorphisms.group import automorphism_group

        group = automorphism_group(graph)
    seconds["group"] = time.perf_counter() - t
    t = time.perf_counter()
    factors = factors_of(group)
    ew_ref, nw_ref = _arrays(graph, reference, ignore)
    ew, nw = _arrays(graph, model, ignore)
    descent = Descent(graph, factors, ew_ref, nw_ref, ew, nw, nested=nested)
    seconds["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = descent.run(max_iter=int(max_iter), seed=int(seed), sweep=sweep)
    seconds["descent"] = time.perf_counter() - t
    t = time.perf_counter()
    perm = torch.from_numpy(descent.perm.copy())
    if not descent.certify(graph.node_color.numpy()):
        raise SymgraphError("internal: Expected the matching permutation to lie in the automorphism group")
    aligned = _permuted_copy(graph, model, descent.perm, descent.src_of)
    seconds["apply"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    if ignore:
        # report the objective of the real weights, not of the reduced problem
        before = _objective(graph, reference, model)
        after = _objective(graph, reference, aligned)
    else:
        before, after = stats.objective_before, stats.objective_after
    return AlignResult(
        aligned=aligned,
        perm=perm,
        objective_before=before,
        objective_after=after,
        iterations=stats.iterations,
        converged=stats.converged,
        steps=stats.steps,
        factors=[f.name for f in factors],
        group=group,
        seconds=seconds,
    )


def _permuted_copy(graph, model: nn.Module, perm: np.ndarray, src_of: np.ndarray) -> nn.Module:
    """A deep copy of ``model`` holding ``Phi(perm)`` of its state: edge ``e`` takes the value of edge
    ``src_of[e]``, node ``perm[i]`` the node parameters of node ``i`` (what :func:`symgraph.permute_model`
    computes, without sorting the edges again)."""
    from ..permute import graph_with_model_weights

    g = graph_with_model_weights(graph, model)
    ew = g.edge_weight[torch.from_numpy(src_of)]
    nw = torch.empty_like(g.node_weight)
    nw[torch.from_numpy(perm)] = g.node_weight
    state = model.state_dict()
    new = {}
    for s in graph.slots:
        if s.location == "edge":
            t = ew[s.start : s.start + s.numel]
        elif s.location == "node":
            t = nw[s.start : s.start + s.numel, s.column]
        else:
            t = g.extras[s.name]
        new[s.name] = t.detach().reshape(s.shape).to(state[s.name].dtype).clone()
    out = copy.deepcopy(model)
    out.load_state_dict(new)
    return out


def _like(ex, model: nn.Module):
    if ex is None:
        return None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return ex.to(dtype) if dtype is not None and ex.is_floating_point() else ex


def _objective(graph, reference: nn.Module, model: nn.Module) -> float:
    a_e, a_n = _arrays(graph, reference, ())
    b_e, b_n = _arrays(graph, model, ())
    return float(a_e @ b_e) + float(np.sum(a_n * b_n))


def objective(reference: nn.Module, model: nn.Module, graph=None) -> float:
    """The weight-matching objective ``<theta_ref, theta_model>`` (float64; parameters and node-stored
    buffers of the parameter graph; parameter-free edges left out).

    Example
    -------
    >>> import torch.nn as nn
    >>> m = nn.Linear(2, 1, bias=False)
    >>> abs(objective(m, m) - float((m.weight.detach().double() ** 2).sum())) < 1e-12
    True
    """
    if graph is None:
        from ..build import parameter_graph

        graph = parameter_graph(model)
    return _objective(graph, reference, model)


def align(
    reference: nn.Module,
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] | None = None,
    method: str = "weights",
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor]:
    """Permute ``model``'s units to match ``reference``'s weights, over ``model``'s exact symmetry group.

    Maximises the weight-matching objective ``<theta_ref, Phi(P) theta_model>`` (Ainsworth et al., "Git
    Re-Basin", ICLR 2023, Sec. 3.2) over every ``P`` in the automorphism group of ``model``'s parameter
    graph: each symmetric factor of the group (hidden units of a layer, channels tied along a residual
    stream, attention heads with their q/k and v dimensions, GroupNorm groups and the channels inside them)
    is one linear assignment problem, solved in turn until no factor improves or ``max_iter`` passes have
    run. Nothing is inferred from layer names.

    Parameters
    ----------
    reference, model : nn.Module
        Two models of the same architecture (same state entries, shapes and parameter-graph structure).
    example_input, input_shape
        Where shapes matter, as for :func:`symgraph.parameter_graph`.
    method : {"weights"}
        Weight matching (the only method so far).
    max_iter : int
        Most passes over all factors (>= 1).
    seed : int
        Seed of the order in which each pass visits the factors.

    Returns
    -------
    aligned : nn.Module
        A copy of ``model`` with ``Phi(perm)`` applied to its parameters and buffers: the same function.
    perm : LongTensor [N]
        The node permutation, an element of ``symgraph.automorphism_group(model)``.

    Raises
    ------
    ShapeMismatchError
        ``"Expected ... (got ...)"`` naming the first state entry that differs, a different parameter-graph
        structure, an unknown ``method`` or ``max_iter < 1``.

    Example
    -------
    >>> import torch, symgraph
    >>> from symgraph.models import build_model
    >>> _ = torch.manual_seed(0)
    >>> a, b = build_model("mlp", hidden=(8, 8)), build_model("mlp", hidden=(8, 8))
    >>> aligned, perm = symgraph.align(a, b)
    >>> symgraph.automorphism_group(b).contains(perm)
    True
    >>> x = torch.randn(4, 1, 8, 8)
    >>> torch.allclose(aligned(x), b(x), atol=1e-5)
    True
    """
    res = weight_matching(
        reference,
        model,
        example_input=example_input,
        input_shape=input_shape,
        method=method,
        max_iter=max_iter,
        seed=seed,
    )
    return res.aligned, res.perm
