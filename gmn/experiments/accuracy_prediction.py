"""Predicting the test accuracy of image classifiers from their weights (paper Sec. 4.1, Table 1, E.1.2).

    python -m gmn.experiments.accuracy_prediction --dataset diverse --split all --scale cpu

Pipeline: (1) generate the zoo (``gmn.zoo``, resumable; digits by default, CIFAR-10 with ``--data``);
(2) turn every network into a parameter graph (``symgraph.parameter_graph``) and PyG data whose target is
its test accuracy; (3) for each metanet (GMN, DeepSets, DMC, StatNN, NP-NFN) with a comparable parameter
budget, pick the learning rate in {1e-4, 5e-4, 1e-3, 5e-3, 1e-2} by validation R^2, then train several seeds
with it (BCE on sigmoid outputs, Adam); (4) print a Table-1-style table (test R^2 and Kendall tau, mean ± std)
beside the paper's numbers, and write ``results.json`` (with every prediction, for ``python -m figures.plots``).
Metanets that cannot take the zoo's architectures (NP-NFN: norms, residuals, attention, mixed
architectures) are marked "n/a" with the reason, as the paper's table does.

Scales: ``smoke`` (seconds; tests), ``cpu`` (default; sized for about an hour on 2 cores: measured 43 min
end to end on the quiet machine, 2 h 03 min with another experiment sharing it — README), ``paper`` (30 000
networks, ~750k-parameter metanets, 5 seeds: a GPU job).

Several GPUs (one process each; ``--device auto`` puts rank r on cuda:LOCAL_RANK):

    torchrun --standalone --nproc_per_node 4 -m gmn.experiments.accuracy_prediction --scale paper

Every rank trains its share of the zoo's chunks (``generate_zoo(part=...)``); every metanet is trained with
DistributedDataParallel, each global batch (``batch_size``, as in one process) split over the ranks;
validation and test metrics are over the full sets and the same on every rank; only rank 0 prints and writes
``results.json`` / ``runs.json``.
On CPU the same command runs gloo processes (``--device cpu``). After the module name torchrun's parser
still matches abbreviations of its own options: write ``--networks`` rather than ``--n``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

__all__ = ["Scale", "SCALES", "PAPER_TABLE1", "run_experiment", "main"]

LRS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)

#: Paper Table 1 (CIFAR-10 zoos): (R^2, tau) as (mean, std) pairs; None where the paper has no entry.
PAPER_TABLE1 = {
    ("varying-cnn", "50"): {
        "deepsets": ((0.778, 0.002), (0.697, 0.002)),
        "dmc": ((0.948, 0.009), (0.876, 0.003)),
        "gmn": ((0.978, 0.002), (0.915, 0.006)),
    },
    ("diverse", "50"): {
        "deepsets": ((0.562, 0.020), (0.559, 0.011)),
        "dmc": ((0.957, 0.009), (0.883, 0.007)),
        "gmn": ((0.975, 0.002), (0.908, 0.004)),
    },
    ("varying-cnn", "5"): {
        "deepsets": ((0.692, 0.006), (0.648, 0.002)),
        "dmc": ((0.816, 0.038), (0.762, 0.014)),
        "gmn": ((0.876, 0.010), (0.797, 0.005)),
    },
    ("diverse", "5"): {
        "deepsets": ((0.126, 0.015), (0.290, 0.010)),
        "dmc": ((0.810, 0.046), (0.758, 0.013)),
        "gmn": ((0.918, 0.002), (0.828, 0.005)),
    },
    ("varying-cnn", "ood"): {
        "deepsets": ((0.741, 0.015), (0.683, 0.005)),
        "dmc": ((0.387, 0.229), (0.760, 0.024)),
        "gmn": ((0.891, 0.037), (0.870, 0.010)),
    },
    ("diverse", "ood"): {
        "deepsets": ((0.128, 0.071), (0.380, 0.014)),
        "dmc": ((-0.134, 0.147), (0.566, 0.055)),
        "gmn": ((0.768, 0.063), (0.780, 0.030)),
    },
}


#: Paper Table 6 (small CNNs of Unterthiner et al.): test Kendall tau (mean, std); the R^2 column is not given.
PAPER_TABLE6 = {"npnfn": (0.922, 0.001), "statnn": (0.915, 0.002), "gmn": (0.938, 0.000)}


@dataclass(frozen=True)
class Scale:
    n: int  # networks in the zoo
    zoo_epochs: int
    train_subset: int | None
    epochs: int  # metanet epochs (final runs)
    search_epochs: int  # metanet epochs during the learning-rate search
    seeds: int
    budget: int  # target trainable parameters per metanet
    lrs: tuple[float, ...] = LRS
    batch_size: int = 32


SCALES = {
    "smoke": Scale(
        n=40, zoo_epochs=1, train_subset=256, epochs=2, search_epochs=1, seeds=2, budget=5_000, lrs=(1e-3, 5e-3)
    ),
    # fits about an hour on 2 CPU cores (README: measured wall time); the GMN's cost grows with its width
    "cpu": Scale(n=300, zoo_epochs=5, train_subset=None, epochs=10, search_epochs=2, seeds=3, budget=25_000),
    "paper": Scale(n=30_000, zoo_epochs=30, train_subset=None, epochs=100, search_epochs=30, seeds=5, budget=750_000),
}

METANETS = ("gmn", "deepsets", "dmc", "statnn", "npnfn")


def _n_params(m) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _factory(name: str, example_graph):
    """``hidden -> model`` for a metanet; the budget search varies ``hidden``."""
    import gmn
    from gmn.baselines import DMC, NPNFN, DeepSetsBaseline, StatNN

    if name == "gmn":  # the paper's experiments: message passing without a global feature, pooled edges
        return lambda h: gmn.GMN(hidden_dim=h, num_layers=4, out_dim=1, use_global=False, pool=("edge",))
    if name == "deepsets":
        return lambda h: DeepSetsBaseline(hidden_dim=h, out_dim=1)
    if name == "dmc":
        return lambda h: DMC(channels=h, out_dim=1)
    if name == "statnn":
        return lambda h: StatNN(hidden_dim=h, out_dim=1, layout="pool")
    if name == "npnfn":
        return lambda h: NPNFN(example_graph, hidden_dim=h, num_layers=2, out_dim=1)
    raise ValueError(f"Expected a metanet in {METANETS} (got {name!r})")


def sized(name: str, budget: int, example_graph):
    """The metanet whose trainable parameter count is closest to ``budget`` (hidden width searched)."""
    make = _factory(name, example_graph)
    best = None
    for h in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        m = make(h)
        gap = abs(math.log(_n_params(m) / budget))
        if best is None or gap < best[0]:
            best = (gap, h)
    return lambda: make(best[1]), best[1]


def _graphs_and_data(records):
    import gmn
    import gmn.zoo.unterthiner  # noqa: F401  (registers 'smallcnn')
    import symgraph
    from symgraph.models import build_model

    graphs, data = [], []
    for r in records:
        m = build_model(r["arch"], **r["kwargs"])
        m.load_state_dict(r["state_dict"])
        g = symgraph.parameter_graph(m)
        graphs.append(g)
        data.append(gmn.graph_to_data(g, y=float(r["test_acc"])))
    return graphs, data


def _check_supported(name: str, graphs) -> str | None:
    """None if the metanet takes every network of the zoo, else the reason (paper's table marks)."""
    if name != "npnfn":
        return None
    from gmn.baselines import NFNSpec, UnsupportedArchitectureError

    try:
        sigs = {NFNSpec.from_graph(g).signature for g in graphs}
    except UnsupportedArchitectureError as exc:
        return str(exc)
    if len(sigs) > 1:
        return f"NP-NFN needs one layer layout for all networks (got {len(sigs)})"
    return None


class _EpochPermutation(torch.utils.data.Sampler):
    """A new permutation of ``range(n)`` from ``generator`` each epoch (``shuffle``), else the identity."""

    def __init__(self, n: int, shuffle: bool, generator: torch.Generator):
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else range(self.n))

    def __len__(self) -> int:
        return self.n


