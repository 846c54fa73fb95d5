"""NP-NFN baseline (Zhou et al., 2023a): neuron-permutation equivariant linear layers on weight spaces.

Input networks must be *chains* of dense layers: MLPs and CNNs made of ``Linear``/``Conv`` layers (with or
without biases), elementwise activations, pooling and flatten, wired sequentially. Everything else —
residual connections, normalisation layers, attention, DeepSets layers, grouped convolutions, branches —
raises :class:`~gmn.baselines.common.UnsupportedArchitectureError`, as the paper's tables mark.

Weight space. Layer ``l`` (``l = 0..L-1``) has ``W_l`` [B, n_l, n_{l-1}, K_l * c] and ``b_l`` [B, n_l, c] with
``c`` feature channels; kernel positions are folded into the channel axis (``K_l`` = kernel size of a
convolution, number of spatial positions ``P`` for a linear layer after a flatten, 1 otherwise), as NFN
does for CNNs. The NP layer (mean pooling, paper D.1.2 Eqs. 49-54 with learned channel maps for the
scalars ``a``, ``c``)::

    W'_l[i, j] = A6 W_l[i, j] + A2 W_l[*, j] + A4 W_l[i, *] + A3 W_{l-1}[j, *] + A5 W_{l+1}[*, i]
                 + A8 b_l[i] + A9 b_{l-1}[j] + A1 (W_s[*, *], b_s[*] for all s)
    b'_l[i]    = C5 b_l[i] + C2 W_l[i, *] + C3 W_{l+1}[*, i] + C1 (W_s[*, *], b_s[*] for all s)

(``*``: mean over that index; each ``A``/``C`` is a linear map of the channel axis). NP treats the input and
output neurons as permutable too (its simplifying assumption), so it is equivariant to all hidden-neuron
permutations of the input network. ``NPNFN.forward`` pools per layer (invariant output), ``NPNFN.pooled``
returns the per-layer means, ``NPNFN.edit`` an equivariant output per parameter (one row per forward edge of
the batch). The chain is read once per graph by :func:`gmn.graph_to_data` (:class:`~gmn.weight_space.ChainSpec`);
a batch stacks the weights of the graphs of one shape (:meth:`gmn.WeightSpaceData.chain_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from ..errors import MetanetOutputError
from ..layers import ConcatMLP
from ..weight_space import ChainLayer, ChainSpec, WeightSpaceBatch, WeightSpaceData
from .common import UnsupportedArchitectureError

__all__ = ["NFNLayerSpec", "NFNSpec", "NPLinear", "NPNFN", "chain_spec"]

#: The names NP-NFN has always used for the chain of dense layers it reads (see :mod:`gmn.weight_space`).
NFNLayerSpec = ChainLayer
NFNSpec = ChainSpec


def chain_spec(spec: ChainSpec | NeuralGraph | WeightSpaceData, metanet: str = "NP-NFN") -> ChainSpec:
    """The chain of ``spec``: a :class:`ChainSpec`, a graph's or one graph's :class:`WeightSpaceData`'s;
    :class:`UnsupportedArchitectureError` (naming ``metanet``) if it is no chain."""
    if isinstance(spec, NeuralGraph):
        spec = ChainSpec.read(spec)
    elif isinstance(spec, WeightSpaceData):
        chains = spec.chains
        if len(chains) != 1:
            raise ValueError(f"Expected one graph's data as the example of {metanet} (got a batch of {len(chains)})")
        spec = chains[0]
    if not spec.is_chain:
        raise spec.error(metanet)
    return spec


def _mean(t: Tensor, dim: int) -> Tensor:
    return t.mean(dim=dim)


class NPLinear(nn.Module):
    """One NP-NFN equivariant linear layer (module docstring) for a fixed chain signature.

    Parameters
    ----------
    w_in, w_out : sequence of int
        Channel widths of each layer's weight features in and out (kernel positions folded in).
    b_in, b_out : sequence of int
        Channel widths of the bias features (0 where a layer has no bias).
    """

    def __init__(self, w_in: Sequence[int], w_out: Sequence[int], b_in: Sequence[int], b_out: Sequence[int]):
        super().__init__()
        L = len(w_in)
        self.w_in, self.w_out, self.b_in, self.b_out = tuple(w_in), tuple(w_out), tuple(b_in), tuple(b_out)
        g_in = sum(w_in) + sum(b_in)
        self.A6 = nn.ModuleList(nn.Linear(w_in[l], w_out[l]) for l in range(L))
        self.A2 = nn.ModuleList(nn.Linear(w_in[l], w_out[l], bias=False) for l in range(L))
        self.A4 = nn.ModuleList(nn.Linear(w_in[l], w_out[l], bias=False) for l in range(L))
        self.A3 = nn.ModuleList(
            nn.Linear(w_in[l - 1], w_out[l], bias=False) if l > 0 else nn.Identity() for l in range(L)
        )
        self.A5 = nn.ModuleList(
            nn.Linear(w_in[l + 1], w_out[l], bias=False) if l < L - 1 else nn.Identity() for l in range(L)
        )
        self.A1 = nn.ModuleList(nn.Linear(g_in, w_out[l], bias=False) for l in range(L))
        self.A8 = nn.ModuleList(
            nn.Linear(b_in[l], w_out[l], bias=False) if b_in[l] else nn.Identity() for l in range(L)
        )
        self.A9 = nn.ModuleList(
            nn.Linear(b_in[l - 1], w_out[l], bias=False) if l > 0 and b_in[l - 1] else nn.Identity() for l in range(L)
        )
        self.C5 = nn.ModuleList(
            nn.Linear(b_in[l], b_out[l]) if b_in[l] and b_out[l] else nn.Identity() for l in range(L)
        )
        self.C2 = nn.ModuleList(
            nn.Linear(w_in[l], b_out[l], bias=False) if b_out[l] else nn.Identity() for l in range(L)
        )
        self.C3 = nn.ModuleList(
            nn.Linear(w_in[l + 1], b_out[l], bias=False) if b_out[l] and l < L - 1 else nn.Identity() for l in range(L)
        )
        self.C1 = nn.ModuleList(nn.Linear(g_in, b_out[l], bias=False) if b_out[l] else nn.Identity() for l in range(L))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, Ws: list[Tensor], bs: list[Tensor | None]) -> tuple[list[Tensor], list[Tensor | None]]:
        """``Ws[l]`` [B, n_l, n_{l-1}, w_in[l]], ``bs[l]`` [B, n_l, b_in[l]] or None."""
        L = len(Ws)
        row = [_mean(W, 2) for W in Ws]  # W_l[i, *]: [B, n_l, d]
        col = [_mean(W, 1) for W in Ws]  # W_l[*, j]: [B, n_{l-1}, d]
        glob = [_mean(r, 1) for r in row] + [_mean(b, 1) for b in bs if b is not None]
        glob = torch.cat(glob, dim=-1)  # [B, g_in]
        W_out, b_out = [], []
        for l in range(L):
            W = Ws[l]
            h = self.A6[l](W) + self.A2[l](col[l]).unsqueeze(1) + self.A4[l](row[l]).unsqueeze(2)
            h = h + self.A1[l](glob).unsqueeze(1).unsqueeze(1)
            if l > 0:
                h = h + self.A3[l](row[l - 1]).unsqueeze(1)
                if bs[l - 1] is not None:
                    h = h + self.A9[l](bs[l - 1]).unsqueeze(1)
            if l < L - 1:
                h = h + self.A5[l](col[l + 1]).unsqueeze(2)
            if bs[l] is not None:
                h = h + self.A8[l](bs[l]).unsqueeze(2)
            W_out.append(h)
            if self.b_out[l]:
                hb = self.C2[l](row[l]) + self.C1[l](glob).unsqueeze(1)
                if bs[l] is not None:
                    hb = hb + self.C5[l](bs[l])
                if l < L - 1:
                    hb = hb + self.C3[l](col[l + 1])
                b_out.append(hb)
            else:
                b_out.append(None)
        return W_out, b_out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(w_in={self.w_in}, w_out={self.w_out}, b_in={self.b_in}, b_out={self.b_out})"


class NPNFN(nn.Module):
    """NP-NFN metanetwork: ``num_layers`` :class:`NPLinear` + ReLU, then per-layer mean pooling and an MLP.

    Parameters
    ----------
    spec : ChainSpec, NeuralGraph or WeightSpaceData
        Any input network of the family (depth, folded kernel sizes and biases must match; widths may
        differ between networks).
    hidden_dim : int
        Feature channels.
    num_layers : int
    out_dim : int or None
        Invariant output width (``forward``).
    edge_out_dim : int or None
        Equivariant output width per parameter (``edit``).

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> NPNFN(g, hidden_dim=4)(gmn.WeightSpaceBatch.from_graphs([g, g])).shape
    torch.Size([2, 1])
    """

    def __init__(
        self,
        spec: ChainSpec | NeuralGraph | WeightSpaceData,
        hidden_dim: int = 16,
        num_layers: int = 2,
        out_dim: int | None = 1,
        edge_out_dim: int | None = None,
    ):
        super().__init__()
        spec = chain_spec(spec)
        self.signature = spec.signature
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.out_dim, self.edge_out_dim = out_dim, edge_out_dim
        Ks = [k for k, _ in self.signature]
        hb = [bool(b) for _, b in self.signature]
        L = len(Ks)
        h = hidden_dim
        layers = []
        w_in, b_in = Ks, [1 if b else 0 for b in hb]
        for _ in range(num_layers):
            w_out = [h] * L
            b_out = [h if b else 0 for b in hb]
            layers.append(NPLinear(w_in, w_out, b_in, b_out))
            w_in, b_in = w_out, b_out
        self.layers = nn.ModuleList(layers)
        #: width of the per-layer means the invariant head reads
        self.pooled_dim = sum(w_in) + sum(b_in)
        self.head = ConcatMLP(self.pooled_dim, h, out_dim, 2) if out_dim is not None else None
        self.edge_layer = None
        if edge_out_dim is not None:
            self.edge_layer = NPLinear(
                w_in, [k * edge_out_dim for k in Ks], b_in, [edge_out_dim if b else 0 for b in hb]
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.layers:
            m.reset_parameters()
        if self.head is not None:
            self.head.reset_parameters()
        if self.edge_layer is not None:
            self.edge_layer.reset_parameters()

    def _groups(self, batch: WeightSpaceBatch):
        """``(group, Ws, bs)`` after the equivariant trunk, per group of graphs of one shape."""
        groups = batch.chain_groups("NP-NFN")
        for grp in groups:
            if grp.spec.signature != self.signature:
                raise UnsupportedArchitectureError(
                    "NPNFN", f"networks with layer signature (kernel, bias) {self.signature}", f"{grp.spec.signature}"
                )
        p = next(self.parameters())
        values = batch.edge_attr[:, 0].to(device=p.device, dtype=p.dtype)
        for grp in groups:
            yield (grp, *self._trunk(*grp.weights(values)))

    def _trunk(self, Ws, bs):
        for layer in self.layers:
            Ws, bs = layer(Ws, bs)
            Ws = [torch.relu(W) for W in Ws]
            bs = [None if b is None else torch.relu(b) for b in bs]
        return Ws, bs

    @staticmethod
    def _in_batch_order(groups: list[Tensor], rows: list[Tensor]) -> Tensor:
        out = torch.cat(rows)
        if len(rows) == 1:
            return out
        return out[torch.argsort(torch.cat(groups))]

    def _pooled_groups(self, batch: WeightSpaceBatch) -> tuple[list[Tensor], list[Tensor]]:
        idx, pooled = [], []
        for grp, Ws, bs in self._groups(batch):
            idx.append(grp.graphs)
            pooled.append(
                torch.cat([W.mean(dim=(1, 2)) for W in Ws] + [b.mean(dim=1) for b in bs if b is not None], -1)
            )
        return idx, pooled

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """Per-layer means after the trunk ``[num_graphs, pooled_dim]`` (what the invariant head reads)."""
        return self._in_batch_order(*self._pooled_groups(batch))

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Invariant output ``[num_graphs, out_dim]`` (the per-layer means when the net has no head)."""
        idx, pooled = self._pooled_groups(batch)
        if self.head is None:
            return self._in_batch_order(idx, pooled)
        return self._in_batch_order(idx, [self.head(p) for p in pooled])

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        """Equivariant output per parameter ``[num_forward_edges_in_batch, edge_out_dim]`` (edge order)."""
        if self.edge_layer is None:
            raise MetanetOutputError("NPNFN", "edit", "edge_out_dim=None")
        d = self.edge_out_dim
        out = None
        for grp, Ws, bs in self._groups(batch):
            Ws, bs = self.edge_layer(Ws, bs)
            flat = grp.flatten(Ws, bs, d).reshape(-1, d)
            if out is None:
                out = flat.new_zeros(int(batch.edge_is_forward.sum()), d)
            out = out.index_copy(0, batch.forward_rows(grp.edges.reshape(-1)), flat)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(signature={self.signature}, hidden_dim={self.hidden_dim}, "
            f"num_layers={self.num_layers}, out_dim={self.out_dim}, edge_out_dim={self.edge_out_dim})"
        )
