"""Shared fixtures and hypothesis profiles: ci (bounded, default), dev, thorough.

Select with HYPOTHESIS_PROFILE=dev|thorough. Float64 tolerances live in the ``tol`` fixture.
"""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, **_common)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def tol():
    """Absolute tolerances for function comparisons, per dtype (float64 is what the checks use)."""
    return {torch.float64: 1e-10, torch.float32: 1e-5}
