"""Linear probe: least-squares regression from embeddings to targets (paper Table 3's evaluation).

Example
-------
>>> import torch
>>> from gmn.inr.probe import linear_probe_mse
>>> x = torch.randn(200, 3); y = x @ torch.tensor([[1.0], [2.0], [-1.0]]) + 0.5
>>> linear_probe_mse(x[:100], y[:100], x[100:], y[100:]) < 1e-8
True
"""

from __future__ import annotations

import torch

__all__ = ["MIN_REL_STD", "fit_linear_probe", "linear_probe_mse"]

#: Features with a train std at most this times the largest one are left out (see :func:`fit_linear_probe`).
MIN_REL_STD = 1e-3


def _design(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = (x - mean) / std
    return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], dim=1)


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6, min_rel_std: float = MIN_REL_STD):
    """Least squares ``y ~ W z + c`` on standardised features ``z`` (float64, tiny ridge for rank deficiency).

    Features whose train standard deviation is at most ``min_rel_std`` times the largest one are left out:
    they are constant on the train split up to noise (typically a ReLU unit that is dead on all but one or
    two train networks), so least squares fits their coefficient to those few networks, and after
    standardisation by their tiny spread one test network on which the unit fires can swamp the prediction
    (measured: one such NP-NFN unit took a test MSE of 1.3 to 45). Features that are exactly constant get
    a zero coefficient either way. Pass ``min_rel_std=0`` to keep every feature.

    Returns a callable mapping new embeddings to predictions.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"Expected x [n, d] and y [n, k] with equal n (got {tuple(x.shape)}, {tuple(y.shape)})")
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0)
    keep = std > (min_rel_std * std.max() if x.shape[1] else 0.0)  # none kept: the probe predicts the mean
    mean, std = mean[keep], std[keep]
    a = _design(x[:, keep], mean, std)
    reg = ridge * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    reg[-1, -1] = 0.0
    w = torch.linalg.solve(a.T @ a + reg * a.shape[0], a.T @ y)
    return lambda x_new: (_design(x_new.double()[:, keep], mean, std) @ w).to(torch.float32)


def linear_probe_mse(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    ridge: float = 1e-6,
    min_rel_std: float = MIN_REL_STD,
) -> float:
    """Test MSE (averaged over samples and target columns) of a least-squares probe fitted on the train split."""
    pred = fit_linear_probe(x_train, y_train, ridge, min_rel_std)(x_test)
    return float((pred.double() - y_test.double()).pow(2).mean())