def _collate_graphs(chunk):
    return [c[0] for c in chunk], torch.stack([c[1] for c in chunk])


def _loaders(name, data, graphs, idx, batch_size, shuffle):
    from torch_geometric.loader import DataLoader

    if name == "npnfn":  # NP-NFN reads shapes off the NeuralGraphs: batches are (graphs, targets)
        items = [(graphs[i], data[i].y.view(-1)) for i in idx]
        # a torch DataLoader so that train_regressor can shard it under torchrun; its own generators, so that
        # it leaves the global random state alone
        return torch.utils.data.DataLoader(
            items,
            batch_size=batch_size,
            sampler=_EpochPermutation(len(items), shuffle, torch.Generator().manual_seed(0)),
            collate_fn=_collate_graphs,
            generator=torch.Generator().manual_seed(1),
        )
    return DataLoader([data[i] for i in idx], batch_size=batch_size, shuffle=shuffle)


def _npnfn_forward(model, batch):
    graphs, y = batch
    out = model(graphs)
    return out, y.view(out.shape).to(out.dtype)


def run_metanet(name, graphs, data, split, scale: Scale, device, progress=False, log=print) -> dict:
    from gmn.train import evaluate, train_regressor

    reason = _check_supported(name, [graphs[i] for i in split["train"] + split["val"] + split["test"]])
    if reason is not None:
        return {"metanet": name, "supported": False, "reason": reason}
    t_start = time.perf_counter()
    make, hidden = sized(name, scale.budget, graphs[split["train"][0]])
    fwd = _npnfn_forward if name == "npnfn" else None
    tr = _loaders(name, data, graphs, split["train"], scale.batch_size, True)
    va = _loaders(name, data, graphs, split["val"], scale.batch_size, False)
    te = _loaders(name, data, graphs, split["test"], scale.batch_size, False)
    search = {}
    for lr in scale.lrs:
        torch.manual_seed(0)
        model = make()
        h = train_regressor(
            model, tr, va, epochs=scale.search_epochs, lr=lr, device=device, progress=progress, forward=fwd, seed=0
        )
        search[lr] = h["best_metric"] if h["best_metric"] is not None else float("nan")
        log(f"  {name}: lr {lr:g} -> val R2 {search[lr]:.3f}")
    finite = {k: v for k, v in search.items() if not math.isnan(v)}
    best_lr = max(finite, key=finite.get) if finite else scale.lrs[0]
    runs = []
    for seed in range(scale.seeds):
        torch.manual_seed(seed)
        model = make()
        train_regressor(
            model, tr, va, epochs=scale.epochs, lr=best_lr, device=device, progress=progress, forward=fwd, seed=seed
        )
        ev_te = evaluate(model, te, device=device, forward=fwd)
        ev_va = evaluate(model, va, device=device, forward=fwd)
        runs.append(
            {
                "seed": seed,
                "test_r2": ev_te["r2"],
                "test_tau": ev_te["tau"],
                "val_r2": ev_va["r2"],
                "val_tau": ev_va["tau"],
                "test_pred": ev_te["pred"].flatten().tolist(),
                "test_true": ev_te["target"].flatten().tolist(),
                "val_pred": ev_va["pred"].flatten().tolist(),
                "val_true": ev_va["target"].flatten().tolist(),
            }
        )
        log(f"  {name}: seed {seed} test R2 {ev_te['r2']:.3f} tau {ev_te['tau']:.3f}")

    def ms(key):
        vals = torch.tensor([r[key] for r in runs], dtype=torch.float64)
        return float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0

    return {
        "metanet": name,
        "supported": True,
        "hidden": hidden,
        "params": _n_params(make()),
        "lr_search": search,
        "best_lr": best_lr,
        "r2": ms("test_r2"),
        "tau": ms("test_tau"),
        "runs": runs,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def format_table(results: dict) -> str:
    lines = [
        f"{'split':<6} {'metanet':<9} {'params':>8} {'test R2 (ours)':>16} {'tau (ours)':>14} "
        f"{'R2 (paper)':>12} {'tau (paper)':>12}"
    ]
    for split, rows in results["splits"].items():
        paper = PAPER_TABLE1.get((results["dataset"], split), {})
        for r in rows:
            p = paper.get(r["metanet"])
            pr = f"{p[0][0]:.3f}±{p[0][1]:.3f}" if p else "—"
            pt = f"{p[1][0]:.3f}±{p[1][1]:.3f}" if p else "—"
            if results["dataset"] in ("small-cnn", "unterthiner") and r["metanet"] in PAPER_TABLE6:
                t6 = PAPER_TABLE6[r["metanet"]]
                pt = f"{t6[0]:.3f}±{t6[1]:.3f}"
            if not r["supported"]:
                lines.append(f"{split:<6} {r['metanet']:<9} {'':>8} {'n/a':>16} {'n/a':>14} {pr:>12} {pt:>12}")
                continue
            lines.append(
                f"{split:<6} {r['metanet']:<9} {r['params']:>8} {r['r2'][0]:>9.3f}±{r['r2'][1]:.3f} "
                f"{r['tau'][0]:>7.3f}±{r['tau'][1]:.3f} {pr:>12} {pt:>12}"
            )
    lines.append(
        "paper: CIFAR-10 zoos of ~30 000 networks (Table 1) or Unterthiner et al.'s small CNNs (Table 6, "
        "tau only); ours: see 'data' and 'n' (digits by default)."
    )
    return "\n".join(lines)


def run_experiment(
    dataset="diverse",
    splits=("50", "5", "ood"),
    scale: Scale | str = "cpu",
    data="digits",
    zoo_dir=None,
    out_dir=None,
    metanets=METANETS,
    device="auto",
    seed=0,
    progress=True,
    log=print,
    unterthiner=None,
) -> dict:
    from gmn.distributed import each_then_wait, init_distributed, main_first
    from gmn.zoo import generate_zoo, load_zoo, make_split

    sc = SCALES[scale] if isinstance(scale, str) else scale
    scale_name = scale if isinstance(scale, str) else "custom"
    ctx = init_distributed(device)  # under torchrun: the process group, this rank's device
    dev = str(ctx.device)
    if not ctx.is_main:  # one log for the whole run
        log, progress = (lambda *a, **k: None), False
    zoo_dir = Path(zoo_dir or f"runs/zoo-{dataset}-{scale_name}")
    out_dir = Path(out_dir or f"runs/accpred-{dataset}-{scale_name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if unterthiner is not None:  # the published small-CNN zoo (Table 6), read from a local directory
        from gmn.zoo.unterthiner import load_unterthiner

        dataset, data = "unterthiner", f"unterthiner:{unterthiner}"
        log(f"[1/3] zoo: Unterthiner et al. small CNNs from {unterthiner} (first {sc.n})")
        records = load_unterthiner(unterthiner, limit=sc.n)
    else:
        log(f"[1/3] zoo: {sc.n} {dataset} networks on {data} in {zoo_dir} (resumable)")
        zoo_args = (zoo_dir, dataset, sc.n, seed, data, sc.zoo_epochs)
        zoo_kw = dict(group_size=32, device=dev, progress=progress, train_subset=sc.train_subset)
        # under torchrun every rank trains its share of the chunks (one writer per shard file), then rank 0
        # rewrites the manifest once all shards exist
        each_then_wait(lambda: generate_zoo(*zoo_args, **zoo_kw, part=(ctx.rank, ctx.world_size)), ctx)
        if ctx.enabled:
            main_first(lambda: generate_zoo(*zoo_args, **dict(zoo_kw, progress=False)), ctx)
        records = load_zoo(zoo_dir)
    t_zoo = time.perf_counter() - t0
    log(f"[2/3] parameter graphs of {len(records)} networks")
    graphs, pyg = _graphs_and_data(records)
    results = {
        "dataset": dataset,
        "data": data,
        "scale": scale_name,
        "n": len(records),
        "device": dev,
        "zoo_seconds": round(t_zoo, 1),
        "splits": {},
    }
    if ctx.enabled:
        results["world_size"] = ctx.world_size
    for split in splits:
        idx = make_split(records, split, seed=seed)
        log(f"[3/3] split {split}: train {len(idx['train'])}, val {len(idx['val'])}, test {len(idx['test'])}")
        rows = []
        for name in metanets:
            rows.append(run_metanet(name, graphs, pyg, idx, sc, dev, progress=False, log=log))
        results["splits"][split] = rows
    results["seconds"] = round(time.perf_counter() - t0, 1)
    from symgraph.cli_util import atomic_write

    if ctx.is_main:
        atomic_write(out_dir / "results.json", json.dumps(results))
        atomic_write(out_dir / "runs.json", json.dumps(_plot_runs(results)))
    return results


def _plot_runs(results: dict) -> dict:
    """The schema of ``python -m figures.plots``: one entry per metanet, split and subset (seed 0)."""
    runs = []
    for split, rows in results["splits"].items():
        for r in rows:
            if r.get("supported") and r["runs"]:
                s0 = r["runs"][0]
                for subset in ("val", "test"):
                    runs.append(
                        {
                            "metanet": r["metanet"],
                            "split": split,
                            "subset": subset,
                            "pred": s0[f"{subset}_pred"],
                            "true": s0[f"{subset}_true"],
                        }
                    )
    return {"dataset": results["dataset"], "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gmn.experiments.accuracy_prediction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--dataset",
        choices=["diverse", "varying-cnn", "small-cnn"],
        default="diverse",
        help="zoo family to generate (small-cnn: the Table 6 architecture on digits)",
    )
    ap.add_argument(
        "--unterthiner",
        metavar="DIR",
        help="use the published small-CNN zoo of Unterthiner et al. in DIR (weights.npy, metrics.csv)",
    )
    ap.add_argument("--split", choices=["50", "5", "ood", "all"], default="all")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--data", default="digits", help="'digits' (bundled) or 'cifar10:/path/to/cifar-10-batches-py'")
    ap.add_argument("--metanets", default=",".join(METANETS), help=f"comma list from {','.join(METANETS)}")
    ap.add_argument(
        "--n",
        "--networks",
        dest="n",
        type=int,
        help="override the scale's number of networks (under torchrun write --networks: torchrun claims --n)",
    )
    ap.add_argument("--seeds", type=int, help="override the scale's number of seeds")
    ap.add_argument("--epochs", type=int, help="override the scale's metanet epochs (final runs)")
    ap.add_argument("--search-epochs", type=int, help="override the scale's epochs per learning-rate trial")
    ap.add_argument("--lrs", help="override the learning-rate grid, e.g. 1e-3,5e-3 (default 1e-4,5e-4,1e-3,5e-3,1e-2)")
    ap.add_argument("--budget", type=int, help="override the target parameter count per metanet")
    ap.add_argument("--zoo", help="zoo directory (default runs/zoo-DATASET-SCALE)")
    ap.add_argument("--out", help="results directory (default runs/accpred-DATASET-SCALE)")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda (under torchrun: cuda:LOCAL_RANK per rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object (no predictions)")
    args = ap.parse_args(argv)
    sc = SCALES[args.scale]
    overrides = {
        k: getattr(args, k) for k in ("n", "seeds", "epochs", "search_epochs", "budget") if getattr(args, k) is not None
    }
    if args.lrs:
        try:
            overrides["lrs"] = tuple(float(x) for x in args.lrs.split(","))
        except ValueError:
            print(f"error: Expected --lrs as comma-separated numbers (got {args.lrs!r})", file=sys.stderr)
            return 2
    sc = replace(sc, **overrides)
    metanets = tuple(m.strip() for m in args.metanets.split(",") if m.strip())
    bad = [m for m in metanets if m not in METANETS]
    if bad:
        print(f"error: unknown metanet(s) {bad} (expected some of {list(METANETS)})", file=sys.stderr)
        return 2
    splits = ("50", "5", "ood") if args.split == "all" else (args.split,)
    log = (lambda *a, **k: None) if args.json else (lambda *a, **k: print(*a, **k, flush=True))
    from gmn.distributed import shutdown

    try:
        return _main(args, sc, overrides, metanets, splits, log)
    finally:
        shutdown()  # under torchrun: leave the process group cleanly


def _main(args, sc, overrides, metanets, splits, log) -> int:
    from gmn.distributed import active_context

    try:
        res = run_experiment(
            args.dataset,
            splits,
            sc if overrides else args.scale,
            args.data,
            args.zoo,
            args.out,
            metanets,
            args.device,
            args.seed,
            progress=not args.json,
            log=log,
            unterthiner=args.unterthiner,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from symgraph.errors import SymgraphError

        if isinstance(exc, SymgraphError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    if not active_context(args.device).is_main:
        return 0
    if args.json:
        slim = json.loads(json.dumps(res))
        for rows in slim["splits"].values():
            for r in rows:
                r.pop("runs", None)
        print(json.dumps(slim))
    else:
        print(format_table(res))
        print(f"total {res['seconds']} s (zoo {res['zoo_seconds']} s) on {res['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
