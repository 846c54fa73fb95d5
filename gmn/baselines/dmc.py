"""DMC baseline: the Deep Meta Classifier of Eilertsen et al. (2020), as the paper uses it (Sec. 4.1).

The paper describes DMC as a model that "vectorizes an input network's parameters and processes it with a
1D CNN, allowing the use of differently sized networks". We implement exactly that and nothing more (the
original's exact layer sizes are not given in the paper): the flattened parameter sequence of each
network (edge-stored parameters in graph order, i.e. execution order, then node-stored ones), padded to the
longest in the batch, with two input channels (value, is-real-position), goes through strided
``Conv1d`` + ReLU blocks, a masked global mean and max pooling, and an MLP.

DMC is neither invariant to parameter permutation symmetries nor to anything else: permuting the hidden
units of an input network changes its output (the test suite checks this, as the reason it fails OOD).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from ..layers import ConcatMLP
from ..weight_space import WeightSpaceBatch
from .common import no_edit_output

__all__ = ["DMC"]


class DMC(nn.Module):
    """1D CNN over the flattened parameter vector (Eilertsen et al., 2020).

    ``kernel_size`` must be odd (same-length padding).

    Parameters
    ----------
    channels : int
        Width of every convolution.
    num_conv : int
        Number of ``Conv1d`` blocks; each but the first halves the length (``stride=2``).
    kernel_size : int
    first_stride : int
        Stride of the first block (long parameter vectors are downsampled early).
    out_dim : int

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> from torch_geometric.data import Batch
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> DMC(channels=8)(Batch.from_data_list([gmn.graph_to_data(g)])).shape
    torch.Size([1, 1])
    """

    def __init__(
        self, channels: int = 64, num_conv: int = 4, kernel_size: int = 7, first_stride: int = 4, out_dim: int = 1
    ):
        super().__init__()
        self.channels, self.num_conv, self.kernel_size = channels, num_conv, kernel_size
        self.first_stride, self.out_dim = first_stride, out_dim
        if kernel_size % 2 != 1:
            raise ValueError(f"Expected an odd kernel_size (got {kernel_size})")
        self.strides = [first_stride] + [2] * (num_conv - 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(2 if i == 0 else channels, channels, kernel_size, stride=s, padding=kernel_size // 2)
            for i, s in enumerate(self.strides)
        )
        self.head = ConcatMLP(2 * channels, channels, out_dim, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for c in self.convs:
            c.reset_parameters()
        self.head.reset_parameters()

    @property
    def pooled_dim(self) -> int:
        return 2 * self.channels

    def sequences(self, batch: WeightSpaceBatch) -> tuple[Tensor, Tensor]:
        """Padded parameter vectors [B, L] and their mask [B, L]."""
        el = batch.param_elements()
        return to_dense_batch(el.value, el.graph, batch_size=el.num_graphs)

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """Masked global mean and max of the last convolution ``[num_graphs, 2 * channels]`` (what the head reads)."""
        seq, mask = self.sequences(batch)
        lengths = mask.sum(1)
        h = torch.stack([seq, mask.to(seq.dtype)], dim=1)  # [B, 2, L]
        for conv, s in zip(self.convs, self.strides):
            h = torch.relu(conv(h))
            k = self.kernel_size
            lengths = torch.div(lengths + 2 * (k // 2) - k, s, rounding_mode="floor") + 1
            # zero the padded tail so that a network gives the same output alone and in a batch
            valid = torch.arange(h.shape[-1], device=h.device).view(1, -1) < lengths.view(-1, 1)  # [B, L']
            h = h * valid.unsqueeze(1).to(h.dtype)
        vm = valid.unsqueeze(1).to(h.dtype)
        mean = (h * vm).sum(-1) / vm.sum(-1).clamp(min=1)
        mx = h.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1)
        return torch.cat([mean, mx], dim=-1)

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Output ``[num_graphs, out_dim]`` (not invariant to anything: see the module docstring)."""
        return self.head(self.pooled(batch))

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        raise no_edit_output("DMC")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(channels={self.channels}, num_conv={self.num_conv}, "
            f"kernel_size={self.kernel_size}, first_stride={self.first_stride}, out_dim={self.out_dim})"
        )
