"""From :class:`~symgraph.graph.NeuralGraph` to ``torch_geometric`` data for graph metanetworks.

Every feature is built from the graph's *colour keys* (role, layer kind, activation names, kernel
positions, flatten positions), never from its per-graph colour ids, so that one feature means the same in
graphs of different architectures. All features are invariant to neural DAG automorphisms (they are
functions of colours, depths and fixed nodes), which is what makes the GMN equivariant (paper, C.6).

Node features
    ``x_cat`` [N, 7] (int64, for embedding tables), columns :data:`NODE_CAT_COLUMNS`:
    role (:data:`ROLE_VOCAB`), layer kind (:data:`LAYER_KIND_VOCAB`), first and last activation
    (:data:`ACTIVATION_VOCAB`), depth (clipped to ``MAX_DEPTH - 1``), a hash of the full colour key
    (:data:`KEY_HASH_BUCKETS` buckets; crc32, the same in every run) and a *positional identity* id:
    ``1 + k % MAX_POSITIONS`` for the ``k``-th input node, ``1 + MAX_POSITIONS + k % MAX_POSITIONS`` for the
    ``k``-th output node, 0 otherwise. Input and output nodes are fixed by every automorphism, so this id
    is invariant; without it a GMN could not tell two input pixels apart although swapping them changes
    the function (``tests/test_gmn.py`` checks that it does).
    ``x`` [N, :data:`NODE_FLOAT_DIM`] (float): node-stored parameters (norm gamma/beta, running stats) in
    :data:`NODE_PARAM_DIM` fixed slots, normalised depth, and the numeric argument of the activations
    (e.g. the 30 of SIREN's ``mul(30)``), as ``sign(a) log(1 + |a|)``.
    The depth of a node without incoming edges that is not an input (bias nodes, which the builder puts at
    depth 0) is taken as one less than the smallest depth of its successors, so that bias nodes of
    different layers differ from the start.

Edge features (both directions; edge ``k`` and edge ``k + E`` are the forward and reverse copy)
    ``edge_cat`` [2E, 4] (int32): edge kind (:data:`EDGE_KIND_VOCAB`), direction (0 forward, 1 reverse),
    depth of the forward edge's head node (clipped), hash of the full edge colour key.
    ``edge_attr`` [2E, :data:`EDGE_FLOAT_DIM`]: weight value (1.0 on parameter-free edges; normalised
    when asked), has-parameter flag, kernel offsets (up to three dims, ``(k - (K-1)/2) / max((K-1)/2, 1)``
    in [-1, 1], 0 where not a convolution), flatten position ``p / (P-1)`` and a flattened flag.

Extra attributes (the weight-space template; see :mod:`gmn.weight_space`, which declares how batching
shifts each index attribute): ``edge_is_forward`` [2E] bool, ``edge_param_mask`` [E] bool (which forward
edges carry a parameter), ``num_forward_edges`` (int); edge-stored parameters, one entry per parameter in
edge order: ``param_edge`` [Pe] (the edge that holds it) and ``param_slot`` [Pe] (its tensor, numbered in
the graph's parameter order); node-stored parameters and buffers (norm gamma/beta, running stats)
flattened in state_dict order: ``node_param_values`` [Pn], ``node_param_slot`` [Pn] (tensor index,
numbered after the edge-stored ones), ``node_param_node`` [Pn] (node id), ``node_param_column`` [Pn] (fixed
column slot), ``num_node_params`` (int); ``num_param_tensors`` (edge- plus node-stored tensors); the chain
template ``chain`` (:class:`~gmn.weight_space.ChainSpec`) and ``chain_edge`` [P] (the edges of the chain's
parameters in layer order; empty for other architectures); and ``y`` if given. The baselines read these.
Batches of graphs of any architectures are :class:`~gmn.weight_space.WeightSpaceBatch` objects
(``WeightSpaceBatch.from_data_list``; ``torch_geometric.data.Batch.from_data_list`` works too).

Normalisation (``normalize``): ``None`` keeps the raw values; ``"graph"`` divides the parameter values of
each graph by their standard deviation in that graph (a scalar per graph, so still automorphism
invariant; the overall scale of the weights is lost); a pair ``(mean, std)`` standardises parameter values
with dataset-wide statistics (see :func:`weight_statistics`). Parameter-free edges keep the value 1 and
node-stored parameters are never normalised.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from symgraph.cli_util import atomic_torch_save, atomic_write
from symgraph.errors import ShapeMismatchError
from symgraph.graph import ROLES, Activation, EdgeKey, NeuralGraph

from .weight_space import ChainSpec, WeightSpaceData

__all__ = [
    "graph_to_data",
    "weight_statistics",
    "tensor_mean_std",
    "standardise",
    "GraphDataset",
    "GRAPH_DATASET_FORMAT",
    "ROLE_VOCAB",
    "LAYER_KIND_VOCAB",
    "ACTIVATION_VOCAB",
    "EDGE_KIND_VOCAB",
    "NODE_CAT_COLUMNS",
    "NODE_CAT_SIZES",
    "EDGE_CAT_COLUMNS",
    "EDGE_CAT_SIZES",
    "NODE_FLOAT_DIM",
    "EDGE_FLOAT_DIM",
    "NODE_PARAM_DIM",
    "MAX_DEPTH",
    "MAX_POSITIONS",
    "KEY_HASH_BUCKETS",
]

#: Node roles; the last entry is the "other" bucket.
ROLE_VOCAB: tuple[str, ...] = (*ROLES, "other")
#: Layer kinds (second element of a node colour key).
LAYER_KIND_VOCAB: tuple[str, ...] = (
    "input",
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "act",
    "sum",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "instancenorm",
    "norm",
    "attention",
    "attention_v",
    "attention_kv",
    "qk",
    "head",
    "group",
    "deepsets",
    "embedding",
    "position",
    "token",
    "tokens",
    "constant",
    "add",
    "grid",
    "pool",
    "other",
)
#: Elementwise operations (activation names without their arguments).
ACTIVATION_VOCAB: tuple[str, ...] = (
    "none",
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "silu",
    "sin",
    "cos",
    "exp",
    "elu",
    "celu",
    "selu",
    "leaky_relu",
    "softplus",
    "mish",
    "hardtanh",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "tanhshrink",
    "softsign",
    "logsigmoid",
    "softmax",
    "mul",
    "div",
    "add",
    "sub",
    "other",
)
#: Edge kinds: ``"a:b"`` matches keys starting with ``(a, b)``, ``"a"`` keys starting with ``a``.
EDGE_KIND_VOCAB: tuple[str, ...] = (
    "linear",
    "linear:flat",
    "bias",
    "bias:attention",
    "conv",
    "residual",
    "residual:embedding",
    "identity",
    "identity:elementwise",
    "norm",
    "norm:batchnorm",
    "norm:layernorm",
    "norm:groupnorm",
    "norm:instancenorm",
    "attention",
    "attention:q",
    "attention:k",
    "attention:v",
    "attention:o",
    "attention:head",
    "attention:in_proj",
    "attention:bias_k",
    "attention:bias_v",
    "deepsets",
    "deepsets:identity",
    "deepsets:pool",
    "embedding",
    "embedding:token",
    "token_cat",
    "grid",
    "grid:entry",
    "grid:coord",
    "position",
    "other",
)
MAX_DEPTH = 64
MAX_POSITIONS = 1024
#: Buckets of the deterministic hash (crc32) of the full colour key: tells apart keys the vocabularies merge
#: (kernel/stride settings, residual operands, attention head edges to q.k vs v nodes, norm settings, ...).
KEY_HASH_BUCKETS = 1024
NODE_PARAM_DIM = 8
NODE_CAT_COLUMNS = ("role", "kind", "act_first", "act_last", "depth", "position", "key_hash")
NODE_CAT_SIZES = (
    len(ROLE_VOCAB),
    len(LAYER_KIND_VOCAB),
    len(ACTIVATION_VOCAB),
    len(ACTIVATION_VOCAB),
    MAX_DEPTH,
    1 + 2 * MAX_POSITIONS,
    KEY_HASH_BUCKETS,
)
EDGE_CAT_COLUMNS = ("kind", "direction", "depth", "key_hash")
EDGE_CAT_SIZES = (len(EDGE_KIND_VOCAB), 2, MAX_DEPTH, KEY_HASH_BUCKETS)
NODE_FLOAT_DIM = NODE_PARAM_DIM + 3  # node params, depth / max depth, two activation arguments
EDGE_FLOAT_DIM = 7  # value, has-param, 3 kernel offsets, flatten position, flattened flag

# fixed slots of node-stored parameter columns (by name fragment); other columns fill slots 4.. in order
_NODE_COLUMN_SLOTS = (
    ("running_mean", 2),
    ("running_var", 3),
    ("mean", 2),
    ("var", 3),
    ("gamma", 0),
    ("weight", 0),
    ("scale", 0),
    ("beta", 1),
    ("bias", 1),
    ("shift", 1),
)


def _key_hash(key: tuple) -> int:
    """Deterministic across runs and machines (unlike ``hash``): crc32 of the repr of the key's flat tuple."""
    return zlib.crc32(repr(tuple(key)).encode()) % KEY_HASH_BUCKETS


