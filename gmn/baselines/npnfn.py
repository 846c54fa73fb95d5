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
permutations of the input network. ``NPNFN.forward`` pools per layer (invariant output);
``NPNFN.forward_edges`` returns an equivariant output per parameter-carrying edge of each graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from ..layers import ConcatMLP
from .common import UnsupportedArchitectureError

__all__ = ["NFNLayerSpec", "NFNSpec", "NPLinear", "NPNFN"]

_DENSE_KINDS = ("linear", "conv")


@dataclass(frozen=True)
class NFNLayerSpec:
    """One dense layer of a chain: weight slot, optional bias slot, sizes and folded kernel size."""

    weight: str
    bias: str | None
    n_out: int
    n_in: int
    kernel: int


@dataclass(frozen=True)
class NFNSpec:
    """A chain of dense layers read off a parameter graph (see :meth:`from_graph`)."""

    layers: tuple[NFNLayerSpec, ...]

    @property
    def signature(self) -> tuple:
        """What an :class:`NPNFN` depends on: depth, folded kernel sizes and which layers have biases."""
        return tuple((s.kernel, s.bias is not None) for s in self.layers)

    @property
    def shapes(self) -> tuple:
        return tuple((s.n_out, s.n_in, s.kernel, s.bias is not None) for s in self.layers)

    @classmethod
    def from_graph(cls, g: NeuralGraph) -> NFNSpec:
        """Read the chain of dense layers of ``g``; raise :class:`UnsupportedArchitectureError` otherwise."""
        name = "NP-NFN"
        node_slots = [s.name for s in g.slots if s.location == "node"]
        if node_slots:
            raise UnsupportedArchitectureError(
                name, "an MLP or CNN without normalisation layers", f"node-stored parameters {node_slots[:3]}"
            )
        keys = g.edge_color_keys
        for k in keys:
            if not k or k[0] not in (*_DENSE_KINDS, "bias"):
                raise UnsupportedArchitectureError(
                    name,
                    "only linear, convolution and bias edges",
                    f"an edge of kind {k[:2]!r} (residual, attention, ...)",
                )
            if k[0] == "conv" and len(k) > 6 and k[6] != 1:
                raise UnsupportedArchitectureError(name, "convolutions with groups=1", f"groups={k[6]}")
        has = g.edge_param.has_param()
        if not bool(has.all()):
            raise UnsupportedArchitectureError(name, "every edge to carry a parameter", "parameter-free edges")
        layers: list[dict] = []
        src_all, dst_all = g.edge_index
        for s in g.edge_param.slots:
            sl = slice(s.start, s.start + s.numel)
            kinds = {keys[c][0] for c in torch.unique(g.edge_color[sl]).tolist()}
            src, dst = src_all[sl], dst_all[sl]
            if kinds == {"bias"}:
                rows = dst
                match = [L for L in layers if torch.equal(L["rows"], rows)]
                if len(match) != 1 or match[0]["bias"] is not None:
                    raise UnsupportedArchitectureError(name, "one bias per dense layer", f"bias '{s.name}'")
                match[0]["bias"] = s.name
                continue
            if len(kinds) != 1 or len(s.shape) < 2:
                raise UnsupportedArchitectureError(name, "dense weight tensors", f"'{s.name}' of shape {s.shape}")
            n_out = s.shape[0]
            per_row = s.numel // n_out
            rows = dst.view(n_out, per_row)[:, 0]
            if kinds == {"conv"}:
                n_in, K = s.shape[1], math.prod(s.shape[2:])
                cols = src.view(n_out, n_in, K)[0, :, 0]
            else:
                col_nodes = src.view(n_out, per_row)[0]
                cols = torch.unique_consecutive(col_nodes)
                n_in = cols.numel()
                K = per_row // max(n_in, 1)
                if n_in * K != per_row or not torch.equal(col_nodes, cols.repeat_interleave(K)):
                    raise UnsupportedArchitectureError(name, "a dense layer on a flattened chain", f"'{s.name}'")
            layers.append(dict(weight=s.name, bias=None, rows=rows, cols=cols, n_out=n_out, n_in=n_in, K=K))
        if not layers:
            raise UnsupportedArchitectureError(name, "at least one dense layer", "none")
        if not torch.equal(layers[0]["cols"], g.input_nodes):
            raise UnsupportedArchitectureError(name, "a first layer reading the input nodes", "other wiring")
        for a, b in zip(layers[:-1], layers[1:]):
            if not torch.equal(a["rows"], b["cols"]):
                raise UnsupportedArchitectureError(
                    name, "a sequential chain of layers", f"'{b['weight']}' not reading the outputs of '{a['weight']}'"
                )
        if not torch.equal(layers[-1]["rows"], g.output_nodes):
            raise UnsupportedArchitectureError(name, "a last layer writing the output nodes", "other wiring")
        return cls(tuple(NFNLayerSpec(L["weight"], L["bias"], L["n_out"], L["n_in"], L["K"]) for L in layers))

    def weights(self, g: NeuralGraph, dtype: torch.dtype | None = None) -> tuple[list[Tensor], list[Tensor | None]]:
        """``W_l`` [n_l, n_{l-1}, K_l] and ``b_l`` [n_l, 1] (or None) of one graph, in edge flat order."""
        Ws, bs = [], []
        ep = g.edge_param
        ew = g.edge_weight if dtype is None else g.edge_weight.to(dtype)
        for s in self.layers:
            r = ep.edges_of(s.weight)
            Ws.append(ew[r.start : r.stop].view(s.n_out, s.n_in, s.kernel))
            if s.bias is None:
                bs.append(None)
            else:
                rb = ep.edges_of(s.bias)
                bs.append(ew[rb.start : rb.stop].view(s.n_out, 1))
        return Ws, bs


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
    spec : NFNSpec or NeuralGraph
        Any input network of the family (depth, folded kernel sizes and biases must match; widths may
        differ between networks).
    hidden_dim : int
        Feature channels.
    num_layers : int
    out_dim : int or None
        Invariant output width (``forward``).
    edge_out_dim : int or None
        Equivariant output width per parameter (``forward_edges``).

    Example
    -------
    >>> import torch.nn as nn, symgraph
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> NPNFN(g, hidden_dim=4)([g, g]).shape
    torch.Size([2, 1])
    """

    def __init__(
        self,
        spec: NFNSpec | NeuralGraph,
        hidden_dim: int = 16,
        num_layers: int = 2,
        out_dim: int | None = 1,
        edge_out_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(spec, NeuralGraph):
            spec = NFNSpec.from_graph(spec)
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

    def _groups(self, graphs: Sequence[NeuralGraph]):
        specs = [NFNSpec.from_graph(g) for g in graphs]
        for s in specs:
            if s.signature != self.signature:
                raise UnsupportedArchitectureError(
                    "NPNFN", f"networks with layer signature (kernel, bias) {self.signature}", f"{s.signature}"
                )
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(specs):
            groups.setdefault(s.shapes, []).append(i)
        dtype = next(self.parameters()).dtype
        for idx in groups.values():
            spec = specs[idx[0]]
            per = [spec.weights(graphs[i], dtype) for i in idx]
            Ws = [torch.stack([p[0][l] for p in per]) for l in range(len(spec.layers))]
            bs = [
                None if per[0][1][l] is None else torch.stack([p[1][l] for p in per]) for l in range(len(spec.layers))
            ]
            dev = next(self.parameters()).device
            yield idx, spec, [W.to(dev) for W in Ws], [None if b is None else b.to(dev) for b in bs]

    def _trunk(self, Ws, bs):
        for layer in self.layers:
            Ws, bs = layer(Ws, bs)
            Ws = [torch.relu(W) for W in Ws]
            bs = [None if b is None else torch.relu(b) for b in bs]
        return Ws, bs

    def forward(self, graphs: Sequence[NeuralGraph] | NeuralGraph) -> Tensor:
        """Invariant output ``[len(graphs), out_dim]``."""
        if self.head is None:
            raise ValueError("Expected an NPNFN with out_dim (got out_dim=None)")
        graphs = [graphs] if isinstance(graphs, NeuralGraph) else list(graphs)
        out: list[Tensor | None] = [None] * len(graphs)
        for idx, _, Ws, bs in self._groups(graphs):
            Ws, bs = self._trunk(Ws, bs)
            pooled = [W.mean(dim=(1, 2)) for W in Ws] + [b.mean(dim=1) for b in bs if b is not None]
            y = self.head(torch.cat(pooled, dim=-1))
            for k, i in enumerate(idx):
                out[i] = y[k]
        return torch.stack(out)  # type: ignore[arg-type]

    def forward_edges(self, graphs: Sequence[NeuralGraph] | NeuralGraph) -> list[Tensor]:
        """Equivariant output per graph: ``[num_edges, edge_out_dim]`` in the graph's edge order."""
        if self.edge_layer is None:
            raise ValueError("Expected an NPNFN with edge_out_dim (got edge_out_dim=None)")
        graphs = [graphs] if isinstance(graphs, NeuralGraph) else list(graphs)
        out: list[Tensor | None] = [None] * len(graphs)
        d = self.edge_out_dim
        for idx, spec, Ws, bs in self._groups(graphs):
            Ws, bs = self.edge_layer(*self._trunk(Ws, bs))
            for k, i in enumerate(idx):
                g = graphs[i]
                res = Ws[0].new_zeros(g.num_edges, d)
                for l, s in enumerate(spec.layers):
                    r = g.edge_param.edges_of(s.weight)
                    # [n_out, n_in, K * d] -> flat (o, i, k) order of the parameter, d channels
                    res[r.start : r.stop] = Ws[l][k].reshape(s.n_out, s.n_in, s.kernel, d).reshape(-1, d)
                    if s.bias is not None:
                        rb = g.edge_param.edges_of(s.bias)
                        res[rb.start : rb.stop] = bs[l][k]
                out[i] = res
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(signature={self.signature}, hidden_dim={self.hidden_dim}, "
            f"num_layers={self.num_layers}, out_dim={self.out_dim}, edge_out_dim={self.edge_out_dim})"
        )
