"""Weight-space encoders for networks of one fixed architecture, given as stacked (normalised) parameters.

Every encoder maps ``params`` (dict of ``[B, ...]`` tensors with state_dict keys) to embeddings ``[B, D]``:

- ``"gmn"``: :class:`gmn.GMN` on the parameter graph (built once; edge weights swapped per batch, see
  :class:`~gmn.inr.graph_batch.WeightGraphBatcher`); final edge features mean-pooled (paper Sec. 4.3).
- ``"mlp"``: an MLP on the flattened weights (not invariant to any symmetry).
- graph baselines from :mod:`gmn.baselines`: ``"statnn"``, ``"deepsets"`` on the same batches; ``"npnfn"``
  (NP-NFN) on the stacked weight tensors (:func:`npnfn_stacked`), when that baseline is available.
- ``"dws"``: :class:`gmn.baselines.DWSNet` (DWSNets-like, input/output neurons fixed) on the stacked
  weight tensors directly.

Example
-------
>>> import torch, symgraph
>>> from symgraph.models.siren import SIREN
>>> from gmn.inr.encoders import build_encoder
>>> net = SIREN(1, (4, 4), 1)
>>> enc = build_encoder("mlp", symgraph.parameter_graph(net), embed_dim=5, hidden_dim=8)
>>> params = {k: v.unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in net.state_dict().items()}
>>> enc(params).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from ..models import GMN
from .graph_batch import WeightGraphBatcher

__all__ = [
    "ENCODERS",
    "GRAPH_BASELINES",
    "READOUTS",
    "POOLED_READOUT",
    "WeightEncoder",
    "build_encoder",
    "available_encoders",
    "npnfn_stacked",
]

#: Graph baselines: encoder name -> candidate class names in :mod:`gmn.baselines` (first found is used).
GRAPH_BASELINES: dict[str, tuple[str, ...]] = {
    "npnfn": ("NPNFN", "NPNFNBaseline", "NPNFNEncoder", "NPNFNet"),
    "statnn": ("StatNN", "StatNNBaseline"),
    "deepsets": ("DeepSetsBaseline", "DeepSets"),
    "dws": ("DWSNet",),
}
#: Encoders that take the stacked parameters dict directly (no graph batch).
_STACKED = ("dws",)
ENCODERS = ("gmn", *GRAPH_BASELINES, "mlp")
#: What an encoder returns: its head's output, or the pooled representation the head reads.
READOUTS = ("head", "pooled")
#: Encoders that have a pooled representation (``readout="pooled"``).
POOLED_READOUT = ("gmn", "npnfn", "dws")


def _baseline_class(name: str):
    try:
        mod = importlib.import_module("gmn.baselines")
    except ImportError:
        mod = None
    for cand in GRAPH_BASELINES[name]:
        if mod is not None and hasattr(mod, cand):
            return getattr(mod, cand)
    # the package __init__ may not re-export yet: try the module named after the baseline
    try:
        sub = importlib.import_module(f"gmn.baselines.{name}")
    except ImportError:
        return None
    for cand in GRAPH_BASELINES[name]:
        if hasattr(sub, cand):
            return getattr(sub, cand)
    return None


def available_encoders() -> list[str]:
    """Encoder names that can be built now (graph baselines only once :mod:`gmn.baselines` has them)."""
    return [n for n in ENCODERS if n not in GRAPH_BASELINES or _baseline_class(n) is not None]


def npnfn_stacked(net: nn.Module, spec, params: dict[str, Tensor], edges: bool = False) -> Tensor | dict:
    """Run an :class:`gmn.baselines.NPNFN` on stacked parameters of one architecture (no per-graph objects).

    Same computation as ``NPNFN.forward`` / ``forward_edges`` on the graphs of these networks: ``edges=False``
    gives the invariant output ``[B, out_dim]`` (the per-layer means if the net has no head); ``edges=True``
    gives the equivariant output as stacked parameters (dict of ``[B, *shape]``, one output channel).
    """
    b = next(iter(params.values())).shape[0]
    Ws = [params[s.weight].reshape(b, s.n_out, s.n_in, s.kernel) for s in spec.layers]
    bs = [None if s.bias is None else params[s.bias].reshape(b, s.n_out, 1) for s in spec.layers]
    for layer in net.layers:
        Ws, bs = layer(Ws, bs)
        Ws = [torch.relu(W) for W in Ws]
        bs = [None if x is None else torch.relu(x) for x in bs]
    if not edges:
        pooled = torch.cat([W.mean(dim=(1, 2)) for W in Ws] + [x.mean(dim=1) for x in bs if x is not None], dim=-1)
        return pooled if net.head is None else net.head(pooled)
    Ws, bs = net.edge_layer(Ws, bs)
    out = {}
    for s, W, x in zip(spec.layers, Ws, bs):
        out[s.weight] = W.reshape(b, *params[s.weight].shape[1:])
        if s.bias is not None:
            out[s.bias] = x.reshape(b, *params[s.bias].shape[1:])
    return out


class WeightEncoder(nn.Module):
    """``params -> [B, out_dim]``: a graph metanet on swapped-weight batches, or an MLP on flat weights.

    Parameters
    ----------
    kind : str
        One of :data:`ENCODERS`.
    net : nn.Module
        The metanet (takes a ``torch_geometric`` batch, or a ``[B, D]`` tensor for ``"mlp"``).
    batcher : WeightGraphBatcher
    out_dim : int, optional
        Width of the embeddings (set by :func:`build_encoder`).
    """

    def __init__(self, kind: str, net: nn.Module, batcher: WeightGraphBatcher, out_dim: int | None = None):
        super().__init__()
        self.kind, self.net, self.batcher = kind, net, batcher
        self.out_dim = out_dim
        self.spec = None
        if kind == "npnfn":
            from ..baselines.npnfn import NFNSpec

            self.spec = NFNSpec.from_graph(batcher.graph)

    def forward(self, params: dict[str, Tensor]) -> Tensor:
        if self.spec is not None:
            return npnfn_stacked(self.net, self.spec, params)
        if self.kind in _STACKED:
            return self.net(params)
        w = self.batcher.edge_weights(params)
        if self.kind == "mlp":
            return self.net(w)
        return self.net(self.batcher.batch(w))

    def __repr__(self) -> str:
        return f"WeightEncoder(kind={self.kind!r}, out_dim={self.out_dim}, net={self.net!r})"


def build_encoder(
    kind: str,
    graph: NeuralGraph,
    embed_dim: int,
    hidden_dim: int,
    num_layers: int = 3,
    device: torch.device | str = "cpu",
    pool: tuple[str, ...] = ("edge",),
    readout: str = "head",
) -> WeightEncoder:
    """Build a :class:`WeightEncoder` for the architecture of ``graph``.

    ``hidden_dim``/``num_layers`` are the metanet's width and depth (for ``"mlp"``: hidden width and number
    of linear layers). ``pool`` is what the GMN mean-pools: its final edge features (the paper's Sec. 4.3
    choice, the default), node features, or (``"param"``) the edges of each parameter tensor separately.

    ``readout`` is what the encoder returns: ``"head"`` (default), the invariant head's MLP output of width
    ``embed_dim``; ``"pooled"``, the pooled representation that head reads (GMN: the mean-pooled features,
    the "vector representation" of Sec. 4.3; NP-NFN: its per-layer means; DWSNet: its per-block means);
    only for the encoders in :data:`POOLED_READOUT`. The width is ``out_dim`` of the returned encoder.
    """
    if kind not in ENCODERS:
        raise ValueError(f"Expected an encoder in {ENCODERS} (got {kind!r})")
    if readout not in READOUTS:
        raise ValueError(f"Expected a readout in {READOUTS} (got {readout!r})")
    if readout == "pooled" and kind not in POOLED_READOUT:
        raise ValueError(f"Expected an encoder in {POOLED_READOUT} for readout 'pooled' (got {kind!r})")
    head_dim = embed_dim if readout == "head" else None
    batcher = WeightGraphBatcher(graph, device=device)
    if kind == "gmn":
        net: nn.Module = GMN(
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            out_dim=head_dim,
            use_global=False,
            pool=tuple(pool),
            param_tensors=len(batcher.edge_slots) if "param" in pool else None,
        )
        out_dim = head_dim or net.pooled_dim
    elif kind == "mlp":
        dims = [batcher.num_edges] + [hidden_dim] * max(num_layers - 1, 0) + [embed_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
        out_dim = embed_dim
    else:
        cls = _baseline_class(kind)
        if cls is None:
            raise ValueError(f"Expected gmn.baselines to provide {kind} ({GRAPH_BASELINES[kind]}) (got none yet)")
        if kind in ("npnfn", *_STACKED):
            net = cls(graph, hidden_dim=hidden_dim, num_layers=num_layers, out_dim=head_dim)
        else:
            net = cls(hidden_dim=hidden_dim, out_dim=embed_dim)
        out_dim = head_dim or net.pooled_dim
    return WeightEncoder(kind, net, batcher, out_dim).to(device)
