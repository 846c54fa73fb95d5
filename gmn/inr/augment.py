"""Weight-space augmentations for contrastive learning on INRs (Navon et al., 2023; paper E.3).

Both act on a *batch* of networks given as stacked parameters (a dict of ``[B, ...]`` tensors, SIREN
state_dict keys) or a flat ``[B, D]`` tensor, and draw from an explicit ``torch.Generator`` so that the same
seed gives the same views.

Example
-------
>>> import torch
>>> from gmn.inr.augment import WeightAugment
>>> aug = WeightAugment(noise_std=0.05, mask_prob=0.1)
>>> w = torch.ones(2, 10)
>>> torch.equal(aug(w, torch.Generator().manual_seed(1)), aug(w, torch.Generator().manual_seed(1)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["gaussian_noise", "random_mask", "WeightAugment"]

Params = dict[str, torch.Tensor] | torch.Tensor


def _map(params: Params, fn) -> Params:
    if isinstance(params, torch.Tensor):
        return fn(params)
    return {k: fn(v) for k, v in params.items()}


def _rand_like(t: torch.Tensor, generator: torch.Generator | None, normal: bool) -> torch.Tensor:
    # Draw on the generator's device (CPU generators are the default), then move: keeps CPU and CUDA runs
    # with a CPU generator identical.
    dev = generator.device if generator is not None else t.device
    r = (torch.randn if normal else torch.rand)(t.shape, generator=generator, device=dev, dtype=t.dtype)
    return r.to(t.device)


def gaussian_noise(params: Params, std: float, generator: torch.Generator | None = None) -> Params:
    """``w + std * N(0, 1)`` on every weight and bias."""
    if std < 0:
        raise ValueError(f"Expected a non-negative noise std (got {std})")
    return _map(params, lambda t: t + std * _rand_like(t, generator, normal=True))


def random_mask(params: Params, prob: float, generator: torch.Generator | None = None, rescale: bool = False) -> Params:
    """Set each weight to zero independently with probability ``prob``; ``rescale`` multiplies the kept ones by
    ``1 / (1 - prob)`` (dropout: the expected value of each weight is unchanged)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"Expected a masking probability in [0, 1] (got {prob})")
    scale = 1.0 / (1.0 - prob) if rescale and prob < 1.0 else 1.0
    return _map(params, lambda t: t * (_rand_like(t, generator, normal=False) >= prob).to(t.dtype) * scale)


@dataclass(frozen=True)
class WeightAugment:
    """Masking then Gaussian noise: one random view of each network in a batch.

    Parameters
    ----------
    noise_std : float
        Standard deviation of the additive Gaussian noise.
    mask_prob : float
        Probability of zeroing each weight.
    mask_rescale : bool
        Scale the kept weights by ``1 / (1 - mask_prob)`` (dropout, as Navon et al.'s augmentation).
    """

    noise_std: float = 0.1
    mask_prob: float = 0.1
    mask_rescale: bool = False

    def __call__(self, params: Params, generator: torch.Generator | None = None) -> Params:
        out = random_mask(params, self.mask_prob, generator, self.mask_rescale) if self.mask_prob > 0 else params
        return gaussian_noise(out, self.noise_std, generator) if self.noise_std > 0 else out
