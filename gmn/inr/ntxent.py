"""NT-Xent, the normalised-temperature cross-entropy loss of SimCLR (Chen et al., 2020).

Example
-------
>>> import torch
>>> z = torch.randn(4, 8)
>>> nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(4, 8), 0.1)
tensor(True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nt_xent"]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean NT-Xent over the ``2B`` views: view ``i`` of ``z1`` must pick view ``i`` of ``z2`` among the other
    ``2B - 1`` embeddings (cosine similarity / temperature)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"Expected two [B, D] embeddings of equal shape (got {tuple(z1.shape)}, {tuple(z2.shape)})")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)
