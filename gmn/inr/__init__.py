"""Implicit neural representations (paper Sec. 4.2, 4.3): batched SIREN fitting, the sine-wave and image INR
datasets, weight augmentations, weight-swapped GMN batches, weight-space encoders, NT-Xent and a linear probe.

Modules: ``fit``, ``sine_dataset`` (CLI), ``image_dataset``, ``augment``, ``align`` (weight matching onto a
reference INR), ``graph_batch``, ``encoders``, ``ntxent``, ``probe``, ``io``. The SIREN itself is
:class:`symgraph.models.siren.SIREN`.
"""

from .align import AlignedINRs, align_to_reference
from .augment import AutomorphismAugment, WeightAugment, gaussian_noise, random_mask
from .fit import FitConfig, batched_siren_forward, fit_sirens, init_siren_params, stack, unstack
from .graph_batch import WeightGraphBatcher
from .ntxent import nt_xent
from .probe import fit_linear_probe, linear_probe_mse

__all__ = [
    "FitConfig",
    "batched_siren_forward",
    "fit_sirens",
    "init_siren_params",
    "stack",
    "unstack",
    "WeightAugment",
    "AutomorphismAugment",
    "AlignedINRs",
    "align_to_reference",
    "gaussian_noise",
    "random_mask",
    "WeightGraphBatcher",
    "nt_xent",
    "fit_linear_probe",
    "linear_probe_mse",
]
