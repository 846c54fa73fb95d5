"""GMN engine benchmark: edges per second and peak memory per directed edge, ours vs a reference edge-MPNN.

Every (workload, model, mode) runs in its own subprocess, so that its peak memory is its own: the resident set
size (``ru_maxrss``) above the RSS after the batch and the model were loaded, or on a GPU
``torch.cuda.max_memory_allocated`` above the allocation before the run. Modes: ``train`` (forward + backward +
AdamW step) and ``infer`` (forward under ``torch.inference_mode``). Both models run in the same invocation, one
after the other, so their ratio is meaningful on a shared machine (``uptime`` load is printed).

Models (hidden ``--hidden``, ``--layers`` layers, MLPs of ``--mlp-layers`` linear layers, same encoders and
mean-pool head):

- ``gmn``: :class:`gmn.GMN` (its default engine: fused edge block, see :mod:`gmn.layers`);
- ``gmn-autograd``: the same GMN on the plain autograd path of :class:`gmn.GMNLayer` (``fused=False``; what
  the engine was before);
- ``gmn-edgemsg``: :class:`gmn.GMN` with ``message="edge"`` (the updated edge feature is the message, as in
  ``ref``: the same function class as the reference, one per-edge MLP per layer);
- ``gmn-checkpoint`` / ``gmn-compile`` / ``gmn-bf16``: the GMN with per-layer activation checkpointing, with
  ``torch.compile`` of each layer (inductor), under bf16 autocast;
- ``ref``: a plain edge-MPNN written here: ``e <- e + MLP(v_src, v_dst, e)``, ``v <- v + MLP(v, sum_dst e)``
  with materialised concatenations and ``index_add_``.

Workloads: ``mlp`` (one MLP 512-512-512-10, ~1.06M directed edges), ``resnet18`` (symgraph's ``resnet`` at the
ResNet-18 layout 2-2-2-2, width ``--resnet-width``), ``siren`` (64 SIRENs 1-32-32-1, the SSL batch), ``zoo``
(32 Table-5 ``diverse`` networks, the accuracy-prediction workload). It also prints the matmul FLOPs per directed
edge and layer (counted by ``torch.utils.flop_counter`` on one forward + backward), the achieved GFLOP/s, and the
machine's fp32 / bf16 matmul rate measured in the same run. ``--resnet50`` adds one chunked inference pass of a
GMN over a ResNet-50 parameter graph (~47M directed edges) with its time and peak RSS.

    python benchmarks/gmn_engine.py [--workloads mlp,resnet18,siren,zoo] [--models ref,gmn] [--json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from symgraph.cli_util import CLIError, OneLineArgumentParser, add_device_argument, resolve_device, run_cli

WORKLOADS = ("mlp", "resnet18", "siren", "zoo")
MODELS = ("ref", "gmn", "gmn-edgemsg", "gmn-autograd", "gmn-checkpoint", "gmn-compile", "gmn-bf16")


# ---------------------------------------------------------------------------------------------- reference model
class RefEdgeMPNN(nn.Module):
    """The reference: a plain edge-MPNN, written the straightforward way (concatenate, MLP, ``index_add_``).

    Same encoders, widths, MLP depth and mean-pool head as :class:`gmn.GMN`; per layer ``e <- e + MLP_e(v_src,
    v_dst, e)`` then ``v <- v + MLP_v(v, sum_{edges into v} e)`` (the updated edge feature is the message).
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 4, mlp_layers: int = 2, out_dim: int = 1):
        super().__init__()
        from gmn.data import (
            EDGE_CAT_SIZES,
            EDGE_FLOAT_DIM,
            MAX_POSITIONS,
            NODE_CAT_COLUMNS,
            NODE_CAT_SIZES,
            NODE_FLOAT_DIM,
        )
        from gmn.layers import ConcatMLP
        from gmn.models import FeatureEncoder

        h = hidden_dim
        pos = NODE_CAT_COLUMNS.index("position")
        self.node_encoder = FeatureEncoder(
            NODE_CAT_SIZES, NODE_FLOAT_DIM, h, sinusoidal=(pos,), positions=MAX_POSITIONS
        )
        self.edge_encoder = FeatureEncoder(EDGE_CAT_SIZES, EDGE_FLOAT_DIM, h)
        self.edge_mlps = nn.ModuleList(ConcatMLP(3 * h, h, h, mlp_layers) for _ in range(num_layers))
        self.node_mlps = nn.ModuleList(ConcatMLP(2 * h, h, h, mlp_layers) for _ in range(num_layers))
        self.head = ConcatMLP(h, h, out_dim, 2)

    def forward(self, batch) -> Tensor:
        v = self.node_encoder(batch.x_cat, batch.x)
        e = self.edge_encoder(batch.edge_cat, batch.edge_attr)
        src, dst = batch.edge_index
        for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps):
            e = e + edge_mlp.net(torch.cat([v[src], v[dst], e], dim=1))
            agg = torch.zeros_like(v).index_add_(0, dst, e)
            v = v + node_mlp.net(torch.cat([v, agg], dim=1))
        node_batch = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(v[:, 0]).long()
        edge_batch = node_batch[dst]
        g = int(batch.num_graphs)
        pooled = torch.zeros(g, e.shape[1], dtype=e.dtype, device=e.device).index_add_(0, edge_batch, e)
        cnt = torch.zeros(g, dtype=e.dtype, device=e.device).index_add_(0, edge_batch, torch.ones_like(e[:, 0]))
        return self.head.net(pooled / cnt.clamp(min=1)[:, None])


