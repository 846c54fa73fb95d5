"""Empirical check of the paper's conjecture C.5: parameter-graph automorphisms are computation-graph ones.

For each model we compute the automorphism group of its parameter graph ``P`` and of its computation graph
``C`` (weight sharing included, via the sharing graph), then lift every generator ``phi`` of ``Aut(P)``
through the homomorphism ``pi: C -> P`` of C.5 (``ComputationGraph.param_node``): the ``r``-th preimage of
a parameter node ``a`` goes to the ``r``-th preimage of ``phi(a)`` (neurons of one channel are listed in the
same spatial order for every channel). The conjecture predicts that every lift is a neural DAG
automorphism of ``C``; a generator whose lift is not, or whose preimages differ in size, is reported as a
counterexample. Orders are compared too (``|Aut(P)| <= |Aut(C)|`` when all lifts exist, as lifting is an
injective homomorphism).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .group import automorphism_group

__all__ = ["ConjectureResult", "check_conjecture_c5", "lift_to_computation_graph"]


@dataclass
class ConjectureResult:
    """Outcome for one model: orders, generators checked, counterexamples (generator indices and why)."""

    name: str
    parameter_order: int
    computation_order: int
    generators_checked: int
    counterexamples: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def holds(self) -> bool:
        return self.error is None and not self.counterexamples

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "parameter_order": str(self.parameter_order),
            "computation_order": str(self.computation_order),
            "generators_checked": self.generators_checked,
            "counterexamples": [list(c) for c in self.counterexamples],
            "error": self.error,
            "holds": self.holds,
        }


def lift_to_computation_graph(cg, perm: torch.Tensor) -> torch.Tensor | None:
    """The lift of a parameter-graph node permutation through ``cg.param_node`` (None if sizes differ).

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    >>> cg = symgraph.computation_graph(m, torch.zeros(1, 2, dtype=torch.float64))
    >>> aut = symgraph.automorphism_group(m)
    >>> cg.is_automorphism(lift_to_computation_graph(cg, aut.random_element()))
    True
    """
    pn = cg.param_node
    perm = torch.as_tensor(perm, dtype=torch.long)
    if pn is None or bool((pn < 0).any()):
        return None
    order = torch.argsort(pn, stable=True)  # preimages grouped by parameter node, ascending ids inside
    counts = torch.bincount(pn, minlength=perm.numel())
    if not torch.equal(counts[perm], counts):
        return None
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(pn)
    rank[order] = torch.arange(pn.numel()) - start[pn[order]]
    return order[start[perm[pn]] + rank]


def _default_models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(h + torch.relu(self.b(h)))

    return [
        (
            "mlp 3-4-5-2",
            nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)),
            torch.randn(1, 3),
        ),
        (
            "cnn 1-3-2 + linear",
            nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
            torch.randn(1, 1, 4, 4),
        ),
        (
            "cnn + avgpool",
            nn.Sequential(
                nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
            ),
            torch.randn(1, 2, 3, 3),
        ),
        ("residual mlp", Res(), torch.randn(1, 3)),
    ]


def check_conjecture_c5(models=None, max_generators: int = 64) -> list[ConjectureResult]:
    """Check conjecture C.5 on ``models`` (a list of ``(name, model, example_input)``; default: a battery).

    Example
    -------
    >>> results = check_conjecture_c5()
    >>> all(r.holds for r in results)
    True
    """
    from ..computation import computation_graph

    out = []
    for item in models if models is not None else _default_models():
        name, model, x = item if len(item) == 3 else (type(item[0]).__name__, *item)
        model = model.double()
        x = x.double() if x.is_floating_point() else x
        try:
            p_aut = automorphism_group(model, example_input=x)
            cg = computation_graph(model, x)
            c_aut = automorphism_group(cg.sharing_graph())
        except Exception as exc:  # noqa: BLE001  (one failing model must not stop the battery)
            out.append(ConjectureResult(name, 0, 0, 0, error=f"{type(exc).__name__}: {exc}"))
            continue
        res = ConjectureResult(name, p_aut.order, c_aut.order, 0)
        pg = cg.parameter_graph
        # the computation graph's map targets its own parameter graph: use its node ids (same builder)
        if pg is None or pg.num_nodes != p_aut.graph.num_nodes:
            res.error = "no parameter-graph map on the computation graph"
            out.append(res)
            continue
        for i, gen in enumerate(p_aut.generators[:max_generators]):
            res.generators_checked += 1
            lifted = lift_to_computation_graph(cg, gen)
            if lifted is None:
                res.counterexamples.append((i, "preimage sizes differ"))
            elif not cg.is_automorphism(lifted):
                res.counterexamples.append((i, "lift is not a computation-graph automorphism"))
        if not res.counterexamples and res.parameter_order > res.computation_order:
            res.counterexamples.append((-1, f"|Aut(P)| = {res.parameter_order} > |Aut(C)| = {res.computation_order}"))
        out.append(res)
    return out
