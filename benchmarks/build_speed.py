"""Parameter-graph build speed and memory.

For each model: seconds to build the parameter graph (first build in the process, and a repeat build),
edges per second, seconds per 25M edges (target <= 1 s on a 2-core machine), bytes of graph tensors per edge
(target <= 24), and peak RSS. Each case runs in its own subprocess so that peak RSS is the case's own. Side
by side, in the same process, we time the least any builder must do — one copy of every parameter
(``torch.cat`` of the flattened parameters) — and print the build time as a ratio of that floor. One-off
library start-up (fx, meta kernels; paid once per process) is timed apart on a tiny model first.

    python benchmarks/build_speed.py            # all cases
    python benchmarks/build_speed.py --only mlp --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ["mlp", "cnn", "resnet50", "vit_b"]


def build_model(name: str):
    import torch.nn as nn

    if name == "mlp":  # about 29.4M parameters
        dims = [2048, 4096, 4096, 1024, 10]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1]), (1, 2048)
    if name == "cnn":  # a deep plain CNN, 20 conv layers of 256 channels: about 11.8M parameters
        layers = [nn.Conv2d(3, 256, 3, padding=1), nn.ReLU()]
        for _ in range(19):
            layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
        return nn.Sequential(*layers), (1, 3, 32, 32)
    from symgraph.models import build_model as registry_build  # ResNet-50 / ViT-B shapes from our registry

    if name == "resnet50":
        m = registry_build("resnet50_like")
    elif name == "vit_b":  # ViT-B/16 shapes: 224x224x3, patch 16, width 768, 12 blocks of 12 heads, MLP 3072
        m = registry_build(
            "vit", in_shape=(3, 224, 224), patch=16, dim=768, depth=12, heads=12, mlp_dim=3072, out_dim=1000
        )
    else:
        raise SystemExit(f"error: unknown case {name!r} (expected one of {CASES})")
    return m, tuple(m.example_input_shape)


def run_case(name: str) -> dict:
    import torch

    import symgraph

    torch.set_num_threads(2)
    import torch.nn as nn

    # one-off library start-up (fx, meta kernels) is paid once per process: time it apart on tiny models
    t = time.perf_counter()
    symgraph.parameter_graph(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)), input_shape=(1, 1, 3, 3)
    )
    # and once on the meta device (big models propagate shapes there; its first use imports torch._dynamo)
    symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 1, 4096, 4096))
    t_startup = time.perf_counter() - t
    model, shape = build_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    params = [p.detach() for p in model.parameters()]
    t = time.perf_counter()
    floor = torch.cat([p.reshape(-1) for p in params])
    t_floor = time.perf_counter() - t
    del floor
    t = time.perf_counter()
    g = symgraph.parameter_graph(model, input_shape=shape)
    t_build = time.perf_counter() - t
    del g
    # a second build of the same model: what a loop over a model zoo sees (first-touch memory, caches warm)
    t = time.perf_counter()
    g = symgraph.parameter_graph(model, input_shape=shape)
    t_repeat = time.perf_counter() - t
    b = g.nbytes()
    per_edge = (b["edge_index"] + b["edge_weight"] + b["edge_color"]) / g.num_edges
    return {
        "case": name,
        "params": n_params,
        "nodes": g.num_nodes,
        "edges": g.num_edges,
        "seconds": round(t_build, 3),
        "edges_per_second": round(g.num_edges / t_build),
        "seconds_per_25M_edges": round(t_build * 25e6 / g.num_edges, 3),
        "repeat_seconds": round(t_repeat, 3),
        "repeat_seconds_per_25M_edges": round(t_repeat * 25e6 / g.num_edges, 3),
        "bytes_per_edge": round(per_edge, 2),
        "total_graph_bytes_per_edge": round(b["total"] / g.num_edges, 2),
        "startup_seconds": round(t_startup, 3),
        "copy_floor_seconds": round(t_floor, 3),
        "ratio_to_copy_floor": round(t_build / max(t_floor, 1e-9), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None) -> int:
    """Run the benchmark; exit code 0 ok, 2 bad input (one ``error:`` line)."""
    from symgraph.cli_util import run_cli  # imported here: each case's process times its own start-up

    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    from symgraph.cli_util import OneLineArgumentParser

    ap = OneLineArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=CASES, action="append", help="run only this case (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per case")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    rows = []
    for name in args.only or CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name}: skipped ({last})", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        if args.json:
            print(json.dumps(row))
    if not args.json:
        hdr = (
            f"{'case':<9} {'params':>11} {'edges':>11} {'build s':>8} {'s/25M':>6} {'again s/25M':>11} {'B/edge':>7} "
            f"{'copy s':>7} {'x copy':>7} {'peakRSS MiB':>11}"
        )
        print(hdr)
        for r in rows:
            print(
                f"{r['case']:<9} {r['params']:>11,} {r['edges']:>11,} {r['seconds']:>8.3f} "
                f"{r['seconds_per_25M_edges']:>6.2f} {r['repeat_seconds_per_25M_edges']:>11.2f} "
                f"{r['bytes_per_edge']:>7.1f} {r['copy_floor_seconds']:>7.3f} "
                f"{r['ratio_to_copy_floor']:>7.1f} {r['peak_rss_mib']:>11.1f}"
            )
        print("targets: <= 1 s per 25M edges, <= 24 bytes per edge (edge_index + edge_weight + edge_color)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
