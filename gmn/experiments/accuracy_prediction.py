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

Every metanet is built by name (:func:`gmn.metanets.build`), reads the same batches
(:class:`gmn.WeightSpaceBatch`) and is trained by :mod:`gmn.engine` (one checkpoint per run under
``--out``/checkpoints: a killed run continues where it stopped; ``--no-resume`` starts afresh); which
metanet takes which zoo is the registry's ``supports`` (:func:`gmn.metanets.unsupported`).

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

Options: the run options of every experiment (``--metanets``, ``--seeds``, ``--device``, ``--out``,
``--resume``, ...), the zoo (:class:`ZooOptions`) and the scale's sizes (:class:`Scale`, each a flag).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from symgraph.cli_util import CLIError, run_cli

from ..engine import seed_everything
from ..metanets import build, names, unsupported
from ..weight_space import weight_space_loader
from .common import check_options, mean_std, option, parse_experiment, running

__all__ = [
    "Scale",
    "ZooOptions",
    "SCALES",
    "METANETS",
    "OPTIONS",
    "PAPER_TABLE1",
    "zoo_data",
    "sized",
    "run_metanet",
    "run_experiment",
    "main",
]

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
    """Sizes of one scale (``SCALES``); every field but ``seeds`` (``--seeds``) is a command-line option."""

    n: int = option(
        300,
        "number of networks in the zoo (under torchrun write --networks: torchrun claims --n)",
        flags=("--n", "--networks"),
    )
    zoo_epochs: int = option(5, "epochs of training of each zoo network")
    train_subset: int | None = option(None, "train the zoo networks on the first N images only")
    epochs: int = option(10, "metanet epochs (final runs)")
    search_epochs: int = option(2, "metanet epochs per learning-rate trial")
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: int = option(25_000, "target trainable parameters per metanet")
    lrs: tuple[float, ...] = option(LRS, "learning-rate grid, e.g. 1e-3,5e-3")
    batch_size: int = option(32, "metanet batch size")

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class ZooOptions:
    """Which zoo the experiment reads, and which protocol (the table's splits or ``--scaling``; not part of a
    scale)."""

    dataset: str = option(
        "diverse",
        "zoo family to generate (small-cnn: the Table 6 architecture on digits)",
        choices=("diverse", "varying-cnn", "small-cnn"),
    )
    unterthiner: str | None = option(
        None, "use the published small-CNN zoo of Unterthiner et al. in DIR (weights.npy, metrics.csv)", metavar="DIR"
    )
    split: str = option("all", "which split (all: 50, 5 and ood)", choices=("50", "5", "ood", "all"))
    data: str = option("digits", "'digits' (bundled) or 'cifar10:/path/to/cifar-10-batches-py'")
    zoo: str | None = option(None, "zoo directory (default runs/zoo-DATASET-SCALE)")
    seed: int = option(0, "seed of the zoo's configurations and of the splits")
    scaling: tuple[int, ...] | None = option(
        None,
        "data-scaling study instead of the table: train every metanet on nested training sets of these sizes "
        "(of the 50% split's training networks; same validation and test sets), e.g. 50,150,450; writes "
        "scaling.json and scaling.png",
        parse=lambda t: parse_sizes(t),
        metavar="SIZES",
    )


SCALES = {
    "smoke": Scale(
        n=40, zoo_epochs=1, train_subset=256, epochs=2, search_epochs=1, seeds=(0, 1), budget=5_000, lrs=(1e-3, 5e-3)
    ),
    # fits about an hour on 2 CPU cores (README: measured wall time); the GMN's cost grows with its width
    "cpu": Scale(n=300, zoo_epochs=5, train_subset=None, epochs=10, search_epochs=2, seeds=(0, 1, 2), budget=25_000),
    "paper": Scale(
        n=30_000, zoo_epochs=30, train_subset=None, epochs=100, search_epochs=30, seeds=(0, 1, 2, 3, 4), budget=750_000
    ),
}

#: The table's metanets (the default ``--metanets``; any registered metanet can be asked for).
METANETS = ("gmn", "deepsets", "dmc", "statnn", "npnfn")
#: Each metanet's settings in this experiment (its width is searched for the budget): the paper's GMN passes
#: messages without a global feature and pools edges; StatNN pools per-tensor statistics (mixed architectures).
OPTIONS: dict[str, dict] = {
    "gmn": dict(num_layers=4, use_global=False, pool=("edge",)),
    "statnn": dict(layout="pool"),
    "npnfn": dict(num_layers=2),
}
#: The fields of a scale that change what one training run computes (its checkpoint's fingerprint).
_RUN_FIELDS = ("n", "zoo_epochs", "train_subset", "budget", "batch_size")


