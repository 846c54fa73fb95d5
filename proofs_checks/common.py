"""Shared machinery of the proposition checks: the result record, the registry and runner, random
architectures, MLP weight-space views of parameter graphs, and the access point to the GMN layer.

Every check is a function ``check(quick: bool, seed: int) -> CheckResult`` registered with :func:`register`.
A check builds its cases, measures the largest error of the construction the proof describes (``max_error``)
and the *smallest* error of a deliberately broken construction (``control_error``); it passes when the first
is below the float64 tolerance and the second is far above it (the negative control was caught).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from symgraph.graph import NeuralGraph

__all__ = [
    "CheckResult",
    "register",
    "REGISTRY",
    "run_checks",
    "format_table",
    "results_json",
    "TOL",
    "CONTROL_MIN",
    "random_mlp",
    "random_cnn",
    "mlp_view",
    "MLPView",
    "gmn_layer",
    "apply_layer",
    "max_abs",
]

#: Absolute tolerance of every float64 comparison (round-off of sums of a few thousand O(1) terms).
TOL = 1e-10
#: A negative control is "caught" when its error is at least this large (many orders above round-off).
CONTROL_MIN = 1e-6


@dataclass
class CheckResult:
    """Outcome of one proposition check (one row of the report table)."""

    name: str
    proposition: str
    statement: str
    cases: int = 0
    max_error: float = 0.0
    passed: bool = False
    control: str = ""
    control_error: float = math.inf
    control_caught: bool = False
    exactness: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def finish(self, tol: float = TOL) -> CheckResult:
        """Set ``passed``/``control_caught`` from the recorded errors (the only place verdicts are made)."""
        self.control_caught = bool(self.control_error >= CONTROL_MIN)
        self.passed = bool(self.cases > 0 and self.max_error <= tol and self.control_caught)
        return self


CheckFn = Callable[[bool, int], CheckResult]
#: name -> check function, in report order. Filled by the proposition modules at import.
REGISTRY: dict[str, CheckFn] = {}


def register(name: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: add a check to :data:`REGISTRY` under ``name`` (used by ``--only``)."""

    def deco(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        return fn

    return deco


def run_checks(names: list[str] | None = None, quick: bool = True, seed: int = 0) -> list[CheckResult]:
    """Run the registered checks (all, or ``names``) and return their results, timed.

    A check that raises is reported as failed with the exception as a note, so one broken dependency does
    not hide the other rows.
    """
    from . import load_all

    load_all()
    todo = list(REGISTRY) if not names else names
    unknown = [n for n in todo if n not in REGISTRY]
    if unknown:
        raise KeyError(f"Expected check names from {sorted(REGISTRY)} (got {unknown})")
    out = []
    for name in todo:
        t0 = time.perf_counter()
        try:
            res = REGISTRY[name](quick, seed)
        except Exception as exc:  # noqa: BLE001  (a report row, not a crash)
            res = CheckResult(
                name=name, proposition=name, statement="(check raised)", max_error=math.inf, control_error=0.0
            )
            res.notes.append(f"{type(exc).__name__}: {exc}")
            res.finish()
        res.seconds = time.perf_counter() - t0
        out.append(res)
    return out


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1e}"


