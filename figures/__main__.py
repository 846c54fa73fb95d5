"""``python -m figures [--only NAME[,NAME]] [--format png,svg] [--out DIR]``: write the figures.

Each figure is drawn from real symgraph objects and written atomically (temp file, then ``os.replace``).
A figure that fails is reported with its traceback, the others are still written, and the exit code is 1.
Bad options are one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence

from symgraph.cli_util import CLIError, OneLineArgumentParser, run_cli


def _parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(prog="python -m figures", description=__doc__.splitlines()[0].split(": ", 1)[-1])
    p.add_argument("--only", default=None, help="comma-separated figure names (fig1, fig2, ...) or file stems")
    p.add_argument("--format", default="png,svg", help="comma-separated formats among png, svg, pdf (default png,svg)")
    p.add_argument("--out", default=None, help="output folder (default figures/out)")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the figures; returns the exit code (0 ok, 1 a figure failed, 2 bad input)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import DEFAULT_OUT, by_name, figure_modules, save_figure

    if args.list:
        for mod in figure_modules():
            print(f"{mod.NAME:6s} {mod.STEM:32s} {mod.TITLE}")
        return 0
    try:
        todo = [by_name(n.strip()) for n in args.only.split(",")] if args.only else figure_modules()
    except KeyError as err:
        raise CLIError(err.args[0]) from None
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise CLIError(f"Expected formats among png, svg, pdf (got {args.format!r})")
    out = args.out or DEFAULT_OUT
    failed = []
    for i, mod in enumerate(todo, 1):
        t0 = time.perf_counter()
        prefix = f"[{i}/{len(todo)}] {mod.NAME} ({mod.TITLE})"
        notes: list[str] = []
        fig = None
        try:
            fig = mod.make(notes)
            paths = save_figure(fig, mod.STEM, out, formats, dpi=args.dpi)
        except Exception:  # one broken figure must not cost the others; the exit code reports it
            print(f"{prefix}: FAILED", flush=True)
            traceback.print_exc()
            failed.append(mod.NAME)
            continue
        finally:
            if fig is not None:
                plt.close(fig)
        for note in notes:
            print(f"    note: {note}", flush=True)
        print(f"{prefix}: wrote {', '.join(paths)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if failed:
        print(f"error: {len(failed)} figure(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