def _vocab_id(vocab: Sequence[str], name: str) -> int:
    try:
        return vocab.index(name)
    except ValueError:
        return len(vocab) - 1


def _kind_id(kind: str) -> int:
    """The layer kind a node key declares (``NodeKey.kind``); kinds outside the vocabulary are "other"."""
    return _vocab_id(LAYER_KIND_VOCAB, kind)


def _act_name_and_arg(act: Activation) -> tuple[int, float]:
    """(vocabulary id of ``act.name``, ``sign(a) log(1 + |a|)`` of its first numeric argument, 0 if none)."""
    act = Activation(act)
    a = act.number
    return _vocab_id(ACTIVATION_VOCAB, act.name), 0.0 if a is None else math.copysign(math.log1p(abs(a)), a)


def _edge_kind_id(key: EdgeKey) -> int:
    """``"family:role"`` when the vocabulary has it, else ``"family"``, else "other"."""
    key = EdgeKey.from_flat(key)
    if key.role is not None:
        pair = f"{key.family}:{key.role}"
        if pair in EDGE_KIND_VOCAB:
            return EDGE_KIND_VOCAB.index(pair)
    return _vocab_id(EDGE_KIND_VOCAB, str(key.family))


def _edge_key_floats(key: EdgeKey) -> list[float]:
    """[kernel offsets x3, flatten position, flattened flag] of one edge colour key (its ``kernel`` and
    ``position`` fields)."""
    key = EdgeKey.from_flat(key)
    out = [0.0] * 5
    if key.kernel is not None:
        ks, kpos = key.kernel
        for d, (k, K) in enumerate(zip(kpos[:3], ks[:3])):
            half = (K - 1) / 2
            out[d] = (k - half) / max(half, 1.0)
    elif key.position is not None:
        P, p = key.position
        out[3] = p / max(int(P) - 1, 1)
        out[4] = 1.0
    return out