def format_table(results: list[CheckResult]) -> str:
    """The report table: proposition, statement, cases, largest error, pass/fail, control caught."""
    head = ("check", "proposition", "statement", "cases", "max err", "result", "control caught (err)", "s")
    rows = [
        (
            r.name,
            r.proposition,
            r.statement,
            str(r.cases),
            _fmt(r.max_error),
            "PASS" if r.passed else "FAIL",
            f"{'yes' if r.control_caught else 'NO'} ({_fmt(r.control_error)})",
            f"{r.seconds:.1f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    notes = []
    for r in results:
        if r.exactness:
            notes.append(f"[{r.name}] exactness: {r.exactness}")
        if r.control:
            notes.append(f"[{r.name}] negative control: {r.control}")
        for n in r.notes:
            notes.append(f"[{r.name}] {n}")
    n_fail = sum(not r.passed for r in results)
    summary = (
        f"{len(results) - n_fail}/{len(results)} checks passed (tolerance {TOL:g}, control threshold "
        f"{CONTROL_MIN:g}; constructions run through gmn.layers.GMNLayer with hand-set functions)"
    )
    return "\n".join([line, sep, *body, "", summary, "", *notes])


def results_json(results: list[CheckResult]) -> str:
    def clean(d):
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}

    return json.dumps([clean(asdict(r)) for r in results], indent=2)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference; inf on a shape mismatch or NaN (a construction of the wrong shape is wrong)."""
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    d = float((a.detach().double() - b.detach().double()).abs().max())
    return math.inf if math.isnan(d) else d


# ---------------------------------------------------------------------------------------------- architectures
_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def random_mlp(
    gen: torch.Generator,
    depth: tuple[int, int] = (1, 4),
    width: tuple[int, int] = (1, 6),
    bias: bool | None = True,
    act: str | None = None,
) -> nn.Sequential:
    """A float64 MLP with random depth, widths, activation and (if ``bias is None``) random bias flags.

    Weights are standard normal (not the default init) so that cancellations are not hidden by small values.
    """

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    n_layers = ri(*depth)
    widths = [ri(*width) for _ in range(n_layers + 1)]
    act_name = act or list(_ACTS)[ri(0, len(_ACTS) - 1)]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        b = bool(ri(0, 1)) if bias is None else bias
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=b))
        if i < n_layers - 1:
            layers.append(_ACTS[act_name]())
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model.eval()


def random_cnn(
    gen: torch.Generator,
    depth: tuple[int, int] = (1, 3),
    channels: tuple[int, int] = (1, 4),
    kernel: tuple[int, int] = (1, 3),
    head: bool = True,
    act: str = "relu",
    spatial: int = 5,
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A float64 2-D CNN (conv + act blocks, then optionally flatten + linear) and its input shape."""

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    n_layers = ri(*depth)
    chans = [ri(*channels) for _ in range(n_layers + 1)]
    layers: list[nn.Module] = []
    size = spatial
    for i in range(n_layers):
        k = min(ri(*kernel), size)
        pad = ri(0, (k - 1) // 2)
        layers.append(nn.Conv2d(chans[i], chans[i + 1], k, padding=pad, bias=bool(ri(0, 1)) or i == 0))
        size = size + 2 * pad - k + 1
        if i < n_layers - 1 or head:
            layers.append(_ACTS[act]())
    if head:
        layers += [nn.Flatten(), nn.Linear(chans[-1] * size * size, ri(1, 3))]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model.eval(), (1, chans[0], spatial, spatial)


# ---------------------------------------------------------------------------------------------- weight spaces
@dataclass(frozen=True)
class MLPView:
    """An MLP's parameter graph read as the weight space of Appendix D (layers 1..L, weights and biases).

    ``edge_layer[e]`` is the layer ``l`` (1-based) of the parameter edge ``e``, ``edge_is_bias[e]`` whether it
    carries a bias; ``weights[l-1]`` is ``W^(l)`` of shape ``[d_l, d_{l-1}]`` and ``biases[l-1]`` is ``b^(l)``
    (zeros when the layer has none, ``has_bias[l-1]`` then False).
    """

    graph: NeuralGraph
    num_layers: int
    edge_layer: torch.Tensor
    edge_is_bias: torch.Tensor
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    has_bias: tuple[bool, ...]
    weight_names: tuple[str, ...]
    bias_names: tuple[str | None, ...]


def mlp_view(model: nn.Sequential, g: NeuralGraph | None = None) -> MLPView:
    """The D.1 weight-space view of a Sequential of ``nn.Linear`` layers and elementwise activations."""
    import symgraph

    g = symgraph.parameter_graph(model) if g is None else g
    linears = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    slot_layer: dict[str, tuple[int, bool]] = {}
    for l_idx, (name, m) in enumerate(linears, start=1):
        slot_layer[f"{name}.weight"] = (l_idx, False)
        if m.bias is not None:
            slot_layer[f"{name}.bias"] = (l_idx, True)
    slot, _ = g.edge_param.lookup(torch.arange(g.num_edges))
    if bool((slot < 0).any()):
        raise ValueError("Expected an MLP parameter graph (every edge a parameter); got parameter-free edges")
    names = g.edge_param.names
    layer_of_slot = torch.tensor([slot_layer[n][0] for n in names], dtype=torch.long)
    bias_of_slot = torch.tensor([slot_layer[n][1] for n in names], dtype=torch.bool)
    return MLPView(
        graph=g,
        num_layers=len(linears),
        edge_layer=layer_of_slot[slot],
        edge_is_bias=bias_of_slot[slot],
        weights=tuple(m.weight.detach().clone() for _, m in linears),
        biases=tuple(
            m.bias.detach().clone() if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype)
            for _, m in linears
        ),
        has_bias=tuple(m.bias is not None for _, m in linears),
        weight_names=tuple(f"{n}.weight" for n, _ in linears),
        bias_names=tuple(f"{n}.bias" if m.bias is not None else None for n, m in linears),
    )


# ---------------------------------------------------------------------------------------------- GMN layer access
def gmn_layer(node_dim: int, edge_dim: int, global_dim: int = 0, **fns) -> nn.Module:
    """A ``gmn.layers.GMNLayer`` whose functions are exactly the given hand-set ones.

    Residual connections and normalisation are switched off (the proofs' layers have neither), and the
    D.1.2 form (``global_fn_inside``, Eq. 35) selects ``global_aggr="inside"``.
    """
    from gmn.layers import GMNLayer

    aggr = "inside" if fns.get("global_fn_inside") is not None else "after"
    return GMNLayer(node_dim, edge_dim, global_dim, residual=False, norm=None, global_aggr=aggr, **fns)


def apply_layer(
    layer: nn.Module,
    v: torch.Tensor,
    edge_index: torch.Tensor,
    e: torch.Tensor,
    u: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
    edge_batch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one GMN layer on raw tensors (one graph unless ``batch`` is given); returns ``(v, e, u)``."""
    if u is None:
        u = torch.zeros(1, getattr(layer, "global_dim", 0), dtype=e.dtype)
    return layer(v, edge_index, e, u, batch, edge_batch)
