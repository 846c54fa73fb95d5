"""``python -m symgraph.align``: weight matching of two model files, and the linear-mode-connectivity demo.

Run ``python -m symgraph.align --help`` for the options; :func:`main` is the same CLI in-process.

Example
-------
>>> from symgraph.align.__main__ import main
>>> main(["ref.pt", "model.pt", "--arch", "mlp", "--out", "aligned.pt"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..cli_util import (
    EXIT_OK,
    EXIT_VERIFY_FAILED,
    SMALL_MODEL_PARAMS,
    CLIError,
    OneLineArgumentParser,
    Spinner,
    atomic_open,
    atomic_write,
    held_stderr,
    parse_int_tuple,
    run_cli,
    torch_threads,
)

__all__ = ["main", "build_parser", "VERIFY_RTOL", "OUT_SUFFIXES"]

#: --verify passes when max|f_model(x) - f_aligned(x)| <= VERIFY_RTOL * max(1, max|f_model(x)|) in float64.
VERIFY_RTOL = 1e-9
#: File names --out accepts in alignment mode.
OUT_SUFFIXES = (".pt", ".pth", ".safetensors")

_EPILOG = """\
what it does:
  Finds the permutation P of MODEL's units that maximises the weight-matching objective
  <theta_REFERENCE, Phi(P) theta_MODEL> (Ainsworth et al., Git Re-Basin, ICLR 2023, Sec. 3.2) over the exact
  automorphism group of MODEL's parameter graph, and writes Phi(P) of MODEL's state_dict (parameters and
  buffers, e.g. BatchNorm running statistics) to --out. P is an element of the group, so the aligned model
  computes the same function as MODEL. Each symmetric factor of the group (hidden units of a layer, channels
  tied along a residual stream, attention heads with their q/k and v dimensions, GroupNorm groups and the
  channels inside them) is one linear assignment problem; factors are solved in turn until none improves.

examples:
  python -m symgraph.align ref.pt model.pt --arch mlp:hidden=64-64 --out aligned.pt
      two state_dicts of one registry architecture; writes the aligned state_dict
  python -m symgraph.align ref.safetensors model.safetensors --arch resnet --out aligned.safetensors --json
      one JSON object: objective_before/after, relative_gain, iterations, converged, seconds
  python -m symgraph.align ref.pt model.pt --trust --out aligned.pt --verify
      two pickled nn.Modules (only with --trust); --verify checks the aligned model's outputs
  python -m symgraph.align --demo lmc --arch cnn --out lmc/
      linear mode connectivity on scikit-learn's digits before and after alignment (PNG + JSON in lmc/)
  python -m symgraph.align --demo lmc --arch all --json

model files: the format is read from the content, as in python -m symgraph.automorphisms. state_dicts,
  checkpoints ({"state_dict": ...}), safetensors, TorchScript and torch.export archives need
  --arch NAME[:k=v,...] (both files share it: the same architecture is required); pickled modules need
  --trust. Files whose entries or shapes differ from the architecture, or from each other, are refused.

output: --out FILE (.pt/.pth: torch.save of the state_dict; .safetensors) is written atomically, and only
  when the alignment succeeded. In --demo mode --out is a directory (created if missing; default
  ./align_lmc) receiving lmc_<arch>.png and lmc_<arch>.json.

demo: --demo lmc trains two networks of the chosen architecture (mlp, cnn, resnet, vit, or all) from seeds
  0 and 1 on the digits (80/20 split, Adam, --epochs), then measures test/train loss and accuracy at 21
  points of theta(t) = (1 - t) theta_A + t theta_B, with theta_B as trained and aligned. The barrier is
  max_t [L(t) - ((1 - t) L(0) + t L(1))] of the test loss. BatchNorm networks are evaluated twice: with
  the running statistics of each interpolated network recomputed on the training data, and with the
  interpolated statistics; both barriers are reported.

exit codes: 0 ok; 1 --verify failed; 2 bad input (one line on stderr starting with 'error: '; nothing is
  written; set SYMGRAPH_DEBUG=1 for a traceback).
