"""Proposition 8 (= Prop. 2, Appendix C.6): graph metanetworks are equivariant to the parameter permutations
induced by neural DAG automorphisms.

Executable statement: a ``gmn.GMN`` with random weights (float64, global feature on, invariant and per-edge
heads) is run on the parameter graph of a random MLP or CNN and on the same graph with ``Phi(theta)`` for a
uniformly random automorphism ``phi`` (``symgraph.automorphism_group``). The invariant output must be equal and
the per-edge output must be permuted by ``phi^e`` (Eq. 21): ``out'[phi^e(e)] = out[e]``.

Negative control (sensitivity, C.6: the automorphism-invariant node features are what stop a GMN from being
invariant to *every* relabelling): swapping two input nodes (channels), which maps the coloured edge set onto
itself but is not an automorphism, must change the invariant output.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

import symgraph
from symgraph.graph import NeuralGraph

from .common import CheckResult, max_abs, random_cnn, random_mlp, register
from .prop7_function_preservation import input_swap

__all__ = ["gmn_outputs", "check_prop8"]


def gmn_outputs(net, g: NeuralGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """(invariant output [1, out_dim], per-forward-edge output [E, edge_out_dim]) of ``net`` on ``g``."""
    import gmn

    batch = Batch.from_data_list([gmn.graph_to_data(g, dtype=torch.float64)])
    with torch.no_grad():
        out, edge = net(batch)
    return out, edge


@register("prop8_equivariance")
def check_prop8(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 8: random GMNs are invariant (graph output) and equivariant (edge output) under automorphisms."""
    import gmn

    res = CheckResult(
        name="prop8_equivariance",
        proposition="Prop 8 (C.6)",
        statement="random-weight GMN: graph output invariant, edge output permuted by phi^e, for phi in Aut",
        control="swap two input nodes/channels (not an automorphism): the invariance/equivariance claims fail",
        exactness="exact in exact arithmetic; float64 round-off of reordered sums",
    )
    gen = torch.Generator().manual_seed(seed)
    errs, ctrls = [], []
    n_mlp, n_cnn = (4, 2) if quick else (20, 10)
    cases = []
    for _ in range(n_mlp):
        model = random_mlp(gen, depth=(1, 4), width=(2, 6), bias=None)
        cases.append((model, None))
    for _ in range(n_cnn):
        cases.append(random_cnn(gen, depth=(1, 3), channels=(2, 4), spatial=5))
    for k, (model, shape) in enumerate(cases):
        g = symgraph.parameter_graph(model, input_shape=shape)
        aut = symgraph.automorphism_group(g)
        torch.manual_seed(seed * 1000 + k)  # the GMN's random weights
        net = gmn.GMN(hidden_dim=16, num_layers=3, out_dim=2, edge_out_dim=1).double().eval()
        out, edge = gmn_outputs(net, g)
        for _ in range(2):
            perm = aut.random_element(gen)
            out_p, edge_p = gmn_outputs(net, g.permute(perm))
            errs.append(max_abs(out_p, out))
            eperm = g.edge_permutation(perm)
            errs.append(max_abs(edge_p[eperm], edge))
        bad = input_swap(g)
        out_b, edge_b = gmn_outputs(net, g.permute(bad, check=False))
        ctrls.append(max(max_abs(out_b, out), max_abs(edge_b[g.edge_permutation(bad)], edge)))
    res.cases = len(cases)
    res.max_error = max(errs)
    res.control_error = min(ctrls)
    res.notes.append(
        f"{n_mlp} MLPs, {n_cnn} CNNs; gmn.GMN(hidden 16, 3 layers, global feature, graph + edge heads), "
        "2 random automorphisms each"
    )
    return res.finish()
