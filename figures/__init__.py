"""Figures of the paper, drawn from the objects symgraph builds: ``python -m figures`` writes them all.

One module per figure; each has ``NAME``, ``STEM``, ``TITLE``, and ``make(notes)`` (see
:mod:`figures.common`). Result plots (Fig. 5 and 8 style) are in :mod:`figures.plots`, which needs no
figure module: figure modules are imported only when asked for.

Example
-------
>>> from figures import figure_modules
>>> [m.NAME for m in figure_modules()][:3]
['fig1', 'fig2', 'fig3']
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .common import DEFAULT_OUT, FORMATS, save_figure

#: Module names of the figures, in order.
FIGURE_MODULES = (
    "fig1_overview",
    "fig2_mlp",
    "fig3_cnn",
    "fig4_computation",
    "fig6_layers",
    "fig7_orbits",
    "fig9_summaries",
)

__all__ = ["FIGURE_MODULES", "figure_modules", "by_name", "DEFAULT_OUT", "FORMATS", "save_figure"]


def figure_modules() -> list[ModuleType]:
    """The figure modules (imported on first use)."""
    return [importlib.import_module(f"{__name__}.{m}") for m in FIGURE_MODULES]


def by_name(name: str) -> ModuleType:
    """The figure module called ``name`` ("fig3") or with that file stem ("fig3_cnn_parameter_graph")."""
    for mod in figure_modules():
        if name in (mod.NAME, mod.STEM, mod.__name__.rsplit(".", 1)[-1]):
            return mod
    raise KeyError(f"Expected a figure among {', '.join(m.NAME for m in figure_modules())} (got {name!r})")
