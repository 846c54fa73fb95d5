"""Metanet data splits of appendix E.1.2, scaled to the zoo's size.

- ``"50"``: a random half of the networks for training, a validation set, the rest for testing;
- ``"5"``: 5% of the networks for training (the paper: 1500 of 30 000), same validation and test idea;
- ``"ood"``: train and validate only on networks with the smallest hidden dimension of their architecture
  (CNNs 24, DeepSets 32, ResNet 16, ViT 32); test on all networks with a larger hidden dimension.

The paper's validation set is 2000 of 30 000 networks (about 6.7%); we keep that fraction.
"""

from __future__ import annotations

import torch

from .families import SMALLEST_HIDDEN, hidden_of

__all__ = ["make_split"]

VAL_FRACTION = 2000 / 30000


def make_split(records: list[dict], split: str, seed: int = 0) -> dict[str, list[int]]:
    """Indices (positions in ``records``) of train/val/test for ``split`` in {"50", "5", "ood"}."""
    n = len(records)
    gen = torch.Generator().manual_seed(seed)
    if split in ("50", "5"):
        perm = torch.randperm(n, generator=gen).tolist()
        n_val = max(1, round(VAL_FRACTION * n))
        n_train = max(1, round((0.5 if split == "50" else 0.05) * n))
        val, train = perm[:n_val], perm[n_val : n_val + n_train]
        test = perm[n_val + n_train :] if split == "5" else perm[n_val + n_train :]
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    if split == "ood":
        small = [i for i, r in enumerate(records) if hidden_of(r["kwargs"]) == SMALLEST_HIDDEN[r["arch"]]]
        large = [i for i, r in enumerate(records) if hidden_of(r["kwargs"]) != SMALLEST_HIDDEN[r["arch"]]]
        perm = [small[j] for j in torch.randperm(len(small), generator=gen).tolist()]
        n_val = max(1, round(VAL_FRACTION * n)) if len(small) > 2 else 0
        n_val = min(n_val, len(small) // 3)
        return {"train": sorted(perm[n_val:]), "val": sorted(perm[:n_val]), "test": sorted(large)}
    raise ValueError(f"Expected split '50', '5' or 'ood' (got {split!r})")