def _n_params(m) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def sized(name: str, budget: int, example):
    """``(make, hidden)``: the metanet whose trainable parameter count is closest to ``budget`` (width searched)."""

    def make_h(h: int):
        return build(name, hidden_dim=h, out_dim=1, example=example, **OPTIONS.get(name, {}))

    best = None
    for h in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        gap = abs(math.log(_n_params(make_h(h)) / budget))
        if best is None or gap < best[0]:
            best = (gap, h)
    return lambda: make_h(best[1]), best[1]


def zoo_data(records) -> list:
    """Each zoo network as :func:`gmn.graph_to_data` of its parameter graph, with its test accuracy as target."""
    import gmn
    import gmn.zoo.unterthiner  # noqa: F401  (registers 'smallcnn')
    import symgraph
    from symgraph.models import build_model

    data = []
    for r in records:
        m = build_model(r["arch"], **r["kwargs"])
        m.load_state_dict(r["state_dict"])
        data.append(gmn.graph_to_data(symgraph.parameter_graph(m), y=float(r["test_acc"])))
    return data


def run_metanet(
    name,
    data,
    split,
    scale: Scale,
    device,
    progress=False,
    log=print,
    checkpoints: Path | None = None,
    resume: bool = True,
    tag: str = "",
    run_info: dict | None = None,
) -> dict:
    """Learning-rate search, then one run per seed, of metanet ``name`` on one split (or its "n/a" reason).

    ``checkpoints``: a folder for one engine checkpoint per run (``{tag}{name}-lr{lr}.pt``,
    ``{tag}{name}-seed{seed}.pt``), so that a killed experiment resumes (``resume``); ``run_info`` (the zoo's
    description) goes into their fingerprints with the scale's sizes.
    """
    from gmn.train import evaluate, train_regressor

    reason = unsupported(name, [data[i] for i in split["train"] + split["val"] + split["test"]])
    if reason is not None:
        return {"metanet": name, "supported": False, "reason": reason}
    t_start = time.perf_counter()
    make, hidden = sized(name, scale.budget, data[split["train"][0]])
    tr = weight_space_loader([data[i] for i in split["train"]], scale.batch_size, shuffle=True)
    va = weight_space_loader([data[i] for i in split["val"]], scale.batch_size)
    te = weight_space_loader([data[i] for i in split["test"]], scale.batch_size)
    fingerprint = {"metanet": name, "hidden": hidden, **(run_info or {}), **{k: getattr(scale, k) for k in _RUN_FIELDS}}

    def train(seed: int, lr: float, epochs: int, file: str):
        seed_everything(seed)
        model = make()
        ckpt = checkpoints / file if checkpoints is not None else None
        h = train_regressor(
            model,
            tr,
            va,
            epochs=epochs,
            lr=lr,
            device=device,
            progress=progress,
            seed=seed,
            checkpoint=ckpt,
            resume=resume,
            fingerprint={**fingerprint, "seed": seed, "lr": lr},
        )
        return model, h

    search = {}
    for lr in scale.lrs:
        _, h = train(0, lr, scale.search_epochs, f"{tag}{name}-lr{lr:g}.pt")
        search[lr] = h["best_metric"] if h["best_metric"] is not None else float("nan")
        log(f"  {name}: lr {lr:g} -> val R2 {search[lr]:.3f}")
    finite = {k: v for k, v in search.items() if not math.isnan(v)}
    best_lr = max(finite, key=finite.get) if finite else scale.lrs[0]
    runs = []
    for seed in scale.seeds:
        model, _ = train(seed, best_lr, scale.epochs, f"{tag}{name}-seed{seed}.pt")
        ev_te = evaluate(model, te, device=device)
        ev_va = evaluate(model, va, device=device)
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
    return {
        "metanet": name,
        "supported": True,
        "hidden": hidden,
        "params": _n_params(make()),
        "lr_search": search,
        "best_lr": best_lr,
        "r2": mean_std([r["test_r2"] for r in runs]),
        "tau": mean_std([r["test_tau"] for r in runs]),
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


@dataclass
class _Zoo:
    """A loaded zoo and the run's context (what :func:`run_experiment` and :func:`run_scaling` share)."""

    scale: Scale
    scale_name: str
    ctx: object
    device: str
    log: object
    out_dir: Path
    t0: float
    dataset: str
    data: str
    records: list
    pyg: list
    zoo_seconds: float


def _prepare(dataset, scale, data, zoo_dir, out_dir, device, seed, progress, log, unterthiner, prefix) -> _Zoo:
    """The zoo (generated if needed, resumable; or Unterthiner et al.'s), its parameter graphs, the context."""
    from gmn.distributed import each_then_wait, init_distributed, main_first
    from gmn.zoo import generate_zoo, load_zoo

    sc = SCALES[scale] if isinstance(scale, str) else scale
    scale_name = scale if isinstance(scale, str) else "custom"
    ctx = init_distributed(device)  # under torchrun: the process group, this rank's device
    dev = str(ctx.device)
    if not ctx.is_main:  # one log for the whole run
        log, progress = (lambda *a, **k: None), False
    zoo_dir = Path(zoo_dir or f"runs/zoo-{dataset}-{scale_name}")
    out_dir = Path(out_dir or f"runs/{prefix}-{dataset}-{scale_name}")
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
    pyg = zoo_data(records)
    return _Zoo(sc, scale_name, ctx, dev, log, out_dir, t0, dataset, data, records, pyg, t_zoo)


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
    resume: bool = True,
) -> dict:
    """The whole pipeline (module docstring); ``results.json`` and ``runs.json`` under ``out_dir``."""
    from gmn.zoo import make_split

    z = _prepare(dataset, scale, data, zoo_dir, out_dir, device, seed, progress, log, unterthiner, "accpred")
    sc, ctx, dev, log, out_dir, t0 = z.scale, z.ctx, z.device, z.log, z.out_dir, z.t0
    dataset, data, records, pyg, t_zoo = z.dataset, z.data, z.records, z.pyg, z.zoo_seconds
    scale_name = z.scale_name
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
    checkpoints = out_dir / "checkpoints"
    for split in splits:
        idx = make_split(records, split, seed=seed)
        log(f"[3/3] split {split}: train {len(idx['train'])}, val {len(idx['val'])}, test {len(idx['test'])}")
        rows = []
        for name in metanets:
            rows.append(
                run_metanet(
                    name,
                    pyg,
                    idx,
                    sc,
                    dev,
                    progress=False,
                    log=log,
                    checkpoints=checkpoints,
                    resume=resume,
                    tag=f"{dataset}-{split}-",
                    run_info={"dataset": dataset, "data": data, "zoo_seed": seed, "split": split},
                )
            )
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