def _node_column_slots(columns: Sequence[str]) -> list[int]:
    slots: list[int] = []
    used: set[int] = set()
    for name in columns:
        low = name.lower()
        slot = next((s for frag, s in _NODE_COLUMN_SLOTS if frag in low and s not in used), None)
        if slot is None:
            slot = next((s for s in range(4, NODE_PARAM_DIM) if s not in used), None)
        if slot is None:
            raise ShapeMismatchError(
                f"at most {NODE_PARAM_DIM} node-stored parameter columns",
                f"{len(columns)}: {list(columns)}",
                "gmn.graph_to_data",
            )
        used.add(slot)
        slots.append(slot)
    return slots


def _structural_depth(g: NeuralGraph) -> torch.Tensor:
    """node_layer, with source nodes that are not inputs moved to one less than their first successor."""
    depth = g.node_layer.clone().long()
    src, dst = g.edge_index
    n = g.num_nodes
    has_in = torch.zeros(n, dtype=torch.bool)
    has_in[dst] = True
    if src.numel():
        big = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long)
        succ_min = big.scatter_reduce(0, src, depth[dst], reduce="amin", include_self=True)
        fix = (~has_in) & (~g.role_mask("input")) & (succ_min != big[0])
        depth[fix] = (succ_min[fix] - 1).clamp(min=0)
    return depth


def weight_statistics(graphs: Iterable[NeuralGraph]) -> tuple[float, float]:
    """Mean and standard deviation of all parameter values of ``graphs`` (for ``normalize=(mean, std)``)."""
    s = s2 = 0.0
    n = 0
    for g in graphs:
        w = g.edge_weight[g.edge_param.has_param()].double()
        s += float(w.sum())
        s2 += float((w * w).sum())
        n += w.numel()
    if n == 0:
        return 0.0, 1.0
    mean = s / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0)) or 1.0


