"""Weight-space encoders for networks of one fixed architecture, given as stacked (normalised) parameters.

Every encoder maps ``params`` (dict of ``[B, ...]`` tensors with state_dict keys) to embeddings ``[B, D]``: the
parameters become a :class:`~gmn.weight_space.WeightSpaceBatch` (the graph is built once and its edge weights
swapped per batch, :class:`~gmn.inr.graph_batch.WeightGraphBatcher`) and go through a metanet of
:mod:`gmn.metanets` (the same protocol for all): ``"gmn"`` (:class:`gmn.GMN`; final edge features
mean-pooled, paper Sec. 4.3), ``"npnfn"``, ``"statnn"``, ``"deepsets"``, ``"dws"`` (:class:`gmn.baselines.DWSNet`,
input/output neurons fixed) and ``"mlp"`` (flat weights, not invariant to any symmetry).

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

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from .. import metanets
from .graph_batch import WeightGraphBatcher

__all__ = ["ENCODERS", "READOUTS", "POOLED_READOUT", "GMN_OPTIONS", "WeightEncoder", "build_encoder"]

#: The encoders of the SSL table, in its order.
ENCODERS = ("gmn", "npnfn", "statnn", "deepsets", "dws", "mlp")
#: What an encoder returns: its head's output, or the pooled representation the head reads.
READOUTS = ("head", "pooled")
#: Encoders whose pooled representation is the mean of equivariant per-parameter features (Sec. 4.3's rule:
#: the GMN's mean-pooled edges, NP-NFN's per-layer means, DWSNet's per-block means): ``readout="pooled"``.
POOLED_READOUT = ("gmn", "npnfn", "dws")
#: The GMN of the INR experiments: no global feature (the paper's experiments do not use one).
GMN_OPTIONS = {"use_global": False}


class WeightEncoder(nn.Module):
    """``params -> [B, out_dim]``: a metanet on the weight-swapped batches of one architecture.

    Parameters
    ----------
    kind : str
        One of :data:`ENCODERS`.
    net : nn.Module
        The metanet (takes a :class:`~gmn.weight_space.WeightSpaceBatch`).
    batcher : WeightGraphBatcher
    out_dim : int, optional
        Width of the embeddings (set by :func:`build_encoder`).
    readout : {"head", "pooled"}
        ``net(batch)`` or ``net.pooled(batch)``.
    """

    def __init__(
        self, kind: str, net: nn.Module, batcher: WeightGraphBatcher, out_dim: int | None = None, readout: str = "head"
    ):
        super().__init__()
        self.kind, self.net, self.batcher = kind, net, batcher
        self.out_dim, self.readout = out_dim, readout

    def forward(self, params: dict[str, Tensor]) -> Tensor:
        batch = self.batcher.batch(self.batcher.edge_weights(params))
        return self.net.pooled(batch) if self.readout == "pooled" else self.net(batch)

    def __repr__(self) -> str:
        return f"WeightEncoder(kind={self.kind!r}, out_dim={self.out_dim}, readout={self.readout!r}, net={self.net!r})"


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
    """Build a :class:`WeightEncoder` for the architecture of ``graph`` with :func:`gmn.metanets.build`.

    ``hidden_dim``/``num_layers`` are the metanet's width and depth (for ``"mlp"``: hidden width and number
    of linear layers). ``pool`` is what the GMN mean-pools: its final edge features (the paper's Sec. 4.3
    choice, the default), node features, or (``"param"``) the edges of each parameter tensor separately.

    ``readout`` is what the encoder returns: ``"head"`` (default), the invariant head's output of width
    ``embed_dim``; ``"pooled"``, the pooled representation that head reads (only for the encoders in
    :data:`POOLED_READOUT`). The width is ``out_dim`` of the returned encoder.
    """
    if kind not in ENCODERS:
        raise ValueError(f"Expected an encoder in {ENCODERS} (got {kind!r})")
    if readout not in READOUTS:
        raise ValueError(f"Expected a readout in {READOUTS} (got {readout!r})")
    if readout == "pooled" and kind not in POOLED_READOUT:
        raise ValueError(f"Expected an encoder in {POOLED_READOUT} for readout 'pooled' (got {kind!r})")
    head_dim = embed_dim if readout == "head" else None
    batcher = WeightGraphBatcher(graph, device=device)
    options = dict(GMN_OPTIONS, pool=tuple(pool)) if kind == "gmn" else {}
    net = metanets.build(
        kind, hidden_dim=hidden_dim, num_layers=num_layers, out_dim=head_dim, example=batcher.data, **options
    )
    return WeightEncoder(kind, net, batcher, head_dim or net.pooled_dim, readout).to(device)
