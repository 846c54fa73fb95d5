"""Self-supervised learning on sine-wave INRs (paper Sec. 4.3, E.3, Table 3).

Encoders are trained with a SimCLR-style NT-Xent objective on two views of each INR's weights. Augmentation
(the CPU default follows Navon et al.'s code, which the paper's E.3 says it follows): the first view is the
clean INR (``clean_view``), the second has each weight zeroed with probability ``mask_prob`` = 0.5 and the
kept ones scaled by 2 (``mask_rescale``, i.e. dropout), then Gaussian noise of std ``noise_std`` = 0.1; both
in units of each parameter tensor's train-set standard deviation, seeded per epoch. ``--sign-flip`` adds
random sign flips of hidden neurons, an exact symmetry of sine networks (ours, not the paper's protocol).

The representation the linear probe reads (``readout``):

- ``"pooled"`` (default): what the encoder pools before its invariant head. For the GMN that is the mean
  of its final edge features, Sec. 4.3's "edge representations, which are then mean-pooled", taken per
  parameter tensor (``gmn_pool=("param",)``: six means of width 32 for a 1-32-32-1 SIREN, concatenated);
  for NP-NFN its per-layer means and for DWSNet its per-block means (the same rule for every encoder that
  has such a representation). StatNN and the MLP have none and use their head output.
- ``"head"``: every encoder's head output (width ``embed_dim``), the previous default.

The projection head for NT-Xent (BatchNorm, Linear, ReLU, Linear) sits on top of the representation. The
probe is least squares from the representation to (a, b), fitted on the train split; test MSE averaged over
a and b (also per target). Each encoder is trained with several seeds; mean ± std is printed beside Table 3.

Controls, reported in the same table: each run's *untrained* encoder (the same seed's initialisation, same
probe; what the contrastive training adds is the difference), and two reference rows that involve no
learning: the probe on the flat normalised weights (ridge-regularised) and on StatNN's per-tensor statistics.

Model selection (``--select val``, the default): after every epoch the probe is fitted on the train embeddings
and scored on the validation split; the epoch with the lowest validation MSE is the one reported (its epoch
is in ``selected_epoch``, the curve in ``val_history``). The test split is only used for the final number.
``--select last`` reports the final epoch.

Data: the INRs must come from ``python -m gmn.inr.sine_dataset`` with its defaults (Navon et al.'s
initialisation and fitting schedule). With Sitzmann's first-layer init (``--init siren``) ``b`` is hardly
linearly recoverable from the weights and every encoder we tried plateaued at a probe MSE of ~4 (b alone
~7; chance 8.3); :func:`load_data` prints a note for such data or for another schedule.

Scales
    ``cpu`` (default): GMN hidden 32, 2 layers (43k parameters, a 192-wide representation); DWSNet hidden 16,
    4 layers (Navon et al.'s SSL size); NP-NFN/StatNN hidden 32, 3 layers; MLP hidden 256; head output 32;
    10 epochs of batch 64 (310 steps on 2000 train INRs). Timings in the README.
    ``paper``: GMN hidden 46, 3 layers (98k parameters: E.3 sizes its GMN to about 100k; width 76 would be
    236k with our layers), 100 epochs, batch 256 (meant for a GPU).

Resumable: each (encoder, seed) run checkpoints every epoch under ``--out``; finished runs are kept in
``results.json`` (written atomically) and skipped when the command is repeated.

CLI::

    python -m gmn.inr.sine_dataset --out runs/sine_inrs_navon              # 2000/1000/1000 INRs
    python -m gmn.experiments.ssl_sine [--data runs/sine_inrs_navon] [--out runs/ssl_sine] [--scale cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

import symgraph
from symgraph.cli_util import (
    CLIError,
    OneLineArgumentParser,
    add_device_argument,
    resolve_device,
    run_cli,
    torch_threads,
)
from symgraph.models.siren import SIREN

from ..baselines.statnn import tensor_statistics
from ..inr.augment import WeightAugment
from ..inr.encoders import ENCODERS, POOLED_READOUT, READOUTS, available_encoders, build_encoder
from ..inr.io import atomic_torch_save, atomic_write_json, load_checked
from ..inr.ntxent import nt_xent
from ..inr.probe import linear_probe_mse
from ..inr.sine_dataset import SINE_ARCH, SINE_FIT, load_split
from .common import comma_list, int_list, print_result, with_overrides

__all__ = ["SSLConfig", "SCALES", "PAPER_TABLE3", "run_one", "run", "main", "tensor_statistics_features"]

#: Paper Table 3 (test MSE of a linear probe to (a, b); numbers besides GMN are from Navon et al., 2023).
PAPER_TABLE3: dict[str, str] = {
    "MLP": "7.39 ± .19",
    "MLP + Perm. aug": "5.65 ± .01",
    "MLP + Alignment": "4.47 ± .15",
    "INR2Vec (Arch.)": "3.86 ± .32",
    "Transformer": "5.11 ± .12",
    "DWSNets": "1.39 ± .06",
    "GMN (ours)": "1.13 ± .08",
}
_PAPER_ROW = {"gmn": "GMN (ours)", "mlp": "MLP", "dws": "DWSNets"}
_LABEL = {
    "gmn": "GMN",
    "mlp": "MLP",
    "npnfn": "NP-NFN",
    "statnn": "StatNN",
    "deepsets": "DeepSets",
    "dws": "DWSNets (ours, DWSNet)",
}
#: Reference rows (no learning): the probe on these features of the normalised weights.
_REFERENCE = {
    "raw_weights": "raw weights, ridge probe (no learning)",
    "statistics": "StatNN's per-tensor statistics, probe (no learning)",
}
#: Default ``--data``: INRs generated with ``--init navon`` (see :mod:`gmn.inr.sine_dataset`).
DEFAULT_DATA = "runs/sine_inrs_navon"


@dataclass(frozen=True)
class SSLConfig:
    """Hyper-parameters of one scale (``hidden``/``layers`` per encoder kind)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.1
    #: augmentation (Navon et al.'s code: the first view clean, the second with dropout 0.5 of the weights;
    #: Gaussian noise as the paper's E.3 says): noise std and mask probability in units of each tensor's
    #: train-set std; ``mask_rescale`` scales the kept weights by 1 / (1 - mask_prob) as dropout does
    noise_std: float = 0.1
    mask_prob: float = 0.5
    mask_rescale: bool = True
    clean_view: bool = True
    embed_dim: int = 32
    proj_dim: int = 32
    gmn_hidden: int = 32
    gmn_layers: int = 2
    #: what the GMN mean-pools: "param" = the edges of each parameter tensor separately (see
    #: :class:`gmn.GMN`); ("edge",) is one mean over all edges
    gmn_pool: tuple[str, ...] = ("param",)
    #: what the probe (and the projection head) reads: "pooled", the pooled representation for the encoders
    #: that have one (GMN, NP-NFN, DWSNet; see :func:`gmn.inr.encoders.build_encoder`) and the head output for
    #: the others; "head", every encoder's head output of width ``embed_dim``
    readout: str = "pooled"
    baseline_hidden: int = 32
    baseline_layers: int = 3
    mlp_hidden: int = 256
    mlp_layers: int = 3
    dws_hidden: int = 16
    dws_layers: int = 4
    #: "val": after every epoch fit the probe on train embeddings, score it on the validation split, and
    #: report the epoch with the lowest validation MSE (model selection on val; the test split is never
    #: looked at); "last": report the final epoch.
    select: str = "val"
    #: also flip the signs of random hidden neurons in every view (:func:`gmn.inr.augment.sign_flip`; exact
    #: for SIREN's sine). Not in the paper's protocol (noise and masking only): an option, off by default.
    sign_flip: bool = False


