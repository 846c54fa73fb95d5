"""`GMN`: encoders -> :class:`~gmn.layers.GMNLayer` stack -> invariant and/or equivariant heads.

Input: a ``torch_geometric`` ``Batch`` of :func:`gmn.graph_to_data` outputs (graphs of any architectures).

- Encoders: one embedding per categorical column (``x_cat``, ``edge_cat``; large vocabularies factorised,
  positional ids as sinusoidal features, see :class:`FeatureEncoder`), summed, plus an MLP of the float
  columns (``x``, ``edge_attr``; the weight value enters here).
- Layers: ``num_layers`` :class:`GMNLayer` with residual connections and LayerNorm.
- Invariant head (``out_dim``): mean-pool the final edge features (and node features, ``pool=("edge",
  "node")``; or the edges of each parameter tensor separately, ``pool=("param",)``, for networks of one
  architecture) per graph, concatenate the global feature, MLP -> ``[num_graphs, out_dim]``. The output is a
  *logit*: for accuracy prediction use ``BCEWithLogitsLoss`` and ``torch.sigmoid`` for predictions
  (:func:`gmn.train.train_regressor` does both), as the paper's sigmoid + BCE.
- Equivariant edge head (``edge_out_dim``): an MLP of the final features of each forward edge and of its
  reverse copy -> ``[num_forward_edges_in_batch, edge_out_dim]``, in the order of the forward edges
  (graph by graph); :func:`edge_output_to_state_dict` maps one graph's rows back onto parameters.

Every input feature is invariant to neural DAG automorphisms and every operation is permutation
equivariant, so the graph output is invariant and the edge output equivariant (paper Prop. 2 / C.6).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from .data import EDGE_CAT_SIZES, EDGE_FLOAT_DIM, MAX_POSITIONS, NODE_CAT_COLUMNS, NODE_CAT_SIZES, NODE_FLOAT_DIM
from .errors import MetanetOutputError
from .fused import Incidence
from .layers import ConcatMLP, GMNLayer, scatter_reduce
from .weight_space import WeightSpaceBatch

__all__ = ["GMN", "GMNEdgeHead", "FeatureEncoder", "edge_output_to_state_dict", "split_edge_output"]


class FeatureEncoder(nn.Module):
    """Embeddings of categorical columns, summed, plus an MLP of float columns.

    Small vocabularies (at most ``full_rows`` rows) get a full ``out_dim``-wide table. Large ones would
    dominate a small model's parameter count while most of their rows are never used (a 1024-bucket key hash,
    2049 positional ids): they get a factorised table of width ``embed_rank`` and a linear map to ``out_dim``.
    Columns named in ``sinusoidal`` (the positional identity of input/output nodes) are not looked up at all:
    id ``0`` means "no position", ids ``1 .. P`` the inputs and ``P+1 .. 2P`` the outputs; the encoder feeds
    ``[is_input, is_output, sin/cos of the index at 8 frequencies]`` through a linear map. Every feature is a
    function of the id only, so invariance and equivariance of the GMN are unchanged.

    Example
    -------
    >>> enc = FeatureEncoder((3, 5), 2, 8)
    >>> enc(torch.tensor([[0, 4], [2, 1]]), torch.randn(2, 2)).shape
    torch.Size([2, 8])
    >>> big = FeatureEncoder((3, 1025), 2, 8, sinusoidal=(1,), positions=512)
    >>> sum(p.numel() for p in big.parameters()) < 3 * 8 + 1025 * 8
    True
    """

    NUM_FREQ = 8

    def __init__(
        self,
        cat_sizes: Sequence[int],
        float_dim: int,
        out_dim: int,
        full_rows: int = 128,
        embed_rank: int = 4,
        sinusoidal: Sequence[int] = (),
        positions: int = 1024,
    ):
        super().__init__()
        self.cat_sizes, self.float_dim, self.out_dim = tuple(cat_sizes), float_dim, out_dim
        self.sinusoidal, self.positions = tuple(sinusoidal), int(positions)
        rank = min(embed_rank, out_dim)
        self.embeddings = nn.ModuleList()
        self.projections = nn.ModuleDict()
        for k, s in enumerate(self.cat_sizes):
            if k in self.sinusoidal:
                self.embeddings.append(nn.Identity())  # keeps column indices aligned; no table
                self.projections[str(k)] = nn.Linear(2 + 2 * self.NUM_FREQ, out_dim, bias=False)
            elif s > full_rows:
                self.embeddings.append(nn.Embedding(s, rank))
                self.projections[str(k)] = nn.Linear(rank, out_dim, bias=False)
            else:
                self.embeddings.append(nn.Embedding(s, out_dim))
        # geometric frequencies from 1 (adjacent ids differ clearly) down to 1 / positions (no wrap-around)
        freqs = float(self.positions) ** (-torch.arange(self.NUM_FREQ, dtype=torch.float64) / (self.NUM_FREQ - 1))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.mlp = ConcatMLP(float_dim, out_dim, out_dim, num_layers=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for k, emb in enumerate(self.embeddings):
            if k in self.sinusoidal:
                continue
            if str(k) in self.projections:
                nn.init.normal_(emb.weight, std=1.0)
            else:
                nn.init.normal_(emb.weight, std=0.1)
        for k, proj in self.projections.items():  # each table's output starts at about std 0.1 per dimension
            scale = 1.0 if int(k) in self.sinusoidal else proj.in_features**-0.5
            nn.init.normal_(proj.weight, std=0.1 * scale)
        self.mlp.reset_parameters()

    def _position_features(self, ids: Tensor, dtype) -> Tensor:
        is_in = (ids >= 1) & (ids <= self.positions)
        is_out = ids > self.positions
        idx = torch.where(is_out, ids - 1 - self.positions, ids - 1).clamp(min=0).to(self.freqs.dtype)
        ang = idx[:, None] * self.freqs[None, :]
        on = (is_in | is_out)[:, None].to(ang.dtype)
        feats = torch.cat(
            [is_in[:, None].to(ang.dtype), is_out[:, None].to(ang.dtype), on * ang.sin(), on * ang.cos()], 1
        )
        return feats.to(dtype)

    def forward(self, cat: Tensor, flt: Tensor) -> Tensor:
        out = self.mlp(flt)
        for k, emb in enumerate(self.embeddings):
            proj = self.projections[str(k)] if str(k) in self.projections else None
            if k in self.sinusoidal:
                out = out + proj(self._position_features(cat[:, k], proj.weight.dtype)).to(out.dtype)
            elif proj is not None:
                out = out + proj(emb(cat[:, k])).to(out.dtype)
            else:
                out = out + emb(cat[:, k]).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cat_sizes={self.cat_sizes}, float_dim={self.float_dim}, out={self.out_dim}, "
            f"factorised={sorted(int(k) for k in self.projections)}, sinusoidal={self.sinusoidal})"
        )


class GMN(nn.Module):
    """Graph metanetwork over parameter graphs (paper Sec. 2.3).

    Parameters
    ----------
    hidden_dim : int
        Width of node and edge features.
    num_layers : int
        Number of :class:`GMNLayer`.
    out_dim : int or None
        Width of the invariant per-graph output (``None``: no graph head). With neither ``out_dim`` nor
        ``edge_out_dim`` the GMN returns its pooled representation ``[num_graphs, pooled_dim]`` (the input
        of the graph head's MLP: what Sec. 4.3 calls the mean-pooled vector representation).
    edge_out_dim : int or None
        Width of the equivariant per-forward-edge output (``None``: no edge head).
    use_global : bool
        Keep a global feature of width ``global_dim`` (default ``hidden_dim``) updated by Eq. 3. The paper's
        experiments do not use it; its expressivity results (Prop. 3) need it.
    pool : sequence of "edge", "node", "param"
        What the invariant head mean-pools per graph: all edges, all nodes, or (``"param"``) the forward edges
        of each edge-stored parameter tensor separately, concatenated in the graph's parameter order
        (``param_tensors`` blocks of width ``hidden_dim``). Automorphisms map every parameter tensor's edges
        onto themselves, so the per-tensor means are invariant too; they keep apart what a mean over all
        edges mixes (in a 1-32-32-1 MLP, the 1024 middle weights would outweigh the 32 first-layer weights).
        Only for batches of one architecture (the block order is the parameter order).
    param_tensors : int, optional
        Number of edge-stored parameter tensors per graph; required with ``"param"`` pooling (the head's
        input width depends on it).
    aggr, global_reduce, norm, residual, order, global_aggr, mlp_layers, fused, message
        Passed to every :class:`GMNLayer` (``message="edge"``: the updated edge feature is the message, one
        per-edge MLP per layer instead of two; the default ``"mlp"`` is Eq. 1's message function).
        ``global_reduce`` defaults to ``"mean"`` here (sums over 100k-edge graphs are large numbers); the
        layer's default is the paper's sum.
    checkpoint : bool
        Recompute each layer in the backward pass instead of keeping its activations (activation
        checkpointing: less memory in training, one more forward per layer).
    compile : bool
        ``torch.compile`` each layer (inductor; on CPU it needs a C++ compiler). Falls back to eager, with a
        warning, if compilation fails.
    autocast_dtype : torch.dtype, optional
        Run the layers under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``; the encoders and
        heads stay in the parameters' dtype).

    Engine options change speed and memory, not the function: ``forward(batch, chunk_size=k)`` without
    gradients processes the edges ``k`` at a time, updating one ``[E, hidden]`` edge tensor in place, for
    graphs whose per-edge temporaries would not fit (a ResNet-50 parameter graph, 47M directed edges).

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> from torch_geometric.data import Batch
    >>> gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in (3, 5)]
    >>> batch = Batch.from_data_list([gmn.graph_to_data(g) for g in gs])
    >>> gmn.GMN(hidden_dim=16, num_layers=2)(batch).shape
    torch.Size([2, 1])
    """

    def __init__(
        self,
        hidden_dim: int = 64,
        num_layers: int = 4,
        out_dim: int | None = 1,
        edge_out_dim: int | None = None,
        use_global: bool = True,
        global_dim: int | None = None,
        pool: Sequence[str] = ("edge", "node"),
        param_tensors: int | None = None,
        aggr: str = "sum",
        global_reduce: str = "mean",
        norm: str | None = "layernorm",
        residual: bool = True,
        order: Sequence[str] = ("edge", "node", "global"),
        global_aggr: str = "after",
        mlp_layers: int = 2,
        fused: bool = True,
        message: str = "mlp",
        checkpoint: bool = False,
        compile: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.checkpoint, self.compile, self.autocast_dtype = bool(checkpoint), bool(compile), autocast_dtype
        self._compiled: list | None = None
        if not set(pool) <= {"edge", "node", "param"} or not pool:
            raise ValueError(f"Expected pool made of 'edge', 'node' and 'param' (got {pool!r})")
        if "param" in pool and (param_tensors is None or param_tensors < 1):
            raise ValueError(f"Expected param_tensors >= 1 with 'param' pooling (got {param_tensors!r})")
        h = hidden_dim
        du = (global_dim or h) if use_global else 0
        self.hidden_dim, self.num_layers, self.out_dim, self.edge_out_dim = h, num_layers, out_dim, edge_out_dim
        self.global_dim, self.pool = du, tuple(pool)
        self.param_tensors = int(param_tensors) if "param" in pool else 0
        self.pooled_dim = h * (len(self.pool) - ("param" in self.pool) + self.param_tensors)
        pos_col = NODE_CAT_COLUMNS.index("position")
        self.node_encoder = FeatureEncoder(
            NODE_CAT_SIZES, NODE_FLOAT_DIM, h, sinusoidal=(pos_col,), positions=MAX_POSITIONS
        )
        self.edge_encoder = FeatureEncoder(EDGE_CAT_SIZES, EDGE_FLOAT_DIM, h)
        self.u0 = nn.Parameter(torch.zeros(du))
        self.layers = nn.ModuleList(
            GMNLayer(
                h,
                h,
                du,
                h,
                order=order,
                global_aggr=global_aggr,
                aggr=aggr,
                global_reduce=global_reduce,
                residual=residual,
                norm=norm,
                mlp_layers=mlp_layers,
                fused=fused,
                message=message,
            )
            for _ in range(num_layers)
        )
        self.head = None
        if out_dim is not None:
            self.head = ConcatMLP(self.pooled_dim + du, h, out_dim, num_layers=2)
        self.edge_head = None
        if edge_out_dim is not None:
            self.edge_head = ConcatMLP(2 * h + du, h, edge_out_dim, num_layers=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.node_encoder.reset_parameters()
        self.edge_encoder.reset_parameters()
        nn.init.zeros_(self.u0)
        for layer in self.layers:
            layer.reset_parameters()
        for head in (self.head, self.edge_head):
            if head is not None:
                head.reset_parameters()

    def _layer_fns(self) -> list:
        if not self.compile:
            return list(self.layers)
        if self._compiled is None:
            self._compiled = [torch.compile(layer, dynamic=True) for layer in self.layers]
        return self._compiled

    def _run_layer(self, k: int, fn, v, edge_index, e, u, node_batch, edge_batch, chunk_size, inc):
        if chunk_size:
            return self.layers[k](v, edge_index, e, u, node_batch, edge_batch, chunk_size=chunk_size, inplace=True)
        if self.compile:
            try:
                return fn(v, edge_index, e, u, node_batch, edge_batch, incidence=inc)
            except Exception as exc:  # inductor needs a working C++ toolchain; the eager layer is the same function
                import warnings

                warnings.warn(f"torch.compile of the GMN layers failed, running eager: {exc}", stacklevel=3)
                self.compile, self._compiled = False, None
        if not self.compile:  # (also the layers after a failed compilation)
            fn = self.layers[k]
        if self.checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, v, edge_index, e, u, node_batch, edge_batch, incidence=inc, use_reentrant=False)
        return fn(v, edge_index, e, u, node_batch, edge_batch, incidence=inc)

    def _encode_edges(self, batch, chunk_size: int | None) -> Tensor:
        if not chunk_size or batch.edge_cat.shape[0] <= chunk_size:
            return self.edge_encoder(batch.edge_cat, batch.edge_attr)
        num = batch.edge_cat.shape[0]
        first = self.edge_encoder(batch.edge_cat[:1], batch.edge_attr[:1])
        e = first.new_empty(num, first.shape[1])
        for a in range(0, num, chunk_size):
            e[a : a + chunk_size] = self.edge_encoder(
                batch.edge_cat[a : a + chunk_size], batch.edge_attr[a : a + chunk_size]
            )
        return e

    def encode(self, batch, chunk_size: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Final ``(v, e, u, node_batch, edge_batch)`` features of a batch (``chunk_size``: see the class
        docstring; only without gradients)."""
        if chunk_size and torch.is_grad_enabled():
            raise ValueError("Expected chunk_size only without gradients (torch.no_grad or inference_mode)")
        v = self.node_encoder(batch.x_cat, batch.x)
        e = self._encode_edges(batch, chunk_size)
        node_batch = getattr(batch, "batch", None)
        if node_batch is None:
            node_batch = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
        num_graphs = int(getattr(batch, "num_graphs", 1) or 1)
        edge_batch = node_batch[batch.edge_index[1]]
        u = self.u0.to(v.dtype).expand(num_graphs, self.global_dim)
        dtype = v.dtype
        amp = self.autocast_dtype is not None
        inc = None
        if not chunk_size and not amp and self.layers and self.layers[0].fused and e.shape[0]:
            inc = Incidence(batch.edge_index[0], batch.edge_index[1], v.shape[0], v.dtype)
        with torch.autocast(v.device.type, dtype=self.autocast_dtype, enabled=amp):
            for k, fn in enumerate(self._layer_fns()):
                v, e, u = self._run_layer(k, fn, v, batch.edge_index, e, u, node_batch, edge_batch, chunk_size, inc)
        if amp:
            v, e, u = v.to(dtype), e.to(dtype), u.to(dtype)
        return v, e, u, node_batch, edge_batch

    def pool_features(
        self, batch, v: Tensor, e: Tensor, node_batch: Tensor, edge_batch: Tensor, num_graphs: int
    ) -> Tensor:
        """The pooled representation ``[num_graphs, pooled_dim]`` (what the invariant head reads, before its MLP)."""
        pooled = []
        for kind in self.pool:
            if kind == "edge":
                pooled.append(scatter_reduce(e, edge_batch, num_graphs, "mean"))
            elif kind == "node":
                pooled.append(scatter_reduce(v, node_batch, num_graphs, "mean"))
            else:
                pooled.append(self._param_pool(batch, e, edge_batch, num_graphs))
        return torch.cat(pooled, dim=-1)

    def _param_pool(self, batch, e: Tensor, edge_batch: Tensor, num_graphs: int) -> Tensor:
        edges = batch.param_edge.to(e.device)
        slot = batch.param_slot.to(e.device)
        k = self.param_tensors
        if slot.numel() and int(slot.max()) >= k:
            raise ValueError(
                f"Expected graphs with at most {k} edge-stored parameter tensors for 'param' pooling "
                f"(got slot {int(slot.max())}): build the GMN with param_tensors for this architecture"
            )
        idx = edge_batch[edges] * k + slot
        out = scatter_reduce(e[edges], idx, num_graphs * k, "mean")
        return out.reshape(num_graphs, k * e.shape[-1])

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """The pooled representation ``[num_graphs, pooled_dim]`` (the invariant head's input without the global
        feature; Sec. 4.3's mean-pooled vector representation)."""
        v, e, u, node_batch, edge_batch = self.encode(batch)
        return self.pool_features(batch, v, e, node_batch, edge_batch, u.shape[0])

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        """Equivariant output per forward edge ``[num_forward_edges_in_batch, edge_out_dim]`` (the edge head)."""
        if self.edge_head is None:
            raise MetanetOutputError("GMN", "edit", "edge_out_dim=None")
        v, e, u, node_batch, edge_batch = self.encode(batch)
        return self._edge_output(batch, e, u, edge_batch)

    def _edge_output(self, batch, e: Tensor, u: Tensor, edge_batch: Tensor) -> Tensor:
        fwd = batch.edge_is_forward
        return self.edge_head(e[fwd], e[~fwd], u[edge_batch[fwd]])

    def forward(self, batch: WeightSpaceBatch, chunk_size: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``[num_graphs, out_dim]`` logits, or ``[num_forward_edges, edge_out_dim]``, or both (a tuple); with
        neither head, the pooled representation ``[num_graphs, pooled_dim]``. (The metanet protocol's
        ``edit`` and ``pooled`` give the last two on their own.) ``chunk_size``: see the class docstring."""
        v, e, u, node_batch, edge_batch = self.encode(batch, chunk_size=chunk_size)
        num_graphs = u.shape[0]
        out_graph = out_edge = None
        if self.head is not None:
            out_graph = self.head(self.pool_features(batch, v, e, node_batch, edge_batch, num_graphs), u)
        if self.edge_head is not None:
            out_edge = self._edge_output(batch, e, u, edge_batch)
        if self.head is None and self.edge_head is None:
            return self.pool_features(batch, v, e, node_batch, edge_batch, num_graphs)
        if out_graph is not None and out_edge is not None:
            return out_graph, out_edge
        return out_graph if out_graph is not None else out_edge

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden_dim={self.hidden_dim}, num_layers={self.num_layers}, "
            f"out_dim={self.out_dim}, edge_out_dim={self.edge_out_dim}, global_dim={self.global_dim}, "
            f"pool={self.pool})"
        )


class GMNEdgeHead(GMN):
    """A :class:`GMN` with only the equivariant per-edge output (``edge_out_dim``, default 1).

    ``forward(batch)`` gives ``[num_forward_edges_in_batch, edge_out_dim]`` (e.g. a weight edit ``delta``
    for INR editing; map it back with :func:`edge_output_to_state_dict`).
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4, edge_out_dim: int = 1, **kw):
        kw.setdefault("out_dim", None)
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, edge_out_dim=edge_out_dim, **kw)


