"""Speed of ``symgraph.align`` (weight matching over the exact automorphism group), and a textbook check.

Run: ``python benchmarks/align_speed.py [--repeats 2] [--skip-resnet] [--skip-mlp]`` (with torchvision
installed, e.g. ``/work/venv-models/bin/python``, torchvision's ``resnet18`` is timed too).

1. ResNet-18-sized models (target: under 30 s end to end on a 2-core machine): the ``resnet`` registry model
   at ResNet-18 widths (stem 64, stages 64-128-256-512, 2-2-2-2 basic blocks, BatchNorm, 3x32x32 input;
   11.17M parameters) and, where importable, torchvision's ``resnet18`` (11.69M, 224x224). Two networks
   from seeds 0 and 1; prints the phases (parameter graphs, structure check, automorphism group, matching,
   applying Phi) and the objective's relative gain ``(after - before) / |before|``.
2. MLPs: a plain per-layer weight matching written here (:func:`textbook_weight_matching`, Ainsworth et
   al.'s Sec. 3.2 loop on the weight matrices and biases of an ``nn.Linear`` stack) side by side with
   ``symgraph.align.weight_matching(..., sweep=False)`` (the same descent, derived from the group instead of
   from the layer list, starting at the identity): the objective values must be equal; times are printed as
   a ratio. With ``sweep=True`` (symgraph's default) the objective reached is printed too.

Times are wall-clock seconds, the best of ``--repeats`` runs (the machine may be shared: say so when
quoting them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------------------------- baseline
def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of an MLP, in order (the textbook method needs this list; symgraph does not)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def mlp_objective(ref: nn.Module, model: nn.Module) -> float:
    """``sum_l <W_l^A, W_l^B> + <b_l^A, b_l^B>`` in float64."""
    total = 0.0
    for la, lb in zip(linear_layers(ref), linear_layers(model), strict=True):
        total += float((la.weight.detach().double() * lb.weight.detach().double()).sum())
        if la.bias is not None:
            total += float((la.bias.detach().double() * lb.bias.detach().double()).sum())
    return total


def textbook_weight_matching(ref: nn.Module, model: nn.Module, max_iter: int = 100, seed: int = 0, tol=1e-12):
    """Git Re-Basin weight matching for an MLP, per layer: one permutation ``P_l`` per hidden layer, updated in
    a seeded random order by ``linear_sum_assignment`` on ``W'_l W_l^A^T + b'_l b_l^A^T + W'_{l+1}^T W_{l+1}^A``
    (``W'`` the model's weights permuted so far) until a pass changes nothing; a step is kept when it raises
    the objective by more than ``tol * max(1, |objective|)``.

    Returns ``(perms, objective, iterations)``: ``perms[l][r]`` is where the model's unit ``r`` of hidden
    layer ``l`` goes.
    """
    from scipy.optimize import linear_sum_assignment

    A = [(la.weight.detach().double().numpy(), la.bias.detach().double().numpy()) for la in linear_layers(ref)]
    W = [
        (lb.weight.detach().double().numpy().copy(), lb.bias.detach().double().numpy().copy())
        for lb in linear_layers(model)
    ]
    hidden = len(W) - 1
    perms = [np.arange(W[i][0].shape[0]) for i in range(hidden)]
    obj = sum(float((a * w).sum()) + float((ab * wb).sum()) for (a, ab), (w, wb) in zip(A, W, strict=True))
    rng = np.random.default_rng(seed)
    passes = 0
    for passes in range(1, max_iter + 1):  # noqa: B007 - the pass count is returned
        progress = False
        for layer in rng.permutation(hidden).tolist():
            (w_in, b_in), (w_out, _) = W[layer], W[layer + 1]
            (a_in, ab_in), (a_out, _) = A[layer], A[layer + 1]
            cost = w_in @ a_in.T + np.outer(b_in, ab_in) + w_out.T @ a_out
            rows, cols = linear_sum_assignment(cost, maximize=True)
            gain = float(cost[rows, cols].sum() - np.trace(cost))
            if not gain > tol * max(1.0, abs(obj)):
                continue
            new_in, new_b, new_out = np.empty_like(w_in), np.empty_like(b_in), np.empty_like(w_out)
            new_in[cols] = w_in[rows]
            new_b[cols] = b_in[rows]
            new_out[:, cols] = w_out[:, rows]
            W[layer] = (new_in, new_b)
            W[layer + 1] = (new_out, W[layer + 1][1])
            perm = np.empty_like(cols)
            perm[rows] = cols
            perms[layer] = perm[perms[layer]]
            obj += gain
            progress = True
        if not progress:
            break
    obj = sum(float((a * w).sum()) + float((ab * wb).sum()) for (a, ab), (w, wb) in zip(A, W, strict=True))
    return perms, obj, passes


# ---------------------------------------------------------------------------------------------- cases
def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def resnet_case(name: str, build, input_shape, repeats: int) -> dict:
    from symgraph.align import weight_matching

    torch.manual_seed(0)
    a = build()
    torch.manual_seed(1)
    b = build()
    params = sum(p.numel() for p in a.parameters())
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = weight_matching(a, b, input_shape=input_shape)
        runs.append((time.perf_counter() - t, res))
    total, res = min(runs, key=lambda r: r[0])
    row = {
        "case": name,
        "params": params,
        "seconds_total": total,
        "seconds": {k: round(v, 3) for k, v in res.seconds.items()},
        "objective_before": res.objective_before,
        "objective_after": res.objective_after,
        "relative_gain": res.relative_gain,
        "iterations": res.iterations,
        "factors": len(res.factors),
        "all_totals": [round(r[0], 2) for r in runs],
    }
    print(
        f"{name}: {params / 1e6:.2f}M parameters, {len(res.factors)} factors: {total:.1f} s total (best of "
        f"{repeats}: {row['all_totals']}) = graph {res.seconds['graph']:.1f} + structure check "
        f"{res.seconds.get('check', 0):.1f} + group {res.seconds['group']:.1f} + setup {res.seconds['setup']:.1f} "
        f"+ matching {res.seconds['descent']:.1f} + apply {res.seconds['apply']:.1f} s; objective "
        f"{res.objective_before:.6g} -> {res.objective_after:.6g} (relative gain {res.relative_gain:+.4f}), "
        f"{res.iterations} passes; under 30 s: {'yes' if total < 30 else 'NO'}"
    )
    return row


def mlp_case(widths: tuple[int, ...], repeats: int) -> dict:
    from symgraph.align import weight_matching
    from symgraph.models import build_model

    arch = dict(in_shape=(1, 8, 8), hidden=widths, out_dim=10)
    torch.manual_seed(0)
    a = build_model("mlp", **arch).double()
    torch.manual_seed(1)
    b = build_model("mlp", **arch).double()
    aut_t = time.perf_counter()
    import symgraph

    aut = symgraph.automorphism_group(b)
    group_s = time.perf_counter() - aut_t
    t_text, (perms, obj_text, it_text) = _best(lambda: textbook_weight_matching(a, b), repeats)
    t_sym, res = _best(lambda: weight_matching(a, b, group=aut, sweep=False, check_structure=False), repeats)
    t_sw, res_sw = _best(lambda: weight_matching(a, b, group=aut, check_structure=False), repeats)
    equal = abs(obj_text - res.objective_after) <= 1e-9 * max(1.0, abs(obj_text))
    same_weights = abs(mlp_objective(a, res.aligned) - obj_text) <= 1e-9 * max(1.0, abs(obj_text))
    row = {
        "case": f"mlp {'-'.join(map(str, widths))}",
        "objective_before": mlp_objective(a, b),
        "textbook_objective": obj_text,
        "symgraph_objective": res.objective_after,
        "symgraph_sweep_objective": res_sw.objective_after,
        "equal": bool(equal and same_weights),
        "textbook_seconds": t_text,
        "symgraph_seconds": t_sym,
        "symgraph_sweep_seconds": t_sw,
        "group_seconds": group_s,
        "textbook_passes": it_text,
        "symgraph_passes": res.iterations,
    }
    print(
        f"{row['case']}: objective {row['objective_before']:.6g} -> textbook {obj_text:.10g} ({it_text} passes, "
        f"{t_text:.3f} s) | symgraph {res.objective_after:.10g} ({res.iterations} passes, {t_sym:.3f} s, "
        f"ratio {t_sym / max(t_text, 1e-9):.2f}x; group {group_s:.3f} s once) | equal: {row['equal']} | "
        f"symgraph with sweep: {res_sw.objective_after:.10g}"
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-mlp", action="store_true")
    p.add_argument("--json", action="store_true", help="also print all rows as one JSON object")
    args = p.parse_args(argv)
    rows = []
    if not args.skip_mlp:
        for widths in ((64, 64), (256, 256, 256), (1024, 1024)):
            rows.append(mlp_case(widths, args.repeats))
    if not args.skip_resnet:
        from symgraph.models import build_model

        rows.append(
            resnet_case(
                "resnet registry model at ResNet-18 widths",
                lambda: build_model(
                    "resnet", in_shape=(3, 32, 32), hidden=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)
                ),
                (1, 3, 32, 32),
                args.repeats,
            )
        )
        try:
            import torchvision
        except ImportError:
            print("torchvision not installed: torchvision resnet18 skipped (run with /work/venv-models/bin/python)")
        else:
            rows.append(
                resnet_case(
                    "torchvision resnet18",
                    lambda: torchvision.models.resnet18(weights=None),
                    (1, 3, 224, 224),
                    args.repeats,
                )
            )
    if args.json:
        print(json.dumps({"rows": rows}))
    bad = [r["case"] for r in rows if r.get("equal") is False]
    if bad:
        print(f"objective values differ from the textbook method on: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
