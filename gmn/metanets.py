"""One metanet protocol and one registry: every metanet takes a :class:`~gmn.weight_space.WeightSpaceBatch`.

The protocol (:class:`Metanet`), implemented by :class:`gmn.GMN` and every baseline:

- ``forward(batch)`` -> ``[num_graphs, out_dim]``: the per-graph output (a prediction, an embedding);
- ``pooled(batch)`` -> ``[num_graphs, pooled_dim]``: the representation the per-graph head reads;
- ``edit(batch)`` -> ``[num_forward_edges_in_batch, edit_dim]``: one output per parameter (per forward edge,
  graph by graph in edge order; :func:`gmn.split_edge_output` and :func:`gmn.edge_output_to_state_dict` map
  it back onto parameters), equivariant where the metanet is (GMN, NP-NFN, DWSNet; the MLP has one that is
  not; DeepSets, DMC and StatNN raise :class:`~gmn.errors.MetanetOutputError`).

The registry maps a name to a factory and to what the metanet ``supports``:

- ``"any"``: parameter graphs of any architectures, mixed in one batch (GMN, DeepSets, DMC, StatNN);
- ``"chain"``: MLP/CNN chains of dense layers with one layer signature, widths may differ (NP-NFN);
- ``"chain-shape"``: such chains, all of one shape (DWSNet);
- ``"architecture"``: networks of one architecture (the MLP on flat weights).

:func:`unsupported` turns that into the reason the paper's tables print "n/a"; :func:`build` makes a metanet
from one uniform budget (``hidden_dim``, ``num_layers``, ``out_dim``, ``edit_dim``, ``example``: one graph's
data, which the template-bound metanets need) plus metanet-specific options. Add a metanet with
``@register("name", supports=..., label=...)`` on a factory taking those keywords.

Example
-------
>>> import torch.nn as nn, symgraph, gmn
>>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
>>> d = gmn.graph_to_data(g)
>>> batch = gmn.WeightSpaceBatch.from_data_list([d, d])
>>> [tuple(build(n, hidden_dim=8, example=d)(batch).shape) for n in ("gmn", "npnfn", "dws", "mlp")]
[(2, 1), (2, 1), (2, 1), (2, 1)]
>>> norm = gmn.graph_to_data(symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
>>> unsupported("npnfn", [norm])[:39]
'NP-NFN cannot process this architecture'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch.nn as nn
from torch import Tensor

from .baselines import DMC, NPNFN, DeepSetsBaseline, DWSNet, MLPMetanet, StatNN
from .models import GMN
from .weight_space import WeightSpaceBatch, WeightSpaceData

__all__ = ["Metanet", "MetanetEntry", "SUPPORTS", "register", "build", "entry", "names", "unsupported"]

SUPPORTS = ("any", "chain", "chain-shape", "architecture")


@runtime_checkable
class Metanet(Protocol):
    """What every metanet does (see the module docstring)."""

    def forward(self, batch: WeightSpaceBatch) -> Tensor: ...

    def pooled(self, batch: WeightSpaceBatch) -> Tensor: ...

    def edit(self, batch: WeightSpaceBatch) -> Tensor: ...


@dataclass(frozen=True)
class MetanetEntry:
    """A registered metanet: its factory, what it supports, its label in tables, whether ``edit`` is equivariant."""

    name: str
    factory: Callable[..., nn.Module]
    supports: str
    label: str
    equivariant_edit: bool


_REGISTRY: dict[str, MetanetEntry] = {}


def register(name: str, *, supports: str = "any", label: str | None = None, equivariant_edit: bool = False):
    """Decorator: register ``factory(hidden_dim=, num_layers=, out_dim=, edit_dim=, example=, **options)``."""
    if supports not in SUPPORTS:
        raise ValueError(f"Expected supports in {SUPPORTS} (got {supports!r})")

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Expected a new metanet name (got {name!r}, already registered)")
        _REGISTRY[name] = MetanetEntry(name, factory, supports, label or name, equivariant_edit)
        return factory

    return deco


def names() -> tuple[str, ...]:
    """Registered metanet names, in registration order."""
    return tuple(_REGISTRY)


def entry(name: str) -> MetanetEntry:
    """The registry entry of ``name`` (``ValueError`` naming the registered ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Expected a metanet in {names()} (got {name!r})") from None


def build(
    name: str,
    *,
    hidden_dim: int,
    num_layers: int | None = None,
    out_dim: int | None = 1,
    edit_dim: int | None = None,
    example: WeightSpaceData | None = None,
    **options: Any,
) -> nn.Module:
    """The metanet ``name`` with this budget (``num_layers=None``: the metanet's default depth).

    ``example`` is one graph's :class:`WeightSpaceData` of the family the metanet will read; NP-NFN, DWSNet,
    the MLP and a GMN with per-tensor pooling need it. ``options`` go to the metanet's constructor.
    """
    e = entry(name)
    return e.factory(
        hidden_dim=hidden_dim, num_layers=num_layers, out_dim=out_dim, edit_dim=edit_dim, example=example, **options
    )


def unsupported(name: str, datas: Sequence[WeightSpaceData]) -> str | None:
    """None if metanet ``name`` takes all of ``datas`` (together), else the reason (the paper's "n/a")."""
    e = entry(name)
    if e.supports == "any" or not datas:
        return None
    if e.supports == "architecture":
        sizes = {(int(d.num_nodes), int(d.num_forward_edges)) for d in datas}
        if len(sizes) > 1:
            return f"{e.label} needs networks of one architecture (got {len(sizes)} sizes)"
        return None
    for d in datas:
        for spec in d.chains:
            if not spec.is_chain:
                return str(spec.error(e.label))
    if e.supports == "chain":
        sigs = {s.signature for d in datas for s in d.chains}
        if len(sigs) > 1:
            return f"{e.label} needs one layer layout for all networks (got {len(sigs)})"
        return None
    shapes = {s.shapes for d in datas for s in d.chains}
    if len(shapes) > 1:
        return f"{e.label} needs networks of one shape (got {len(shapes)})"
    return None


def _need(example: WeightSpaceData | None, name: str) -> WeightSpaceData:
    if example is None:
        raise ValueError(f"Expected example= (one graph's gmn.graph_to_data) to build {name} (got None)")
    return example


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


@register("gmn", label="GMN", equivariant_edit=True)
def _gmn(hidden_dim, num_layers, out_dim, edit_dim, example, pool=("edge", "node"), **options) -> GMN:
    param_tensors = None
    if "param" in pool:
        ex = _need(example, "a GMN with 'param' pooling")
        param_tensors = int(ex.num_param_tensors) - int(ex.node_param_slot.unique().numel())
    return GMN(
        hidden_dim=hidden_dim,
        num_layers=_default(num_layers, 4),
        out_dim=out_dim,
        edge_out_dim=edit_dim,
        pool=tuple(pool),
        param_tensors=param_tensors,
        **options,
    )


@register("deepsets", label="DeepSets")
def _deepsets(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> DeepSetsBaseline:
    _no_edit("DeepSets", edit_dim)
    return DeepSetsBaseline(hidden_dim=hidden_dim, phi_layers=_default(num_layers, 3), out_dim=out_dim, **options)


@register("dmc", label="DMC")
def _dmc(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> DMC:
    _no_edit("DMC", edit_dim)
    return DMC(channels=hidden_dim, num_conv=_default(num_layers, 4), out_dim=out_dim, **options)


@register("statnn", label="StatNN")
def _statnn(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> StatNN:
    _no_edit("StatNN", edit_dim)
    return StatNN(hidden_dim=hidden_dim, num_layers=_default(num_layers, 3), out_dim=out_dim, **options)


@register("npnfn", supports="chain", label="NP-NFN", equivariant_edit=True)
def _npnfn(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> NPNFN:
    ex = _need(example, "NP-NFN")
    return NPNFN(ex, hidden_dim=hidden_dim, num_layers=_default(num_layers, 2), out_dim=out_dim, edge_out_dim=edit_dim)


@register("dws", supports="chain-shape", label="DWSNets", equivariant_edit=True)
def _dws(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> DWSNet:
    ex = _need(example, "DWSNet")
    return DWSNet(ex, hidden_dim=hidden_dim, num_layers=_default(num_layers, 3), out_dim=out_dim, edit_dim=edit_dim)


@register("mlp", supports="architecture", label="MLP")
def _mlp(hidden_dim, num_layers, out_dim, edit_dim, example, **options) -> MLPMetanet:
    ex = _need(example, "the MLP")
    return MLPMetanet(ex, hidden_dim=hidden_dim, num_layers=_default(num_layers, 3), out_dim=out_dim, edit_dim=edit_dim)


def _no_edit(label: str, edit_dim: int | None) -> None:
    if edit_dim is not None:
        raise ValueError(f"Expected edit_dim=None for {label}, whose output is invariant only (got {edit_dim})")
