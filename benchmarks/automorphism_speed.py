"""Speed and memory of exact automorphism groups on real models: reductions + nauty versus nauty alone.

One row per model: parameters, parameter-graph edges, seconds to build the graph, seconds for the group
(graph built; ``compute_group``) in wall-clock and in CPU seconds of all threads, peak RSS of the process (or
of nauty's forked child, where larger), the extra peak RSS of build + group per edge (peak
minus the RSS before the build, over the number of edges; target <= 48 B), log10|Aut|, whether the order
equals the analytic order of the encoders' declarations, and the ratio against the same exact nauty encoding
on the raw graph without reductions (run under a time limit, which holds in nauty's setup too: the layered
construction of a raw graph runs in the child killed at the deadline; "> x" when it did not finish). Every model runs
in its own subprocess, so that peak RSS is its own.

    python benchmarks/automorphism_speed.py                       # the default table (torchvision models)
    python benchmarks/automorphism_speed.py --models mlp,resnet50 --raw-time-limit 30 --json
    python benchmarks/automorphism_speed.py --models resnet18 --no-raw

Models: ``mlp`` (784-1024-1024-1024-10, no torchvision needed) and torchvision names at random init
(``resnet50``, ``wide_resnet50_2``, ``resnext50_32x4d``, ``vgg16``, ``vgg11_bn``, ``vit_b_16``, ...), built
with input 1x3x64x64 (224x224 for ViT/Swin/MaxViT, which need it). Targets on 2 cores: ResNet-50 <= 5 s,
Wide-ResNet-50-2 <= 10 s, ResNeXt-50-32x4d <= 20 s, VGG-16 <= 15 s (group only); VGG-11-BN and ViT-B/16
under 8 GB peak. The machine's load average is printed first: timings on a shared machine are only
comparable at similar load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

DEFAULT_MODELS = "resnet50,wide_resnet50_2,resnext50_32x4d,vgg16,vgg11_bn,vit_b_16,densenet121"
_BIG_INPUT = ("vit", "swin", "maxvit")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _model(name: str):
    import torch.nn as nn

    if name == "mlp":
        dims = [784, 1024, 1024, 1024, 10]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1]), (1, 784)
    import torchvision

    size = 224 if name.startswith(_BIG_INPUT) else 64
    return torchvision.models.get_model(name, weights=None).eval(), (1, 3, size, size)


def _child(name: str, raw: bool, time_limit: float, threads: int) -> dict:
    """One model, measured in this (fresh) process."""
    import resource

    import torch

    torch.set_num_threads(threads)
    import symgraph
    from symgraph.automorphisms import compute_group
    from symgraph.errors import TimeLimitError
    from symgraph.progress import Progress

    model, shape = _model(name)
    params = sum(p.numel() for p in model.parameters())
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    g = symgraph.parameter_graph(model, input_shape=shape)
    t1 = time.perf_counter()
    row = {"model": name, "params": params, "edges": int(g.num_edges), "nodes": int(g.num_nodes)}
    row["build_s"] = t1 - t0
    c1 = time.process_time()
    try:
        with Progress(time_limit, sys.stderr, delay=10.0) as progress:
            aut = compute_group(g, reduce=not raw, progress=progress)
    except TimeLimitError as exc:
        row.update(status="time limit", stage=exc.stage, group_s=time.perf_counter() - t1)
        return row
    row["group_s"] = time.perf_counter() - t1
    row["group_cpu_s"] = time.process_time() - c1  # all threads: compare with group_s to see the load
    # nauty runs in a forked child under the time limit: its peak counts where it is the larger one
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024
    row.update(status="ok", log10_order=aut.log10_order, quotient_nodes=int(aut.quotient.n))
    row.update(peak_rss=peak, extra_b_per_edge=(peak - rss0) / max(1, g.num_edges))
    if not raw:
        from symgraph.symmetry import analytic_order

        row["analytic_equal"] = bool(analytic_order(g) == aut.order)
    return row


def _run_child(args, name: str, raw: bool, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--time-limit", str(limit), "--threads", str(args.threads)]
    if raw:
        cmd.append("--raw")
    try:
        # the child stops itself at the limit (nauty in a killed subprocess); the extra minute covers the build
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit + 60)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        last = (err.strip().splitlines() or ["build (no progress line)"])[-1]  # the child's last progress line
        # the whole child (build included) ran limit + 60 s: a lower bound for the ratio (with the build's time
        # taken off, from the reduced run) instead of an "error"
        return {"model": name, "status": "killed after the limit", "stage": last[:120], "ran_s": limit + 60}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "status": "error", "error": tail[:200]}
    return json.loads(lines[-1])


def _fmt(row: dict, raw: dict | None) -> str:
    if row.get("status") != "ok":
        return f"{row['model']:<18s} {row.get('status')} ({row.get('stage') or row.get('error', '')})"
    if raw is None:
        ratio = "-"
    elif raw.get("status") == "ok":
        ratio = f"{raw['group_s'] / row['group_s']:.1f}x"
    elif raw.get("status") == "time limit":
        ratio = f"> {raw.get('group_s', 0) / row['group_s']:.0f}x"
    elif raw.get("status") == "killed after the limit":  # e.g. the raw layered setup of 25M edges ran past it
        ratio = f"> {(raw['ran_s'] - row['build_s']) / row['group_s']:.0f}x"
    else:
        ratio = "error"
    return (
        f"{row['model']:<18s} {row['params'] / 1e6:7.1f}M {row['edges'] / 1e6:8.1f}M {row['build_s']:7.2f} "
        f"{row['group_s']:8.2f} {row['group_cpu_s']:7.2f} {row['peak_rss'] / 2**30:7.2f} "
        f"{row['extra_b_per_edge']:7.1f} "
        f"{row['log10_order']:10.2f} {str(row.get('analytic_equal', '-')):>8s} {ratio:>9s}"
    )


HEADER = (
    f"{'model':<18s} {'params':>8s} {'edges':>9s} {'build s':>7s} {'group s':>8s} {'cpu s':>7s} {'peak GB':>7s} "
    f"{'B/edge':>7s} {'log10|Aut|':>10s} {'analytic':>8s} {'vs raw':>9s}"
)


def _main(argv: list[str]) -> int:
    from symgraph.cli_util import CLIError, OneLineArgumentParser

    p = OneLineArgumentParser(prog="python benchmarks/automorphism_speed.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per group (default: %(default)s)")
    p.add_argument("--raw-time-limit", type=float, default=60.0, help="seconds for the raw-graph nauty run")
    p.add_argument("--no-raw", action="store_true", help="skip the raw-graph comparison")
    p.add_argument("--threads", type=int, default=2, help="torch threads per model (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    p.add_argument("--child", help=argparse_suppress())
    p.add_argument("--raw", action="store_true", help=argparse_suppress())
    args = p.parse_args(argv)
    if args.time_limit <= 0 or args.raw_time_limit <= 0:
        raise CLIError("--time-limit, --raw-time-limit: Expected positive seconds")
    if args.child:
        print(json.dumps(_child(args.child, args.raw, args.time_limit, args.threads)))
        return 0
    if not args.json:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch threads {args.threads}")
        print(HEADER)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        row = _run_child(args, name, False, args.time_limit)
        raw = None if args.no_raw or row.get("status") != "ok" else _run_child(args, name, True, args.raw_time_limit)
        if args.json:
            print(json.dumps({**row, "raw": raw}), flush=True)
        else:
            print(_fmt(row, raw), flush=True)
    if not args.json:
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def main(argv: list[str] | None = None) -> int:
    from symgraph.cli_util import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
