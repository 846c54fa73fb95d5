"""Verification of automorphism groups on the model itself: ``verify_automorphisms(model, aut, n, x)``.

Draws ``n`` uniformly random elements of a group, applies each to the model's parameters and buffers (Phi)
and measures the largest change of the output in float64, in train and eval mode. Used by
``python -m symgraph.automorphisms --verify N``; a library function so that scripts and tests can call it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..cli_util import one_line
from ..errors import SymgraphError
from ..permute import check_function_preservation
from ..progress import Progress

__all__ = ["verify_automorphisms", "VerifyResult", "VERIFY_RTOL"]

#: A permuted model passes verification when max|f(x) - f_perm(x)| <= VERIFY_RTOL * max(1, max|f(x)|),
#: computed in float64: exact symmetries leave only floating-point reassociation error (about 1e-15).
VERIFY_RTOL = 1e-9


def _random_inputs(model: nn.Module, example: torch.Tensor, gen: torch.Generator, batch: int) -> torch.Tensor:
    shape = tuple(example.shape)
    if shape and shape[0] == 1:
        shape = (batch,) + shape[1:]  # BatchNorm in train mode needs more than one sample
    if example.is_floating_point():
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    vocab = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    high = min(vocab) if vocab else int(example.max().item()) + 1
    return torch.randint(0, max(high, 1), shape, generator=gen, dtype=example.dtype)


def _output_scale(model: nn.Module, x: torch.Tensor) -> float:
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = m(x)
    leaves = [t for t in _flatten(out) if isinstance(t, torch.Tensor) and t.numel() and t.is_floating_point()]
    return max((float(t.abs().max()) for t in leaves), default=0.0)


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, list | tuple):
        return [y for x in obj for y in _flatten(x)]
    if isinstance(obj, dict):
        return [y for x in obj.values() for y in _flatten(x)]
    return [obj]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_automorphisms`: the largest output difference and whether all passed."""

    n: int
    max_abs_diff: float
    output_scale: float
    tolerance: float
    failures: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.failures and math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "verify": self.n,
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else None,
            "output_scale": self.output_scale,
            "tolerance": self.tolerance,
            "verified": self.verified,
            "verify_failures": self.failures,
        }


def verify_automorphisms(
    model: nn.Module,
    aut: Any,
    n: int,
    example_input: torch.Tensor,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rtol: float = VERIFY_RTOL,
    progress: Progress | None = None,
) -> VerifyResult:
    """Apply ``n`` random elements of ``aut`` to ``model`` and measure the largest output change.

    A permutation fails when the group does not contain it, or when the permuted model's outputs differ by
    more than ``rtol * max(1, max|f(x)|)`` (float64; train and eval mode, dropout off, buffers compared too).
    Works for groups of parameter graphs (through :func:`symgraph.check_function_preservation`) and of
    computation graphs (Phi applied to the computation graph's edges, read back as a state_dict).
    ``progress`` (a :class:`~symgraph.progress.Progress`) shows stage ``verification`` and enforces its
    time limit between automorphisms.

    Example
    -------
    >>> import torch, symgraph
    >>> from symgraph.automorphisms import verify_automorphisms
    >>> from symgraph.models import build_model
    >>> m = build_model("mlp")
    >>> x = torch.zeros(1, *m.example_input_shape[1:])
    >>> res = verify_automorphisms(m, symgraph.automorphism_group(m, example_input=x), 2, x)
    >>> res.verified
    True
    """
    progress = progress if progress is not None else Progress()
    with progress.stage("verification", f"0 of {n} random automorphisms"):
        return _verify(model, aut, n, example_input, seed, device, rtol, progress)


