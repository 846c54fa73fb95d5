"""Proposition 5 (Appendix C.3): the neural DAG automorphisms of an MLP are exactly the permutations of hidden
neurons within their layers.

Executable statement, on random MLPs:

* (==>) every generator and sampled element of ``symgraph.automorphism_group`` fixes every input, output and
  bias node and keeps every hidden neuron in its layer;
* (<==) every random within-layer permutation of hidden neurons is an automorphism (``is_automorphism``);
* hence ``|Aut| = prod_l n_l!`` over the hidden layers, which nauty's order must equal exactly, and, on tiny
  MLPs, a brute-force count with networkx's VF2 matcher (independent of nauty) must equal too.

Negative controls: permutations that swap two input nodes, or exchange a hidden neuron with one of another
layer, must be rejected.
"""

from __future__ import annotations

import math

import torch

import symgraph
from symgraph.graph import NeuralGraph

from .common import CheckResult, random_mlp, register

__all__ = ["hidden_layers", "random_layer_permutation", "vf2_automorphism_count", "check_prop5"]


def hidden_layers(g: NeuralGraph) -> list[torch.Tensor]:
    """Hidden node ids grouped by layer (depth)."""
    hidden = g.role_mask("hidden")
    return [((g.node_layer == d) & hidden).nonzero().flatten() for d in torch.unique(g.node_layer[hidden]).tolist()]


def random_layer_permutation(g: NeuralGraph, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of the hidden neurons within each layer (fixing everything else)."""
    perm = torch.arange(g.num_nodes)
    for nodes in hidden_layers(g):
        perm[nodes] = nodes[torch.randperm(nodes.numel(), generator=gen)]
    return perm


def vf2_automorphism_count(g: NeuralGraph, limit: int = 100_000) -> int:
    """Brute-force oracle: the number of colour- and fixed-node-preserving automorphisms by VF2 enumeration."""
    import networkx as nx
    from networkx.algorithms.isomorphism import DiGraphMatcher

    fixed = g.fixed_mask.tolist()
    colors = g.node_color.tolist()
    G = nx.DiGraph()
    for i in range(g.num_nodes):
        G.add_node(i, c=("fixed", i) if fixed[i] else ("free", colors[i]))
    for s, d, c in zip(*g.edge_index.tolist(), g.edge_color.tolist()):
        G.add_edge(s, d, c=c)
    matcher = DiGraphMatcher(G, G, node_match=lambda a, b: a["c"] == b["c"], edge_match=lambda a, b: a["c"] == b["c"])
    count = 0
    for _ in matcher.isomorphisms_iter():
        count += 1
        if count > limit:
            break
    return count


def _respects_layers(g: NeuralGraph, perm: torch.Tensor) -> bool:
    hidden = g.role_mask("hidden")
    ids = torch.arange(g.num_nodes)
    fixes_others = torch.equal(perm[~hidden], ids[~hidden])
    return fixes_others and torch.equal(g.node_layer[perm], g.node_layer) and bool(hidden[perm[hidden]].all())


@register("prop5_mlp_automorphisms")
def check_prop5(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 5 on random MLPs: Aut = within-layer hidden permutations, |Aut| = prod n_l! (nauty and VF2)."""
    res = CheckResult(
        name="prop5_mlp_automorphisms",
        proposition="Prop 5 (C.3)",
        statement="MLP automorphisms = within-layer hidden permutations; |Aut| = prod_l n_l! (nauty, VF2)",
        control="swap two input nodes / exchange hidden neurons of two layers: must be rejected",
        exactness="exact (integer group orders, boolean membership); error = number of violated claims",
    )
    gen = torch.Generator().manual_seed(seed)
    violations, ctrl_accepted, n_ctrl, n_vf2 = 0, 0, 0, 0
    n = 8 if quick else 40
    for _ in range(n):
        model = random_mlp(gen, depth=(1, 4), width=(1, 5) if quick else (1, 10), bias=None)
        g = symgraph.parameter_graph(model)
        aut = symgraph.automorphism_group(g)
        expected = math.prod(math.factorial(int(h.numel())) for h in hidden_layers(g))
        violations += int(aut.order != expected)
        elems = [aut.generators[i] for i in range(aut.generators.shape[0])]
        elems += [aut.random_element(gen) for _ in range(3)]
        violations += sum(not (_respects_layers(g, p) and g.is_automorphism(p)) for p in elems)
        for _ in range(3):
            p = random_layer_permutation(g, gen)
            violations += int(not g.is_automorphism(p) or not aut.contains(p))
        if expected <= (216 if quick else 5000) and g.num_nodes <= 16:
            violations += int(vf2_automorphism_count(g) != expected)
            n_vf2 += 1
        # Negative controls
        inputs = g.input_nodes
        if inputs.numel() >= 2:
            p = torch.arange(g.num_nodes)
            p[inputs[0]], p[inputs[1]] = inputs[1], inputs[0]
            ctrl_accepted += int(g.is_automorphism(p))
            n_ctrl += 1
        layers = hidden_layers(g)
        if len(layers) >= 2:
            p = torch.arange(g.num_nodes)
            a, b = layers[0][0], layers[1][0]
            p[a], p[b] = b, a
            ctrl_accepted += int(g.is_automorphism(p) or aut.contains(p))
            n_ctrl += 1
    res.cases = n
    res.max_error = float(violations)
    res.control_error = math.inf if n_ctrl and ctrl_accepted == 0 else 0.0
    res.notes.append(
        f"{n} MLPs; VF2 brute-force order on {n_vf2}; {n_ctrl} control permutations, {ctrl_accepted} wrongly accepted"
    )
    return res.finish()
