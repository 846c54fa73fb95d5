"""Weight-space augmentations for contrastive learning on INRs (Navon et al., 2023; paper E.3).

Gaussian noise and masking (the paper's two) change the network's function a little; :func:`sign_flip`
(optional, ours) does not change it at all for odd activations such as SIREN's sine: it negates a random
subset of hidden neurons (incoming weights and bias, and outgoing weights), a symmetry of the weight space
that permutation-invariant metanets are not invariant to. :class:`AutomorphismAugment` (Table 3's "MLP + Perm.
aug") applies a uniformly random element of the parameter graph's exact automorphism group to each network:
the function is unchanged, only the order of the hidden neurons moves.

All act on a *batch* of networks given as stacked parameters (a dict of ``[B, ...]`` tensors, SIREN
state_dict keys) or a flat ``[B, D]`` tensor, and draw from an explicit ``torch.Generator`` so that the same
seed gives the same views.

Example
-------
>>> import torch
>>> from gmn.inr.augment import WeightAugment
>>> aug = WeightAugment(noise_std=0.05, mask_prob=0.1)
>>> w = torch.ones(2, 10)
>>> torch.equal(aug(w, torch.Generator().manual_seed(1)), aug(w, torch.Generator().manual_seed(1)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import symgraph
from symgraph.errors import ShapeMismatchError
from symgraph.graph import NeuralGraph

from .graph_batch import WeightGraphBatcher

__all__ = ["gaussian_noise", "random_mask", "sign_flip", "WeightAugment", "AutomorphismAugment"]

Params = dict[str, torch.Tensor] | torch.Tensor


def _map(params: Params, fn) -> Params:
    if isinstance(params, torch.Tensor):
        return fn(params)
    return {k: fn(v) for k, v in params.items()}


def _rand_like(t: torch.Tensor, generator: torch.Generator | None, normal: bool) -> torch.Tensor:
    # Draw on the generator's device (CPU generators are the default), then move: keeps CPU and CUDA runs
    # with a CPU generator identical.
    dev = generator.device if generator is not None else t.device
    r = (torch.randn if normal else torch.rand)(t.shape, generator=generator, device=dev, dtype=t.dtype)
    return r.to(t.device)


def gaussian_noise(params: Params, std: float, generator: torch.Generator | None = None) -> Params:
    """``w + std * N(0, 1)`` on every weight and bias."""
    if std < 0:
        raise ValueError(f"Expected a non-negative noise std (got {std})")
    return _map(params, lambda t: t + std * _rand_like(t, generator, normal=True))


def random_mask(params: Params, prob: float, generator: torch.Generator | None = None, rescale: bool = False) -> Params:
    """Set each weight to zero independently with probability ``prob``; ``rescale`` multiplies the kept ones by
    ``1 / (1 - prob)`` (dropout: the expected value of each weight is unchanged)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"Expected a masking probability in [0, 1] (got {prob})")
    scale = 1.0 / (1.0 - prob) if rescale and prob < 1.0 else 1.0
    return _map(params, lambda t: t * (_rand_like(t, generator, normal=False) >= prob).to(t.dtype) * scale)