def parse_sizes(text: str) -> tuple[int, ...]:
    """``--scaling``: training-set sizes, distinct positive integers such as ``50,150,450`` (sorted).

    >>> parse_sizes("150, 50,450")
    (50, 150, 450)
    """
    try:
        sizes = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(k <= 0 for k in sizes) or len(set(sizes)) != len(sizes):
        raise CLIError(
            f"--scaling: Expected distinct positive integers (numbers of training networks), e.g. 50,150,450 "
            f"(got {text!r})"
        )
    return tuple(sorted(sizes))


def scaling_split(records, sizes, seed: int = 0) -> dict:
    """The data-scaling protocol: the 50% split's validation and test sets, and for each size ``k`` the first
    ``k`` networks of one seeded permutation of its training set, so that every smaller training set is
    contained in every larger one. ``{"val", "test", "pool", "train": {k: indices}}``; ``ValueError`` if a size
    exceeds the training networks available.
    """
    import torch

    from gmn.zoo import make_split

    base = make_split(records, "50", seed=seed)
    pool = base["train"]
    too_big = [k for k in sizes if k > len(pool)]
    if too_big:
        raise ValueError(
            f"--scaling: Expected sizes of at most {len(pool)}, the training networks of this zoo's 50% split "
            f"({len(records)} networks; a larger zoo: --n) (got {','.join(map(str, too_big))})"
        )
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    order = [pool[j] for j in torch.randperm(len(pool), generator=gen).tolist()]
    train = {int(k): sorted(order[:k]) for k in sizes}
    return {"val": base["val"], "test": base["test"], "pool": len(pool), "train": train}


