"""proofs_checks: the propositions of "Graph Metanetworks for Processing Diverse Neural Architectures"
(ICLR 2024) as executable, constructive checks with negative controls.

One module per proposition; each registers its check(s) in :data:`proofs_checks.common.REGISTRY`.
``python -m proofs_checks [--quick] [--json] [--only NAME]`` prints the report table.

>>> from proofs_checks import run_checks
>>> [r.passed for r in run_checks(["prop11_forward_pass"], quick=True)]  # doctest: +SKIP
[True]
"""

from __future__ import annotations

import importlib

from .common import REGISTRY, CheckResult, format_table, results_json, run_checks

__all__ = ["CheckResult", "REGISTRY", "run_checks", "format_table", "results_json", "load_all", "MODULES"]

#: Proposition modules, in report order.
MODULES = (
    "prop5_mlp_automorphisms",
    "prop6_cnn_automorphisms",
    "prop7_function_preservation",
    "prop8_equivariance",
    "prop9_statnn",
    "prop10_npnfn",
    "d13_bias_nodes",
    "prop11_forward_pass",
    "conjecture_c5",
)


def load_all() -> None:
    """Import every proposition module so that its checks are registered."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
