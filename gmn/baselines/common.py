"""What the baselines share: :class:`UnsupportedArchitectureError` and the parameters of a batch as a set.

They live in :mod:`gmn.errors` and :mod:`gmn.weight_space` (every metanet's input type); this module keeps
the names the baselines have always imported. :func:`param_elements` is
:meth:`gmn.WeightSpaceData.param_elements`: every parameter of every graph of a batch (edge-stored
parameters in edge order, then node-stored ones), sorted by graph, with the structural features the baselines
may use (edge kind, depth, kernel/flatten position, tensor id).
"""

from __future__ import annotations

from ..errors import MetanetOutputError, UnsupportedArchitectureError
from ..weight_space import ParamElements, WeightSpaceData

__all__ = ["UnsupportedArchitectureError", "ParamElements", "param_elements", "no_edit_output"]


def param_elements(batch: WeightSpaceData) -> ParamElements:
    """The parameters of a batch as elements of a set (see :class:`~gmn.weight_space.ParamElements`)."""
    return batch.param_elements()


def no_edit_output(name: str) -> MetanetOutputError:
    """The error of ``edit`` on a metanet whose output is invariant only."""
    return MetanetOutputError(name, "edit", "an invariant output only: no per-parameter output")
