"""Sine-wave INR dataset (paper Sec. 4.3 / E.3, protocol of Navon et al., 2023), generated offline.

Each INR is a SIREN 1 -> 32 -> 32 -> 1 (omega0 = 30) fitted to ``f(x) = a * sin(b * x)`` with
``a, b ~ U(0, 10)`` on ``x = arange(-pi, pi, pi / 1000)`` (2000 points).

Initialisation (``--init``, recorded in the manifest):

- ``navon`` (default): as the INRs of Navon et al. (2023) that Table 3 uses: every sine layer, the first one
  included, has weights ``U(+-sqrt(6 / fan_in) / omega0)`` (first layer: +-0.082, i.e. angular frequencies
  within +-2.45) and zero biases; the last (linear) layer has PyTorch's ``nn.Linear`` default,
  ``U(+-1/sqrt(fan_in))`` for weights and bias. The first layer must then grow towards frequency ``b``, so
  ``b`` is visible in simple statistics of the weights.
- ``siren``: Sitzmann et al.'s bounds (first layer ``U(+-1)``, angular frequencies within +-30, random
  biases; last layer as the hidden ones). The fit then reuses the random frequencies it starts with and ``b``
  is spread over which neurons the second layer combines: a linear probe on per-tensor weight statistics
  gives ~7.1 on ``b`` (chance: 8.3), and every SSL encoder we tried plateaued at a test MSE of ~4 on (a, b).

Schedule (``--schedule``, recorded in the manifest; the same for every INR):

- ``navon`` (default): Navon et al.'s: full-batch Adam, learning rate 1e-3, weight decay 1e-4 (Adam's L2
  term), at most 1500 steps; each INR stops after the first step whose loss (computed before that step's
  update) is at most 1e-4, and keeps the parameters of that step. About 70 % of the INRs stop early (median
  ~700 steps); the others run all 1500 steps. ~1.4 CPU-s per INR (4000 INRs: 45.5 min wall as two
  one-thread processes on 2 cores).
- ``fast``: learning rate 5e-3 with cosine decay to 5e-5, 250 steps, no early stop (~0.5 CPU-s per INR,
  15.6 min for 4000). Kept for comparison: on 2000/1000/1000 INRs with the same init and targets, a
  least-squares probe on StatNN's per-tensor weight statistics gets a test MSE on (a, b) of 2.00 with it
  and 1.66 with ``navon``, and every SSL encoder is worse on it (README).

Each INR's final MSE and number of steps are stored; ``manifest.json`` records the schedule, the init and
the MSE statistics per split, and refuses to mix with another schedule or init in the same folder.

Splits: ``train`` (``--n-train``, default 2000), ``val`` (1000), ``test`` (1000). INRs are fitted in shards of
``--shard-size`` at once (stacked parameters, batched matmuls: see :mod:`gmn.inr.fit`); each shard is written
atomically as ``{split}_{k:04d}.pt`` holding the stacked state_dict, ``a``, ``b``, ``mse`` and ``steps``, and
has its own seed, so an interrupted run resumes where it stopped and gives the same data.

CLI::

    python -m gmn.inr.sine_dataset --out runs/sine_inrs_navon [--n-train 2000] [--device auto] [--threads 1]
    # two processes side by side on a 2-core machine (each fits every other shard):
    python -m gmn.inr.sine_dataset --out runs/sine_inrs_navon --threads 1 --part 0/2 &
    python -m gmn.inr.sine_dataset --out runs/sine_inrs_navon --threads 1 --part 1/2
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from symgraph.cli_util import (
    CLIError,
    OneLineArgumentParser,
    add_device_argument,
    resolve_device,
    run_cli,
    torch_threads,
)

from .fit import FitConfig, fit_sirens, init_siren_params
from .io import atomic_torch_save, atomic_write_json, load_checked

__all__ = [
    "SINE_FIT",
    "SCHEDULES",
    "INIT_SPECS",
    "SINE_ARCH",
    "INITS",
    "initial_params",
    "sine_grid",
    "sine_targets",
    "generate",
    "load_split",
    "main",
]

#: Fitting schedules (``--schedule``; see the module docstring). ``SINE_FIT`` is the default.
SCHEDULES: dict[str, FitConfig] = {
    "navon": FitConfig(steps=1500, lr=1e-3, weight_decay=1e-4, stop_mse=1e-4, check_every=50),
    "fast": FitConfig(steps=250, lr=5e-3, lr_decay_to=0.01),
}
SINE_FIT = SCHEDULES["navon"]
#: The SIREN architecture: in_dim, hidden, out_dim, omega0.
SINE_ARCH = {"in_dim": 1, "hidden": (32, 32), "out_dim": 1, "omega0": 30.0}
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}
#: Initialisation schemes (see the module docstring), with the exact bounds each uses (stored in manifests).
INIT_SPECS = {
    "navon": "sine layers U(+-sqrt(6/fan_in)/omega0), zero biases; last layer U(+-1/sqrt(fan_in)) weights and bias",
    "siren": "first layer U(+-1/fan_in), sine layers U(+-sqrt(6/fan_in)/omega0), biases U(+-1/sqrt(fan_in))",
}
INITS = tuple(INIT_SPECS)


def sine_grid() -> torch.Tensor:
    """The 2000 coordinates ``arange(-pi, pi, pi/1000)`` as a column ``[2000, 1]``."""
    return torch.arange(-math.pi, math.pi, math.pi / 1000).unsqueeze(1)


def sine_targets(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """``a * sin(b * x)`` for each (a, b): ``[B, P, 1]``."""
    x = sine_grid() if x is None else x
    return (a[:, None] * torch.sin(b[:, None] * x[None, :, 0])).unsqueeze(-1)


def initial_params(n: int, init: str = "navon", generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``n`` stacked initial SIRENs of :data:`SINE_ARCH` under scheme ``init`` (one of :data:`INITS`)."""
    if init not in INITS:
        raise ValueError(f"Expected an init in {INITS} (got {init!r})")
    arch = SINE_ARCH
    p0 = init_siren_params(n, arch["in_dim"], arch["hidden"], arch["out_dim"], arch["omega0"], generator=generator)
    if init == "navon":
        # first layer: Sitzmann's first-layer bound 1/fan_in -> the hidden-layer bound sqrt(6/fan_in)/omega0
        p0["layers.0.weight"] = p0["layers.0.weight"] * (math.sqrt(6.0 * arch["in_dim"]) / arch["omega0"])
        p0 = {k: torch.zeros_like(v) if k.endswith(".bias") else v for k, v in p0.items()}
        # the last layer is a plain nn.Linear in Navon et al.'s INRs: PyTorch's default U(+-1/sqrt(fan_in))
        last = len(arch["hidden"])
        w = p0[f"layers.{last}.weight"]
        bound = 1.0 / math.sqrt(w.shape[-1])
        p0[f"layers.{last}.weight"] = (torch.rand(w.shape, generator=generator) * 2 - 1) * bound
        p0[f"layers.{last}.bias"] = (torch.rand(w.shape[:2], generator=generator) * 2 - 1) * bound
    return p0