def split_edge_output(batch, edge_out: Tensor) -> list[Tensor]:
    """Split a batch's forward-edge output into one tensor per graph (in batch order)."""
    counts = batch.num_forward_edges
    counts = counts.tolist() if isinstance(counts, Tensor) else [int(counts)]
    return list(torch.split(edge_out, counts, dim=0))


def edge_output_to_state_dict(
    graph: NeuralGraph,
    edge_out: Tensor,
    node_out: Tensor | None = None,
    residual_scale: float | Tensor | None = None,
) -> OrderedDict[str, Tensor]:
    """Map a per-edge output of one graph back onto the model's parameters (a new state_dict).

    Parameters
    ----------
    graph : NeuralGraph
        The graph the output was computed on.
    edge_out : Tensor
        ``[E]`` or ``[E, 1]`` values for the graph's forward edges (in edge order); rows of
        parameter-free edges are ignored.
    node_out : Tensor, optional
        ``[N, len(graph.node_weight_columns)]`` values for node-stored parameters; without it these keep
        their values (and under ``residual_scale`` they are unchanged).
    residual_scale : float, optional
        ``None``: the output *replaces* the parameters. A number ``gamma``: parameters become
        ``theta + gamma * out`` (INR editing).

    Gradients flow from the returned tensors to ``edge_out`` (nothing is detached), so the result can be
    used with ``torch.func.functional_call``. Buffers and extras keep their values.

    Example
    -------
    >>> import torch, torch.nn as nn, symgraph, gmn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> g = symgraph.parameter_graph(m)
    >>> sd = gmn.edge_output_to_state_dict(g, torch.zeros(g.num_edges), residual_scale=0.1)
    >>> m.load_state_dict(sd)
    <All keys matched successfully>
    """
    if edge_out.dim() == 2:
        if edge_out.shape[1] != 1:
            raise ValueError(f"Expected edge_out of shape [E] or [E, 1] (got {tuple(edge_out.shape)})")
        edge_out = edge_out[:, 0]
    if edge_out.shape[0] != graph.num_edges:
        raise ValueError(f"Expected edge_out with {graph.num_edges} rows (got {edge_out.shape[0]})")
    out: OrderedDict[str, Tensor] = OrderedDict()
    by_name = {s.name: s for s in graph.slots}
    for name in graph.state_keys:
        s = by_name[name]
        if s.location == "edge" and not s.is_buffer:
            new = edge_out[s.start : s.start + s.numel]
            old = graph.edge_weight[s.start : s.start + s.numel].to(new.device)
        elif s.location == "node" and not s.is_buffer and node_out is not None:
            new = node_out[s.start : s.start + s.numel, s.column]
            old = graph.node_weight[s.start : s.start + s.numel, s.column].to(new.device)
        elif s.location == "extra":
            out[name] = graph.extras[name].clone()
            continue
        else:
            src = graph.edge_weight if s.location == "edge" else graph.node_weight[:, s.column]
            out[name] = src[s.start : s.start + s.numel].to(s.dtype).reshape(s.shape).clone()
            continue
        val = new if residual_scale is None else old.to(new.dtype) + residual_scale * new
        out[name] = val.to(s.dtype).reshape(s.shape)
    return out
