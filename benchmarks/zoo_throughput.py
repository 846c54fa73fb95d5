"""Zoo training throughput: networks per second with vmap, grouped convolutions and a sequential loop.

All paths run the same arithmetic (``gmn.zoo.train_many.train_group`` with ``vectorize=True/False`` and
``engine="vmap"``, ``"grouped"``, ``"grouped-cl"``: one network with ``groups = networks`` convolutions over
stacked channels, channels-last for the last) on the same networks (one architecture of paper Table 5,
different hyperparameters) and the same digits data, side by side in one run. Speed-ups are against the loop.

    python benchmarks/zoo_throughput.py --arch cnn2d --networks 32 --epochs 2 [--hidden 24] [--engines vmap,grouped]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from symgraph.cli_util import CLIError, OneLineArgumentParser, add_device_argument, resolve_device, run_cli


def main(argv=None) -> int:
    """Run the benchmark; exit code 0 ok, 2 bad input (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="cnn2d", help="family: cnn2d, cnn1d, deepsets, resnet, vit")
    ap.add_argument("--networks", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    add_device_argument(ap, default="cpu")
    ap.add_argument("--engines", default="vmap,grouped,grouped-cl", help="vectorised engines to compare")
    ap.add_argument("--hidden", type=int, default=None, help="override the template's width (e.g. 24)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from gmn.zoo.data import load_data
    from gmn.zoo.families import FAMILIES, sample_config
    from gmn.zoo.generate import _build
    from gmn.zoo.train_many import HParams, train_group

    data = load_data("digits")
    family = "varying-cnn" if args.arch == "cnn2d" else "diverse"
    # one architecture, many hyperparameter draws: take the first sampled config of that arch as the template
    cfgs = [sample_config(family, i, 0) for i in range(400)]
    cfgs = [c for c in cfgs if c.arch == args.arch]
    if not cfgs or args.arch not in FAMILIES["diverse"]:
        raise CLIError(f"--arch: Expected one of {', '.join(FAMILIES['diverse'])} (got {args.arch!r})")
    tmpl = cfgs[0]
    if args.hidden is not None:
        tmpl = dataclasses.replace(tmpl, kwargs=tuple(sorted({**dict(tmpl.kwargs), "hidden": args.hidden}.items())))
    hps = [HParams(c.lr, c.weight_decay, c.label_smoothing, tmpl.optimizer, c.seed) for c in cfgs[: args.networks]]
    hps += [HParams(1e-3, 1e-4, 0.1, tmpl.optimizer, 1000 + i) for i in range(args.networks - len(hps))]
    make = lambda: _build(tmpl)  # noqa: E731
    res = {}
    engines = [e for e in args.engines.split(",") if e]
    for name in engines + ["sequential"]:
        vec, engine = (False, "vmap") if name == "sequential" else (True, name)
        t = time.perf_counter()
        train_group(make, hps, data, args.epochs, device=resolve_device(args.device), vectorize=vec, engine=engine)
        dt = time.perf_counter() - t
        res[name] = {"seconds": round(dt, 2), "networks_per_second": round(len(hps) / dt, 3)}
    res["speedup"] = {e: round(res["sequential"]["seconds"] / res[e]["seconds"], 2) for e in engines}
    res.update(arch=args.arch, kwargs=dict(tmpl.kwargs), networks=len(hps), epochs=args.epochs)
    if args.json:
        print(json.dumps(res))
    else:
        rates = ", ".join(f"{e} {res[e]['networks_per_second']} nets/s ({res['speedup'][e]}x)" for e in engines)
        print(
            f"{args.arch} x{len(hps)} {dict(tmpl.kwargs)}, {args.epochs} epochs on digits: {rates}; sequential "
            f"{res['sequential']['networks_per_second']} nets/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
