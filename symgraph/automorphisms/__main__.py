"""``python -m symgraph.automorphisms``: the exact permutation-symmetry group of a model, from the shell.

Run ``python -m symgraph.automorphisms --help`` for the options; :func:`main` is the same CLI in-process.

Example
-------
>>> from symgraph.automorphisms.__main__ import main
>>> main(["--example", "mlp", "--json"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
    add_device_argument,
    atomic_open,
    held_stderr,
    parse_int_tuple,
    resolve_device,
    run_cli,
    torch_threads,
)
from ..models import list_models
from ..progress import Progress
from .group import automorphism_group
from .report import soundness_report
from .verify import VERIFY_RTOL, VerifyResult, verify_automorphisms

__all__ = ["main", "build_parser", "verify_automorphisms", "VerifyResult", "VERIFY_RTOL"]

_EPILOG = """\
examples:
  python -m symgraph.automorphisms --example mlp --verify 8
      the group of a built-in MLP, checked on 8 random automorphisms (the README's main command)
  python -m symgraph.automorphisms --example cnn2d --json
      one JSON object: order (decimal string), log10_order, num_nodes, num_edges, generators, factors, seconds
  python -m symgraph.automorphisms weights.pt --arch mlp:hidden=64 --verify 4
      a state_dict (or .safetensors, TorchScript, torch.export .pt2 file) rebuilt from a registry architecture
  python -m symgraph.automorphisms model.pt2 --verify 4
      a torch.export program: its ATen graph is encoded directly (no --arch, no user code imported)
  python -m symgraph.automorphisms resnet18.pt --arch torchvision:resnet18:num_classes=10
  python -m symgraph.automorphisms weights.safetensors --arch timm:resnet18
      torchvision / timm architectures, built at random init (never downloading) and given the file's weights
  python -m symgraph.automorphisms hf:path/to/bert
      a Hugging Face folder: config.json, weights from model.safetensors or pytorch_model.bin beside it
  python -m symgraph.automorphisms mlp.pt --arch sequential:act=relu
      a plain nn.Sequential state_dict (keys 0.weight, 2.weight, ...) rebuilt from the file alone
  python -m symgraph.automorphisms weights.pt --arch mypkg.nets:MyNet:width=64
      your own class: imports mypkg.nets like python -m would (current directory first) and RUNS ITS CODE
  python -m symgraph.automorphisms model.pt --trust
      a whole pickled nn.Module: only with --trust, since unpickling can execute arbitrary code
  python -m symgraph.automorphisms --example vit --report --encoding paper
      the soundness report: where the paper's encoding admits automorphisms that change the function
  python -m symgraph.automorphisms --example resnet --save-generators gens.pt
      save the generators (node permutations, LongTensor [k, N]) with torch.save; .json also works

model files: the format is read from the content. state_dicts, checkpoints ({"state_dict": ...}),
  safetensors and TorchScript need --arch (TorchScript cannot be traced by torch.fx, so the architecture
  is rebuilt and its weights loaded into it); a torch.export .pt2 archive without --arch is vetted (no
  pickles, AOTInductor libraries, non-ATen ops or unsafe shape expressions; else --trust), loaded with
  torch.export.load and its graph encoded; pickled modules need --trust. Keys saved with a 'module.',
  'model.' or '_orig_mod.' prefix load after it is stripped (the output's notes say so).

architectures (--arch, and --example for random init):
  NAME[:k=v,...]                  symgraph's registry (see --example)
  torchvision:NAME[:k=v,...]      torchvision.models.get_model(NAME, weights=None, **kw)
  timm:NAME[:k=v,...]             timm.create_model(NAME, pretrained=False, **kw)
  hf:DIR                          transformers, from DIR/config.json (offline, no remote code)
  sequential:act=relu             nn.Sequential of Linear/Conv layers read from the state_dict's keys
  package.module:Class[:k=v,...]  your own class or factory; this imports and runs your module

input shapes: --input-shape wins; else the model's own record is used (example_input_shape, timm's
  pretrained_cfg, Hugging Face config, torchvision defaults) or its first layer (Linear; a convolution with
  adaptive pooling before the head gets 64 per spatial axis). The output says which.

verification: --verify N draws N random automorphisms, applies each to the parameters and buffers
  (permute_model) and compares outputs on random inputs in float64, in train and eval mode. It passes when
  max|f(x) - f_perm(x)| <= 1e-9 * max(1, max|f(x)|).

progress and time limits: work over ~5 s prints a line per stage on stderr ('... nauty: 412 vertices, 3 layers
  (6 s)'; --quiet silences them, --json output is unchanged); --time-limit S stops cleanly at S seconds,
  naming the stage (nauty runs in a child process that is killed at the deadline).

exit codes: 0 ok; 1 a verification (--verify or --report) failed; 2 bad input (one line on stderr
  starting with 'error: '; set SYMGRAPH_DEBUG=1 for a traceback).
"""


def build_parser() -> OneLineArgumentParser:
    """The argument parser of ``python -m symgraph.automorphisms`` (see ``--help``)."""
    names = list_models()
    p = OneLineArgumentParser(
        prog="python -m symgraph.automorphisms",
        description="Compute the exact permutation-symmetry group (automorphism group of the parameter or "
        "computation graph) of a PyTorch model with nauty, and optionally verify that random automorphisms "
        "leave the model's function unchanged.",
        epilog=_EPILOG,
    )
    p.add_argument(
        "model",
        nargs="?",
        help="model file (.pt/.pth state_dict or module, .pt2, .safetensors), or hf:DIR (a Hugging Face folder)",
    )
    p.add_argument(
        "--example",
        metavar="NAME[:k=v,...]",
        help=f"use a model at random init instead of a file: {', '.join(names)}, or any --arch form",
    )
    p.add_argument(
        "--arch",
        metavar="SPEC",
        help="architecture of a weights-only model file: NAME[:k=v,...], torchvision:NAME, timm:NAME, hf:DIR, "
        "sequential:act=relu or package.module:Class (imports and runs your module; see below)",
    )
    p.add_argument(
        "--graph",
        choices=("parameter", "computation"),
        default="parameter",
        help="which graph's automorphisms (default: %(default)s)",
    )
    p.add_argument("--input-shape", metavar="1,3,32,32", help="example input shape, where shapes matter")
    p.add_argument(
        "--encoding",
        choices=("sound", "paper"),
        default="sound",
        help="'paper' uses the paper's original encodings, to expose where they are unsound (default: %(default)s)",
    )
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="check function preservation on N random automorphisms (exit 1 if one fails)",
    )
    p.add_argument("--report", action="store_true", help="print the soundness report (exit 1 if unsound)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds of computation (graph build, reductions, nauty, quotient, lifting, "
        "verification; not the loading) with one 'error: time limit ...' line naming the stage, exit 2",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (they appear on work over ~5 s)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow loading a pickled nn.Module (runs code from the file: only for files you trust)",
    )
    p.add_argument("--save-generators", metavar="FILE", help="write the generators to FILE (.pt or .json)")
    p.add_argument("--seed", type=int, default=0, help="seed for random automorphisms and inputs (default: 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default: 1 for models under 1M parameters, else torch's default)",
    )
    add_device_argument(p)
    return p


# ------------------------------------------------------------------------------------------------ model
@dataclass
class _Loaded:
    model: nn.Module
    label: str
    source: dict[str, Any]
    input_shape: tuple[int, ...] | None


def _load(args) -> _Loaded:
    if args.model and args.example:
        raise CLIError("give either a model file or --example NAME, not both")
    shape = parse_int_tuple(args.input_shape, "--input-shape") if args.input_shape else None
    if args.example:
        if args.arch:
            raise CLIError("--arch describes a model file; with --example put options in the name: NAME:k=v,...")
        from ..io import build_arch

        model = build_arch(args.example).eval()
        return _Loaded(model, args.example, {"example": args.example}, shape)
    if not args.model:
        raise CLIError(f"give a model file or --example NAME (available: {', '.join(list_models())})")
    from ..io import load_model

    model, info = load_model(args.model, arch=args.arch, trust=args.trust, map_location="cpu")
    name = args.model[3:] if str(args.model).startswith("hf:") else args.model
    label = f"{Path(name).name} ({info.format}{', arch ' + info.arch if info.arch else ''})"
    return _Loaded(model, label, {"file": str(args.model), **info.as_dict()}, shape or info.example_input_shape)


def _input_source(model: nn.Module, shape: tuple[int, ...] | None) -> str:
    """Where the example input comes from, for the output (read before the graph is built)."""
    if shape is not None:
        return "given"
    from ..input_shapes import infer_example_input

    guess = infer_example_input(model)
    return f"inferred: {guess.source}" if guess is not None else "not inferred"


def _example_input(model: nn.Module, shape: tuple[int, ...] | None, required: bool = False) -> torch.Tensor | None:
    if not required and shape is None:
        return None  # parameter_graph infers it (trying larger sizes where an inferred one is too small)
    from ..trace import resolve_example_input

    return resolve_example_input(model, None, shape)


# ------------------------------------------------------------------------------------------------ output
def _check_save_path(path: str | None) -> str | None:
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in (".pt", ".pth", ".json"):
        raise CLIError(f"--save-generators: Expected a .pt, .pth or .json file name (got {path!r})")
    parent = Path(path).parent
    if not parent.is_dir():
        raise CLIError(f"--save-generators: directory {str(parent)!r} does not exist")
    return suffix


def _save_generators(path: str, suffix: str, aut: Any, meta: dict[str, Any]) -> None:
    gens = torch.as_tensor(aut.generators, dtype=torch.long)
    payload = {
        "generators": gens,
        "order": aut.order_decimal,
        "log10_order": float(aut.log10_order),
        "num_nodes": meta["num_nodes"],
        "factors": list(aut.factors),
        "graph": meta["graph"],
        "encoding": meta["encoding"],
        "model": meta["model"],
    }
    if suffix == ".json":
        payload["generators"] = gens.tolist()
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f)
    else:
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)


#: Longer exact orders are summarised in the text output (the JSON output always has every digit).
MAX_ORDER_DIGITS = 400


def _order_text(order: str) -> str:
    if len(order) <= MAX_ORDER_DIGITS:
        return order
    return f"{order[:12]}...{order[-12:]} ({len(order)} digits; every digit: --json)"


def _summary_text(out: dict[str, Any]) -> str:
    shape = "x".join(str(s) for s in out["input_shape"])
    lines = [
        f"model:      {out['model']}",
        *(f"note:       {n}" for n in out.get("notes", [])),
        f"input:      {shape} ({out['input_source']})",
        f"graph:      {out['graph']} graph ({out['encoding']} encoding): {out['num_nodes']} nodes, "
        f"{out['num_edges']} edges" + (f" (traced by {out['tracer']})" if out.get("tracer") else ""),
        f"|Aut|:      {_order_text(out['order'])}",
        f"log10|Aut|: {out['log10_order']:.4f}",
        f"generators: {out['generators']}",
        "factors:    " + ("; ".join(out["factors"]) if out["factors"] else "trivial group"),
        f"time:       {out['seconds']:.3f} s",
    ]
    if "verified" in out:
        diff = out["max_abs_diff"]
        diff_s = "non-finite" if diff is None else f"{diff:.3g}"
        status = "passed" if out["verified"] else "FAILED"
        lines.append(
            f"verify:     {out['verify']} random automorphisms, max |f(x) - f_perm(x)| = {diff_s} "
            f"(float64; threshold 1e-9 * max(1, output scale {out['output_scale']:.3g}) = "
            f"{out['tolerance']:.3g}): {status}"
        )
        lines.extend(f"            {f}" for f in out["verify_failures"][:5])
    return "\n".join(lines)


def _report_ok(report: Any, as_dict: dict[str, Any]) -> bool:
    for key in ("sound", "ok", "passed"):
        if hasattr(report, key):
            return bool(getattr(report, key))
        if key in as_dict:
            return bool(as_dict[key])
    return True


# ------------------------------------------------------------------------------------------------ main
def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.verify < 0:
        raise CLIError(f"--verify: Expected a count >= 0 (got {args.verify})")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads: Expected a count >= 1 (got {args.threads})")
    if args.time_limit is not None and not args.time_limit > 0:
        raise CLIError(f"--time-limit: Expected a positive number of seconds (got {args.time_limit:g})")
    suffix = _check_save_path(args.save_generators)
    device = resolve_device(args.device)
    with _stdout_for(args), Spinner("loading the model", enabled=not args.quiet), held_stderr():
        loaded = _load(args)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    threads = args.threads if args.threads is not None else (1 if n_params < SMALL_MODEL_PARAMS else None)
    # progress lines go to the real stderr (held_stderr() below holds what libraries print)
    with torch_threads(threads), Progress(args.time_limit, None if args.quiet else sys.stderr) as progress:
        return _run(args, loaded, suffix, device, progress)


def _stdout_for(args: Any) -> contextlib.AbstractContextManager:
    # With --json, stdout carries exactly one object: anything else printed on the way goes to stderr.
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def _run(args: Any, loaded: _Loaded, suffix: str | None, device: torch.device, progress: Progress) -> int:
    with _stdout_for(args):
        input_source = _input_source(loaded.model, loaded.input_shape)
        example = _example_input(loaded.model, loaded.input_shape, required=args.graph == "computation")

        t0 = time.perf_counter()
        with held_stderr():
            aut = automorphism_group(
                loaded.model, example_input=example, graph=args.graph, encoding=args.encoding, progress=progress
            )
            with progress.stage("lifting", "generators and factors to the graph's nodes"):
                base = dict(aut.as_dict())
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = dict(base)
        out.update(
            model=loaded.label,
            source=loaded.source,
            graph=args.graph,
            encoding=args.encoding,
            order=aut.order_decimal,
            log10_order=float(aut.log10_order),
            num_nodes=int(base.get("num_nodes", 0)),
            num_edges=int(base.get("num_edges", 0)),
            generators=int(torch.as_tensor(aut.generators).shape[0]),
            factors=list(aut.factors),
            seconds=seconds,
            tracer=(getattr(getattr(aut, "graph", None), "meta", None) or {}).get("tracer"),
        )
        if example is None:  # the input the graph was built with (remembered on the model by the trace)
            from ..trace import resolve_example_input

            example = resolve_example_input(loaded.model, None, None)
        out.update(input_shape=list(example.shape), input_source=input_source)
        notes = list(loaded.source.get("notes", []))
        if notes:
            out["notes"] = notes
        failed = False
        if args.verify:
            with held_stderr():
                res = verify_automorphisms(
                    loaded.model, aut, args.verify, example, seed=args.seed, device=device, progress=progress
                )
            out.update(res.as_dict())
            failed |= not res.verified
        report_text = None
        if args.report:
            with progress.stage("soundness report"), held_stderr():
                rep = soundness_report(
                    loaded.model.cpu(), example_input=example, encoding=args.encoding, n_random=args.verify or 8
                )
            rep_dict = rep.to_dict()
            out["soundness"] = rep_dict
            out["sound"] = _report_ok(rep, rep_dict)
            failed |= not out["sound"]
            report_text = rep.to_text()
        if suffix is not None:
            _save_generators(args.save_generators, suffix, aut, out)
            out["saved_generators"] = str(args.save_generators)
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(_summary_text(out))
        if report_text is not None:
            print()
            print(report_text)
        if suffix is not None:
            print(f"generators saved to {args.save_generators}")
    return EXIT_VERIFY_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a verification failed, 2 bad input).

    Example
    -------
    >>> main(["--example", "mlp", "--verify", "2"])  # doctest: +SKIP
    0
    """
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
