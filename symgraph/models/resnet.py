"""ResNets (He et al., 2016) with basic or bottleneck blocks and a downsampling 1x1 convolution shortcut.

Default: a small ResNet for 8x8 digits; ``resnet50_like`` is the ResNet-50 layout (bottleneck blocks 3-4-6-3,
widths 64..512, expansion 4) for benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import SymgraphError
from .common import check_positive, make_norm
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet50_like"]


class BasicBlock(nn.Module):
    """``relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, norm: str = "batchnorm"):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, width, 2)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, c_out, 2)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), make_norm(norm, c_out, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """``1x1 -> 3x3 (stride) -> 1x1 (x4)`` with norms and a residual shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, norm: str = "batchnorm"):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = make_norm(norm, width, 2)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = make_norm(norm, width, 2)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = make_norm(norm, c_out, 2)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), make_norm(norm, c_out, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@register_model("resnet")
class ResNet(nn.Module):
    """Stem conv3x3 -> stages of blocks -> global average pool -> Linear.

    ``blocks`` gives the number of blocks per stage, ``widths`` the stage widths (defaults: ``hidden`` doubled
    per stage); stages after the first downsample by 2.

    Example
    -------
    >>> ResNet(hidden=8, blocks=(1, 1))(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 16,
        blocks: tuple[int, ...] = (1, 1),
        widths: tuple[int, ...] | None = None,
        block: str = "basic",
        norm: str = "batchnorm",
        out_dim: int = 10,
        stem_stride: int = 1,
    ):
        super().__init__()
        blocks = tuple(blocks) if isinstance(blocks, tuple | list) else (int(blocks),)
        widths = tuple(widths) if widths is not None else tuple(hidden * 2**i for i in range(len(blocks)))
        if len(widths) != len(blocks):
            raise SymgraphError(f"Expected one width per stage ({len(blocks)}) (got {len(widths)})")
        check_positive(hidden=hidden, widths=widths, out_dim=out_dim)
        kinds = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in kinds:
            raise SymgraphError(f"Expected block 'basic' or 'bottleneck' (got {block!r})")
        cls = kinds[block]
        self.example_input_shape = (1, *in_shape)
        self.stem = nn.Sequential(
            nn.Conv2d(in_shape[0], hidden, 3, stem_stride, 1, bias=False), make_norm(norm, hidden, 2), nn.ReLU()
        )
        c = hidden
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                layer.append(cls(c, w, 2 if (i > 0 and j == 0) else 1, norm))
                c = w * cls.expansion
            stages.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


@register_model("resnet50_like")
def resnet50_like(
    in_shape: tuple[int, int, int] = (3, 32, 32), out_dim: int = 10, norm: str = "batchnorm", width: int = 64
) -> ResNet:
    """The ResNet-50 layout (bottleneck 3-4-6-3, widths 64-128-256-512, about 23.5M parameters at width 64)."""
    return ResNet(
        in_shape=in_shape,
        hidden=width,
        blocks=(3, 4, 6, 3),
        widths=(width, 2 * width, 4 * width, 8 * width),
        block="bottleneck",
        norm=norm,
        out_dim=out_dim,
    )