def run_scaling(
    sizes,
    dataset="diverse",
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
    resume: bool = True,
    command: str | None = None,
) -> dict:
    """The data-scaling study: every metanet (:func:`run_metanet`, the experiment's protocol: learning-rate
    search, then the scale's seeds) on nested training sets of ``sizes`` networks (:func:`scaling_split`),
    with the same validation and test sets. Writes ``scaling.json`` and ``scaling.png`` (test R^2 and tau
    against the number of training networks, mean ± std over seeds) under ``out_dir``, atomically.
    """
    sizes = tuple(sorted(int(k) for k in sizes))
    z = _prepare(dataset, scale, data, zoo_dir, out_dir, device, seed, progress, log, unterthiner, "accpred-scaling")
    split = scaling_split(z.records, sizes, seed=seed)
    log(
        f"[3/3] scaling: train sizes {','.join(map(str, sizes))} (nested, of {split['pool']}), "
        f"val {len(split['val'])}, test {len(split['test'])}"
    )
    res = {
        "dataset": z.dataset,
        "data": z.data,
        "scale": z.scale_name,
        "n": len(z.records),
        "device": z.device,
        "command": command,
        "settings": {k: getattr(z.scale, k) for k in ("epochs", "search_epochs", "seeds", "budget", "lrs")},
        "sizes": list(sizes),
        "pool": split["pool"],
        "val": split["val"],
        "test": split["test"],
        "train": {str(k): v for k, v in split["train"].items()},
        "zoo_seconds": round(z.zoo_seconds, 1),
        "rows": {},
    }
    for k in sizes:
        idx = {"train": split["train"][k], "val": split["val"], "test": split["test"]}
        rows = []
        for name in metanets:
            r = run_metanet(
                name,
                z.pyg,
                idx,
                z.scale,
                z.device,
                progress=False,
                log=lambda msg, k=k: z.log(f"[size {k}] {msg.strip()}"),
                checkpoints=z.out_dir / "checkpoints",
                resume=resume,
                tag=f"{z.dataset}-scaling{k}-",
                run_info={"dataset": z.dataset, "data": z.data, "zoo_seed": seed, "split": f"scaling{k}"},
            )
            rows.append({key: v for key, v in r.items() if key != "runs"} | _seed_scores(r))
            if r["supported"]:
                z.log(
                    f"[size {k}] {name}: R2 {r['r2'][0]:.3f}±{r['r2'][1]:.3f} "
                    f"tau {r['tau'][0]:.3f}±{r['tau'][1]:.3f} ({r['seconds']} s)"
                )
        res["rows"][str(k)] = rows
        res["seconds"] = round(time.perf_counter() - z.t0, 1)
        if z.ctx.is_main:  # after every size: a killed study keeps what it finished
            _write_scaling(res, z.out_dir)
    res["seconds"] = round(time.perf_counter() - z.t0, 1)
    if z.ctx.is_main:
        _write_scaling(res, z.out_dir)
    return res


def _seed_scores(r: dict) -> dict:
    if not r.get("supported"):
        return {}
    return {
        "seeds": [x["seed"] for x in r["runs"]],
        "test_r2": [x["test_r2"] for x in r["runs"]],
        "test_tau": [x["test_tau"] for x in r["runs"]],
    }


def format_scaling(res: dict) -> str:
    """The study as a table: one line per (size, metanet) with test R^2 and tau (mean ± std) and seconds."""
    lines = [f"{'train':>6} {'metanet':<9} {'params':>8} {'test R2':>15} {'tau':>15} {'seconds':>8}"]
    for k, rows in res["rows"].items():
        for r in rows:
            if not r["supported"]:
                lines.append(f"{k:>6} {r['metanet']:<9} {'':>8} {'n/a':>15} {'n/a':>15}")
                continue
            lines.append(
                f"{k:>6} {r['metanet']:<9} {r['params']:>8} {r['r2'][0]:>8.3f}±{r['r2'][1]:.3f} "
                f"{r['tau'][0]:>8.3f}±{r['tau'][1]:.3f} {r['seconds']:>8}"
            )
    return "\n".join(lines)