def _fit_shard(
    split: str, k: int, n: int, seed: int, device: torch.device, fit: FitConfig, progress: bool, init: str
) -> dict:
    g = torch.Generator().manual_seed(seed * 7919 + _SPLIT_OFFSET[split] + k)
    a = torch.rand(n, generator=g) * 10
    b = torch.rand(n, generator=g) * 10
    arch = SINE_ARCH
    p0 = initial_params(n, init, generator=g)
    x = sine_grid().to(device)
    y = sine_targets(a, b).to(device)
    p0 = {k_: v.to(device) for k_, v in p0.items()}
    params, mse, steps = fit_sirens(
        p0, x, y, fit, arch["omega0"], progress=progress, desc=f"{split}[{k}]", return_steps=True
    )
    params = {k_: v.cpu() for k_, v in params.items()}
    return {"params": params, "a": a, "b": b, "mse": mse.cpu(), "steps": steps.cpu()}


def generate(
    out: str | Path,
    n_train: int = 2000,
    n_val: int = 1000,
    n_test: int = 1000,
    shard_size: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    fit: FitConfig = SINE_FIT,
    progress: bool = True,
    init: str = "navon",
    part: tuple[int, int] = (0, 1),
) -> dict:
    """Fit (or resume fitting) every shard of every split under ``out``; returns the manifest.

    ``part=(r, w)`` fits only the shards ``r, r + w, r + 2w, ...`` of the job list (``w`` processes side by side
    on one folder, e.g. one per CPU core); the split statistics are written by whichever part finds every
    shard present when it ends (the manifest then has ``"complete": true``).

    Raises ``ValueError`` when ``out`` holds a manifest of another ``init`` (manifests without one predate the
    option and count as ``"siren"``).
    """
    if init not in INITS:
        raise ValueError(f"Expected an init in {INITS} (got {init!r})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = out / "manifest.json"
    if old.exists():
        prev = json.loads(old.read_text())
        found = prev.get("init", "siren")
        if found != init or prev.get("init_spec", INIT_SPECS.get(found)) != INIT_SPECS[init]:
            raise ValueError(f"Expected {out} to hold INRs with init {init!r} (got {found!r}): use another --out")
        if prev.get("fit") != json.loads(json.dumps(asdict(fit))):
            raise ValueError(
                f"Expected {out} to hold INRs fitted with {asdict(fit)} (got {prev.get('fit')}): use another --out"
            )
    device = torch.device(device)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    jobs = []
    for split, n in sizes.items():
        m = math.ceil(n / shard_size)
        for k in range(m):
            jobs.append(((k + 0.5) / m, split, k, min(shard_size, n - k * shard_size)))
    # splits progress in proportion, so that a partly generated dataset has usable train, val and test parts
    jobs = [j[1:] for j in sorted(jobs, key=lambda j: j[0])]
    manifest = {
        "arch": {**SINE_ARCH, "hidden": list(SINE_ARCH["hidden"])},
        "fit": asdict(fit),
        "seed": seed,
        "init": init,
        "init_spec": INIT_SPECS[init],
        "target": "a*sin(b*x), a,b~U(0,10), x=arange(-pi,pi,pi/1000)",
        "shard_size": shard_size,
        "splits": {},
    }
    if not old.exists():  # written first, so that resuming with other settings is refused
        atomic_write_json(old, manifest)
    t0 = time.time()
    r, w = part
    if not (w >= 1 and 0 <= r < w):
        raise ValueError(f"Expected part (r, w) with 0 <= r < w (got {part!r})")

    def done(split: str, k: int, n: int) -> bool:
        path = out / f"{split}_{k:04d}.pt"
        return path.exists() and load_checked(path, "delete it to refit that shard")["a"].numel() == n

    for split, k, n in tqdm(jobs[r::w], desc="shards", disable=not progress):
        if not done(split, k, n):
            atomic_torch_save(_fit_shard(split, k, n, seed, device, fit, progress, init), out / f"{split}_{k:04d}.pt")
    if w > 1 and not all(done(*j) for j in jobs):
        manifest["complete"] = False
        return manifest  # another part is still fitting: it writes the statistics
    for split, n in sizes.items():
        m = math.ceil(n / shard_size)
        shards = [load_checked(out / f"{split}_{k:04d}.pt", "delete it to refit that shard") for k in range(m)]
        mse = torch.cat([sh["mse"] for sh in shards])
        manifest["splits"][split] = {
            "n": int(mse.numel()),
            "shards": m,
            "mse_mean": float(mse.mean()),
            "mse_median": float(mse.median()),
            "mse_max": float(mse.max()),
        }
        if all("steps" in sh for sh in shards):
            steps = torch.cat([sh["steps"] for sh in shards]).float()
            manifest["splits"][split]["steps_median"] = float(steps.median())
            manifest["splits"][split]["stopped_early"] = float((steps < fit.steps).float().mean())
    manifest["complete"] = True
    manifest["seconds_this_run"] = round(time.time() - t0, 1)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def load_split(root: str | Path, split: str, n_shards: int | None = None, limit: int | None = None):
    """Load a split: ``(params, a, b, mse)`` with ``params`` a dict of stacked tensors (SIREN state_dict keys).

    Without a manifest (generation still running) the contiguous shards present are loaded. ``limit`` keeps
    the first ``limit`` INRs.
    """
    root = Path(root)
    if n_shards is None:
        man = root / "manifest.json"
        splits = json.loads(man.read_text()).get("splits", {}) if man.exists() else {}
        if split in splits:
            n_shards = splits[split]["shards"]
        else:
            n_shards = 0
            while (root / f"{split}_{n_shards:04d}.pt").exists():
                n_shards += 1
    if n_shards == 0:
        raise FileNotFoundError(f"Expected shards '{split}_*.pt' under {root} (found none)")
    hint = "delete it and run gmn.inr.sine_dataset again to refit it"
    shards = [load_checked(root / f"{split}_{k:04d}.pt", hint) for k in range(n_shards)]
    sl = slice(0, limit)
    params = {key: torch.cat([s["params"][key] for s in shards])[sl] for key in shards[0]["params"]}
    cat = lambda name: torch.cat([s[name] for s in shards])[sl]
    return params, cat("a"), cat("b"), cat("mse")


def _part(text: str) -> tuple[int, int]:
    try:
        r, w = (int(x) for x in text.split("/"))
    except ValueError:
        raise CLIError(f"--part: Expected R/W, e.g. 1/2 (got {text!r})") from None
    return r, w


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(prog="python -m gmn.inr.sine_dataset", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (shards + manifest.json)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", choices=INITS, default="navon", help="INR initialisation (see the module docstring)")
    ap.add_argument(
        "--schedule", choices=sorted(SCHEDULES), default="navon", help="fitting schedule (module docstring)"
    )
    ap.add_argument("--steps", type=int, help="override the schedule's (maximum) number of Adam steps per INR")
    ap.add_argument("--lr", type=float, help="override the schedule's learning rate")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--part",
        default="0/1",
        help="R/W: fit only every W-th shard starting at R, so that W processes (e.g. one per core, each with "
        "--threads 1) share the work on one --out; the last to finish writes the statistics",
    )
    add_device_argument(ap)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = ap.parse_args(argv)
    if min(args.n_train, args.n_val, args.n_test) < 0 or args.shard_size < 1:
        raise CLIError("Expected non-negative split sizes and a positive --shard-size")
    device = resolve_device(args.device)
    part = _part(args.part)
    fit = SCHEDULES[args.schedule]
    fit = replace(fit, steps=args.steps or fit.steps, lr=args.lr or fit.lr)
    with torch_threads(args.threads if args.threads > 0 else None):
        try:
            man = generate(
                args.out,
                args.n_train,
                args.n_val,
                args.n_test,
                args.shard_size,
                args.seed,
                device,
                fit,
                progress=not args.no_progress,
                init=args.init,
                part=part,
            )
        except (RuntimeError, ValueError) as e:  # bad settings or files (OSError: run_cli's bad input too)
            raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(man))
    elif not man["complete"]:
        print(f"part {args.part} done; other parts are still fitting (the last one writes the statistics)")
    else:
        for split, s in man["splits"].items():
            steps = f", median steps {s['steps_median']:.0f}" if "steps_median" in s else ""
            print(
                f"{split}: {s['n']} INRs, MSE mean {s['mse_mean']:.2e}, median {s['mse_median']:.2e}, "
                f"max {s['mse_max']:.2e}{steps}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