# -------------------------------------------------------------------------------------------------- workloads
def workload_graphs(name: str, resnet_width: int = 8) -> list:
    """The parameter graphs of one workload (deterministic)."""
    import symgraph
    from symgraph.models import build_model
    from symgraph.models.siren import SIREN

    torch.manual_seed(0)
    if name == "mlp":
        m = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        return [symgraph.parameter_graph(m)]
    if name == "resnet18":
        m = build_model("resnet", in_shape=(3, 32, 32), hidden=resnet_width, blocks=(2, 2, 2, 2))
        return [symgraph.parameter_graph(m)]
    if name == "siren":
        return [symgraph.parameter_graph(SIREN(1, (32, 32), 1, 30.0)) for _ in range(64)]
    if name == "tiny":  # for the test suite
        return [symgraph.parameter_graph(nn.Sequential(nn.Linear(4, k), nn.ReLU(), nn.Linear(k, 2))) for k in (5, 7)]
    if name == "zoo":
        from gmn.zoo.families import sample_config
        from gmn.zoo.generate import _build

        return [symgraph.parameter_graph(_build(sample_config("diverse", i, 0))) for i in range(32)]
    raise CLIError(f"--workloads: Expected names from {', '.join(WORKLOADS)} (got {name!r})")


def build_model(name: str, hidden: int, layers: int, mlp_layers: int):
    import gmn

    if name == "ref":
        return RefEdgeMPNN(hidden, layers, mlp_layers)
    kw = dict(hidden_dim=hidden, num_layers=layers, mlp_layers=mlp_layers)
    if name == "gmn":
        return gmn.GMN(**kw)
    if name == "gmn-edgemsg":
        return gmn.GMN(**kw, message="edge")
    if name == "gmn-autograd":
        return gmn.GMN(**kw, fused=False)
    if name == "gmn-checkpoint":
        return gmn.GMN(**kw, checkpoint=True)
    if name == "gmn-compile":
        return gmn.GMN(**kw, compile=True)
    if name == "gmn-bf16":
        return gmn.GMN(**kw, autocast_dtype=torch.bfloat16)
    raise CLIError(f"--models: Expected names from {', '.join(MODELS)} (got {name!r})")