def tensor_mean_std(params: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of every parameter tensor over a stack of networks (``{key: [B, *shape]}``).

    One scalar pair per tensor, so standardising with it is invariant to every neuron permutation; the std
    is at least 1e-8 (a constant tensor is shifted, not blown up).

    >>> tensor_mean_std({"w": torch.tensor([[1.0, 3.0], [1.0, 3.0]])})
    {'w': (2.0, 1.154700517654419)}
    """
    return {k: (float(v.mean()), float(v.std().clamp_min(1e-8))) for k, v in params.items()}


def standardise(
    params: Mapping[str, torch.Tensor], stats: Mapping[str, tuple[float, float]]
) -> dict[str, torch.Tensor]:
    """``(params[k] - mean_k) / std_k`` with the pairs of :func:`tensor_mean_std`.

    >>> standardise({"w": torch.tensor([1.0, 3.0])}, {"w": (2.0, 1.0)})
    {'w': tensor([-1.,  1.])}
    """
    return {k: (v - stats[k][0]) / stats[k][1] for k, v in params.items()}


def graph_to_data(
    g: NeuralGraph,
    normalize: str | tuple[float, float] | None = None,
    y: Any = None,
    dtype: torch.dtype = torch.float32,
) -> WeightSpaceData:
    """Features of a parameter graph for a GMN (see the module docstring for every column).

    Parameters
    ----------
    g : NeuralGraph
        A graph from :func:`symgraph.parameter_graph`.
    normalize : None, "graph" or (mean, std)
        How parameter values are scaled (module docstring).
    y : optional
        A target stored as ``data.y`` (a float becomes a [1, 1] tensor so batches give [B, 1]).
    dtype : torch.dtype
        Float dtype of ``x`` and ``edge_attr`` (float64 for equivariance tests).

    Example
    -------
    >>> import torch.nn as nn, symgraph, gmn
    >>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> d = gmn.graph_to_data(g)
    >>> d.edge_index.shape, int(d.num_forward_edges), d.x_cat.shape
    (torch.Size([2, 52]), 26, torch.Size([11, 7]))
    """
    n, E = g.num_nodes, g.num_edges
    # ---- nodes: one feature row per colour key, gathered by colour id
    ncat_rows, nfloat_rows = [], []
    for key in g.node_keys_typed:
        acts = key.activations
        a_first = _act_name_and_arg(acts[0]) if acts else (0, 0.0)
        a_last = _act_name_and_arg(acts[-1]) if acts else (0, 0.0)
        ncat_rows.append(
            [_vocab_id(ROLE_VOCAB, key.role), _kind_id(key.kind), a_first[0], a_last[0], _key_hash(key.flat())]
        )
        nfloat_rows.append([a_first[1], a_last[1]])
    ncat = torch.tensor(ncat_rows, dtype=torch.long).reshape(-1, 5)[g.node_color]
    nfloat = torch.tensor(nfloat_rows, dtype=dtype).reshape(-1, 2)[g.node_color]
    depth = _structural_depth(g)
    pos = torch.zeros(n, dtype=torch.long)
    inp, out = g.input_nodes, g.output_nodes
    pos[inp] = 1 + torch.arange(inp.numel()) % MAX_POSITIONS
    pos[out] = 1 + MAX_POSITIONS + torch.arange(out.numel()) % MAX_POSITIONS
    x_cat = torch.cat([ncat[:, :4], depth.clamp(0, MAX_DEPTH - 1).view(-1, 1), pos.view(-1, 1), ncat[:, 4:]], 1)
    node_params = torch.zeros(n, NODE_PARAM_DIM, dtype=dtype)
    if g.node_weight_columns:
        cols = _node_column_slots(g.node_weight_columns)
        node_params[:, cols] = g.node_weight[:, : len(cols)].to(dtype)
    max_depth = max(int(depth.max()) if n else 0, 1)
    x = torch.cat([node_params, (depth.to(dtype) / max_depth).view(-1, 1), nfloat], dim=1)

    # ---- edges
    has_param = g.edge_param.has_param()
    w = g.edge_weight.to(dtype).clone()
    if normalize is not None and bool(has_param.any()):
        pw = w[has_param]
        if normalize == "graph":
            std = float(pw.double().std(unbiased=False)) if pw.numel() > 1 else 0.0
            w[has_param] = pw / (std if std > 0 else 1.0)
        elif isinstance(normalize, tuple | list) and len(normalize) == 2:
            mean, std = float(normalize[0]), float(normalize[1])
            w[has_param] = (pw - mean) / (std if std > 0 else 1.0)
        else:
            raise ShapeMismatchError("normalize=None, 'graph' or (mean, std)", repr(normalize), "gmn.graph_to_data")
    keys = g.edge_keys_typed
    ekind = torch.tensor([_edge_kind_id(k) for k in keys], dtype=torch.long)
    ehash = torch.tensor([_key_hash(tuple(k)) for k in keys], dtype=torch.long)
    efl = torch.tensor([_edge_key_floats(k) for k in keys], dtype=dtype).reshape(-1, 5)
    col = g.edge_color.long()
    src, dst = g.edge_index
    e_depth = depth[dst].clamp(0, MAX_DEPTH - 1)
    fwd_cat = torch.stack(
        [
            ekind[col] if E else ekind.new_zeros(0),
            torch.zeros(E, dtype=torch.long),
            e_depth,
            ehash[col] if E else ehash.new_zeros(0),
        ],
        1,
    )
    rev_cat = fwd_cat.clone()
    rev_cat[:, 1] = 1
    fwd_attr = torch.cat([w.view(-1, 1), has_param.to(dtype).view(-1, 1), efl[col] if E else efl], dim=1)
    param_edge = torch.nonzero(has_param).flatten()
    slot, _ = g.edge_param.lookup(param_edge)
    n_edge_slots = len(g.edge_param.slots)
    node_slots = [s for s in g.slots if s.location == "node"]
    colmap = _node_column_slots(g.node_weight_columns) if g.node_weight_columns else []
    np_nodes = [torch.arange(s.start, s.start + s.numel) for s in node_slots]
    np_cols = [torch.full((s.numel,), s.column, dtype=torch.long) for s in node_slots]
    if node_slots:
        np_node, np_col = torch.cat(np_nodes), torch.cat(np_cols)
        np_val = g.node_weight[np_node, np_col].to(dtype)
        np_slot = torch.cat(
            [torch.full((s.numel,), n_edge_slots + k, dtype=torch.long) for k, s in enumerate(node_slots)]
        )
        np_col = torch.tensor(colmap, dtype=torch.long)[np_col]
    else:
        np_node = np_col = np_slot = torch.zeros(0, dtype=torch.long)
        np_val = torch.zeros(0, dtype=dtype)
    chain = ChainSpec.read(g)
    data = WeightSpaceData(
        x=x,
        x_cat=x_cat,
        edge_index=torch.cat([g.edge_index, g.edge_index.flip(0)], dim=1),
        edge_attr=torch.cat([fwd_attr, fwd_attr], dim=0),
        edge_cat=torch.cat([fwd_cat, rev_cat], dim=0).to(torch.int32),
        edge_is_forward=torch.cat([torch.ones(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool)]),
        edge_param_mask=has_param,
        num_forward_edges=E,
        param_edge=param_edge,
        param_slot=slot,
        node_param_values=np_val,
        node_param_slot=np_slot,
        node_param_node=np_node,
        node_param_column=np_col,
        num_node_params=int(np_val.numel()),
        num_param_tensors=n_edge_slots + len(node_slots),
        chain=chain,
        chain_edge=chain.edges(g),
        num_nodes=n,
    )
    if y is not None:
        yt = torch.as_tensor(y, dtype=dtype)
        data.y = yt.reshape(1, -1)
    return data


# ---------------------------------------------------------------------------------------------- dataset
GRAPH_DATASET_FORMAT = "gmn.GraphDataset/2"


def _data_to_plain(d: Data) -> dict[str, Any]:
    out = dict(d.to_dict())
    if isinstance(out.get("chain"), ChainSpec):
        out["chain"] = out["chain"].to_plain()
    return out


def _plain_to_data(d: dict[str, Any]) -> WeightSpaceData:
    d = dict(d)
    if "chain" in d:
        d["chain"] = ChainSpec.from_plain(d["chain"])
    return WeightSpaceData(**d)


class GraphDataset(torch.utils.data.Dataset):
    """An on-disk dataset of GMN inputs: shards of ``Data`` objects and a ``manifest.json``.

    Shards are written atomically (temporary file + rename) as plain dicts of tensors, so they load with
    ``torch.load(weights_only=True)``; they are read lazily, shard by shard, keeping the last
    ``cache_shards`` shards in memory (iterate in order, or shuffle shard by shard, for speed).

    Example
    -------
    >>> import tempfile, torch.nn as nn, symgraph, gmn
    >>> gs = [symgraph.parameter_graph(nn.Sequential(nn.Linear(2, k), nn.ReLU(), nn.Linear(k, 1))) for k in (3, 4)]
    >>> root = tempfile.mkdtemp()
    >>> ds = gmn.GraphDataset.build(root, [(g, 0.5) for g in gs], shard_size=1, progress=False)
    >>> len(ds), ds[1].num_forward_edges
    (2, 17)
    """

    MANIFEST = "manifest.json"

    def __init__(self, root: str | os.PathLike, cache_shards: int = 2):
        self.root = Path(root)
        path = self.root / self.MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"Expected a GraphDataset manifest at {path} (got no such file)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != GRAPH_DATASET_FORMAT:
            raise ShapeMismatchError(
                f"a dataset of format {GRAPH_DATASET_FORMAT!r}",
                f"{self.manifest.get('format')!r} in {path}: rebuild it with GraphDataset.build",
                "gmn.GraphDataset",
            )
        self.shards = self.manifest["shards"]
        self._offsets = [0]
        for s in self.shards:
            self._offsets.append(self._offsets[-1] + int(s["count"]))
        self.cache_shards = max(1, int(cache_shards))
        self._cache: OrderedDict[int, list[Data]] = OrderedDict()

    @classmethod
    def build(
        cls,
        root: str | os.PathLike,
        items: Iterable[Any],
        shard_size: int = 512,
        normalize: str | tuple[float, float] | None = None,
        transform: Callable[[Any], Data] | None = None,
        progress: bool = True,
        total: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> GraphDataset:
        """Write ``items`` to ``root`` and open the result.

        ``items`` yields ``Data`` objects, ``NeuralGraph`` objects or ``(graph_or_data, y)`` pairs; graphs
        go through :func:`graph_to_data` (with ``normalize``) unless ``transform`` is given.
        """
        from tqdm.auto import tqdm

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        shards: list[dict[str, Any]] = []
        buf: list[dict[str, Any]] = []

        def flush():
            if not buf:
                return
            name = f"shard_{len(shards):05d}.pt"
            atomic_torch_save(list(buf), root / name)
            shards.append({"file": name, "count": len(buf)})
            buf.clear()

        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        for item in tqdm(items, total=total, disable=not progress, desc="graphs -> shards"):
            y = None
            if isinstance(item, tuple) and len(item) == 2:
                item, y = item
            if isinstance(item, Data):
                d = item
                if y is not None:
                    d.y = torch.as_tensor(y, dtype=torch.float32).reshape(1, -1)
            elif transform is not None:
                d = transform(item)
                if y is not None:
                    d.y = torch.as_tensor(y, dtype=torch.float32).reshape(1, -1)
            else:
                d = graph_to_data(item, normalize=normalize, y=y)
            buf.append(_data_to_plain(d))
            if len(buf) >= shard_size:
                flush()
        flush()
        manifest = {
            "format": GRAPH_DATASET_FORMAT,
            "num_items": sum(s["count"] for s in shards),
            "shards": shards,
            "normalize": list(normalize) if isinstance(normalize, tuple | list) else normalize,
            "node_float_dim": NODE_FLOAT_DIM,
            "edge_float_dim": EDGE_FLOAT_DIM,
            "node_cat_sizes": list(NODE_CAT_SIZES),
            "edge_cat_sizes": list(EDGE_CAT_SIZES),
            "meta": meta or {},
        }
        atomic_write(root / cls.MANIFEST, json.dumps(manifest, indent=1))
        return cls(root)

    def __len__(self) -> int:
        return self._offsets[-1]

    def _shard(self, i: int) -> list[Data]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        raw = torch.load(self.root / self.shards[i]["file"], weights_only=True)
        items = [_plain_to_data(r) for r in raw]
        self._cache[i] = items
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return items

    def __getitem__(self, idx: int) -> Data:
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"Expected an index in [0, {len(self)}) (got {idx})")
        s = bisect.bisect_right(self._offsets, idx) - 1
        return self._shard(s)[idx - self._offsets[s]]

    def shard_ranges(self) -> list[range]:
        """Index range of every shard (for samplers that shuffle shard by shard)."""
        return [range(a, b) for a, b in zip(self._offsets[:-1], self._offsets[1:])]

    def __repr__(self) -> str:
        return f"GraphDataset({len(self)} graphs in {len(self.shards)} shards at {str(self.root)!r})"
