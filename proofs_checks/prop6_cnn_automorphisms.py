"""Proposition 6 (Appendix C.3): a permutation of hidden *channels* that preserves layers is a neural DAG
automorphism of a CNN's computation graph.

Executable statement, on random CNNs (convolutions only, as in the paper, and with a flatten + linear head):

* draw a random permutation of the hidden channels of each layer on the parameter graph (channel nodes);
* lift it to the computation graph (one node per channel *and* spatial position): the neuron of channel ``c``
  at position ``p`` goes to the neuron of channel ``phi(c)`` at the same ``p`` (through the computation
  graph's map to the parameter graph, Appendix C.5);
* both must be automorphisms: edges, colours, fixed nodes and, on the computation graph, weight sharing
  (C.2, property 3) preserved.

Negative controls: the lifted permutation composed with a swap of two spatial positions of one hidden channel
(not a channel permutation), and a swap of hidden channels of two different layers, must be rejected.
"""

from __future__ import annotations

import math

import torch

import symgraph
from symgraph.graph import NeuralGraph

from .common import CheckResult, random_cnn, register
from .prop5_mlp_automorphisms import hidden_layers, random_layer_permutation

__all__ = ["computation_graph_fn", "lift_channel_permutation", "check_prop6"]


def computation_graph_fn():
    """``symgraph.computation_graph`` (or its module-level definition while it is not exported yet)."""
    fn = getattr(symgraph, "computation_graph", None)
    if fn is None:
        from symgraph.computation import computation_graph as fn
    return fn


def lift_channel_permutation(cg, perm_p: torch.Tensor) -> torch.Tensor:
    """Lift a parameter-graph node permutation to the computation graph, position by position.

    The neurons mapped to one parameter-graph node (a channel) are taken in id order, which is their spatial
    (row-major) order; the ``k``-th neuron of channel ``c`` goes to the ``k``-th neuron of ``perm_p[c]``.
    """
    param_node, _pe, pg = cg.to_parameter_graph_map()
    out = torch.arange(cg.num_nodes)
    moved = (perm_p != torch.arange(pg.num_nodes)).nonzero().flatten()
    for c in moved.tolist():
        src = (param_node == c).nonzero().flatten()
        dst = (param_node == int(perm_p[c])).nonzero().flatten()
        if src.numel() != dst.numel():
            raise ValueError(f"channels {c} and {int(perm_p[c])} have different spatial sizes")
        out[src] = dst
    return out


def _swap_positions(cg, perm: torch.Tensor, pg: NeuralGraph) -> torch.Tensor | None:
    """``perm`` followed by swapping two spatial positions of one hidden channel; None if no channel has two."""
    param_node = cg.to_parameter_graph_map()[0]
    for nodes in hidden_layers(pg):
        for c in nodes.tolist():
            members = (param_node == c).nonzero().flatten()
            if members.numel() >= 2:
                swap = torch.arange(cg.num_nodes)
                swap[members[0]], swap[members[1]] = members[1], members[0]
                return swap[perm]
    return None


@register("prop6_cnn_automorphisms")
def check_prop6(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 6 on random CNNs: hidden-channel permutations are automorphisms (parameter and computation graph)."""
    res = CheckResult(
        name="prop6_cnn_automorphisms",
        proposition="Prop 6 (C.3)",
        statement="CNN hidden-channel permutations (same position, same layer) are neural DAG automorphisms",
        control="channel perm + swap of 2 positions in one channel / swap channels across layers: rejected",
        exactness="exact (boolean membership incl. weight sharing); error = number of violated claims",
    )
    gen = torch.Generator().manual_seed(seed)
    cg_fn = computation_graph_fn()
    violations, ctrl_accepted, n_ctrl, n_order_ok = 0, 0, 0, 0
    n = 6 if quick else 30
    for k in range(n):
        model, shape = random_cnn(gen, depth=(1, 3), channels=(1, 4), kernel=(1, 3), head=bool(k % 2), spatial=5)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        cg = cg_fn(model, x)
        pg = cg.to_parameter_graph_map()[2]
        for _ in range(3):
            p = random_layer_permutation(pg, gen)
            lifted = lift_channel_permutation(cg, p)
            violations += int(not pg.is_automorphism(p)) + int(not cg.is_automorphism(lifted))
        expected = math.prod(math.factorial(int(h.numel())) for h in hidden_layers(pg))
        n_order_ok += int(symgraph.automorphism_group(pg).order == expected)
        # Negative controls
        p = random_layer_permutation(pg, gen)
        bad = _swap_positions(cg, lift_channel_permutation(cg, p), pg)
        if bad is not None:
            ctrl_accepted += int(cg.is_automorphism(bad))
            n_ctrl += 1
        layers = hidden_layers(pg)
        if len(layers) >= 2:
            q = torch.arange(pg.num_nodes)
            a, b = layers[0][0], layers[1][0]
            q[a], q[b] = b, a
            ctrl_accepted += int(pg.is_automorphism(q))
            n_ctrl += 1
    res.cases = n
    res.max_error = float(violations)
    res.control_error = math.inf if n_ctrl and ctrl_accepted == 0 else 0.0
    res.notes.append(
        f"{n} CNNs (half conv-only, half with flatten+linear head), 3 channel permutations each; "
        f"{n_ctrl} control permutations, {ctrl_accepted} wrongly accepted"
    )
    res.notes.append(f"converse (not claimed by Prop 6): nauty |Aut(parameter graph)| = prod c_l! on {n_order_ok}/{n}")
    return res.finish()