"""


def build_parser() -> OneLineArgumentParser:
    """The argument parser of ``python -m symgraph.align`` (see ``--help``)."""
    p = OneLineArgumentParser(
        prog="python -m symgraph.align",
        description="Align MODEL to REFERENCE by weight matching over MODEL's exact permutation-symmetry group "
        "(its units are permuted; its function is unchanged), or run the linear-mode-connectivity demo.",
        epilog=_EPILOG,
    )
    p.add_argument("reference", nargs="?", help="reference model file (the weights to match)")
    p.add_argument("model", nargs="?", help="model file to permute")
    p.add_argument(
        "--arch",
        metavar="NAME[:k=v,...]",
        help="architecture of weights-only files (both files); with --demo: mlp, cnn, resnet, vit or all",
    )
    p.add_argument("--out", metavar="PATH", help="aligned state_dict (.pt, .pth, .safetensors); with --demo: directory")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--trust", action="store_true", help="allow loading pickled nn.Modules (runs code from the files)")
    p.add_argument("--input-shape", metavar="1,3,32,32", help="example input shape, where shapes matter")
    p.add_argument("--max-iter", type=int, default=100, metavar="N", help="most passes over the factors (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order of factors in each pass (default: 0)")
    p.add_argument(
        "--verify", action="store_true", help="compare the aligned and the original model's outputs (exit 1 if off)"
    )
    p.add_argument("--demo", choices=("lmc",), help="run a demo instead: 'lmc' (linear mode connectivity on digits)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="--demo: training epochs (default: 30)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default: 1 for models under 1M parameters and for the demo)",
    )
    return p


# ------------------------------------------------------------------------------------------------ helpers
def _stdout_for(args: Any) -> contextlib.AbstractContextManager:
    # With --json, stdout carries exactly one object: anything else printed on the way goes to stderr.
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def _check_out_file(path: str | None) -> Path:
    if not path:
        raise CLIError("--out: give the file to write the aligned state_dict to (.pt, .pth or .safetensors)")
    out = Path(path)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise CLIError(f"--out: Expected a file name ending in {', '.join(OUT_SUFFIXES)} (got {path!r})")
    if out.is_dir():
        raise CLIError(f"--out: Expected a file (got the directory {path!r})")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"--out: directory {str(parent)!r} does not exist")
    return out


def _save_state(state: dict[str, torch.Tensor], out: Path) -> None:
    if out.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise CLIError("--out .safetensors needs the 'safetensors' package (pip install 'symgraph[io]')") from None
        atomic_write(out, save({k: v.detach().contiguous() for k, v in state.items()}))
    else:
        with atomic_open(out, "wb") as f:
            torch.save(state, f)


def _load(path: str, args: Any) -> tuple[nn.Module, str]:
    from ..io import load_model

    model, info = load_model(path, arch=args.arch, trust=args.trust, map_location="cpu")
    return model, f"{Path(path).name} ({info.format}{', arch ' + info.arch if info.arch else ''})"


def _verify(model: nn.Module, perm: torch.Tensor, input_shape) -> dict[str, Any]:
    import copy

    from ..permute import check_function_preservation
    from ..trace import resolve_example_input

    example = resolve_example_input(model, None, input_shape)
    gen = torch.Generator().manual_seed(0)
    shape = (4, *tuple(example.shape)[1:]) if example.dim() and example.shape[0] == 1 else tuple(example.shape)
    if example.is_floating_point():
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    else:
        vocab = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
        x = torch.randint(0, max(min(vocab) if vocab else 2, 1), shape, generator=gen)
    with torch.no_grad():
        out = copy.deepcopy(model).double().eval()(x)
    leaves = [t for t in (out if isinstance(out, list | tuple) else [out]) if isinstance(t, torch.Tensor)]
    scale = max((float(t.abs().max()) for t in leaves if t.numel()), default=0.0)
    diff = float(check_function_preservation(model, perm, x, input_shape=input_shape))
    tol = VERIFY_RTOL * max(1.0, scale)
    ok = math.isfinite(diff) and diff <= tol
    return {"max_abs_diff": diff if math.isfinite(diff) else None, "tolerance": tol, "verified": ok}


# ------------------------------------------------------------------------------------------------ modes
def _align_files(args: Any) -> int:
    if not args.reference or not args.model:
        raise CLIError("give two model files, REFERENCE and MODEL (or --demo lmc)")
    if args.epochs is not None:
        raise CLIError("--epochs belongs to --demo lmc")
    if args.max_iter < 1:
        raise CLIError(f"--max-iter: Expected a count >= 1 (got {args.max_iter})")
    out = _check_out_file(args.out)
    shape = parse_int_tuple(args.input_shape, "--input-shape") if args.input_shape else None
    from .matching import weight_matching

    t0 = time.perf_counter()
    with _stdout_for(args):
        with Spinner("loading the models"), held_stderr():
            reference, ref_label = _load(args.reference, args)
            model, model_label = _load(args.model, args)
        n_params = sum(p.numel() for p in model.parameters())
        threads = args.threads if args.threads is not None else (1 if n_params < SMALL_MODEL_PARAMS else None)
        with torch_threads(threads):
            with Spinner("aligning (automorphism group, then weight matching)"), held_stderr():
                res = weight_matching(reference, model, input_shape=shape, max_iter=args.max_iter, seed=args.seed)
            report: dict[str, Any] = {
                "reference": ref_label,
                "model": model_label,
                "out": str(out),
                **res.as_dict(),
            }
            report.pop("factors")
            failed = False
            if args.verify:
                with Spinner("verifying the aligned model"), held_stderr():
                    report.update(_verify(model, res.perm, shape))
                failed = not report["verified"]
        _save_state(res.aligned.state_dict(), out)
    report["seconds"]["cli_total"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(_align_text(report))
    return EXIT_VERIFY_FAILED if failed else EXIT_OK


def _align_text(r: dict[str, Any]) -> str:
    lines = [
        f"reference:  {r['reference']}",
        f"model:      {r['model']}",
        f"factors:    {r['num_factors']} symmetric factors of the model's automorphism group",
        f"objective:  {r['objective_before']:.6g} -> {r['objective_after']:.6g} "
        f"(relative gain {r['relative_gain']:+.4g})",
        f"passes:     {r['iterations']} ({'converged' if r['converged'] else 'stopped at --max-iter'}, "
        f"{r['steps']} steps accepted)",
        f"time:       {r['seconds']['total']:.2f} s (group {r['seconds'].get('group', 0):.2f} s, "
        f"matching {r['seconds'].get('descent', 0):.2f} s)",
    ]
    if "verified" in r:
        diff = "non-finite" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
        lines.append(
            f"verify:     max |f_model(x) - f_aligned(x)| = {diff} (float64, train and eval; threshold "
            f"{r['tolerance']:.3g}): {'passed' if r['verified'] else 'FAILED'}"
        )
    lines.append(f"written:    {r['out']}")
    return "\n".join(lines)


def _demo(args: Any) -> int:
    from .lmc import DEMO_ARCHS, LMCConfig, run_lmc, write_lmc

    if args.reference or args.model:
        raise CLIError("--demo lmc takes no model files")
    arch = args.arch or "mlp"
    names = list(DEMO_ARCHS) if arch == "all" else [arch]
    if any(n not in DEMO_ARCHS for n in names):
        raise CLIError(f"--arch: Expected one of {', '.join(DEMO_ARCHS)} or all with --demo lmc (got {arch!r})")
    if args.epochs is not None and args.epochs < 1:
        raise CLIError(f"--epochs: Expected a count >= 1 (got {args.epochs})")
    out_dir = Path(args.out or "align_lmc")
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out: Expected a directory with --demo (got the file {str(out_dir)!r})")
    config = LMCConfig() if args.epochs is None else LMCConfig(epochs=args.epochs)
    results = []
    with _stdout_for(args), torch_threads(args.threads if args.threads is not None else 1):
        for name in names:
            log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
            res = run_lmc(name, config, log=log)
            paths = write_lmc(res, out_dir)
            results.append((res, paths))
            if not args.json:
                print(_demo_text(res, paths))
    if args.json:
        print(
            json.dumps(
                {
                    "demo": "lmc",
                    "results": [
                        {k: v for k, v in res.as_dict().items() if k != "curves"} | {"files": paths}
                        for res, paths in results
                    ],
                }
            )
        )
    return EXIT_OK


def _demo_text(res, paths: dict[str, str]) -> str:
    lines = [
        f"{res.arch} ({res.spec}): test accuracy A {res.endpoint_acc['a']:.3f}, B {res.endpoint_acc['b']:.3f}; "
        f"trained in {res.seconds['train']:.1f} s, aligned in {res.seconds['align']:.2f} s",
        "  barrier (test loss)     naive    aligned",
    ]
    variants = sorted({k.split("/")[1] for k in res.barriers})
    names = {"plain": "(no BatchNorm)", "bn_recomputed": "BN recomputed", "bn_interpolated": "BN interpolated"}
    for v in variants:
        label = names[v]
        naive, aligned = res.barriers["naive/" + v]["test_loss"], res.barriers["aligned/" + v]["test_loss"]
        lines.append(f"  {label:<22s} {naive:8.4f} {aligned:10.4f}")
    lines.append(f"  wrote {paths['png']} and {paths['json']}")
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads: Expected a count >= 1 (got {args.threads})")
    if args.demo:
        return _demo(args)
    return _align_files(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 --verify failed, 2 bad input).

    Example
    -------
    >>> main(["--demo", "lmc", "--arch", "mlp"])  # doctest: +SKIP
    0
    """
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
