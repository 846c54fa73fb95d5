"""CLI: ``python -m gmn.zoo generate --family diverse --n 200 --out runs/zoo``.

Generation is resumable: run the same command again after an interruption (even SIGKILL) and it continues
where it stopped, losing at most the group in progress and duplicating nothing.
"""

from __future__ import annotations

import json
import sys

from symgraph.cli_util import CLIError, OneLineArgumentParser, add_device_argument, resolve_device, run_cli

from .families import FAMILIES


def main(argv=None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(prog="python -m gmn.zoo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="train a zoo of image classifiers (resumable)")
    g.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="diverse",
        help="diverse: CNN2D/CNN1D/DeepSets/ResNet/ViT; varying-cnn: CNN2D only (paper Table 5)",
    )
    g.add_argument("--n", type=int, default=200, help="number of networks (default 200)")
    g.add_argument("--out", required=True, help="output directory (shards + manifest)")
    g.add_argument(
        "--data",
        default="digits",
        help="'digits' (scikit-learn, bundled; default) or 'cifar10:/path/to/cifar-10-batches-py'",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--group-size", type=int, default=32, help="networks trained at once with vmap")
    add_device_argument(g)
    g.add_argument("--train-subset", type=int, default=None, help="train on the first N images only (quick runs)")
    g.add_argument("--sequential", action="store_true", help="train one network at a time (no vmap)")
    g.add_argument(
        "--engine",
        default="vmap",
        choices=("vmap", "grouped", "grouped-cl"),
        help="vectorised training: vmap, or grouped convolutions for the CNN families (1.3x vmap on cnn2d)",
    )
    g.add_argument(
        "--part",
        default="0/1",
        metavar="R/W",
        help="train only chunk k with k %% W == R: start W processes (R = 0..W-1) on one --out to split the work; "
        "run once more with 0/1 (nothing left to train) to rewrite the manifest (default 0/1)",
    )
    g.add_argument("--json", action="store_true", help="print the manifest as JSON at the end")
    s = sub.add_parser("summary", help="print a zoo's size and accuracy range")
    s.add_argument("out")
    s.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        from .generate import generate_zoo, load_zoo

        if args.cmd == "generate":
            device = str(resolve_device(args.device))
            if args.n < 1:
                raise CLIError(f"--n: Expected at least 1 network (got {args.n})")
            try:
                part = tuple(int(x) for x in args.part.split("/"))
                if len(part) != 2:
                    raise ValueError
            except ValueError:
                raise CLIError(f"--part: Expected R/W, e.g. 1/4 (got {args.part!r})") from None
            out = generate_zoo(
                args.out,
                args.family,
                args.n,
                args.seed,
                args.data,
                args.epochs,
                args.batch_size,
                args.group_size,
                device,
                vectorize=not args.sequential,
                engine=args.engine,
                train_subset=args.train_subset,
                part=part,
            )
            manifest = json.loads((out / "manifest.json").read_text())
            print(
                json.dumps(manifest)
                if args.json
                else f"{manifest['networks_done']}/{manifest['networks_total']} networks in {out}"
            )
            return 0
        recs = load_zoo(args.out)
        if not recs:
            raise CLIError(f"Expected shards in {args.out} (got none)")
        accs = [r["test_acc"] for r in recs]
        by_arch: dict[str, int] = {}
        for r in recs:
            by_arch[r["arch"]] = by_arch.get(r["arch"], 0) + 1
        info = {"networks": len(recs), "test_acc_min": min(accs), "test_acc_max": max(accs), "by_arch": by_arch}
        print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    except ValueError as exc:  # bad data specs and zoo settings (OSError and library errors: run_cli)
        raise CLIError(str(exc)) from exc


if __name__ == "__main__":
    sys.exit(main())