def _verify(model, aut, n, example_input, seed, device, rtol, progress: Progress) -> VerifyResult:
    gen = torch.Generator().manual_seed(int(seed))
    dev = torch.device(device)
    model = model.to(dev)
    x = _random_inputs(model, example_input, gen, batch=4).to(dev)
    try:
        scale = _output_scale(model, x)
    except Exception:
        x = _random_inputs(model, example_input, gen, batch=1).to(dev)  # the leading axis was not a batch
        scale = _output_scale(model, x)
    tol = rtol * max(1.0, scale)
    graph = aut.graph
    is_param_graph = getattr(graph, "kind", "parameter") == "parameter"
    if is_param_graph:
        graph = _float64_parameter_graph(model, graph, example_input)
    else:
        # a computation graph's group acts on its sharing graph, whose first nodes are the neurons
        graph = getattr(aut, "computation_graph", None) or graph
    worst = 0.0
    failures: list[str] = []
    for i in range(n):
        progress.note(f"{i} of {n} random automorphisms")
        perm = aut.random_element(generator=gen)
        if not bool(aut.contains(perm)):
            failures.append(f"#{i}: the permutation drawn is not an automorphism of the graph")
        try:
            if is_param_graph:
                diff = float(check_function_preservation(model, perm, x, graph=graph))
            else:
                diff = _graph_permutation_diff(model, graph, perm[: graph.num_nodes], x)
        except (SymgraphError, ValueError) as exc:
            failures.append(f"#{i}: could not apply it: {one_line(exc)}")
            continue
        if not math.isfinite(diff):
            worst = math.inf
            failures.append(f"#{i}: the permutation has no action on the weights (output difference inf)")
        else:
            worst = max(worst, diff)
            if diff > tol:
                failures.append(f"#{i}: max |f(x) - f_perm(x)| = {diff:.3g} > {tol:.3g}")
    return VerifyResult(n=n, max_abs_diff=worst, output_scale=scale, tolerance=tol, failures=failures)


def _float64_parameter_graph(model: nn.Module, graph: Any, example_input: torch.Tensor) -> Any:
    """The parameter graph of a float64 copy of ``model``, with the same structure as ``graph``.

    The comparison runs in float64, and a graph built from a float32 model reads state entries back in its
    slots' dtype, which would round what it carries (e.g. the running statistics compared in train mode).
    """
    if all(s.dtype == torch.float64 for s in graph.slots if s.dtype.is_floating_point):
        return graph
    from ..build import parameter_graph

    ex = example_input.double() if example_input.is_floating_point() else example_input
    meta = getattr(graph, "meta", None) or {}
    # the same front end as the group's graph: "auto" may pick another tracer for the float64 copy
    tracer = meta.get("tracer", "auto")
    g64 = parameter_graph(
        copy.deepcopy(model).cpu().double(),
        example_input=ex.cpu(),
        encoding=meta.get("encoding", "sound"),
        tracer=tracer,
    )
    if g64.num_nodes != graph.num_nodes or not torch.equal(g64.edge_index, graph.edge_index):
        raise SymgraphError("internal: the float64 parameter graph differs in structure from the group's graph")
    return g64


def _graph_permutation_diff(model: nn.Module, graph: Any, perm: torch.Tensor, x: torch.Tensor) -> float:
    """Max output difference after applying Phi(perm) through ``graph`` (e.g. a computation graph)."""
    try:
        state = graph.permute(perm, check=False).to_state_dict()
    except ValueError:
        return math.inf  # no induced edge permutation, or weight sharing broken: no Phi exists
    base = copy.deepcopy(model).double()
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(state)
    permuted = permuted.double()
    xd = x.double() if x.is_floating_point() else x
    worst = 0.0
    for mode in ("train", "eval"):
        outs = []
        for m in (base, permuted):
            m.train(mode == "train")
            for mod in m.modules():  # dropout masks would differ between the two: compare without them
                if isinstance(mod, nn.modules.dropout._DropoutNd):
                    mod.eval()
            with torch.no_grad():
                outs.append([t for t in _flatten(m(xd)) if isinstance(t, torch.Tensor)])
        for a, b in zip(*outs, strict=True):
            if a.numel():
                worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst
