"""Cold start of the automorphism CLI against ``import torch`` alone, side by side (target: at most +0.5 s).

Runs, alternately and ``--repeat`` times each (best of each kept, since other jobs only ever add time):
``python -c "import torch"`` and ``python -m symgraph.automorphisms --example mlp``, each in a fresh
interpreter, and prints both wall times and their difference. Then lists the heavy modules the CLI run
imported (none of torch._dynamo, sympy, scipy, networkx, matplotlib, torch_geometric may load for this job).

    python benchmarks/cli_start.py [--repeat 3] [--example mlp] [--json]

Exit code 1 when the difference exceeds ``--budget`` seconds (default 0.5) or a heavy module was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from symgraph.cli_util import CLIError, OneLineArgumentParser, run_cli

HEAVY = ("torch._dynamo", "sympy", "scipy", "networkx", "matplotlib", "torch_geometric")
REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import sys
from symgraph.automorphisms.__main__ import main
code = main(sys.argv[1:])
heavy = {heavy!r}
print("HEAVY", ",".join(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CLIError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return wall


def main(argv=None) -> int:
    """Run the benchmark; exit code 0 within budget, 1 over budget, 2 bad input."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(prog="python benchmarks/cli_start.py", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command (best kept; default 3)")
    ap.add_argument("--example", default="mlp", help="the CLI's --example model (default mlp)")
    ap.add_argument("--budget", type=float, default=0.5, help="allowed extra seconds over import torch (0.5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise CLIError(f"--repeat: Expected a count >= 1 (got {args.repeat})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    torch_cmd = [sys.executable, "-c", "import torch"]
    cli_cmd = [sys.executable, "-m", "symgraph.automorphisms", "--example", args.example]
    torch_s, cli_s = [], []
    for _ in range(args.repeat):  # alternate, so that a burst of load hits both alike
        torch_s.append(_wall(torch_cmd, env))
        cli_s.append(_wall(cli_cmd, env))
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), "--example", args.example],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in probe.stderr.splitlines() if ln.startswith("HEAVY")), "HEAVY ?")
    heavy = [m for m in line.split(" ", 1)[1].split(",") if m] if " " in line else []
    best_t, best_c = min(torch_s), min(cli_s)
    row = {
        "import_torch_s": round(best_t, 3),
        "cli_s": round(best_c, 3),
        "extra_s": round(best_c - best_t, 3),
        "budget_s": args.budget,
        "repeat": args.repeat,
        "all_import_torch_s": [round(t, 3) for t in torch_s],
        "all_cli_s": [round(t, 3) for t in cli_s],
        "heavy_modules_imported": heavy,
        "python": sys.executable,
    }
    ok = row["extra_s"] <= args.budget and not heavy
    if args.json:
        print(json.dumps(row))
    else:
        print(f"python -c 'import torch'                         best of {args.repeat}: {best_t:.3f} s")
        print(f"python -m symgraph.automorphisms --example {args.example:<5s}  best of {args.repeat}: {best_c:.3f} s")
        verdict = "ok" if row["extra_s"] <= args.budget else "OVER"
        print(f"extra: {best_c - best_t:+.3f} s (budget {args.budget:.2f} s): {verdict}")
        print("heavy modules imported: " + (", ".join(heavy) if heavy else "none"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
