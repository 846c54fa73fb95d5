"""Baseline metanetworks of the paper's tables, one file each.

- :class:`DeepSetsBaseline` (``deepsets.py``): the parameters as a set (any architecture).
- :class:`DMC` (``dmc.py``): 1D CNN over the flattened parameter vector (any architecture).
- :class:`StatNN` (``statnn.py``): per-tensor statistics -> MLP (any architecture; ``layout`` for mixing).
- :class:`NPNFN` (``npnfn.py``): NP-NFN equivariant layers for chains of Linear/Conv layers; anything else
  raises :class:`UnsupportedArchitectureError`.
- :class:`DWSNet` (``dws.py``): DWSNets-like equivariant layers (complete basis, input/output neurons fixed)
  for the same chains.
- :class:`MLPMetanet` (``mlp.py``): an MLP on the flat weights of networks of one architecture.

All take a :class:`gmn.WeightSpaceBatch` and follow the metanet protocol of :mod:`gmn.metanets`
(``forward``, ``pooled``, ``edit``); :func:`gmn.metanets.build` makes them by name.
"""

from .common import ParamElements, UnsupportedArchitectureError, param_elements
from .deepsets import DeepSetsBaseline
from .dmc import DMC
from .dws import DWSBlock, DWSLinear, DWSNet, DWSSpec
from .mlp import MLPMetanet
from .npnfn import NPNFN, NFNLayerSpec, NFNSpec, NPLinear
from .statnn import StatNN, tensor_statistics

__all__ = [
    "UnsupportedArchitectureError",
    "ParamElements",
    "param_elements",
    "DeepSetsBaseline",
    "DMC",
    "StatNN",
    "tensor_statistics",
    "NPNFN",
    "NPLinear",
    "NFNSpec",
    "NFNLayerSpec",
    "DWSNet",
    "DWSLinear",
    "DWSSpec",
    "DWSBlock",
    "MLPMetanet",
]
