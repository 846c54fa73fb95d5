"""Proposition 11 (Appendix D.2): on computation graphs, a GMN can express the forward pass of the input network.

Construction of the proof, with hand-set functions (no training): node features hold the activation value(s)
``h_v`` and structural flags; one GMN layer per depth with

* ``msg_fn(v_i, v_j, e_ij, u) = e_ij * v_j`` (Eq. 72: the edge weight times the sender's activation),
* ``node_fn(v_i, a, u) = sigma(a)`` on hidden nodes (Eq. 73), ``a`` on output nodes, ``1`` on bias nodes and
  the input value on input nodes (the base case of the induction).

After ``L`` layers (``L`` the largest node depth) the output nodes carry ``f_theta(x)`` (Eqs. 74-76). On MLPs the
parameter graph *is* the computation graph (paper, Prop. 3), so it is used directly; CNNs go through
``symgraph.computation_graph`` (Appendix C.1) when that module is available. Several inputs are carried at
once as columns of the node feature.
"""

from __future__ import annotations

import math

import torch

from symgraph.computation import activation_function
from symgraph.graph import NeuralGraph

from .common import CheckResult, apply_layer, gmn_layer, max_abs, random_cnn, random_mlp, register

__all__ = ["forward_pass_gmn", "node_features", "check_prop11"]


def node_features(g: NeuralGraph, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, ...]]]:
    """Initial node features ``[h (B columns), is_input, is_bias, is_output, activation id]``.

    ``x`` is ``[B, d_in]`` in the order of ``g.input_nodes``. Hidden and output nodes start at 0: the layer
    that reaches their depth overwrites them. Returns the features and the activation tuples the ids refer to.
    """
    n, b = g.num_nodes, x.shape[0]
    keys = g.node_color_keys
    acts = sorted({tuple(k[2]) for k in keys})
    act_id = torch.tensor([acts.index(tuple(k[2])) for k in keys], dtype=torch.float64)[g.node_color]
    h = torch.zeros(n, b, dtype=torch.float64)
    inp = getattr(g, "input_index", None)  # computation graphs: input node of each scalar of one sample
    h[g.input_nodes if inp is None else inp.reshape(-1)] = x.T.to(torch.float64)
    # Bias nodes sit at depth 0 with the inputs, so their activation 1 must already be there at GMN depth 0
    # (the proof's base case); the node update keeps it at 1.
    h[g.role_mask("bias")] = 1.0
    flags = torch.stack([g.role_mask("input"), g.role_mask("bias"), g.role_mask("output")], 1).to(torch.float64)
    return torch.cat([h, flags, act_id[:, None]], 1), acts


def _sigma(pre: torch.Tensor, act_id: torch.Tensor, acts: list[tuple[str, ...]]) -> torch.Tensor:
    out = pre.clone()
    for i, chain in enumerate(acts):
        rows = act_id == i
        val = pre[rows]
        for name in chain:  # a node may carry a chain of elementwise activations, applied in order
            val = activation_function(name)(val)
        out[rows] = val
    return out


def forward_pass_gmn(
    g: NeuralGraph,
    x: torch.Tensor,
    edge_weight: torch.Tensor | None = None,
    num_layers: int | None = None,
    trace: list | None = None,
) -> torch.Tensor:
    """Run the Prop. 11 GMN on ``g`` for inputs ``x`` [B, d_in]; returns the output nodes' values [B, d_out].

    ``edge_weight`` overrides the edge features (used by the negative control); ``num_layers`` defaults to the
    graph depth, as in the proof's induction. With ``trace`` (a list), the node values [N, B] after every GMN
    layer are appended to it (to check the induction hypothesis depth by depth).
    """
    b = x.shape[0]
    v, acts = node_features(g, x)
    e = (g.edge_weight if edge_weight is None else edge_weight).to(torch.float64)[:, None]

    def msg_fn(v_dst, v_src, e_, u_e):  # Eq. 72: e_ij * h_j
        return e_[:, :1] * v_src[:, :b]

    def node_fn(v_, agg, u_n):  # Eq. 73 plus the base cases (inputs keep x, bias nodes output 1)
        is_in, is_bias, is_out, act_id = v_[:, b], v_[:, b + 1], v_[:, b + 2], v_[:, b + 3]
        hidden = _sigma(agg, act_id, acts)
        h = torch.where(is_out[:, None] > 0, agg, hidden)
        h = torch.where(is_bias[:, None] > 0, torch.ones_like(h), h)
        h = torch.where(is_in[:, None] > 0, v_[:, :b], h)
        return torch.cat([h, v_[:, b:]], 1)

    layer = gmn_layer(v.shape[1], 1, msg_fn=msg_fn, node_fn=node_fn, order=("node",))
    depth = int(g.node_layer.max()) if num_layers is None else num_layers
    for _ in range(depth):
        v, e, _u = apply_layer(layer, v, g.edge_index, e)
        if trace is not None:
            trace.append(v[:, :b].clone())
    return v[_outputs(g), :b].T


