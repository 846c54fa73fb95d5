"""A small Vision Transformer: patch-embedding convolution, class token, learned positional embedding,
pre-norm blocks, final LayerNorm and class-token readout (paper Table 5)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import SymgraphError
from .common import check_positive
from .registry import register_model
from .transformer import PreNormBlock

__all__ = ["ViT"]


@register_model("vit")
class ViT(nn.Module):
    """Images (B, C, H, W) -> patches (Conv2d, kernel = stride = ``patch``) -> ``[cls] + tokens`` + pos ->
    ``depth`` :class:`~symgraph.models.transformer.PreNormBlock` s -> LayerNorm -> ``x[:, 0]`` -> Linear.

    Example
    -------
    >>> ViT(dim=8, depth=1, heads=2)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        patch: int = 4,
        dim: int = 16,
        depth: int = 2,
        heads: int = 2,
        mlp_dim: int | None = None,
        out_dim: int = 10,
        dropout: float = 0.0,
        impl: str = "manual",
        pool: str = "cls",
    ):
        super().__init__()
        check_positive(patch=patch, dim=dim, depth=depth, heads=heads, out_dim=out_dim)
        C, H, W = in_shape
        if H % patch or W % patch:
            raise SymgraphError(f"Expected image sides divisible by the patch size {patch} (got {H}x{W})")
        if pool not in ("cls", "mean"):
            raise SymgraphError(f"Expected pool 'cls' or 'mean' (got {pool!r})")
        self.example_input_shape = (1, *in_shape)
        self.pool = pool
        n = (H // patch) * (W // patch)
        self.patch_embed = nn.Conv2d(C, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[PreNormBlock(dim, heads, mlp_dim or 2 * dim, impl, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.drop(x)))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))
