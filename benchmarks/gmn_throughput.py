"""Graphs per second (forward + backward) of a GMN and of the DeepSets baseline, side by side.

Both models see the same batches of small CNN and MLP parameter graphs (mixed architectures). Prints one
row per model and the ratio GMN / DeepSets.

    python benchmarks/gmn_throughput.py [--batch-size 16] [--steps 5] [--hidden 64] [--layers 4]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
from torch_geometric.data import Batch

import gmn
import symgraph
from gmn.baselines import DeepSetsBaseline
from symgraph.cli_util import OneLineArgumentParser, add_device_argument, resolve_device, run_cli


def make_graphs(n: int, seed: int = 0) -> list[symgraph.NeuralGraph]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h = int(torch.randint(8, 17, (1,), generator=gen))
        if i % 2 == 0:
            m = nn.Sequential(
                nn.Conv2d(3, h, 3),
                nn.ReLU(),
                nn.Conv2d(h, h, 3),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(h, 10),
            )
            out.append(symgraph.parameter_graph(m, input_shape=(1, 3, 8, 8)))
        else:
            m = nn.Sequential(nn.Linear(64, 4 * h), nn.ReLU(), nn.Linear(4 * h, 4 * h), nn.ReLU(), nn.Linear(4 * h, 10))
            out.append(symgraph.parameter_graph(m))
    return out


def throughput(model: nn.Module, batch, steps: int, warmup: int = 1) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = int(batch.num_graphs)
    for _ in range(warmup):
        model(batch).sum().backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(batch).pow(2).mean().backward()
        opt.step()
    return n * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    """Run the benchmark; exit code 0 ok, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    add_device_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    graphs = make_graphs(args.batch_size)
    batch = Batch.from_data_list([gmn.graph_to_data(g, normalize="graph") for g in graphs]).to(device)
    n_edges = sum(g.num_edges for g in graphs)
    models = {
        f"GMN(hidden={args.hidden}, layers={args.layers})": gmn.GMN(hidden_dim=args.hidden, num_layers=args.layers),
        f"DeepSets(hidden={args.hidden})": DeepSetsBaseline(hidden_dim=args.hidden),
    }
    print(
        f"device {device}, {args.batch_size} graphs per batch ({n_edges} parameter edges, "
        f"{n_edges / args.batch_size:.0f} per graph), {args.steps} steps, {torch.get_num_threads()} threads"
    )
    rates = {}
    for name, model in models.items():
        model.to(device)
        n_params = sum(p.numel() for p in model.parameters())
        rates[name] = throughput(model, batch, args.steps)
        print(f"{name:<28s} {n_params:>9d} params  {rates[name]:10.1f} graphs/s (forward+backward)")
    a, b = rates.values()
    print(f"ratio GMN / DeepSets: {a / b:.3f} (DeepSets is {b / a:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
