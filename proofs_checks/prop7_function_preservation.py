"""Proposition 7 (= Prop. 1, Appendix C.4): a neural DAG automorphism leaves the network function unchanged,
``f_theta(x) = f_Phi(theta)(x)``.

Executable statement:

* **computation graphs** (the proposition proper): random CNNs; a random hidden-channel permutation lifted to
  the computation graph (Prop. 6) is applied to the edge weights (``Phi``), and the Eq. 7 evaluator gives the
  same outputs; the permuted weights read back into the model (``to_state_dict``) give the same ``model(x)``;
* **parameter graphs** (what symgraph uses; Conjecture C.5 is the general bridge): uniformly random elements of
  ``symgraph.automorphism_group`` of random MLPs and CNNs preserve ``model(x)``
  (``symgraph.check_function_preservation``, float64).

Negative control: a permutation that maps the coloured edge set onto itself but is *not* an automorphism
(it swaps two input nodes) changes the function.
"""

from __future__ import annotations

import torch

import symgraph

from .common import CheckResult, max_abs, random_cnn, random_mlp, register
from .prop5_mlp_automorphisms import random_layer_permutation
from .prop6_cnn_automorphisms import computation_graph_fn, lift_channel_permutation

__all__ = ["input_swap", "check_prop7"]


def _depends_on_input(out: torch.Tensor) -> bool:
    """Is the sampled output non-constant across inputs? (If not, no input permutation can change f.)"""
    return bool((out - out[:1]).abs().max() > 1e-9)


def input_swap(g) -> torch.Tensor | None:
    """The permutation swapping the first two input nodes (None with fewer than two inputs)."""
    inputs = g.input_nodes
    if inputs.numel() < 2:
        return None
    p = torch.arange(g.num_nodes)
    p[inputs[0]], p[inputs[1]] = inputs[1], inputs[0]
    return p


@register("prop7_function_preservation")
def check_prop7(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 7: automorphisms (computation and parameter graphs) preserve the function; an input swap does not."""
    res = CheckResult(
        name="prop7_function_preservation",
        proposition="Prop 7 (C.4)",
        statement="f_theta(x) = f_Phi(theta)(x) for random automorphisms (computation + parameter graphs)",
        control="swap two input nodes/channels (edge-set preserving, not an automorphism): function changes",
        exactness="exact in exact arithmetic; float64 round-off only",
    )
    gen = torch.Generator().manual_seed(seed)
    cg_fn = computation_graph_fn()
    errs, ctrls = [], []
    n_cnn, n_mlp = (4, 6) if quick else (20, 30)
    for _ in range(n_cnn):
        model, shape = random_cnn(gen, depth=(1, 3), channels=(2, 4), spatial=5)
        xs = torch.randn(3, *shape[1:], generator=gen, dtype=torch.float64)
        cg = cg_fn(model, xs[:1])
        pg = cg.to_parameter_graph_map()[2]
        lifted = lift_channel_permutation(cg, random_layer_permutation(pg, gen))
        permuted = cg.permute(lifted)
        ref = cg.evaluate(xs)
        errs.append(max_abs(cg.evaluate(xs, edge_weight=permuted.edge_weight), ref))
        m2 = _load(model, permuted.to_state_dict())
        with torch.no_grad():
            errs.append(max_abs(m2(xs), model(xs)))
        # parameter graph: random element of the full group (nauty)
        aut = symgraph.automorphism_group(model, input_shape=shape)
        errs.append(symgraph.check_function_preservation(model, aut.random_element(gen), xs, input_shape=shape))
        # control on the computation graph: swap input channels 0 and 1 at every position (edge- and
        # colour-preserving, but it moves input nodes, so it is not an automorphism)
        if _depends_on_input(ref):
            bad = cg.permute(lift_channel_permutation(cg, input_swap(pg)), check=False)
            ctrls.append(max_abs(cg.evaluate(xs, edge_weight=bad.edge_weight), ref))
    for _ in range(n_mlp):
        model = random_mlp(gen, depth=(1, 4), width=(2, 6) if quick else (2, 16), bias=None)
        xs = torch.randn(32, model[0].in_features, generator=gen, dtype=torch.float64)  # many: dead ReLUs hide
        aut = symgraph.automorphism_group(model)
        for _ in range(2):
            errs.append(symgraph.check_function_preservation(model, aut.random_element(gen), xs))
        with torch.no_grad():
            live = _depends_on_input(model(xs))
        if live:
            p = input_swap(symgraph.parameter_graph(model))
            ctrls.append(symgraph.check_function_preservation(model, p, xs))
    res.notes.append(
        f"control applied on {len(ctrls)}/{n_cnn + n_mlp} networks (skipped where f is constant on the "
        "sampled inputs, e.g. all-dead ReLU layers without biases: no input permutation can change it)"
    )
    res.cases = n_cnn + n_mlp
    res.max_error = max(errs)
    res.control_error = min(ctrls) if ctrls else 0.0
    res.notes.append(
        f"{n_cnn} CNNs (computation graph Phi + Eq. 7, model reload, parameter-graph group element), "
        f"{n_mlp} MLPs (2 random group elements each, train and eval mode)"
    )
    return res.finish()


def _load(model, state):
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m
