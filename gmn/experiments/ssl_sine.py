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

Table 3's two baselines that use the symmetry group without being equivariant (both the plain MLP encoder):

- ``mlp_align`` ("MLP + Alignment"): every INR (train, val and test) is aligned once to one fixed reference
  INR of the train split (``align_reference``, default the first) by weight matching over the SIREN graph's
  exact automorphism group (:func:`gmn.inr.align.align_to_reference`, i.e. :func:`symgraph.align`'s
  matching), before standardisation; the aligned INRs are cached under ``--out`` (``aligned_ref{i}.pt``), and
  the MLP is trained on them with the same augmentations.
- ``mlp_permaug`` ("MLP + Perm. aug"): the MLP on the original INRs, each view of each INR first moved by its
  own uniformly random automorphism (:class:`gmn.inr.augment.AutomorphismAugment`; the clean view too), then
  masked and noised as usual.

Controls, reported in the same table: each run's *untrained* encoder (the same seed's initialisation, same
probe; what the contrastive training adds is the difference), and two reference rows that involve no
learning: the probe on the flat normalised weights (ridge-regularised) and on StatNN's per-tensor statistics;
with ``mlp_align``, also the ridge probe on the flat aligned weights.

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

Every encoder is a metanet of :mod:`gmn.metanets` (:func:`gmn.inr.encoders.build_encoder`) trained by
:func:`gmn.engine.fit`. Resumable: each (encoder, seed) run checkpoints every epoch under ``--out``; finished
runs are kept in ``results.json`` (written atomically) and skipped when the command is repeated
(``--no-resume`` starts afresh). Every field of :class:`SSLConfig` is a flag (``--epochs``, ``--mask-prob``, ...).

CLI::

    python -m gmn.inr.sine_dataset --out runs/sine_inrs_navon              # 2000/1000/1000 INRs
    python -m gmn.experiments.ssl_sine [--data runs/sine_inrs_navon] [--out runs/ssl_sine] [--scale cpu]
        [--metanets gmn,dws,npnfn,statnn,mlp,mlp_align,mlp_permaug] [--seeds 3] [--json]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

import symgraph
from symgraph.cli_util import run_cli
from symgraph.errors import ShapeMismatchError
from symgraph.models.siren import SIREN

from ..baselines.statnn import tensor_statistics
from ..data import standardise, tensor_mean_std
from ..engine import fit, seed_everything
from ..inr.align import align_to_reference
from ..inr.augment import AutomorphismAugment, WeightAugment
from ..inr.encoders import ENCODERS, POOLED_READOUT, READOUTS, build_encoder
from ..inr.io import atomic_torch_save
from ..inr.ntxent import nt_xent
from ..inr.probe import linear_probe_mse
from ..inr.sine_dataset import SINE_ARCH, SINE_FIT, load_split
from ..io import load_checked
from .common import (
    ResultsFile,
    check_options,
    format_mean_std,
    metanet_size,
    option,
    parse_experiment,
    print_result,
    running,
)

__all__ = [
    "SSLConfig",
    "SSLData",
    "SCALES",
    "PAPER_TABLE3",
    "METHODS",
    "SYMMETRY_BASELINES",
    "ContrastiveModel",
    "run_one",
    "run",
    "main",
    "tensor_statistics_features",
]

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
#: Table 3's baselines that use the symmetry group without equivariance: method -> the metanet it trains.
SYMMETRY_BASELINES = {"mlp_align": "mlp", "mlp_permaug": "mlp"}
#: What ``--metanets`` takes, in the table's order.
METHODS = (*ENCODERS, *SYMMETRY_BASELINES)
_PAPER_ROW = {
    "gmn": "GMN (ours)",
    "mlp": "MLP",
    "dws": "DWSNets",
    "mlp_align": "MLP + Alignment",
    "mlp_permaug": "MLP + Perm. aug",
}
_LABEL = {
    "gmn": "GMN",
    "mlp": "MLP",
    "mlp_align": "MLP + Alignment",
    "mlp_permaug": "MLP + Perm. aug",
    "npnfn": "NP-NFN",
    "statnn": "StatNN",
    "deepsets": "DeepSets",
    "dws": "DWSNets (ours, DWSNet)",
}
#: Reference rows (no learning): the probe on these features of the normalised weights.
_REFERENCE = {
    "raw_weights": "raw weights, ridge probe (no learning)",
    "statistics": "StatNN's per-tensor statistics, probe (no learning)",
    "aligned_weights": "aligned weights, ridge probe (no learning)",
}
#: Default ``--data``: INRs generated with ``--init navon`` (see :mod:`gmn.inr.sine_dataset`).
DEFAULT_DATA = "runs/sine_inrs_navon"