SCALES: dict[str, SSLConfig] = {
    "cpu": SSLConfig(),
    "paper": SSLConfig(
        epochs=100,
        batch_size=256,
        embed_dim=76,
        proj_dim=76,
        # E.3 sizes the GMN to about 100k parameters (their 3 layers of width 76); with our layers' update MLPs
        # and the pooled readout, width 46 gives that count (98k; width 76 would be 236k)
        gmn_hidden=46,
        gmn_layers=3,
        baseline_hidden=128,
        mlp_hidden=512,
        mlp_layers=4,
    ),
}


def _normaliser(params: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per-parameter-tensor mean and std over a split (scalars: invariant to every neuron permutation)."""
    return {k: (float(v.mean()), float(v.std().clamp_min(1e-8))) for k, v in params.items()}


def _normalise(params: dict[str, torch.Tensor], stats: dict[str, tuple[float, float]]) -> dict[str, torch.Tensor]:
    return {k: (v - stats[k][0]) / stats[k][1] for k, v in params.items()}


def _take(params: dict[str, torch.Tensor], idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in params.items()}


def _sizes(kind: str, cfg: SSLConfig) -> tuple[int, int]:
    if kind == "gmn":
        return cfg.gmn_hidden, cfg.gmn_layers
    if kind == "mlp":
        return cfg.mlp_hidden, cfg.mlp_layers
    if kind == "dws":
        return cfg.dws_hidden, cfg.dws_layers
    return cfg.baseline_hidden, cfg.baseline_layers


@torch.no_grad()
def embed(encoder: nn.Module, params: dict[str, torch.Tensor], device: torch.device, batch_size: int = 128):
    """Embeddings ``[n, D]`` of all networks in ``params`` (eval mode, no augmentation)."""
    encoder.eval()
    n = next(iter(params.values())).shape[0]
    out = [
        encoder(_take(params, torch.arange(i, min(i + batch_size, n)), device)).cpu() for i in range(0, n, batch_size)
    ]
    return torch.cat(out)


def run_one(
    kind: str, seed: int, data: dict, cfg: SSLConfig, out: Path, device: torch.device, progress: bool = True
) -> dict:
    """Train one encoder with one seed (resuming from its checkpoint) and probe it; returns its metrics."""
    graph = data["graph"]
    hidden, layers = _sizes(kind, cfg)
    torch.manual_seed(seed)
    readout = cfg.readout if kind in POOLED_READOUT else "head"
    encoder = build_encoder(
        kind, graph, cfg.embed_dim, hidden, layers, device=device, pool=cfg.gmn_pool, readout=readout
    )
    # BatchNorm first: a fresh GMN's mean-pooled embeddings of different INRs agree to ~1e-4 (cosine ~0.9999;
    # the pooled structure term dominates), which leaves NT-Xent at chance for many steps; standardising
    # across the batch removes the shared part. Used for every encoder; the probe sees the encoder output.
    d = encoder.out_dim
    head = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.proj_dim))
    head = head.to(device)
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / f"ckpt_{kind}_seed{seed}.pt"
    start, history, seconds = 0, [], 0.0
    val_history: list[float] = []
    best: dict | None = None  # {"epoch", "val_mse", "encoder"}: the selected epoch so far (select="val")
    init: dict = {}  # the untrained encoder's probe: the control for what the contrastive training adds
    if ckpt.exists():
        state = load_checked(ckpt, "delete it to restart", map_location=device)
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start, history, seconds = state["epoch"], list(state["history"]), float(state["seconds"])
        val_history, best = list(state.get("val_history", [])), state.get("best")
        init = dict(state.get("init", {}))
    if not init:
        z0 = {split: embed(encoder, data[split], device) for split in ("train", "val", "test")}
        init = {f"init_{k}": v for k, v in _probe(z0, data).items()}
    flips: dict = {}
    if cfg.sign_flip:
        n_layers = sum(1 for k in data["train"] if k.endswith(".weight"))
        flips = {
            "flip_layers": tuple((f"layers.{i}.weight", f"layers.{i}.bias") for i in range(n_layers)),
            "flip_zero": tuple((k, -m / sd) for k, (m, sd) in data["stats"].items()),
        }
    aug = WeightAugment(cfg.noise_std, cfg.mask_prob, cfg.mask_rescale, **flips)
    train = data["train"]
    n = next(iter(train.values())).shape[0]
    steps = max(n // cfg.batch_size, 1)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        encoder.train()
        head.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
        total = 0.0
        bar = tqdm(range(steps), desc=f"{kind} s{seed} e{epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            p = {k: v[idx] for k, v in train.items()}
            v1 = {k: t.to(device) for k, t in (p if cfg.clean_view else aug(p, g)).items()}
            v2 = {k: t.to(device) for k, t in aug(p, g).items()}
            loss = nt_xent(head(encoder(v1)), head(encoder(v2)), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append(total / steps)
        if cfg.select == "val":
            z_train, z_val = embed(encoder, data["train"], device), embed(encoder, data["val"], device)
            val = linear_probe_mse(z_train, data["y_train"], z_val, data["y_val"])
            val_history.append(val)
            if best is None or val < best["val_mse"]:
                state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
                best = {"epoch": epoch + 1, "val_mse": val, "encoder": state}
        seconds += time.time() - t0
        atomic_torch_save(
            {
                "encoder": encoder.state_dict(),
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "val_history": val_history,
                "best": best,
                "seconds": seconds,
                "init": init,
            },
            ckpt,
        )
    if best is not None:
        encoder.load_state_dict(best["encoder"])
    z = {split: embed(encoder, data[split], device) for split in ("train", "val", "test")}
    out = {
        "encoder": kind,
        "seed": seed,
        "epochs": cfg.epochs,
        "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in encoder.parameters()),
        "readout": readout,
        "embed_width": d,
        "loss_history": [round(x, 4) for x in history],
        **init,
    }
    if best is not None:
        out["selected_epoch"] = best["epoch"]
        out["val_history"] = [round(x, 4) for x in val_history]
    return {**out, **_probe(z, data)}


def _probe(z: dict[str, torch.Tensor], data: dict, ridge: float = 1e-6) -> dict:
    """Linear-probe MSEs (fitted on train): val, test, and test per target (a, b)."""
    out = {
        "val_mse": linear_probe_mse(z["train"], data["y_train"], z["val"], data["y_val"], ridge),
        "test_mse": linear_probe_mse(z["train"], data["y_train"], z["test"], data["y_test"], ridge),
    }
    for j, name in enumerate("ab"):
        y_tr, y_te = data["y_train"][:, j : j + 1], data["y_test"][:, j : j + 1]
        out[f"test_mse_{name}"] = linear_probe_mse(z["train"], y_tr, z["test"], y_te, ridge)
    return out


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(v.shape[0], -1) for v in params.values()], 1)


def tensor_statistics_features(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """StatNN's statistics of every parameter tensor (mean, variance, 0/25/50/75/100 % quantiles), ``[B, 7T]``.

    :func:`gmn.baselines.statnn.tensor_statistics` with one segment per network and tensor; tensors with one
    entry contribute only their value (the other six statistics are constant).

    >>> p = {"w": torch.tensor([[1.0, 2.0, 3.0]]), "b": torch.tensor([[5.0]])}
    >>> [round(x, 4) for x in tensor_statistics_features(p)[0].tolist()]
    [2.0, 0.6667, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0]
    """
    cols = []
    for v in params.values():
        f = v.reshape(v.shape[0], -1)
        if f.shape[1] == 1:
            cols.append(f)
            continue
        segment = torch.arange(f.shape[0], device=f.device).repeat_interleave(f.shape[1])
        cols.append(tensor_statistics(f.reshape(-1), segment, f.shape[0])[0])
    return torch.cat(cols, 1)


def load_data(
    root: str | Path, n_train: int | None = None, n_val: int | None = None, n_test: int | None = None
) -> dict:
    """Normalised train/val/test parameters, (a, b) targets and the SIREN's parameter graph.

    ``n_*`` keep the first INRs of a split (all when ``None``).
    """
    out: dict = {}
    man = Path(root) / "manifest.json"
    manifest = json.loads(man.read_text()) if man.exists() else {}
    init = manifest.get("init", "siren") if man.exists() else "unknown"
    if init != "navon":
        print(
            f"note: {root} holds INRs with init {init!r}, not 'navon' (Navon et al.'s, which Table 3 uses); "
            "with 'siren' every encoder's probe MSE plateaus near 4",
            file=sys.stderr,
        )
    elif manifest.get("fit") != json.loads(json.dumps(asdict(SINE_FIT))) or "init_spec" not in manifest:
        print(
            f"note: {root} holds INRs fitted with another schedule or an older 'navon' init than "
            "gmn.inr.sine_dataset's default (Navon et al.'s); results are not comparable with the README's",
            file=sys.stderr,
        )
    limits = {"train": n_train, "val": n_val, "test": n_test}
    raw = {s: load_split(root, s, limit=limits[s]) for s in ("train", "val", "test")}
    stats = _normaliser(raw["train"][0])
    out["stats"] = stats
    for s, (params, a, b, _) in raw.items():
        out[s] = _normalise(params, stats)
        out[f"y_{s}"] = torch.stack([a, b], 1)
    out["graph"] = symgraph.parameter_graph(
        SIREN(SINE_ARCH["in_dim"], SINE_ARCH["hidden"], SINE_ARCH["out_dim"], SINE_ARCH["omega0"])
    )
    out["sizes"] = {s: int(out[f"y_{s}"].shape[0]) for s in ("train", "val", "test")}
    out["init"] = init
    return out


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def table(results: dict) -> str:
    """Markdown table: our test MSE (mean ± std over seeds) beside the paper's Table 3.

    "epochs" lists each seed's reported epoch (chosen on the validation probe with ``select="val"``).
    """
    lines = [
        "| Metanetwork | ours: test MSE | MSE on a | MSE on b | untrained encoder | seeds | epochs | paper Table 3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in [*ENCODERS, *_REFERENCE]:
        runs = [r for r in results["runs"].values() if r["encoder"] == kind]
        if not runs:
            continue
        label = _LABEL.get(kind) or _REFERENCE[kind]
        paper = PAPER_TABLE3.get(_PAPER_ROW.get(kind, ""), "—")
        keys = ("test_mse", "test_mse_a", "test_mse_b", "init_test_mse")
        cols = [_mean_std([r[k] for r in runs if k in r]) for k in keys]
        epochs = (
            ", ".join(str(r.get("selected_epoch", r.get("epochs", "—"))) for r in runs) if kind in ENCODERS else "—"
        )
        lines.append(f"| {label} | {' | '.join(cols)} | {len(runs)} | {epochs} | {paper} |")
    shown = {_PAPER_ROW[r["encoder"]] for r in results["runs"].values() if r["encoder"] in _PAPER_ROW}
    for name, val in PAPER_TABLE3.items():
        if name not in shown:
            lines.append(f"| {name} | — | — | — | — | — | — | {val} |")
    return "\n".join(lines)


def run(
    data_dir: str | Path,
    out: str | Path,
    encoders: list[str],
    seeds: list[int],
    cfg: SSLConfig,
    device: torch.device,
    n_train: int | None = None,
    progress: bool = True,
    n_val: int | None = None,
    n_test: int | None = None,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(data_dir, n_train, n_val, n_test)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}
    config = json.loads(json.dumps(asdict(cfg)))  # as stored (tuples become lists)
    if results.get("config") not in (None, config) or results.get("sizes") not in (None, data["sizes"]):
        raise ValueError(f"Expected {res_path} from the same configuration and data (got another): use a new --out")
    results.update(config=config, sizes=data["sizes"], data=str(data_dir), device=str(device))
    # reference rows that involve no learning: the probe on the flat weights, and on StatNN's statistics
    for ref, features, ridge in (("raw_weights", _flat, 1e-2), ("statistics", tensor_statistics_features, 1e-6)):
        if ref not in results["runs"]:
            z = {s: features(data[s]) for s in ("train", "val", "test")}
            results["runs"][ref] = {"encoder": ref, "seed": 0, **_probe(z, data, ridge)}
    for kind in encoders:
        for seed in seeds:
            key = f"{kind}/seed{seed}"
            if key in results["runs"]:
                continue
            results["runs"][key] = run_one(kind, seed, data, cfg, out, device, progress)
            results["table"] = table(results)
            atomic_write_json(res_path, results)
    results["table"] = table(results)
    atomic_write_json(res_path, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(prog="python -m gmn.experiments.ssl_sine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder written by gmn.inr.sine_dataset")
    ap.add_argument("--out", default="runs/ssl_sine", help="checkpoints and results.json")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument(
        "--encoders",
        default="gmn,dws,npnfn,statnn,mlp",
        help=f"comma-separated subset of {','.join(ENCODERS)} (missing baselines are skipped)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: %(default)s)")
    ap.add_argument("--epochs", type=int, help="override the scale's epochs")
    ap.add_argument("--batch-size", type=int, help="override the scale's batch size")
    ap.add_argument(
        "--sign-flip",
        action="store_true",
        default=None,
        help="add random sign flips of hidden neurons to both views (exact symmetry of sine networks; not in "
        "the paper's protocol)",
    )
    ap.add_argument(
        "--select",
        choices=("val", "last"),
        help="report the epoch with the best validation probe MSE (val, the default) or the last epoch",
    )
    ap.add_argument(
        "--readout",
        choices=READOUTS,
        help="what the probe reads: each encoder's head output (head) or, for GMN/NP-NFN/DWSNet, the pooled "
        "representation the head reads (pooled)",
    )
    ap.add_argument(
        "--gmn-pool",
        help="what the GMN mean-pools, comma-separated from edge,node,param (param: the edges of each "
        "parameter tensor separately)",
    )
    ap.add_argument("--mask-prob", type=float, help="probability of zeroing each weight in an augmented view")
    ap.add_argument("--noise-std", type=float, help="Gaussian noise std (units of each tensor's train std)")
    ap.add_argument(
        "--mask-rescale",
        action=argparse.BooleanOptionalAction,
        help="scale the kept weights by 1/(1 - mask prob), as dropout",
    )
    ap.add_argument(
        "--clean-view",
        action=argparse.BooleanOptionalAction,
        help="leave the first of the two views unaugmented (as Navon et al.'s code)",
    )
    ap.add_argument("--n-train", type=int, help="use only the first N train INRs")
    ap.add_argument("--n-val", type=int, help="use only the first N val INRs")
    ap.add_argument("--n-test", type=int, help="use only the first N test INRs")
    add_device_argument(ap)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--json", action="store_true", help="print results as one JSON object")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    seeds = int_list(args.seeds, "--seeds")
    wanted = comma_list(args.encoders, ENCODERS, "--encoders")
    avail = available_encoders()
    skipped = [e for e in wanted if e not in avail]
    if skipped:
        print(f"note: skipping encoders not available yet: {skipped}", file=sys.stderr)
    pool = tuple(comma_list(args.gmn_pool, ("edge", "node", "param"), "--gmn-pool")) if args.gmn_pool else None
    if args.mask_prob is not None and not 0 <= args.mask_prob < 1:
        raise CLIError(f"--mask-prob: Expected a value in [0, 1) (got {args.mask_prob})")
    if args.noise_std is not None and not args.noise_std >= 0:
        raise CLIError(f"--noise-std: Expected a value >= 0 (got {args.noise_std})")
    cfg = with_overrides(
        SCALES[args.scale],
        epochs=args.epochs,
        batch_size=args.batch_size,
        select=args.select,
        sign_flip=args.sign_flip,
        readout=args.readout,
        gmn_pool=pool,
        mask_prob=args.mask_prob,
        noise_std=args.noise_std,
        mask_rescale=args.mask_rescale,
        clean_view=args.clean_view,
    )
    t0 = time.time()
    with torch_threads(args.threads if args.threads > 0 else None):
        try:
            res = run(
                args.data,
                args.out,
                [e for e in wanted if e in avail],
                seeds,
                cfg,
                device,
                args.n_train,
                progress=not args.no_progress,
                n_val=args.n_val,
                n_test=args.n_test,
            )
        except (ValueError, KeyError) as e:  # bad data or settings; OSError is bad input for run_cli too
            raise CLIError(str(e)) from e
    res["wall_seconds_this_run"] = round(time.time() - t0, 1)
    summary = f"train/val/test INRs: {res['sizes']}; wall time this run: {res['wall_seconds_this_run']} s"
    print_result(res, args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
