"""Transformer pieces: hand-written multi-head self-attention, a pre-norm block, and a small transformer
encoder classifier (``transformer``: image rows as tokens, or token ids with ``vocab_size``).

``SelfAttention(impl=...)`` computes the same function three ways, which the graph encoders must all handle:
``"manual"`` (Linear q, k, v -> view into heads -> transpose -> ``q @ k^T * scale`` -> softmax -> ``@ v``
-> transpose/reshape back -> out projection), ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"packed"``
(one Linear producing q, k, v, split with ``reshape``/``permute``/``unbind`` as in timm), and ``"mha"``
(``nn.MultiheadAttention``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SymgraphError
from .common import check_positive
from .registry import register_model

__all__ = ["SelfAttention", "FeedForward", "PreNormBlock", "Transformer"]

IMPLS = ("manual", "sdpa", "packed", "mha")


class SelfAttention(nn.Module):
    """Multi-head self-attention on (B, T, D) tokens.

    Example
    -------
    >>> SelfAttention(8, 2, impl="manual")(torch.zeros(1, 3, 8)).shape
    torch.Size([1, 3, 8])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        impl: str = "manual",
        head_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if impl not in IMPLS:
            raise SymgraphError(f"Expected impl in {IMPLS} (got {impl!r})")
        self.dim, self.heads, self.impl = dim, heads, impl
        self.head_dim = head_dim or dim // heads
        if impl == "mha" and self.head_dim * heads != dim:
            raise SymgraphError(f"Expected dim divisible by heads for impl='mha' (got {dim} and {heads})")
        inner = self.head_dim * heads
        self.scale = self.head_dim**-0.5
        if impl == "mha":
            self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=bias, batch_first=True)
        elif impl == "packed":
            self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
            self.proj = nn.Linear(inner, dim, bias=bias)
        else:
            self.q = nn.Linear(dim, inner, bias=bias)
            self.k = nn.Linear(dim, inner, bias=bias)
            self.v = nn.Linear(dim, inner, bias=bias)
            self.proj = nn.Linear(inner, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "mha":
            out, _ = self.mha(x, x, x, need_weights=False)
            return out
        B, T, _ = x.shape
        H, d = self.heads, self.head_dim
        if self.impl == "packed":
            qkv = self.qkv(x).reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q = self.q(x).view(B, T, H, d).transpose(1, 2)
            k = self.k(x).view(B, T, H, d).transpose(1, 2)
            v = self.v(x).view(B, T, H, d).transpose(1, 2)
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            att = (q @ k.transpose(-2, -1)) * self.scale
            att = self.drop(att.softmax(dim=-1))
            y = att @ v
        y = y.transpose(1, 2).reshape(B, T, H * d)
        return self.proj(y)


class FeedForward(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PreNormBlock(nn.Module):
    """``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        impl: str = "manual",
        dropout: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, impl, head_dim, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@register_model("transformer")
class Transformer(nn.Module):
    """Tokens (B, T, d_in) (default, ``image_input``: the 8 rows of a (B, 1, 8, 8) image) -> Linear embedding
    + learned positional embedding -> ``depth`` blocks -> mean over tokens -> Linear.

    ``layer="prenorm"`` uses :class:`PreNormBlock` (attention ``impl``), ``layer="torch"`` uses
    ``nn.TransformerEncoderLayer`` (post-norm unless ``norm_first``). With ``vocab_size > 0`` the input is token
    ids (B, T) and the embedding is ``nn.Embedding``.

    Example
    -------
    >>> Transformer(dim=8, depth=1, heads=2)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        seq_len: int = 8,
        in_dim: int = 8,
        dim: int = 16,
        depth: int = 2,
        heads: int = 2,
        mlp_dim: int | None = None,
        out_dim: int = 10,
        layer: str = "prenorm",
        impl: str = "manual",
        dropout: float = 0.0,
        norm_first: bool = False,
        vocab_size: int = 0,
        image_input: bool = True,
    ):
        super().__init__()
        check_positive(seq_len=seq_len, dim=dim, depth=depth, heads=heads, out_dim=out_dim)
        mlp_dim = mlp_dim or 2 * dim
        if vocab_size > 0:
            self.embed = nn.Embedding(vocab_size, dim)
            self.example_input_shape = (1, seq_len)
            self.example_input_dtype = torch.long
        else:
            self.embed = nn.Linear(in_dim, dim)
            self.example_input_shape = (1, 1, seq_len, in_dim) if image_input else (1, seq_len, in_dim)
        self.image_input = bool(image_input) and vocab_size <= 0
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        if layer == "torch":
            self.blocks = nn.Sequential(
                *[
                    nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, batch_first=True, norm_first=norm_first)
                    for _ in range(depth)
                ]
            )
        elif layer == "prenorm":
            self.blocks = nn.Sequential(*[PreNormBlock(dim, heads, mlp_dim, impl, dropout) for _ in range(depth)])
        else:
            raise SymgraphError(f"Expected layer 'prenorm' or 'torch' (got {layer!r})")
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_input:  # images (B, 1, H, W): rows are tokens
            x = x.flatten(1, 2)
        h = self.embed(x) + self.pos
        h = self.norm(self.blocks(h))
        return self.head(h.mean(dim=1))