def _nonneg(v) -> bool:
    return v >= 0


@dataclass(frozen=True)
class SSLConfig:
    """Hyper-parameters of one scale (``<metanet>_hidden``/``_layers`` per metanet, ``baseline_*`` for the rest);
    every field is a command-line option (``--batch-size``, ``--mask-prob``, ...)."""

    epochs: int = option(10, "training epochs")
    batch_size: int = option(64, "batch size")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    temperature: float = option(0.1, "NT-Xent temperature")
    #: augmentation (Navon et al.'s code: the first view clean, the second with dropout 0.5 of the weights;
    #: Gaussian noise as the paper's E.3 says): noise std and mask probability in units of each tensor's
    #: train-set std; ``mask_rescale`` scales the kept weights by 1 / (1 - mask_prob) as dropout does
    noise_std: float = option(
        0.1, "Gaussian noise std (units of each tensor's train std)", check=(_nonneg, "a value >= 0")
    )
    mask_prob: float = option(
        0.5,
        "probability of zeroing each weight in an augmented view",
        check=(lambda v: 0 <= v < 1, "a value in [0, 1)"),
    )
    mask_rescale: bool = option(True, "scale the kept weights by 1/(1 - mask prob), as dropout")
    clean_view: bool = option(True, "leave the first of the two views unaugmented (as Navon et al.'s code)")
    embed_dim: int = option(32, "width of each encoder's head output")
    proj_dim: int = option(32, "width of the NT-Xent projection")
    gmn_hidden: int = option(32, "GMN width")
    gmn_layers: int = option(2, "GMN layers")
    #: what the GMN mean-pools: "param" = the edges of each parameter tensor separately (see
    #: :class:`gmn.GMN`); ("edge",) is one mean over all edges
    gmn_pool: tuple[str, ...] = option(
        ("param",),
        "what the GMN mean-pools, comma-separated (param: the edges of each parameter tensor separately)",
        choices=("edge", "node", "param"),
    )
    #: what the probe (and the projection head) reads: "pooled", the pooled representation for the encoders
    #: that have one (GMN, NP-NFN, DWSNet; see :func:`gmn.inr.encoders.build_encoder`) and the head output for
    #: the others; "head", every encoder's head output of width ``embed_dim``
    readout: str = option(
        "pooled",
        "what the probe reads: each encoder's head output (head) or, for GMN/NP-NFN/DWSNet, the pooled "
        "representation the head reads (pooled)",
        choices=READOUTS,
    )
    baseline_hidden: int = option(32, "width of NP-NFN, StatNN and DeepSets")
    baseline_layers: int = option(3, "layers of NP-NFN, StatNN and DeepSets")
    mlp_hidden: int = option(256, "MLP width")
    mlp_layers: int = option(3, "MLP linear layers")
    dws_hidden: int = option(16, "DWSNet width")
    dws_layers: int = option(4, "DWSNet layers")
    #: "val": after every epoch fit the probe on train embeddings, score it on the validation split, and
    #: report the epoch with the lowest validation MSE (model selection on val; the test split is never
    #: looked at); "last": report the final epoch.
    select: str = option(
        "val",
        "report the epoch with the best validation probe MSE (val) or the last epoch (last)",
        choices=("val", "last"),
    )
    #: also flip the signs of random hidden neurons in every view (:func:`gmn.inr.augment.sign_flip`; exact
    #: for SIREN's sine). Not in the paper's protocol (noise and masking only): an option, off by default.
    sign_flip: bool = option(
        False,
        "add random sign flips of hidden neurons to both views (exact symmetry of sine networks; not in the "
        "paper's protocol)",
    )
    #: mlp_align: the index of the train INR that every INR is aligned to
    align_reference: int = option(
        0, "mlp_align: index of the train INR every INR is aligned to", check=(_nonneg, "a value >= 0")
    )

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class SSLData:
    """Where the INRs come from (not part of a scale)."""

    data: str = option(DEFAULT_DATA, "folder written by gmn.inr.sine_dataset")
    n_train: int | None = option(None, "use only the first N train INRs")
    n_val: int | None = option(None, "use only the first N val INRs")
    n_test: int | None = option(None, "use only the first N test INRs")


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