# ---------------------------------------------------------------------------------------------- measurements
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(spec: dict) -> dict:
    """One measurement (runs in its own process): rate and peak memory of one model on one batch."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec.get("retain_memory"):
        from gmn.fused import retain_freed_memory

        retain_freed_memory()
    device = torch.device(spec["device"])
    batch = torch.load(spec["batch"], weights_only=False, mmap=True).to(device)
    model = build_model(spec["model"], spec["hidden"], spec["layers"], spec["mlp_layers"]).to(device)
    edges = int(batch.edge_index.shape[1])
    train = spec["mode"] == "train"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def step():
        if train:
            opt.zero_grad(set_to_none=True)
            model(batch).pow(2).mean().backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(batch)

    base_rss = _rss_bytes()  # before any step: with --retain-memory freed blocks stay resident
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_gpu = torch.cuda.memory_allocated(device)
    flops = None
    if spec.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = int(counter.get_total_flops())
    t0 = time.perf_counter()
    step()  # warm-up (compilation, allocator)
    _sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sec = min(times)
    out = {
        "edges": edges,
        "seconds_per_step": sec,
        "warmup_seconds": warm,
        "edges_per_second": edges / sec,
        "peak_rss_bytes": peak_rss,
        "bytes_per_edge": max(peak_rss - base_rss, 0) / edges,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        out["bytes_per_edge"] = (torch.cuda.max_memory_allocated(device) - base_gpu) / edges
    if flops is not None:
        out["flops"] = flops
        out["gflops_per_second"] = flops / sec / 1e9
    return out


def matmul_peak(device, dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of an ``n x n`` matmul in ``dtype`` (best of the repetitions that fit ``seconds``)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t_end = time.perf_counter() + seconds
    best = float("inf")
    for i in range(100):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > t_end and i >= 1:
            break
    return 2 * n**3 / best / 1e9


def run_child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resnet50_inference(hidden: int, layers: int, chunk: int, device) -> dict:
    """One chunked forward pass of a GMN over a ResNet-50 parameter graph (run in a child process)."""
    import gmn
    import symgraph
    from symgraph.models import build_model as build_arch

    torch.set_num_threads(2)
    t = time.perf_counter()
    g = symgraph.parameter_graph(build_arch("resnet50_like", in_shape=(3, 224, 224), out_dim=1000))
    data = gmn.graph_to_data(g, normalize="graph")
    del g
    build_s = time.perf_counter() - t
    model = gmn.GMN(hidden_dim=hidden, num_layers=layers).to(device)
    data = data.to(device)
    base = _rss_bytes()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model(data, chunk_size=chunk)
    _sync(device)
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "edges": int(data.edge_index.shape[1]),
        "build_seconds": build_s,
        "seconds": sec,
        "peak_rss_bytes": peak,
        "rss_before_bytes": base,
        "output_finite": bool(torch.isfinite(out).all()),
    }


def main(argv=None) -> int:
    """Run the benchmark; exit code 0 ok, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--models", default="ref,gmn,gmn-edgemsg", help=f"comma list from {', '.join(MODELS)}")
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mlp-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (best is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resnet-width", type=int, default=8, help="stem width of the ResNet-18-shaped CNN")
    ap.add_argument("--resnet50", action="store_true", help="also run chunked inference on a ResNet-50 graph")
    ap.add_argument("--chunk-size", type=int, default=2_000_000, help="edges per chunk for --resnet50")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    ap.add_argument(
        "--retain-memory",
        action="store_true",
        help="every model's process keeps freed memory for reuse (gmn.fused.retain_freed_memory; both sides)",
    )
    ap.add_argument("--child", help=argparse_hidden())
    ap.add_argument("--json", action="store_true")
    add_device_argument(ap)
    args = ap.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        res = resnet50_inference(**spec) if spec.pop("kind", None) == "resnet50" else child(spec)
        print(json.dumps(res))
        return 0
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    workloads = [w for w in args.workloads.split(",") if w]
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise CLIError(f"--models: Expected names from {', '.join(MODELS)} (got {m!r})")
    for m in modes:
        if m not in ("train", "infer"):
            raise CLIError(f"--modes: Expected train and/or infer (got {m!r})")
    from torch_geometric.data import Batch

    import gmn

    load = os.getloadavg()
    report = {
        "device": str(device),
        "threads": args.threads,
        "load_average": load,
        "hidden": args.hidden,
        "layers": args.layers,
        "mlp_layers": args.mlp_layers,
        "retain_memory": args.retain_memory,
        "matmul_gflops": {
            "fp32": matmul_peak(device, torch.float32),
            "bf16": matmul_peak(device, torch.bfloat16, n=512 if device.type == "cpu" else 4096),
        },
        "rows": [],
    }
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    log(
        f"device {device}, {args.threads} threads, load average {load[0]:.2f}; hidden {args.hidden}, "
        f"{args.layers} layers; matmul peak fp32 {report['matmul_gflops']['fp32']:.1f} GFLOP/s, "
        f"bf16 {report['matmul_gflops']['bf16']:.1f} GFLOP/s"
    )
    log(f"{'workload':<9} {'model':<15} {'mode':<5} {'edges':>9} {'edges/s':>10} {'B/edge':>7} {'GFLOP/s':>8} ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads:
            graphs = workload_graphs(w, args.resnet_width)
            batch = Batch.from_data_list([gmn.graph_to_data(g, normalize="graph") for g in graphs])
            path = os.path.join(tmp, f"{w}.pt")
            torch.save(batch, path)
            del graphs, batch
            for mode in modes:
                ref_rate = None
                for m in models:
                    spec = dict(
                        batch=path,
                        model=m,
                        mode=mode,
                        device=str(device),
                        threads=args.threads,
                        hidden=args.hidden,
                        layers=args.layers,
                        mlp_layers=args.mlp_layers,
                        steps=args.steps,
                        count_flops=mode == "train",
                        retain_memory=args.retain_memory,
                    )
                    res = run_child(spec, args.timeout)
                    row = {"workload": w, "model": m, "mode": mode, **res}
                    if "error" not in res:
                        if m == "ref":
                            ref_rate = res["edges_per_second"]
                        if ref_rate:
                            row["ratio_vs_ref"] = res["edges_per_second"] / ref_rate
                        if "flops" in res:
                            row["flops_per_edge_layer"] = res["flops"] / res["edges"] / args.layers
                        gf = f"{res['gflops_per_second']:8.2f}" if "gflops_per_second" in res else " " * 8
                        log(
                            f"{w:<9} {m:<15} {mode:<5} {res['edges']:>9} {res['edges_per_second']:>10.0f} "
                            f"{res['bytes_per_edge']:>7.0f} {gf} {row.get('ratio_vs_ref', float('nan')):.2f}"
                        )
                    else:
                        log(f"{w:<9} {m:<15} {mode:<5} error: {res['error']}")
                    report["rows"].append(row)
    for r in report["rows"]:
        if "flops_per_edge_layer" in r:
            log(
                f"  {r['workload']:<9} {r['model']:<15} matmul FLOPs per directed edge and layer (fwd+bwd): "
                f"{r['flops_per_edge_layer']:.0f}"
            )
    if args.resnet50:
        spec = dict(kind="resnet50", hidden=args.hidden, layers=args.layers, chunk=args.chunk_size, device=str(device))
        res = run_child(spec, args.timeout)
        report["resnet50"] = res
        if "error" in res:
            log(f"resnet50 chunked inference: error: {res['error']}")
        else:
            log(
                f"resnet50 chunked inference: {res['edges']} directed edges, {res['seconds']:.1f} s, peak RSS "
                f"{res['peak_rss_bytes'] / 2**30:.2f} GiB (graph build {res['build_seconds']:.1f} s)"
            )
    report["load_average_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(report))
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
