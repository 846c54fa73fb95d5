"""Exact automorphism groups of neural graphs (nauty + twin reduction) and checks built on them.

>>> import torch.nn as nn, symgraph
>>> symgraph.automorphism_group(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))).order
24
"""

from .conjecture import ConjectureResult, check_conjecture_c5, lift_to_computation_graph
from .group import AutomorphismGroup, automorphism_group, compute_group
from .nauty import NautyResult, naive_autgrp, nauty_autgrp
from .report import Report, ReportRow, soundness_report
from .sharing import SharingGraph, lift_to_sharing_graph, sharing_graph
from .twins import TwinReduction, reduce_twins
from .verify import VERIFY_RTOL, VerifyResult, verify_automorphisms

__all__ = [
    "AutomorphismGroup",
    "automorphism_group",
    "compute_group",
    "NautyResult",
    "nauty_autgrp",
    "naive_autgrp",
    "TwinReduction",
    "reduce_twins",
    "Report",
    "ReportRow",
    "soundness_report",
    "ConjectureResult",
    "check_conjecture_c5",
    "lift_to_computation_graph",
    "SharingGraph",
    "sharing_graph",
    "lift_to_sharing_graph",
    "verify_automorphisms",
    "VerifyResult",
    "VERIFY_RTOL",
]
