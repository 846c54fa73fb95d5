"""Appendix D.1.3: bias nodes let one GMN layer without a global feature compute ``c * b_*^(l)`` on bias edges.

Construction (Eqs. 68-69), one GMN layer, no global feature, order ``("node", "edge")``, on the MLP's parameter
graph made undirected (edge features ``[w, layer l, backward?, bias?]``):

* ``msg_fn = w * 1[backward, bias]``: the bias node ``b^(l)`` receives the backward copies of its bias edges,
  so ``node_fn = agg`` gives ``v_{b^(l)} = sum_i b_i^(l) = b_*^(l)`` (Eq. 68);
* ``edge_fn``: on the bias edge ``b^(l) -> i``, ``c_l * v_{b^(l)} = c_l b_*^(l)`` (Eq. 69), the diagonal
  ``c_4^{l,l}`` term of NP-NFN; weight edges keep their value.

Negative control (the claim that bias nodes are needed): encode the biases as node features (``v_i = b_i``) or
as self-loops on neuron ``i`` instead. After one layer, the bias output of neuron ``i`` (its node feature, or its
self-loop edge feature) is a function of its one-hop neighbourhood, which holds no other neuron of its own
layer. We certify this *for arbitrary functions*: with randomly initialised GMN layers (and with the
construction transplanted), changing ``b_k`` of another neuron ``k`` of the same layer leaves neuron ``i``'s
output bit-identical while ``c_l b_*^(l)`` moves by ``c_l * delta``; no choice of functions can close that gap.
"""

from __future__ import annotations

import torch

from .common import CheckResult, MLPView, apply_layer, gmn_layer, max_abs, mlp_view, random_mlp, register

__all__ = ["bias_node_gmn", "feature_encoding_outputs", "check_d13"]


def _undirected(view: MLPView) -> tuple[torch.Tensor, torch.Tensor]:
    g = view.graph
    n_e = g.num_edges
    ei = torch.cat([g.edge_index, g.edge_index.flip(0)], 1)
    base = torch.stack(
        [
            g.edge_weight.double(),
            view.edge_layer.double(),
            torch.zeros(n_e, dtype=torch.float64),
            view.edge_is_bias.double(),
        ],
        1,
    )
    back = base.clone()
    back[:, 2] = 1.0
    return ei, torch.cat([base, back])


def bias_node_gmn(view: MLPView, c: torch.Tensor) -> list[torch.Tensor]:
    """Eqs. 68-69 in one GMN layer; returns, per layer with a bias, the new bias-edge values (should be c_l b_*)."""
    ei, e0 = _undirected(view)
    n_e = view.graph.num_edges

    def msg_fn(v_dst, v_src, e, u_e):  # Eq. 68: only backward bias copies (neuron -> bias node) carry b_i
        return (e[:, 0] * e[:, 2] * e[:, 3])[:, None]

    def node_fn(v, agg, u_n):
        return agg

    def edge_fn(v_dst, v_src, e, u_e):  # Eq. 69 on bias edges; v_src is the bias node on forward copies
        bias_node_val = torch.where(e[:, 2] > 0, v_dst[:, 0], v_src[:, 0])
        return torch.where(e[:, 3] > 0, c[e[:, 1].long() - 1] * bias_node_val, e[:, 0])[:, None]

    layer = gmn_layer(1, 4, 0, msg_fn=msg_fn, node_fn=node_fn, edge_fn=edge_fn, order=("node", "edge"))
    v0 = torch.zeros(view.graph.num_nodes, 1, dtype=torch.float64)
    _v, e, _u = apply_layer(layer, v0, ei, e0)
    sd = view.graph.to_state_dict(edge_weight=e[:n_e, 0])
    return [sd[n].double() for n in view.bias_names if n is not None]


def _feature_graph(view: MLPView, biases: list[torch.Tensor], self_loops: bool):
    """Neurons only (no bias nodes); b_i as node feature, or as a self-loop edge feature. Returns tensors + ids."""
    widths = [view.weights[0].shape[1]] + [w.shape[0] for w in view.weights]
    offs = torch.tensor([0] + widths).cumsum(0)
    src, dst, feat = [], [], []
    for l, w in enumerate(view.weights):
        o, i = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij")
        src.append(offs[l] + i.flatten())
        dst.append(offs[l + 1] + o.flatten())
        feat.append(
            torch.stack(
                [
                    w.flatten(),
                    torch.full((w.numel(),), l + 1.0, dtype=torch.float64),
                    torch.zeros(w.numel(), dtype=torch.float64),
                ],
                1,
            )
        )
    s, d, f = torch.cat(src), torch.cat(dst), torch.cat(feat)
    ei = torch.cat([torch.stack([s, d]), torch.stack([d, s])], 1)
    e = torch.cat([f, f])
    n = int(offs[-1])
    layer_of = torch.cat([torch.full((k,), float(l), dtype=torch.float64) for l, k in enumerate(widths)])
    b_node = torch.cat([torch.zeros(widths[0], dtype=torch.float64), *biases])
    loop_ids = None
    if self_loops:
        nodes = torch.arange(widths[0], n)
        loops = torch.stack([nodes, nodes])
        loop_ids = torch.arange(ei.shape[1], ei.shape[1] + nodes.numel())
        ei = torch.cat([ei, loops], 1)
        e = torch.cat(
            [e, torch.stack([b_node[nodes], layer_of[nodes], torch.ones(nodes.numel(), dtype=torch.float64)], 1)]
        )
        v = torch.stack([torch.zeros(n, dtype=torch.float64), layer_of], 1)
    else:
        v = torch.stack([b_node, layer_of], 1)
    return v, ei, e, offs, loop_ids