def _write_scaling(res: dict, out_dir: Path) -> None:
    """``scaling.json`` and ``scaling.png`` (two panels: test R^2 and tau against training networks, log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from symgraph.cli_util import atomic_open, atomic_write

    res = dict(res, table=format_scaling(res))
    atomic_write(out_dir / "scaling.json", json.dumps(res, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names_seen = [r["metanet"] for rows in res["rows"].values() for r in rows if r["supported"]]
    for name in dict.fromkeys(names_seen):
        pts = [(int(k), r) for k, rows in res["rows"].items() for r in rows if r["metanet"] == name and r["supported"]]
        xs = [k for k, _ in pts]
        for ax, key in zip(axes, ("r2", "tau")):
            ax.errorbar(
                xs, [r[key][0] for _, r in pts], yerr=[r[key][1] for _, r in pts], marker="o", capsize=3, label=name
            )
    for ax, label in zip(axes, ("test $R^2$", "test Kendall $\\tau$")):
        ax.set_xscale("log")
        ax.set_xticks(res["sizes"], [str(k) for k in res["sizes"]])
        ax.minorticks_off()
        ax.set_xlabel("training networks")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    seeds = len(res["settings"]["seeds"])
    fig.suptitle(
        f"accuracy prediction, {res['dataset']} zoo on {res['data']} ({res['n']} networks; "
        f"val {len(res['val'])}, test {len(res['test'])}); mean ± std over {seeds} seeds"
    )
    fig.tight_layout()
    with atomic_open(out_dir / "scaling.png", "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    from gmn.distributed import shutdown

    try:
        return run_cli(_main, argv)
    finally:
        shutdown()  # under torchrun: leave the process group cleanly


def _main(argv: list[str]) -> int:
    from gmn.distributed import active_context

    ex = parse_experiment(
        argv,
        "python -m gmn.experiments.accuracy_prediction",
        __doc__,
        config=Scale,
        source=ZooOptions,
        scales=SCALES,
        metanets=names(),
        default_metanets=METANETS,
        seeds=None,
        out="",
        epilog="--out defaults to runs/accpred-DATASET-SCALE; --seeds to the scale's",
    )
    run, zoo, sc = ex.run, ex.source, ex.config
    if run.seeds is not None:
        sc = replace(sc, seeds=run.seeds)
    splits = ("50", "5", "ood") if zoo.split == "all" else (zoo.split,)
    log = (lambda *a, **k: None) if run.json else (lambda *a, **k: print(*a, **k, flush=True))
    if zoo.scaling is not None:
        return _scaling_cli(argv, ex, sc, log)
    with running(run):
        res = run_experiment(
            zoo.dataset,
            splits,
            sc if sc != SCALES[ex.scale] else ex.scale,
            zoo.data,
            zoo.zoo,
            run.out or None,
            run.metanets,
            run.device,
            zoo.seed,
            progress=run.progress and not run.json,
            log=log,
            unterthiner=zoo.unterthiner,
            resume=run.resume,
        )
    if not active_context(run.device).is_main:
        return 0
    if run.json:
        slim = json.loads(json.dumps(res))
        for rows in slim["splits"].values():
            for r in rows:
                r.pop("runs", None)
        print(json.dumps(slim))
    else:
        print(format_table(res))
        print(f"total {res['seconds']} s (zoo {res['zoo_seconds']} s) on {res['device']}")
    return 0


def _scaling_cli(argv, ex, sc: Scale, log) -> int:
    """``--scaling SIZES``: the data-scaling study (:func:`run_scaling`); sizes checked before the zoo is made."""
    import shlex

    from gmn.distributed import active_context

    run, zoo = ex.run, ex.source
    if zoo.split not in ("all", "50"):
        raise CLIError(f"--scaling: Expected no --split (the study uses the 50% split's sets) (got {zoo.split!r})")
    command = "python -m gmn.experiments.accuracy_prediction " + shlex.join(argv)
    with running(run):
        if zoo.unterthiner is None:  # the zoo's size is known before it is made: refuse too-large sizes now
            scaling_split([{}] * sc.n, zoo.scaling, seed=zoo.seed)
        res = run_scaling(
            zoo.scaling,
            zoo.dataset,
            sc if sc != SCALES[ex.scale] else ex.scale,
            zoo.data,
            zoo.zoo,
            run.out or None,
            run.metanets,
            run.device,
            zoo.seed,
            progress=run.progress and not run.json,
            log=log,
            unterthiner=zoo.unterthiner,
            resume=run.resume,
            command=command,
        )
    if not active_context(run.device).is_main:
        return 0
    if run.json:
        print(json.dumps(res))
    else:
        print(format_scaling(res))
        print(f"total {res['seconds']} s (zoo {res['zoo_seconds']} s) on {res['device']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
