"""Soundness and completeness of a parameter-graph encoding, measured against the model itself.

*Soundness*: every automorphism of the graph preserves the function (train and eval mode, buffers permuted
too). Checked on the generators of every factor of the computed group, and on ``n_random`` uniformly
random elements of the whole group. *Completeness*: the computed group is as large as the analytic
symmetry the encoders declare (:mod:`symgraph.symmetry`). A factor larger than its declaration is not an
error by itself: it is either an unexpected symmetry (sound) or an encoding bug (unsound), and the
function check tells which. With ``encoding="paper"`` the report shows where the paper's drawings admit
automorphisms that change the function (e.g. GroupNorm without group nodes).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..permute import check_function_preservation
from .group import AutomorphismGroup, _log10_big, automorphism_group, exact_decimal

__all__ = ["Report", "ReportRow", "soundness_report"]

#: float64 comparisons: anything above this is a changed function, not rounding
TOL = 1e-9


@dataclass
class ReportRow:
    """One factor of the computed group, against the declared symmetry of the nodes it moves."""

    factor: str
    computed_order: str
    declared_order: str | None
    generators_checked: int
    max_diff: float
    sound: bool
    completeness: str  # "complete", "extra" (computed > declared), "missing" (computed < declared), "n/a"

    @property
    def verdict(self) -> str:
        return ("sound" if self.sound else "UNSOUND") + f", {self.completeness}"


@dataclass
class Report:
    """Rows per factor plus whole-group figures; ``ok`` when everything is sound and complete."""

    model_type: str
    encoding: str
    computed_order: int
    declared_order: int | None
    random_checked: int
    random_max_diff: float
    rows: list[ReportRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # declared factors the computed group lacks

    @property
    def sound(self) -> bool:
        return self.random_max_diff <= TOL and all(r.sound for r in self.rows)

    @property
    def complete(self) -> bool:
        return self.declared_order is None or self.declared_order == self.computed_order

    @property
    def ok(self) -> bool:
        return self.sound and self.complete

    def to_dict(self) -> dict:
        d = asdict(self)
        d["computed_order"] = exact_decimal(int(self.computed_order))
        d["declared_order"] = None if self.declared_order is None else exact_decimal(int(self.declared_order))
        d.update(sound=self.sound, complete=self.complete, ok=self.ok)
        for r, row in zip(d["rows"], self.rows, strict=True):
            r["verdict"] = row.verdict
        return json.loads(json.dumps(d, default=float))

    def to_text(self) -> str:
        def order(x) -> str:
            if x is None:
                return "-"
            x = int(x)
            return str(x) if x < 10**12 else f"10^{_log10(x):.2f}"

        lines = [
            f"soundness report: {self.model_type} (encoding={self.encoding!r})",
            f"  computed |Aut| = {order(self.computed_order)}, declared (analytic) = {order(self.declared_order)}",
            f"  {'factor':<60s} {'computed':>10s} {'declared':>10s} {'max diff':>10s}  verdict",
        ]
        for r in self.rows:
            lines.append(
                f"  {r.factor[:60]:<60s} {order(r.computed_order):>10s} {order(r.declared_order):>10s} "
                f"{r.max_diff:>10.2e}  {r.verdict}"
            )
        for m in self.missing:
            lines.append(f"  declared but not found: {m}")
        lines.append(f"  {self.random_checked} random automorphisms: max output difference {self.random_max_diff:.2e}")
        lines.append(
            f"  verdict: {'sound' if self.sound else 'UNSOUND'}, {'complete' if self.complete else 'NOT complete'}"
        )
        return "\n".join(lines)


def _log10(x: int) -> float:
    return _log10_big(int(x))


def _declared(graph):
    """The analytic symmetry (None when the declarations cannot be combined)."""
    from ..symmetry import analytic_symmetry

    try:
        return analytic_symmetry(graph)
    except Exception:  # noqa: BLE001  (a declaration problem must not hide the computed group)
        return None


def soundness_report(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    encoding: str = "sound",
    n_random: int = 8,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 4,
    generator: torch.Generator | None = None,
) -> Report:
    """Check every factor of the computed automorphism group against the model and the declared symmetry.

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor, optional
        Inputs for the function checks (a batch); random of ``input_shape`` (batch ``batch``) otherwise,
        or of the traced input shape.
    encoding : {"sound", "paper"}
    n_random : int
        Uniformly random group elements checked in addition to every factor's generators.

    Example
    -------
    >>> import torch.nn as nn
    >>> from symgraph.automorphisms import soundness_report
    >>> r = soundness_report(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), n_random=2)
    >>> r.ok, r.rows[0].verdict
    (True, 'sound, complete')
    """
    ex1 = None if example_input is None else example_input[:1]
    aut: AutomorphismGroup = automorphism_group(model, example_input=ex1, input_shape=input_shape, encoding=encoding)
    g = aut.graph
    if example_input is None:
        shape = input_shape or (g.spec.input_shape if g.spec is not None else None)
        if shape is None:
            raise ValueError("Expected example_input or input_shape (got neither)")
        gen = torch.Generator().manual_seed(0) if generator is None else generator
        example_input = torch.randn((batch,) + tuple(shape[1:]), generator=gen)
    decl = _declared(g)
    cells = (
        []
        if decl is None
        else [(c, math.factorial(int(c.numel())), decl.labels.get(("cell", i), "")) for i, c in enumerate(decl.cells)]
    )
    rows, covered = [], set()
    for rec in aut.factor_records:
        nodes = set(np.asarray(rec["nodes"]).tolist())
        declared = None
        if decl is not None:
            declared = 1
            for i, (reps, k_fact, _) in enumerate(cells):
                if reps.numel() > 1 and set(reps.tolist()) & nodes:
                    declared *= k_fact
                    covered.add(i)
            for d in decl.blocks:
                if d[0].shape[0] > 1 and set(d[0].reshape(-1).tolist()) & nodes:
                    declared *= math.factorial(int(d[0].shape[0]))
        diffs = [check_function_preservation(model, p, example_input, graph=g) for p in rec["generators"]]
        worst = max(diffs, default=0.0)
        if declared is None:
            comp = "n/a"
        else:
            comp = "complete" if declared == rec["order"] else ("extra" if rec["order"] > declared else "missing")
        rows.append(
            ReportRow(
                "; ".join(rec["names"]),
                exact_decimal(rec["order"]),
                None if declared is None else exact_decimal(declared),
                len(diffs),
                worst,
                worst <= TOL,
                comp,
            )
        )
    missing = [
        f"S_{int(reps.numel())} ({label})"
        for i, (reps, _, label) in enumerate(cells)
        if reps.numel() > 1 and i not in covered
    ]
    gen = torch.Generator().manual_seed(1) if generator is None else generator
    rand = [
        check_function_preservation(model, aut.random_element(gen), example_input, graph=g) for _ in range(n_random)
    ]
    return Report(
        type(model).__name__,
        encoding,
        aut.order,
        None if decl is None else decl.order,
        n_random,
        max(rand, default=0.0),
        rows,
        missing,
    )