def sign_flip(
    params: dict[str, torch.Tensor],
    layers: list[tuple[str, str | None]] | tuple[tuple[str, str | None], ...],
    generator: torch.Generator | None = None,
    zero: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Negate a random half (in expectation) of every hidden layer's neurons, per network.

    ``layers`` lists the chain's ``(weight_key, bias_key)`` in order (weights ``[B, out, in]``); for every
    layer but the last, each output neuron is flipped with probability 1/2: its weight row and bias entry are
    negated, and so is the matching column of the next layer's weight. With an odd activation (sine, tanh)
    the network computes the same function. ``zero`` gives, per key, the value that stands for a raw 0 when
    the parameters are standardised (``-mean / std``): a flip is then the reflection about it, i.e. exactly
    the standardised version of the raw flip.
    """
    out = dict(params)
    zero = zero or {}

    def flip(key: str, sign: torch.Tensor) -> None:
        z = zero.get(key, 0.0)
        out[key] = z + sign * (out[key] - z)

    for (w, b), (w_next, _) in zip(layers[:-1], layers[1:]):
        t = out[w]
        bits = _rand_like(t.new_empty(t.shape[0], t.shape[1]), generator, normal=False) < 0.5
        sign = 1.0 - 2.0 * bits.to(t.dtype)  # [B, out]
        flip(w, sign.reshape(*sign.shape, *[1] * (t.dim() - 2)))
        if b is not None:
            flip(b, sign)
        tn = out[w_next]
        flip(w_next, sign.reshape(sign.shape[0], 1, sign.shape[1], *[1] * (tn.dim() - 3)))
    return out


@dataclass(frozen=True)
class WeightAugment:
    """Masking then Gaussian noise: one random view of each network in a batch.

    Parameters
    ----------
    noise_std : float
        Standard deviation of the additive Gaussian noise.
    mask_prob : float
        Probability of zeroing each weight.
    mask_rescale : bool
        Scale the kept weights by ``1 / (1 - mask_prob)`` (dropout, as Navon et al.'s augmentation).
    flip_layers : tuple of (weight_key, bias_key)
        When given (dict parameters only), :func:`sign_flip` is applied first over this chain of layers; only
        for networks whose hidden activations are odd functions.
    flip_zero : tuple of (key, value)
        :func:`sign_flip`'s ``zero`` (for standardised parameters).
    """

    noise_std: float = 0.1
    mask_prob: float = 0.1
    mask_rescale: bool = False
    flip_layers: tuple[tuple[str, str | None], ...] = ()
    flip_zero: tuple[tuple[str, float], ...] = ()

    def __call__(self, params: Params, generator: torch.Generator | None = None) -> Params:
        if self.flip_layers:
            if isinstance(params, torch.Tensor):
                raise ValueError("Expected a dict of stacked parameters for sign flips (got a flat tensor)")
            params = sign_flip(params, self.flip_layers, generator, dict(self.flip_zero))
        out = random_mask(params, self.mask_prob, generator, self.mask_rescale) if self.mask_prob > 0 else params
        return gaussian_noise(out, self.noise_std, generator) if self.noise_std > 0 else out


class AutomorphismAugment:
    """Random automorphisms of one architecture's parameter graph applied to a batch of stacked parameters.

    Each network of the batch gets its own uniformly random element of ``symgraph.automorphism_group``
    (:meth:`symgraph.AutomorphismGroup.random_element`, drawn from the explicit generator): edge
    ``(i, j, c)`` takes the value of the edge ``(phi^-1(i), phi^-1(j), c)``, as :func:`symgraph.permute_model`
    does, so every view computes the network's function exactly. The edge permutations of the whole batch
    are found at once (one ``searchsorted`` of the permuted edge keys); :meth:`apply` checks that every
    permutation is an automorphism and raises :class:`~symgraph.ShapeMismatchError` otherwise.

    Parameters
    ----------
    graph : NeuralGraph
        The parameter graph of one network of the architecture (its weights are not used); all its
        parameters must live on edges (as for :class:`~gmn.inr.graph_batch.WeightGraphBatcher`).
    group : AutomorphismGroup, optional
        The group of ``graph`` (computed when not given).

    Example
    -------
    >>> import torch, symgraph
    >>> from symgraph.models.siren import SIREN
    >>> net = SIREN(1, (4, 4), 1)
    >>> aug = AutomorphismAugment(symgraph.parameter_graph(net))
    >>> p = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in net.state_dict().items()}
    >>> q = aug(p, torch.Generator().manual_seed(0))
    >>> x = torch.linspace(-1, 1, 7).unsqueeze(1)
    >>> from gmn.inr.fit import batched_siren_forward
    >>> torch.allclose(batched_siren_forward(q, x), batched_siren_forward(p, x), atol=1e-5)
    True
    """

    def __init__(self, graph: NeuralGraph, group=None):
        self.graph = graph
        self.group = group if group is not None else symgraph.automorphism_group(graph)
        self._batcher = WeightGraphBatcher(graph)
        keys = graph.edge_keys()
        self._order = torch.argsort(keys)
        self._sorted_keys = keys[self._order]
        if self._sorted_keys.numel() > 1 and bool((self._sorted_keys[1:] == self._sorted_keys[:-1]).any()):
            raise ShapeMismatchError(
                "a parameter graph without parallel edges of one colour", "duplicate edges", "AutomorphismAugment"
            )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random automorphisms, LongTensor ``[n, N]`` (``perm[i]`` = image of node ``i``)."""
        return torch.stack([self.group.random_element(generator) for _ in range(n)])

    def edge_permutations(self, perms: torch.Tensor) -> torch.Tensor:
        """``[B, E]``: edge ``e`` goes to position ``out[b, e]`` under node permutation ``perms[b]``.

        Raises :class:`~symgraph.ShapeMismatchError` naming the first row that is not an automorphism
        (not a permutation, moves a node to another colour or a fixed node, or breaks the coloured edge set).
        """
        g = self.graph
        n = g.num_nodes
        perms = torch.as_tensor(perms, dtype=torch.long)
        if perms.dim() != 2 or perms.shape[1] != n:
            raise ShapeMismatchError(
                f"node permutations [B, {n}]", f"shape {tuple(perms.shape)}", "AutomorphismAugment"
            )
        bad = (torch.sort(perms, dim=1).values != torch.arange(n)).any(1)
        p = perms.clamp(0, n - 1)
        bad |= (g.node_color[p] != g.node_color).any(1)
        fixed = g.fixed_mask
        bad |= (perms[:, fixed] != torch.arange(n)[fixed]).any(1)
        c = max(len(g.edge_color_keys), 1)
        src, dst = g.edge_index
        new_keys = (p[:, src] * n + p[:, dst]) * c + g.edge_color.long()
        pos = torch.searchsorted(self._sorted_keys, new_keys).clamp(max=max(self._sorted_keys.numel() - 1, 0))
        bad |= (self._sorted_keys[pos] != new_keys).any(1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad).flatten()[0])
            raise ShapeMismatchError(
                "automorphisms of the parameter graph",
                f"a permutation in row {j} that does not preserve node colours, fixed nodes or coloured edges",
                "AutomorphismAugment",
            )
        return self._order[pos]

    def apply(self, params: dict[str, torch.Tensor], perms: torch.Tensor) -> dict[str, torch.Tensor]:
        """``Phi(perms[b])`` of network ``b`` of the stacked ``params`` (after checking every permutation)."""
        ew = self._batcher.edge_weights(params)
        eperm = self.edge_permutations(perms).to(ew.device)
        out = torch.empty_like(ew).scatter_(1, eperm, ew)
        return {k: v.to(params[k].dtype) for k, v in self._batcher.params_from_edges(out).items()}

    def __call__(self, params: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        b = next(iter(params.values())).shape[0]
        return self.apply(params, self.sample(b, generator))

    def __repr__(self) -> str:
        return f"AutomorphismAugment(group={self.group!r})"
