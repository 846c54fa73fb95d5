"""DWSNets baseline (Navon et al., 2023): equivariant layers for the weight space of MLPs with fixed I/O neurons.

Written from the paper's characterisation of the equivariant linear maps (orbits of index pairs), not from
its code.

Weight space and symmetry. A chain of ``L`` dense layers has neuron sets ``0..L`` (``0``: inputs, ``L``:
outputs, ``1..L-1``: hidden) of sizes ``d_h``; layer ``l`` (``l = 1..L``) has ``W_l`` [d_l, d_{l-1}, K_l] and
``b_l`` [d_l] (``K_l``: kernel size of a convolution or flattened positions, 1 for an MLP/SIREN). The group
is ``S_{d_1} x ... x S_{d_{L-1}}``, each factor permuting the hidden neurons of one layer:
``W_l -> P_l W_l P_{l-1}^T``, ``b_l -> P_l b_l`` with ``P_0 = P_L = I``. Unlike NP-NFN, input and output
neurons are *not* permuted.

Blocks. Every feature tensor (one per ``W_l``/``b_l``, ``c`` channels per entry) is stored as a *block*
``[B, *hidden axes, F]``: its axes over hidden neuron sets are kept, and every axis the group fixes (input
neurons, output neurons, kernel positions) is folded together with the channels into ``F``. E.g. for a SIREN
1->32->32->1 (``L = 3``): ``W_1`` [B, d_1, d_0 c], ``b_1`` [B, d_1, c], ``W_2`` [B, d_2, d_1, c], ``b_2``
[B, d_2, c], ``W_3`` [B, d_2, d_3 c] (transposed), ``b_3`` [B, d_3 c]. Because the folded axes are not
permuted, any linear map of ``F`` is allowed; this is how DWSNets mixes input/output indices with full
learned matrices.

The layer (:class:`DWSLinear`). A basis of the equivariant linear maps from block ``X`` to block ``Y`` is
indexed by the orbits of the group on pairs of index tuples. Each block has at most one axis per hidden set,
and the factors act independently, so the orbits are products over the hidden sets ``h`` shared by ``X`` and
``Y`` of {indices equal, indices different}, times arbitrary pairs of folded indices. Replacing "different"
by "any" (mean over the input index, broadcast over the output index: same span) the layer is::

    Y' = Lin^Y_glob( cat_X  mean_{all hidden axes} X )                      (all blocks, pooled to [B, F])
       + sum_{h in hidden sets of Y}  Lin^Y_h( N_h )  broadcast over Y's other hidden axis
       + Lin^Y_self( Y )                                                    (only if Y has 2 hidden axes)

    N_h = cat( W_h pooled over its column axis,  b_h,  W_{h+1} pooled over its row axis )   [B, d_h, .]

(hidden axes pooled, folded axes kept; ``Lin``: a learned linear map of the folded channel axis, bias only in
``Lin_glob``). Written per pair of blocks, this includes, for ``W_l[i, j]``: ``W_l[i, j]``, ``W_l[*, j]``,
``W_l[i, *]``, ``b_l[i]``, ``b_{l-1}[j]``, the neighbour rows ``W_{l-1}[j, *]`` and columns ``W_{l+1}[*, i]``,
and the mean of every block; for ``b_l[i]``: ``b_l[i]``, ``W_l[i, *]``, ``W_{l+1}[*, i]`` and every mean;
for the first/last layers the same with the input/output index kept and mixed by full matrices (e.g.
``b_L[a] <- sum_{a'} A_{a a'} W_L[a', *] + ...``, ``W_1[i, a] <- sum_{a'} B_{a a'} W_1[i, a'] + ...``).

Relation to DWSNets' basis. For MLPs this is the *complete* basis of equivariant linear maps of DWSNets
(their characterisation by blocks W->W, W->b, b->W, b->b), up to rescaling each basis element (we use means,
not sums, so features do not grow with the widths) and the change of basis {equal, different} -> {equal,
any}. ``tests/test_dws.py`` checks completeness against the dimension of the commutant computed by brute
force. Differences from the published model: kernel positions are folded into channels (as for input
indices; DWSNets treat MLPs only), :func:`torch.nn.LayerNorm` over the folded channels follows each layer,
and the invariant head is the mean of each block over its hidden axes (the complete invariant linear map)
followed by an MLP.

Relation to NP-NFN (:mod:`gmn.baselines.npnfn`). NP-NFN has the same neighbour terms but also permutes the
input and output neurons, so it pools over them (``W_1[i, *]``, ``b_L[*]``); here they stay indexed and are
mixed by full matrices, also across layers through the global term (e.g. ``W_1[i, a] <- W_L[a', *]`` for every
pair ``a, a'``), which is what the larger group of NP-NFN forbids.

The parameter count does not depend on the hidden widths (only on the folded sizes ``d_0``, ``d_L``, ``K_l``),
so one model processes networks of any widths with the same depth/I/O/kernel signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.graph import NeuralGraph

from ..layers import ConcatMLP
from ..weight_space import ChainSpec, WeightSpaceBatch, WeightSpaceData
from .common import UnsupportedArchitectureError
from .npnfn import chain_spec

__all__ = ["DWSBlock", "DWSSpec", "DWSLinear", "DWSNet", "to_blocks", "from_blocks"]

_NAME = "DWSNets"


@dataclass(frozen=True)
class DWSBlock:
    """One parameter tensor of the chain as a block of the weight space.

    ``key``: state_dict name; ``raw_shape``: the tensor viewed as ``(d_l, d_{l-1}, K)`` (weight) or ``(d_l,)``
    (bias); ``sets``: the neuron set of each raw axis (``None`` for the kernel axis); ``hidden``: the sets
    ``1..L-1`` among them (the block's hidden axes, in raw order); ``fold``: the product of the other axes'
    sizes (folded with the channels).
    """

    key: str
    raw_shape: tuple[int, ...]
    sets: tuple[int | None, ...]
    hidden: tuple[int, ...]
    fold: int

    @property
    def hidden_pos(self) -> tuple[int, ...]:
        """Raw axes over hidden sets."""
        return tuple(i for i, s in enumerate(self.sets) if s in self.hidden)

    @property
    def fixed_pos(self) -> tuple[int, ...]:
        """Raw axes folded into channels."""
        return tuple(i for i, s in enumerate(self.sets) if s not in self.hidden)


@dataclass(frozen=True)
class DWSSpec:
    """The chain of dense layers and its blocks (weights then bias, layer by layer).

    ``sizes``: neuron-set sizes ``(d_0, ..., d_L)``; ``signature``: what a :class:`DWSNet`'s parameters depend
    on (depth, folded sizes, which layers have biases).

    Example
    -------
    >>> spec = DWSSpec.from_sizes((1, 32, 32, 1))
    >>> [(b.key, b.hidden, b.fold) for b in spec.blocks][:3]
    [('layers.0.weight', (1,), 1), ('layers.0.bias', (1,), 1), ('layers.1.weight', (2, 1), 1)]
    """

    blocks: tuple[DWSBlock, ...]
    sizes: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def hidden_sets(self) -> tuple[int, ...]:
        return tuple(range(1, self.num_layers))

    @property
    def signature(self) -> tuple:
        return tuple((b.key, b.hidden, b.fold) for b in self.blocks)

    @classmethod
    def from_layers(cls, layers: Sequence[tuple[str, str | None, int, int, int]]) -> DWSSpec:
        """From ``(weight key, bias key or None, n_out, n_in, kernel)`` per layer, input to output."""
        if not layers:
            raise UnsupportedArchitectureError(_NAME, "at least one dense layer", "none")
        for (w0, _, n_out, _, _), (w1, _, _, n_in, _) in zip(layers[:-1], layers[1:]):
            if n_out != n_in:
                raise UnsupportedArchitectureError(
                    _NAME, "a chain of layers with matching widths", f"'{w1}' reading {n_in} from {n_out} of '{w0}'"
                )
        L = len(layers)
        sizes = (layers[0][3], *(s[2] for s in layers))
        hidden = set(range(1, L))
        blocks = []
        for l, (wkey, bkey, n_out, n_in, K) in enumerate(layers, start=1):
            sets = (l, l - 1, None)
            blocks.append(
                DWSBlock(
                    wkey,
                    (n_out, n_in, K),
                    sets,
                    tuple(s for s in sets if s in hidden),
                    _fold((n_out, n_in, K), sets, hidden),
                )
            )
            if bkey is not None:
                blocks.append(
                    DWSBlock(bkey, (n_out,), (l,), tuple(s for s in (l,) if s in hidden), _fold((n_out,), (l,), hidden))
                )
        return cls(tuple(blocks), sizes)

    @classmethod
    def from_graph(cls, g: NeuralGraph | WeightSpaceData) -> DWSSpec:
        """Read the chain of dense layers of a parameter graph (or of one graph's data);
        :class:`UnsupportedArchitectureError` otherwise."""
        return cls.from_chain(chain_spec(g, _NAME))

    @classmethod
    def from_chain(cls, chain: ChainSpec) -> DWSSpec:
        """From the :class:`~gmn.weight_space.ChainSpec` that :func:`gmn.graph_to_data` reads."""
        if not chain.is_chain:
            raise chain.error(_NAME)
        return cls.from_layers([(s.weight, s.bias, s.n_out, s.n_in, s.kernel) for s in chain.layers])

    @classmethod
    def from_sizes(cls, sizes: Sequence[int], bias: bool = True, prefix: str = "layers") -> DWSSpec:
        """An MLP ``sizes[0] -> ... -> sizes[-1]`` with keys ``{prefix}.{i}.weight`` (as :class:`SIREN`)."""
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"Expected at least two positive sizes (got {sizes})")
        return cls.from_layers(
            [
                (f"{prefix}.{i}.weight", f"{prefix}.{i}.bias" if bias else None, b, a, 1)
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
            ]
        )


def _fold(shape: tuple[int, ...], sets: tuple[int | None, ...], hidden: set[int]) -> int:
    return math.prod(n for n, s in zip(shape, sets) if s not in hidden)


def to_blocks(spec: DWSSpec, params: Mapping[str, Tensor], channels: int = 1) -> list[Tensor]:
    """Stacked parameters -> blocks ``[B, *hidden, fold * channels]`` (module docstring), in ``spec.blocks`` order.

    ``params[key]``: ``[B, *param_shape]`` (``channels=1``) or ``[B, *param_shape, channels]``. Hidden widths
    are read from the tensors, so they may differ from ``spec.sizes``.
    """
    out = []
    for blk in spec.blocks:
        x = params[blk.key]
        b = x.shape[0]
        raw = _raw_shape(blk, x, channels)
        x = x.reshape(b, *raw, channels)
        perm = [0, *(1 + i for i in blk.hidden_pos), *(1 + i for i in blk.fixed_pos), x.dim() - 1]
        out.append(x.permute(perm).reshape(b, *(raw[i] for i in blk.hidden_pos), -1))
    return out


def _raw_shape(blk: DWSBlock, x: Tensor, channels: int) -> tuple[int, ...]:
    """``(n_out,)`` or ``(n_out, n_in, K)`` of the block with the actual widths of ``x`` [B, n_out, ...]."""
    per = x[0].numel() // channels
    if x.dim() < 2 or per * channels != x[0].numel():
        raise ValueError(f"Expected '{blk.key}' as [B, {blk.raw_shape[0]}, ...] (got shape {tuple(x.shape)})")
    n_out = x.shape[1]
    if len(blk.raw_shape) == 1:
        if per != n_out:
            raise ValueError(f"Expected a bias '{blk.key}' as [B, n] (got shape {tuple(x.shape)})")
        return (n_out,)
    K = blk.raw_shape[2]
    n_in = per // (n_out * K)
    if n_out * n_in * K != per:
        raise ValueError(f"Expected '{blk.key}' with n_out * n_in * {K} entries (got shape {tuple(x.shape)})")
    return (n_out, n_in, K)


def from_blocks(spec: DWSSpec, blocks: Sequence[Tensor], like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`to_blocks`: blocks -> ``{key: [B, *like[key].shape[1:], c]}`` (``like``: one channel)."""
    out = {}
    for blk, x in zip(spec.blocks, blocks):
        ref = like[blk.key]
        b = ref.shape[0]
        raw = _raw_shape(blk, ref, 1)
        fixed = [raw[i] for i in blk.fixed_pos]
        c = x.shape[-1] // math.prod(fixed)
        x = x.reshape(b, *(raw[i] for i in blk.hidden_pos), *fixed, c)
        order = [*blk.hidden_pos, *blk.fixed_pos]
        inv = [0] + [1 + order.index(i) for i in range(len(raw))] + [x.dim() - 1]
        out[blk.key] = x.permute(inv).reshape(*ref.shape, c)
    return out


def _pool_except(x: Tensor, keep: int | None) -> Tensor:
    """Mean of block ``x`` [B, *hidden, F] over its hidden axes except axis ``keep`` (0-based among them)."""
    axes = tuple(1 + i for i in range(x.dim() - 2) if i != keep)
    return x.mean(dim=axes) if axes else x


class DWSLinear(nn.Module):
    """One equivariant linear layer (module docstring), ``c_in`` -> ``c_out`` channels per parameter.

    ``forward(blocks)`` takes and returns one tensor per block of ``spec`` ([B, *hidden, fold * c]).

    Example
    -------
    >>> spec = DWSSpec.from_sizes((2, 3, 1))
    >>> layer = DWSLinear(spec, 1, 4)
    >>> params = {"layers.0.weight": torch.randn(5, 3, 2), "layers.0.bias": torch.randn(5, 3),
    ...           "layers.1.weight": torch.randn(5, 1, 3), "layers.1.bias": torch.randn(5, 1)}
    >>> [tuple(y.shape) for y in layer(to_blocks(spec, params))]
    [(5, 3, 8), (5, 3, 4), (5, 3, 4), (5, 4)]
    """

    def __init__(self, spec: DWSSpec, c_in: int, c_out: int):
        super().__init__()
        self.signature, self.c_in, self.c_out = spec.signature, int(c_in), int(c_out)
        blocks = spec.blocks
        self._hidden = [b.hidden for b in blocks]
        f_in = [b.fold * c_in for b in blocks]
        f_out = [b.fold * c_out for b in blocks]
        #: hidden set -> (block index, position of the set among the block's hidden axes)
        self._members: dict[int, list[tuple[int, int]]] = {
            h: [(i, b.hidden.index(h)) for i, b in enumerate(blocks) if h in b.hidden] for h in spec.hidden_sets
        }
        n_in = {h: sum(f_in[i] for i, _ in m) for h, m in self._members.items()}
        self.glob = nn.ModuleList(nn.Linear(sum(f_in), f) for f in f_out)
        self.neuron = nn.ModuleList(
            nn.ModuleDict({str(h): nn.Linear(n_in[h], f_out[i], bias=False) for h in b.hidden})
            for i, b in enumerate(blocks)
        )
        self.self_ = nn.ModuleList(
            nn.Linear(f_in[i], f_out[i], bias=False) if len(b.hidden) == 2 else nn.Identity()
            for i, b in enumerate(blocks)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        if len(xs) != len(self._hidden):
            raise ValueError(f"Expected {len(self._hidden)} blocks (got {len(xs)})")
        B = xs[0].shape[0]
        glob = torch.cat([_pool_except(x, None) for x in xs], dim=-1)  # [B, sum F]
        neurons = {
            h: torch.cat([_pool_except(xs[i], pos) for i, pos in m], dim=-1) for h, m in self._members.items()
        }  # [B, d_h, n_in[h]]
        out = []
        for i, hidden in enumerate(self._hidden):
            nh = len(hidden)
            y = self.glob[i](glob).view(B, *([1] * nh), -1)
            for pos, h in enumerate(hidden):
                t = self.neuron[i][str(h)](neurons[h])
                shape = [B] + [t.shape[1] if p == pos else 1 for p in range(nh)] + [t.shape[-1]]
                y = y + t.view(shape)
            if nh == 2:
                y = y + self.self_[i](xs[i])
            out.append(y)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blocks={len(self._hidden)}, c_in={self.c_in}, c_out={self.c_out})"


class DWSNet(nn.Module):
    """DWSNets-like encoder: ``num_layers`` x (:class:`DWSLinear`, LayerNorm, ReLU), block means, MLP head.

    Parameters
    ----------
    spec : DWSSpec, ChainSpec, NeuralGraph or WeightSpaceData
        The chain of dense layers (a graph or its data is read with :meth:`DWSSpec.from_graph`).
    hidden_dim : int
        Feature channels per parameter.
    num_layers : int
        Equivariant layers (>= 1).
    out_dim : int or None
        Width of the invariant output (``None``: no head; ``forward`` returns the block means).
    norm : bool
        LayerNorm over each block's folded channels after every equivariant layer.
    edit_dim : int or None
        Width of the equivariant per-parameter output (``edit``; an extra :class:`DWSLinear`).

    The metanet protocol (:mod:`gmn.metanets`): ``forward(batch)`` ``[B, out_dim]``, ``pooled(batch)`` (the
    block means), ``edit(batch)`` (per parameter, one row per forward edge) on a
    :class:`~gmn.weight_space.WeightSpaceBatch` of networks of one shape. The same on stacked parameters
    (``{state_dict key: [B, *shape]}``): :meth:`forward_params`, :meth:`pooled_params`,
    :meth:`forward_equivariant`.

    Example
    -------
    >>> import symgraph, gmn
    >>> from symgraph.models.siren import SIREN
    >>> net = SIREN(1, (8, 8), 1)
    >>> g = symgraph.parameter_graph(net)
    >>> enc = DWSNet(g, hidden_dim=4, num_layers=2, out_dim=3)
    >>> enc(gmn.WeightSpaceBatch.from_graphs([g, g])).shape
    torch.Size([2, 3])
    >>> params = {k: v.unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in net.state_dict().items()}
    >>> enc.forward_params(params).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        spec: DWSSpec | ChainSpec | NeuralGraph | WeightSpaceData,
        hidden_dim: int = 32,
        num_layers: int = 3,
        out_dim: int | None = 32,
        norm: bool = True,
        edit_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(spec, ChainSpec):
            spec = DWSSpec.from_chain(spec)
        elif not isinstance(spec, DWSSpec):
            spec = DWSSpec.from_graph(spec)
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1 (got {num_layers})")
        self.spec = spec
        self.hidden_dim, self.num_layers, self.out_dim, self.use_norm = hidden_dim, num_layers, out_dim, norm
        chans = [1] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(DWSLinear(spec, a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.LayerNorm(blk.fold * hidden_dim) if norm else nn.Identity() for blk in spec.blocks)
            for _ in range(num_layers)
        )
        #: width of the block means the invariant head reads
        self.pooled_dim = sum(blk.fold for blk in spec.blocks) * hidden_dim
        self.head = ConcatMLP(self.pooled_dim, hidden_dim, out_dim, 2) if out_dim is not None else None
        self.edit_dim = edit_dim
        #: equivariant per-parameter output layer (``edit``), only with ``edit_dim``
        self.edit_layer = DWSLinear(spec, hidden_dim, edit_dim) if edit_dim is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def batch_params(self, batch: WeightSpaceBatch) -> dict[str, Tensor]:
        """The batch's stacked parameters ``{key: [B, *shape]}`` (one chain shape per batch; widths may differ
        from the spec's)."""
        groups = batch.chain_groups(_NAME)
        if len(groups) != 1:
            raise UnsupportedArchitectureError(_NAME, "networks of one shape in a batch", f"{len(groups)} shapes")
        grp = groups[0]
        spec = DWSSpec.from_chain(grp.spec)
        if spec.signature != self.spec.signature:
            raise UnsupportedArchitectureError(
                _NAME, f"networks with the signature {self.spec.signature}", f"{spec.signature}"
            )
        p = next(self.parameters())
        return grp.params(batch.edge_attr[:, 0].to(device=p.device, dtype=p.dtype))

    def trunk(self, blocks: Sequence[Tensor]) -> list[Tensor]:
        """The equivariant layers on blocks (see :func:`to_blocks`)."""
        xs = list(blocks)
        for layer, norms in zip(self.layers, self.norms):
            xs = [torch.relu(n(y)) for n, y in zip(norms, layer(xs))]
        return xs

    def pooled_params(self, params: Mapping[str, Tensor]) -> Tensor:
        """Block means ``[B, pooled_dim]`` of stacked parameters ``{key: [B, *shape]}``."""
        xs = self.trunk(to_blocks(self.spec, dict(params)))
        return torch.cat([_pool_except(x, None) for x in xs], dim=-1)

    def forward_params(self, params: Mapping[str, Tensor]) -> Tensor:
        """Invariant embedding ``[B, out_dim]`` of stacked parameters (the block means when ``out_dim`` is None)."""
        pooled = self.pooled_params(params)
        return pooled if self.head is None else self.head(pooled)

    def forward_equivariant(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Last layer's features per parameter of stacked parameters: ``{key: [B, *shape, c]}`` (equivariant;
        ``c`` is ``edit_dim`` with an edit layer, else ``hidden_dim``)."""
        params = dict(params)
        xs = self.trunk(to_blocks(self.spec, params))
        if self.edit_layer is not None:
            xs = self.edit_layer(xs)
        return from_blocks(self.spec, xs, params)

    def pooled(self, batch: WeightSpaceBatch) -> Tensor:
        """Block means ``[num_graphs, pooled_dim]`` (what the invariant head reads)."""
        return self.pooled_params(self.batch_params(batch))

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        """Invariant embedding ``[num_graphs, out_dim]`` (``[num_graphs, pooled_dim]`` when ``out_dim`` is None)."""
        return self.forward_params(self.batch_params(batch))

    def edit(self, batch: WeightSpaceBatch) -> Tensor:
        """Equivariant output per parameter ``[num_forward_edges_in_batch, c]`` (edge order; ``c`` as in
        :meth:`forward_equivariant`)."""
        params = self.batch_params(batch)
        feats = self.forward_equivariant(params)
        grp = batch.chain_groups(_NAME)[0]
        b = grp.edges.shape[0]
        flat = []
        for s in grp.spec.layers:
            flat.append(feats[s.weight].reshape(b, s.n_out * s.n_in * s.kernel, -1))
            if s.bias is not None:
                flat.append(feats[s.bias].reshape(b, s.n_out, -1))
        rows = torch.cat(flat, 1)
        out = rows.new_zeros(int(batch.edge_is_forward.sum()), rows.shape[-1])
        return out.index_copy(0, batch.forward_rows(grp.edges.reshape(-1)), rows.reshape(-1, rows.shape[-1]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={self.spec.num_layers}, hidden_dim={self.hidden_dim}, "
            f"num_layers={self.num_layers}, out_dim={self.out_dim}, norm={self.use_norm}, "
            f"params={self.num_parameters})"
        )
