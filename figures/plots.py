"""Result plots: predicted vs true accuracy (paper Fig. 8 style), with R² and Kendall τ in each title.

Results schema
--------------
JSON: ``{"runs": [run, ...]}`` (or a bare list of runs), each run one metanetwork evaluated on one subset::

    {"metanet": "gmn",          # name of the metanetwork (also accepted: "model", "method")
     "split": "ood",            # data setting, e.g. "ood", "50%", "5%" (optional, default "")
     "subset": "test",          # "val" or "test" ("validation" is read as "val"; default "test")
     "pred": [0.61, ...],       # predicted accuracy per input network ("predicted", "y_pred")
     "true": [0.59, ...],       # true accuracy per input network ("target", "y_true", "actual")
     "arch": ["cnn2d", ...]}    # optional: architecture family per network (colours the points)

CSV: long format, one row per input network, header ``metanet,split,subset,pred,true[,arch]``.

R² is ``sklearn.metrics.r2_score(true, pred)`` (how well the predictions explain the true accuracies) and τ is
``scipy.stats.kendalltau(true, pred)`` (τ-b), as in the paper's Table 1.

CLI: ``python -m figures.plots results.json [--out DIR] [--format png,svg] [--split ood]`` writes
``fig5_pred_vs_true`` (one panel per metanet, test subset) and ``fig8_val_test`` (rows: validation, test).

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> runs = [Run("gmn", "ood", "test", pred=np.array([0.1, 0.4, 0.5]), true=np.array([0.2, 0.5, 0.3]))]
>>> round(metrics(runs[0])["tau"], 3)
0.333
>>> fig = plot_fig5(runs)
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from symgraph.cli_util import CLIError, OneLineArgumentParser, run_cli

__all__ = ["Run", "load_results", "metrics", "arch_colors", "scatter_panel", "plot_fig5", "plot_fig8", "main"]

_KEYS = {
    "metanet": ("metanet", "model", "method"),
    "split": ("split", "setting"),
    "subset": ("subset", "part", "stage"),
    "pred": ("pred", "predicted", "y_pred", "prediction"),
    "true": ("true", "target", "y_true", "actual"),
    "arch": ("arch", "architecture", "family"),
}
_SUBSETS = {"val": "val", "valid": "val", "validation": "val", "test": "test", "train": "train"}
_SUBSET_TITLES = {"val": "validation", "test": "test", "train": "train"}


@dataclass(frozen=True)
class Run:
    """Predictions of one metanetwork on one subset (arrays of equal length, one entry per input network)."""

    metanet: str
    split: str
    subset: str
    pred: np.ndarray
    true: np.ndarray
    arch: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.pred.shape != self.true.shape or self.pred.ndim != 1:
            raise ValueError(
                f"Expected pred and true of one equal length for {self.metanet}/{self.subset} "
                f"(got shapes {self.pred.shape} and {self.true.shape})"
            )
        if self.arch is not None and len(self.arch) != self.pred.size:
            raise ValueError(f"Expected {self.pred.size} arch labels (got {len(self.arch)})")


def _get(d: dict, field: str, default=None):
    for k in _KEYS[field]:
        if k in d:
            return d[k]
    if default is None:
        raise ValueError(f"Expected a '{field}' entry (any of {', '.join(_KEYS[field])}) (got keys {sorted(d)})")
    return default


def _subset(name: str) -> str:
    return _SUBSETS.get(str(name).lower(), str(name).lower())


def load_results(path: str | Path) -> list[Run]:
    """Runs from a results JSON or CSV file (schema in the module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        groups: dict[tuple[str, str, str], dict[str, list]] = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                key = (_get(row, "metanet"), _get(row, "split", ""), _subset(_get(row, "subset", "test")))
                g = groups.setdefault(key, {"pred": [], "true": [], "arch": []})
                g["pred"].append(float(_get(row, "pred")))
                g["true"].append(float(_get(row, "true")))
                g["arch"].append(_get(row, "arch", ""))
        return [
            Run(m, s, sub, np.asarray(g["pred"]), np.asarray(g["true"]), tuple(g["arch"]) if any(g["arch"]) else None)
            for (m, s, sub), g in groups.items()
        ]
    with open(path) as fh:
        data = json.load(fh)
    runs = data.get("runs") if isinstance(data, dict) else data
    if not isinstance(runs, list):
        raise ValueError(f"Expected a JSON object with a 'runs' list, or a list of runs (got {type(data).__name__})")
    out = []
    for r in runs:
        arch = _get(r, "arch", ()) or ()
        out.append(
            Run(
                str(_get(r, "metanet")),
                str(_get(r, "split", "")),
                _subset(_get(r, "subset", "test")),
                np.asarray(_get(r, "pred"), dtype=float),
                np.asarray(_get(r, "true"), dtype=float),
                tuple(map(str, arch)) if len(arch) else None,
            )
        )
    return out


def metrics(run: Run) -> dict[str, float]:
    """R² (sklearn ``r2_score(true, pred)``) and Kendall τ-b (scipy ``kendalltau(true, pred)``) of a run."""
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    if run.true.size < 2:
        return {"r2": float("nan"), "tau": float("nan"), "n": int(run.true.size)}
    return {
        "r2": float(r2_score(run.true, run.pred)),
        "tau": float(kendalltau(run.true, run.pred).statistic),
        "n": int(run.true.size),
    }


def arch_colors(runs: Sequence[Run]) -> dict[str, tuple]:
    """One colour per architecture family, the same in every panel (sorted names, tab10)."""
    names = sorted({a for r in runs if r.arch is not None for a in r.arch})
    return {a: plt.cm.tab10(i % 10) for i, a in enumerate(names)}


def scatter_panel(
    ax,
    run: Run,
    lim: tuple[float, float] | None = None,
    title_prefix: str = "",
    colors: dict[str, tuple] | None = None,
    legend: bool = True,
) -> dict[str, float]:
    """Predicted (y) against true (x) accuracy of one run, the y = x line, R² and τ in the title."""
    m = metrics(run)
    if run.arch is not None:
        colors = colors or arch_colors([run])
        arch = np.asarray(run.arch)
        for a, c in colors.items():
            sel = arch == a
            if sel.any():
                ax.scatter(run.true[sel], run.pred[sel], s=9, alpha=0.6, color=c, label=a, edgecolors="none")
        if legend:
            ax.legend(fontsize=7, markerscale=1.5, loc="upper left", frameon=False)
    else:
        ax.scatter(run.true, run.pred, s=9, alpha=0.6, color="#4E79A7", edgecolors="none")
    if lim is None:
        both = np.concatenate([run.true, run.pred]) if run.true.size else np.array([0.0, 1.0])
        pad = 0.03 * max(float(np.ptp(both)), 1e-3)
        lim = (float(both.min()) - pad, float(both.max()) + pad)
    ax.plot(lim, lim, color="#888888", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("true accuracy", fontsize=8)
    ax.set_ylabel("predicted accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{title_prefix}{run.metanet}: R² = {m['r2']:.3f}, τ = {m['tau']:.3f}", fontsize=9)
    return m


def _common_lim(runs: Sequence[Run]) -> tuple[float, float]:
    vals = np.concatenate([np.concatenate([r.true, r.pred]) for r in runs]) if runs else np.array([0.0, 1.0])
    pad = 0.03 * max(float(np.ptp(vals)), 1e-3)
    return float(vals.min()) - pad, float(vals.max()) + pad


def _select(runs: Sequence[Run], split: str | None, subset: str | None) -> list[Run]:
    out = [r for r in runs if (split is None or r.split == split) and (subset is None or r.subset == subset)]
    return out


def plot_fig5(runs: Sequence[Run], split: str | None = None, subset: str = "test") -> plt.Figure:
    """One scatter per metanetwork on ``subset`` (of ``split``, or the first split found)."""
    if split is None and runs:
        split = next((r.split for r in runs if r.subset == subset), runs[0].split)
    sel = _select(runs, split, subset)
    if not sel:
        raise ValueError(
            f"Expected runs with split={split!r}, subset={subset!r} (got {sorted({(r.split, r.subset) for r in runs})})"
        )
    lim = _common_lim(sel)
    fig, axes = plt.subplots(1, len(sel), figsize=(3.6 * len(sel), 3.8), squeeze=False)
    colors = arch_colors(sel)
    for j, (ax, run) in enumerate(zip(axes[0], sel)):
        scatter_panel(ax, run, lim, colors=colors, legend=j == 0)
    fig.suptitle(f"predicted vs true accuracy ({split or 'all'}, {_SUBSET_TITLES.get(subset, subset)})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_fig8(runs: Sequence[Run], split: str | None = None) -> plt.Figure:
    """Rows: validation and test; columns: metanetworks (paper Fig. 8). Missing cells are left blank."""
    if split is None and runs:
        split = "ood" if any(r.split == "ood" for r in runs) else runs[0].split
    sel = _select(runs, split, None)
    metanets = list(dict.fromkeys(r.metanet for r in sel))
    subsets = [s for s in ("val", "test") if any(r.subset == s for r in sel)] or sorted({r.subset for r in sel})
    if not metanets:
        raise ValueError(f"Expected runs with split={split!r} (got splits {sorted({r.split for r in runs})})")
    lim = _common_lim(sel)
    colors = arch_colors(sel)
    fig, axes = plt.subplots(
        len(subsets), len(metanets), figsize=(3.6 * len(metanets), 3.7 * len(subsets)), squeeze=False
    )
    for i, sub in enumerate(subsets):
        for j, name in enumerate(metanets):
            run = next((r for r in sel if r.metanet == name and r.subset == sub), None)
            if run is None:
                axes[i, j].axis("off")
                continue
            scatter_panel(
                axes[i, j],
                run,
                lim,
                title_prefix=f"{_SUBSET_TITLES.get(sub, sub)} · ",
                colors=colors,
                legend=(i, j) == (0, 0),
            )
    fig.suptitle(f"predicted vs true accuracy, {split or 'all'} split: validation (top) and test (bottom)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the plots; returns the exit code (0 ok, 2 bad input: one ``error:`` line on stderr)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    p = OneLineArgumentParser(
        prog="python -m figures.plots", description="Fig. 5/8-style scatter plots of predicted vs true accuracy."
    )
    p.add_argument("results", help="results JSON or CSV (schema: see figures/plots.py)")
    p.add_argument("--out", default=None, help="output folder (default figures/out)")
    p.add_argument("--format", default="png,svg", help="comma-separated formats (default png,svg)")
    p.add_argument("--split", default=None, help="data setting to plot (default: 'ood' if present, else the first)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from .common import DEFAULT_OUT, save_figure

    try:
        runs = load_results(args.results)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise CLIError(str(err)) from None
    for r in runs:
        m = metrics(r)
        print(f"{r.metanet:12s} {r.split:8s} {r.subset:5s} n={m['n']:5d}  R2={m['r2']:+.4f}  tau={m['tau']:+.4f}")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    out = args.out or DEFAULT_OUT
    for stem, make in (
        ("fig5_pred_vs_true", lambda: plot_fig5(runs, args.split)),
        ("fig8_val_test", lambda: plot_fig8(runs, args.split)),
    ):
        try:
            fig = make()
        except ValueError as err:
            print(f"{stem}: skipped: {err}")
            continue
        try:
            print(f"{stem}: wrote {', '.join(save_figure(fig, stem, out, formats))}")
        finally:
            plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
