"""Weight matching over exact symmetry groups: ``symgraph.align(reference, model)``.

``symgraph.align`` (the function) permutes ``model``'s units to match ``reference``'s weights over the
automorphism group of ``model``'s parameter graph; this package holds it, the matching problem derived from
the group (:mod:`.problem`), the coordinate descent (:mod:`.descent`), the linear-mode-connectivity demo
(:mod:`.lmc`) and the CLI (``python -m symgraph.align``). Importing :mod:`symgraph` binds the name
``symgraph.align`` to the function; use ``from symgraph.align import weight_matching`` (etc.) for the rest.

>>> import torch, symgraph
>>> from symgraph.models import build_model
>>> a, b = build_model("mlp", hidden=(8,)), build_model("mlp", hidden=(8,))
>>> aligned, perm = symgraph.align(a, b)
>>> symgraph.automorphism_group(b).contains(perm)
True
"""

from .descent import Descent, DescentStats
from .matching import METHODS, AlignResult, align, check_same_architecture, objective, weight_matching
from .problem import Factor, GenericFactor, UnitClass, factors_of

__all__ = [
    "align",
    "weight_matching",
    "objective",
    "AlignResult",
    "check_same_architecture",
    "METHODS",
    "Descent",
    "DescentStats",
    "Factor",
    "GenericFactor",
    "UnitClass",
    "factors_of",
]