def feature_encoding_outputs(view: MLPView, biases: list[torch.Tensor], layer, self_loops: bool) -> torch.Tensor:
    """One GMN layer on the bias-as-feature (or self-loop) encoding; the per-neuron bias output, [N_neurons]."""
    v, ei, e, offs, loop_ids = _feature_graph(view, biases, self_loops)
    v2, e2, _ = apply_layer(layer, v, ei, e)
    if self_loops:
        return e2[loop_ids, 0]
    return v2[int(offs[1]) :, 0]


def _transplanted_layer(c: torch.Tensor, self_loops: bool):
    """The D.1.3 construction moved to the feature encodings: sum the biases a neuron can see, times c_l."""

    def msg_fn(v_dst, v_src, e, u_e):  # whatever bias the sender holds (node-feature encoding) or the loop's
        return (v_src[:, 0] + e[:, 0] * e[:, 2])[:, None] if self_loops else v_src[:, :1]

    def node_fn(v, agg, u_n):
        return torch.cat([agg + (0 if self_loops else v[:, :1]), v[:, 1:]], 1)

    def edge_fn(v_dst, v_src, e, u_e):
        return (c[(v_dst[:, 1].long() - 1).clamp(min=0)] * v_dst[:, 0])[:, None]

    if self_loops:
        return gmn_layer(2, 3, 0, msg_fn=msg_fn, node_fn=node_fn, edge_fn=edge_fn, order=("node", "edge"))

    def node_out(v, agg, u_n):
        full = node_fn(v, agg, u_n)
        return torch.cat([c[(v[:, 1].long() - 1).clamp(min=0)][:, None] * full[:, :1], v[:, 1:]], 1)

    return gmn_layer(2, 3, 0, msg_fn=msg_fn, node_fn=node_out, order=("node",))


def _random_layer(gen_seed: int):
    """A GMN layer with its default (randomly initialised MLP) functions, in float64."""
    torch.manual_seed(gen_seed)
    return gmn_layer(2, 3, 0, order=("node", "edge"), hidden_dim=16).double()


@register("d13_bias_nodes")
def check_d13(quick: bool = True, seed: int = 0) -> CheckResult:
    """D.1.3: bias nodes give c_l b_*^(l) in one layer; node-feature/self-loop encodings provably cannot."""
    res = CheckResult(
        name="d13_bias_nodes",
        proposition="D.1.3 (Eqs. 68-69)",
        statement="with bias nodes one GMN layer, no global feature, puts c*b_*^(l) on every bias edge",
        control="biases as node features / self-loops, one layer, no u: output of neuron i ignores b_k (same layer)",
        exactness="exact construction; the control is a locality certificate valid for any layer functions",
    )
    gen = torch.Generator().manual_seed(seed)
    errs, ctrls = [], []
    n = 6 if quick else 30
    n_ctrl = 0
    moved = 0.0  # largest move of neuron i's output when b_k changes (locality says: exactly 0)
    for trial in range(n):
        model = random_mlp(gen, depth=(1, 4), width=(2, 5) if quick else (2, 12), bias=True)
        view = mlp_view(model)
        # |c_l| >= 0.5: the control's gap |c_l * delta| must not vanish by chance
        c = torch.randn(view.num_layers, generator=gen, dtype=torch.float64)
        c = c.sign() * (0.5 + c.abs())
        got = bias_node_gmn(view, c)
        target = [c[l] * b.sum() * torch.ones_like(b) for l, b in enumerate(view.biases)]
        errs.append(max(max_abs(a, t) for a, t in zip(got, target)))
        # Control: neuron i = first unit of layer l, k = second unit (widths >= 2), perturb b_k by delta.
        l = int(torch.randint(0, view.num_layers, (1,), generator=gen))
        delta = 1.0
        pert = [b.clone() for b in view.biases]
        pert[l][1] += delta
        widths = [w.shape[0] for w in view.weights]
        i_pos = sum(widths[:l])  # index of neuron i among non-input neurons
        for self_loops in (False, True):
            layers = [_transplanted_layer(c, self_loops)] + [
                _random_layer(seed * 1000 + trial * 10 + r) for r in range(2)
            ]
            for layer in layers:
                with torch.no_grad():
                    before = feature_encoding_outputs(view, list(view.biases), layer, self_loops)[i_pos]
                    after = feature_encoding_outputs(view, pert, layer, self_loops)[i_pos]
                moved = max(moved, float(abs(after - before)))
                ctrls.append(float(abs(c[l] * delta - (after - before))))
                n_ctrl += 1
        # the bias-node construction does follow the perturbation (same test, passing side)
        view_p = mlp_view(_with_biases(model, pert))
        got_p = bias_node_gmn(view_p, c)
        errs.append(abs(float(got_p[l][0] - got[l][0]) - float(c[l] * delta)))
    res.cases = n
    res.max_error = max(errs)
    res.control_error = min(ctrls)
    res.notes.append(
        f"{n_ctrl} control layers (transplanted construction and random GMN layers, node-feature and "
        f"self-loop encodings): largest move of neuron i's bias output with b_k = {moved:g}; "
        "the target moves by c_l"
    )
    return res.finish()


def _with_biases(model, biases):
    import copy

    import torch.nn as nn

    m = copy.deepcopy(model)
    lin = [x for x in m if isinstance(x, nn.Linear)]
    with torch.no_grad():
        for layer, b in zip(lin, biases):
            layer.bias.copy_(b)
    return m