def _take(params: dict[str, torch.Tensor], idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device) for k, v in params.items()}


@torch.no_grad()
def embed(encoder: nn.Module, params: dict[str, torch.Tensor], device: torch.device, batch_size: int = 128):
    """Embeddings ``[n, D]`` of all networks in ``params`` (eval mode, no augmentation)."""
    encoder.eval()
    n = next(iter(params.values())).shape[0]
    out = [
        encoder(_take(params, torch.arange(i, min(i + batch_size, n)), device)).cpu() for i in range(0, n, batch_size)
    ]
    return torch.cat(out)


class ContrastiveModel(nn.Module):
    """Encoder and projection head; ``forward(view1, view2)`` is the NT-Xent loss of the two views."""

    def __init__(self, encoder: nn.Module, head: nn.Module, temperature: float):
        super().__init__()
        self.encoder, self.head, self.temperature = encoder, head, temperature

    def forward(self, view1: dict[str, torch.Tensor], view2: dict[str, torch.Tensor]) -> torch.Tensor:
        return nt_xent(self.head(self.encoder(view1)), self.head(self.encoder(view2)), self.temperature)


def run_one(
    kind: str,
    seed: int,
    data: dict,
    cfg: SSLConfig,
    out: Path,
    device: torch.device,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Train one encoder with one seed (:func:`gmn.engine.fit`, resuming from its checkpoint) and probe it."""
    graph = data["graph"]
    metanet = SYMMETRY_BASELINES.get(kind, kind)
    if kind == "mlp_align":
        data = aligned_data(data, cfg.align_reference, out)
    hidden, layers = metanet_size(cfg, metanet)
    seed_everything(seed)
    readout = cfg.readout if metanet in POOLED_READOUT else "head"
    encoder = build_encoder(
        metanet, graph, cfg.embed_dim, hidden, layers, device=device, pool=cfg.gmn_pool, readout=readout
    )
    # BatchNorm first: a fresh GMN's mean-pooled embeddings of different INRs agree to ~1e-4 (cosine ~0.9999;
    # the pooled structure term dominates), which leaves NT-Xent at chance for many steps; standardising
    # across the batch removes the shared part. Used for every encoder; the probe sees the encoder output.
    d = encoder.out_dim
    head = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.proj_dim))
    model = ContrastiveModel(encoder, head, cfg.temperature).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    flips: dict = {}
    if cfg.sign_flip:
        n_layers = sum(1 for k in data["train"] if k.endswith(".weight"))
        flips = {
            "flip_layers": tuple((f"layers.{i}.weight", f"layers.{i}.bias") for i in range(n_layers)),
            "flip_zero": tuple((k, -m / sd) for k, (m, sd) in data["stats"].items()),
        }
    aug = WeightAugment(cfg.noise_std, cfg.mask_prob, cfg.mask_rescale, **flips)
    # MLP + Perm. aug: each view first gets its own random automorphism (the function is unchanged)
    permute = AutomorphismAugment(graph) if kind == "mlp_permaug" else None
    train = data["train"]
    n = next(iter(train.values())).shape[0]
    steps = max(n // cfg.batch_size, 1)

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            p = {k: v[idx] for k, v in train.items()}
            p1, p2 = (p, p) if permute is None else (permute(p, g), permute(p, g))
            v1 = {k: t.to(device) for k, t in (p1 if cfg.clean_view else aug(p1, g)).items()}
            v2 = {k: t.to(device) for k, t in aug(p2, g).items()}
            yield v1, v2

    def validate(_model: nn.Module) -> dict[str, float]:
        z_train, z_val = embed(encoder, data["train"], device), embed(encoder, data["val"], device)
        return {"val_mse": linear_probe_mse(z_train, data["y_train"], z_val, data["y_val"])}

    def untrained() -> dict:  # the control for what the contrastive training adds
        z0 = {split: embed(encoder, data[split], device) for split in ("train", "val", "test")}
        return {f"init_{k}": v for k, v in _probe(z0, data).items()}

    by_val = cfg.select == "val"
    history = fit(
        model,
        opt,
        batches,
        lambda net, views: (net(*views), 1),
        cfg.epochs,
        validate=validate if by_val else None,
        select=("val_mse", "min") if by_val else None,
        checkpoint=out / f"ckpt_{kind}_seed{seed}.pt",
        resume=resume,
        fingerprint={"metanet": kind, "seed": seed, "config": asdict(cfg)},
        device=device,
        progress=progress,
        desc=f"{kind} s{seed}",
        extra=untrained,
    )
    z = {split: embed(encoder, data[split], device) for split in ("train", "val", "test")}
    res = {
        "encoder": kind,
        "seed": seed,
        "epochs": cfg.epochs,
        "train_seconds": round(history.seconds, 1),
        "params": sum(p.numel() for p in encoder.parameters()),
        "readout": readout,
        "embed_width": d,
        **({"alignment": data["alignment"]} if kind == "mlp_align" else {}),
        "loss_history": [round(x, 4) for x in history.metric("train_loss")],
        **history.extra,
    }
    if history.best_epoch is not None:
        res["selected_epoch"] = history.best_epoch + 1
        res["val_history"] = [round(x, 4) for x in history.metric("val_mse")]
    return {**res, **_probe(z, data)}


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
    stats = tensor_mean_std(raw["train"][0])
    out["stats"] = stats
    out["raw"] = {s: params for s, (params, *_) in raw.items()}
    for s, (params, a, b, _) in raw.items():
        out[s] = standardise(params, stats)
        out[f"y_{s}"] = torch.stack([a, b], 1)
    out["graph"] = symgraph.parameter_graph(
        SIREN(SINE_ARCH["in_dim"], SINE_ARCH["hidden"], SINE_ARCH["out_dim"], SINE_ARCH["omega0"])
    )
    out["sizes"] = {s: int(out[f"y_{s}"].shape[0]) for s in ("train", "val", "test")}
    out["init"] = init
    return out


def _checksum(params: dict[str, torch.Tensor]) -> list[float]:
    return [float(v.double().sum()) for v in params.values()] + [float(v.double().abs().sum()) for v in params.values()]


def aligned_data(data: dict, reference: int, out: Path | None = None) -> dict:
    """``data`` with every split's INRs aligned to train INR ``reference`` (Table 3's "MLP + Alignment").

    The raw INRs are aligned (:func:`gmn.inr.align.align_to_reference`, float64 weight matching over the SIREN
    graph's automorphism group), then standardised with ``data``'s per-tensor statistics (invariant to the
    permutations, so the same as for the original INRs). Computed once: kept in ``data`` and, with ``out``,
    in ``out/aligned_ref{reference}.pt`` (reused when its fingerprint, the sizes and a checksum of the raw
    INRs, matches). ``data["alignment"]`` holds the reference, the wall time and the mean objective gain.
    """
    cache = data.setdefault("_aligned", {})
    if reference in cache:
        return cache[reference]
    n_train = data["sizes"]["train"]
    if reference >= n_train:
        raise ShapeMismatchError(f"--align-reference below {n_train}, the number of train INRs", str(reference))
    splits = ("train", "val", "test")
    fingerprint = {
        "reference": reference,
        "sizes": data["sizes"],
        "checksum": {s: _checksum(data["raw"][s]) for s in splits},
    }
    path = None if out is None else Path(out) / f"aligned_ref{reference}.pt"
    stored = None
    if path is not None and path.exists():
        stored = load_checked(path, f"delete {path} to align again")
        if stored.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            stored = None
    if stored is None:
        ref = {k: v[reference] for k, v in data["raw"]["train"].items()}
        params, info = {}, {"reference": reference, "seconds": 0.0, "max_iter": 100}
        for split in splits:
            res = align_to_reference(
                data["raw"][split],
                ref,
                SINE_ARCH["hidden"],
                SINE_ARCH["in_dim"],
                SINE_ARCH["out_dim"],
                SINE_ARCH["omega0"],
            )
            params[split] = res.params
            info["seconds"] += res.seconds
            gain = (res.objective_after - res.objective_before) / res.objective_before.abs().clamp_min(1e-30)
            info[f"objective_gain_{split}"] = float(gain.mean())
            info[f"identity_{split}"] = float((res.perms == torch.arange(res.perms.shape[1])).all(1).double().mean())
        info["seconds"] = round(info["seconds"], 1)
        info["seconds_per_inr"] = round(info["seconds"] / sum(data["sizes"].values()), 4)
        stored = {"fingerprint": fingerprint, "params": params, "alignment": info}
        if path is not None:
            atomic_torch_save(stored, path)
    new = {k: v for k, v in data.items() if k != "_aligned"}
    new["raw"] = stored["params"]
    for split in splits:
        new[split] = standardise(stored["params"][split], data["stats"])
    new["alignment"] = stored["alignment"]
    cache[reference] = new
    return new


def table(results: dict) -> str:
    """Markdown table: our test MSE (mean ± std over seeds) beside the paper's Table 3.

    "epochs" lists each seed's reported epoch (chosen on the validation probe with ``select="val"``).
    """
    lines = [
        "| Metanetwork | ours: test MSE | MSE on a | MSE on b | untrained encoder | seeds | epochs | paper Table 3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in [*METHODS, *_REFERENCE]:
        runs = [r for r in results["runs"].values() if r["encoder"] == kind]
        if not runs:
            continue
        label = _LABEL.get(kind) or _REFERENCE[kind]
        paper = PAPER_TABLE3.get(_PAPER_ROW.get(kind, ""), "—")
        keys = ("test_mse", "test_mse_a", "test_mse_b", "init_test_mse")
        cols = [format_mean_std([r[k] for r in runs if k in r]) for k in keys]
        epochs = ", ".join(str(r.get("selected_epoch", r.get("epochs", "—"))) for r in runs) if kind in METHODS else "—"
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
    resume: bool = True,
) -> dict:
    """Every (encoder, seed) run and the reference rows; ``results.json`` under ``out`` after each run.

    With ``resume`` the finished runs of ``results.json`` are kept and unfinished ones continue from their
    checkpoints; without it everything starts afresh.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(data_dir, n_train, n_val, n_test)
    store = ResultsFile(out / "results.json", resume, table, config=asdict(cfg), sizes=data["sizes"])
    results = store.results
    results.update(data=str(data_dir), device=str(device))
    # reference rows that involve no learning: the probe on the flat weights, and on StatNN's statistics
    for ref, features, ridge in (("raw_weights", _flat, 1e-2), ("statistics", tensor_statistics_features, 1e-6)):
        if ref not in results["runs"]:
            z = {s: features(data[s]) for s in ("train", "val", "test")}
            results["runs"][ref] = {"encoder": ref, "seed": 0, **_probe(z, data, ridge)}
    if "mlp_align" in encoders:
        aligned = aligned_data(data, cfg.align_reference, out)
        results["alignment"] = aligned["alignment"]
        if "aligned_weights" not in results["runs"]:
            z = {s: _flat(aligned[s]) for s in ("train", "val", "test")}
            results["runs"]["aligned_weights"] = {"encoder": "aligned_weights", "seed": 0, **_probe(z, aligned, 1e-2)}
    for kind in encoders:
        for seed in seeds:
            key = f"{kind}/seed{seed}"
            if key in results["runs"]:
                continue
            results["runs"][key] = run_one(kind, seed, data, cfg, out, device, progress, resume)
            store.save()
    store.save()
    return results


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ex = parse_experiment(
        argv,
        "python -m gmn.experiments.ssl_sine",
        __doc__.split("\n\n")[0],
        config=SSLConfig,
        source=SSLData,
        scales=SCALES,
        metanets=METHODS,
        default_metanets=("gmn", "dws", "npnfn", "statnn", "mlp", "mlp_align", "mlp_permaug"),
        seeds=(0, 1, 2),
        out="runs/ssl_sine",
    )
    run_opts, src = ex.run, ex.source
    t0 = time.time()
    with running(run_opts):
        res = run(
            src.data,
            run_opts.out,
            list(run_opts.metanets),
            list(run_opts.seeds),
            ex.config,
            run_opts.torch_device,
            src.n_train,
            progress=run_opts.progress,
            n_val=src.n_val,
            n_test=src.n_test,
            resume=run_opts.resume,
        )
    res["wall_seconds_this_run"] = round(time.time() - t0, 1)
    summary = f"train/val/test INRs: {res['sizes']}; wall time this run: {res['wall_seconds_this_run']} s"
    print_result(res, run_opts.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
