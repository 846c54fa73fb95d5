"""CLI: ``python -m proofs_checks [--quick] [--json] [--only NAME ...] [--seed S]``.

Prints one row per check (proposition, one-line statement, cases tried, largest error, PASS/FAIL, whether the
negative control was caught) and exits 1 if any check failed; bad options are one ``error:`` line and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from symgraph.cli_util import OneLineArgumentParser, run_cli

from . import load_all
from .common import REGISTRY, format_table, results_json, run_checks

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; returns the exit code (0 all passed, 1 a check failed, 2 bad input)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    load_all()
    p = OneLineArgumentParser(prog="python -m proofs_checks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI sizes (whole run well under a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(REGISTRY), help="run only these checks")
    p.add_argument("--seed", type=int, default=0, help="seed of the random architectures and weights")
    args = p.parse_args(argv)
    # tiny tensors: one thread avoids OpenMP spin-waiting on a shared, loaded machine (10x faster here)
    torch.set_num_threads(1)
    results = run_checks(args.only, quick=args.quick, seed=args.seed)
    print(results_json(results) if args.json else format_table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