def _outputs(g: NeuralGraph) -> torch.Tensor:
    out = getattr(g, "output_index", None)  # computation graphs order outputs like one output sample
    return g.output_nodes if out is None else out.reshape(-1)


def _computation_graph_fn():
    from symgraph import computation_graph

    return computation_graph


def _one_case(g: NeuralGraph, model, x: torch.Tensor, x_graph: torch.Tensor) -> tuple[float, float | None]:
    """(error of the construction, error with one wrong weight) on one network.

    The error covers the outputs against ``model(x)`` and, on computation graphs, the induction hypothesis of
    the proof: after ``l`` GMN layers every node of depth <= ``l`` holds its Eq. 7 activation (symgraph's
    evaluator ``ComputationGraph.activations`` is the independent reference).
    """
    with torch.no_grad():
        ref = model(x).reshape(x.shape[0], -1)
    trace: list[torch.Tensor] = []
    out = forward_pass_gmn(g, x_graph, trace=trace)
    err = max_abs(out, ref)
    h_ref = None
    if hasattr(g, "activations"):
        with torch.no_grad():
            h_ref = g.activations(x).T  # [N, B]
        for depth, v in enumerate(trace, start=1):
            done = g.node_layer <= depth
            err = max(err, max_abs(v[done], h_ref[done]))
    # Negative control: one wrong weight on an edge into an output node whose sender is active (so the wrong
    # weight cannot be masked by a dead ReLU): the output must move by about 0.5 * |h_sender|.
    src, dst = g.edge_index
    into_out = g.role_mask("output")[dst].nonzero().flatten()
    h_all = trace[-1]
    strength = h_all[src[into_out]].abs().max(1).values
    if float(strength.max()) == 0.0:
        # every sender into the outputs is dead on these inputs (no output bias, all-ReLU-dead last layer):
        # f does not depend on any single weight here, so no check could see a wrong one. Not applicable.
        return err, None
    bad = g.edge_weight.to(torch.float64).clone()
    bad[into_out[strength.argmax()]] += 0.5
    ctrl = max_abs(forward_pass_gmn(g, x_graph, edge_weight=bad), ref)
    return err, ctrl


@register("prop11_forward_pass")
def check_prop11(quick: bool = True, seed: int = 0) -> CheckResult:
    """Prop. 11: the hand-built GMN reproduces ``model(x)`` on random MLPs and CNNs (computation graphs)."""
    import symgraph

    res = CheckResult(
        name="prop11_forward_pass",
        proposition="Prop 11 (D.2)",
        statement="GMN with msg=e*v_src, node=sigma(agg), one layer per depth computes f_theta(x)",
        control="one wrong weight (+0.5 on an edge into an output, active sender)",
        exactness="exact construction (Eqs. 72-73); outputs vs model(x), every depth vs Eq. 7, float64",
    )
    gen = torch.Generator().manual_seed(seed)
    cg = _computation_graph_fn()
    n_mlp, n_cnn = (6, 4) if quick else (30, 16)
    errs, ctrls = [], []
    for k in range(n_mlp):
        model = random_mlp(gen, depth=(1, 4), width=(1, 6) if quick else (1, 16), bias=None)
        x = torch.randn(4, model[0].in_features, generator=gen, dtype=torch.float64)
        # even cases: the parameter graph (= the computation graph for MLPs); odd: symgraph's computation graph
        g = symgraph.parameter_graph(model) if k % 2 == 0 or cg is None else cg(model, x)
        err, ctrl = _one_case(g, model, x, x)
        errs.append(err)
        if ctrl is not None:
            ctrls.append(ctrl)
    if cg is None:
        res.notes.append("symgraph.computation_graph not available: CNN cases not run")
    else:
        for k in range(n_cnn):
            model, shape = random_cnn(
                gen,
                depth=(1, 3),
                channels=(1, 3),
                kernel=(1, 3),
                head=bool(k % 2),
                spatial=4 if quick else 6,
                act=("relu", "tanh")[k // 2 % 2],
            )
            xs = torch.randn(3, *shape[1:], generator=gen, dtype=torch.float64)
            err, ctrl = _one_case(cg(model, xs[:1]), model, xs, xs.reshape(3, -1))
            errs.append(err)
            if ctrl is not None:
                ctrls.append(ctrl)
    res.cases = len(errs)
    # The proposition is about computation graphs in general: without the CNN cases the check has not run.
    res.max_error = max(errs) if errs and cg is not None else math.inf
    res.control_error = min(ctrls) if ctrls else 0.0
    res.notes.append(
        f"control applied on {len(ctrls)}/{len(errs)} networks (skipped where every sender into "
        "the outputs is dead on the sampled inputs)"
    )
    res.notes.append(
        f"{n_mlp} random MLPs (half parameter graph = computation graph, half symgraph computation "
        f"graph), {n_cnn if cg else 0} random CNNs (conv-only and conv + flatten + linear)"
    )
    return res.finish()
