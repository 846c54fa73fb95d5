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
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    one_line,
    parse_int_tuple,
    resolve_device,
    run_cli,
    torch_threads,
)
from ..errors import SymgraphError

__all__ = ["main", "build_parser", "verify_automorphisms", "VerifyResult", "VERIFY_RTOL"]

#: A permuted model passes verification when max|f(x) - f_perm(x)| <= VERIFY_RTOL * max(1, max|f(x)|),
#: computed in float64: exact symmetries leave only floating-point reassociation error (about 1e-15).
VERIFY_RTOL = 1e-9

_EPILOG = """\
examples:
  python -m symgraph.automorphisms --example mlp --verify 8
      the group of a built-in MLP, checked on 8 random automorphisms (the README's main command)
  python -m symgraph.automorphisms --example cnn2d --json
      one JSON object: order (decimal string), log10_order, num_nodes, num_edges, generators, factors, seconds
  python -m symgraph.automorphisms weights.pt --arch mlp:hidden=64 --verify 4
      a state_dict (or .safetensors, TorchScript, torch.export .pt2 file) rebuilt from a registry architecture
  python -m symgraph.automorphisms model.pt --trust
      a whole pickled nn.Module: only with --trust, since unpickling can execute arbitrary code
  python -m symgraph.automorphisms --example vit --report --encoding paper
      the soundness report: where the paper's encoding admits automorphisms that change the function
  python -m symgraph.automorphisms --example resnet --save-generators gens.pt
      save the generators (node permutations, LongTensor [k, N]) with torch.save; .json also works

model files: the format is read from the content. state_dicts, checkpoints ({"state_dict": ...}),
  safetensors, TorchScript and torch.export archives need --arch NAME[:k=v,...] (TorchScript and ATen
  graphs cannot be traced by torch.fx, so the architecture is rebuilt and their weights loaded into it);
  pickled modules need --trust.

verification: --verify N draws N random automorphisms, applies each to the parameters and buffers
  (permute_model) and compares outputs on random inputs in float64, in train and eval mode. It passes when
  max|f(x) - f_perm(x)| <= 1e-9 * max(1, max|f(x)|).

exit codes: 0 ok; 1 a verification (--verify or --report) failed; 2 bad input (one line on stderr
  starting with 'error: '; set SYMGRAPH_DEBUG=1 for a traceback).
"""


def _api(name: str) -> Any:
    """A public function of symgraph (re-exported at top level, or defined in symgraph.automorphisms)."""
    import symgraph

    fn = getattr(symgraph, name, None)
    if fn is None:
        from .. import automorphisms as pkg

        fn = getattr(pkg, name, None)
    if fn is None:
        raise CLIError(f"symgraph.{name} is not available in this installation")
    return fn


def _available_models() -> list[str]:
    try:
        from ..models import list_models

        return list(list_models())
    except ImportError:
        return []


def build_parser() -> OneLineArgumentParser:
    """The argument parser of ``python -m symgraph.automorphisms`` (see ``--help``)."""
    names = _available_models()
    p = OneLineArgumentParser(
        prog="python -m symgraph.automorphisms",
        description="Compute the exact permutation-symmetry group (automorphism group of the parameter or "
        "computation graph) of a PyTorch model with nauty, and optionally verify that random automorphisms "
        "leave the model's function unchanged.",
        epilog=_EPILOG,
    )
    p.add_argument("model", nargs="?", help="model file (.pt/.pth state_dict or module, .pt2, .safetensors)")
    p.add_argument(
        "--example",
        metavar="NAME[:k=v,...]",
        help="use a built-in model instead of a file" + (f" (available: {', '.join(names)})" if names else ""),
    )
    p.add_argument("--arch", metavar="NAME[:k=v,...]", help="architecture of a weights-only model file")
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
        names = _available_models()
        raise CLIError("give a model file or --example NAME" + (f" (available: {', '.join(names)})" if names else ""))
    from ..io import load_model

    model, info = load_model(args.model, arch=args.arch, trust=args.trust, map_location="cpu")
    label = f"{Path(args.model).name} ({info.format}{', arch ' + info.arch if info.arch else ''})"
    return _Loaded(model, label, {"file": str(args.model), **info.as_dict()}, shape or info.example_input_shape)


def _example_input(model: nn.Module, shape: tuple[int, ...] | None, required: bool = False) -> torch.Tensor | None:
    if not required and shape is None and getattr(model, "example_input_shape", None) is None:
        return None  # parameter_graph infers it for models that start with nn.Linear
    from ..trace import resolve_example_input

    return resolve_example_input(model, None, shape)


def _random_inputs(model: nn.Module, example: torch.Tensor, gen: torch.Generator, batch: int) -> torch.Tensor:
    shape = tuple(example.shape)
    if shape and shape[0] == 1:
        shape = (batch,) + shape[1:]  # BatchNorm in train mode needs more than one sample
    if example.is_floating_point():
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    vocab = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    high = min(vocab) if vocab else int(example.max().item()) + 1
    return torch.randint(0, max(high, 1), shape, generator=gen, dtype=example.dtype)


def _output_scale(model: nn.Module, x: torch.Tensor) -> float:
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = m(x)
    leaves = [t for t in _flatten(out) if isinstance(t, torch.Tensor) and t.numel() and t.is_floating_point()]
    return max((float(t.abs().max()) for t in leaves), default=0.0)


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, list | tuple):
        return [y for x in obj for y in _flatten(x)]
    if isinstance(obj, dict):
        return [y for x in obj.values() for y in _flatten(x)]
    return [obj]


# ------------------------------------------------------------------------------------------------ verify
@dataclass
class VerifyResult:
    """Outcome of :func:`verify_automorphisms`: the largest output difference and whether all passed."""

    n: int
    max_abs_diff: float
    output_scale: float
    tolerance: float
    failures: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.failures and math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {
            "verify": self.n,
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else None,
            "output_scale": self.output_scale,
            "tolerance": self.tolerance,
            "verified": self.verified,
            "verify_failures": self.failures,
        }


def verify_automorphisms(
    model: nn.Module,
    aut: Any,
    n: int,
    example_input: torch.Tensor,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rtol: float = VERIFY_RTOL,
) -> VerifyResult:
    """Apply ``n`` random elements of ``aut`` to ``model`` and measure the largest output change.

    A permutation fails when the group does not contain it, or when the permuted model's outputs differ by
    more than ``rtol * max(1, max|f(x)|)`` (float64; train and eval mode, dropout off, buffers compared too).
    Works for groups of parameter graphs (through :func:`symgraph.check_function_preservation`) and of
    computation graphs (Phi applied to the computation graph's edges, read back as a state_dict).

    Example
    -------
    >>> import torch, symgraph
    >>> from symgraph.models import build_model
    >>> m = build_model("mlp")
    >>> x = torch.zeros(1, *m.example_input_shape[1:])
    >>> res = verify_automorphisms(m, symgraph.automorphism_group(m, example_input=x), 2, x)
    >>> res.verified
    True
    """
    gen = torch.Generator().manual_seed(int(seed))
    dev = torch.device(device)
    model = model.to(dev)
    x = _random_inputs(model, example_input, gen, batch=4).to(dev)
    try:
        scale = _output_scale(model, x)
    except Exception:
        x = _random_inputs(model, example_input, gen, batch=1).to(dev)  # the leading axis was not a batch
        scale = _output_scale(model, x)
    tol = rtol * max(1.0, scale)
    graph = aut.graph
    is_param_graph = getattr(graph, "kind", "parameter") == "parameter"
    if is_param_graph:
        graph = _float64_parameter_graph(model, graph, example_input)
    else:
        # a computation graph's group acts on its sharing graph, whose first nodes are the neurons
        graph = getattr(aut, "computation_graph", None) or graph
    check_function_preservation = _api("check_function_preservation")
    worst = 0.0
    failures: list[str] = []
    for i in range(n):
        perm = aut.random_element(generator=gen)
        if not bool(aut.contains(perm)):
            failures.append(f"#{i}: the permutation drawn is not an automorphism of the graph")
        try:
            if is_param_graph:
                diff = float(check_function_preservation(model, perm, x, graph=graph))
            else:
                diff = _graph_permutation_diff(model, graph, perm[: graph.num_nodes], x)
        except (SymgraphError, ValueError) as exc:
            failures.append(f"#{i}: could not apply it: {one_line(exc)}")
            continue
        if not math.isfinite(diff):
            worst = math.inf
            failures.append(f"#{i}: the permutation has no action on the weights (output difference inf)")
        else:
            worst = max(worst, diff)
            if diff > tol:
                failures.append(f"#{i}: max |f(x) - f_perm(x)| = {diff:.3g} > {tol:.3g}")
    return VerifyResult(n=n, max_abs_diff=worst, output_scale=scale, tolerance=tol, failures=failures)


def _float64_parameter_graph(model: nn.Module, graph: Any, example_input: torch.Tensor) -> Any:
    """The parameter graph of a float64 copy of ``model``, with the same structure as ``graph``.

    The comparison runs in float64, and a graph built from a float32 model reads state entries back in its
    slots' dtype, which would round what it carries (e.g. the running statistics compared in train mode).
    """
    if all(s.dtype == torch.float64 for s in graph.slots if s.dtype.is_floating_point):
        return graph
    from ..build import parameter_graph

    ex = example_input.double() if example_input.is_floating_point() else example_input
    encoding = getattr(graph, "meta", {}).get("encoding", "sound")
    g64 = parameter_graph(copy.deepcopy(model).cpu().double(), example_input=ex.cpu(), encoding=encoding)
    if g64.num_nodes != graph.num_nodes or not torch.equal(g64.edge_index, graph.edge_index):
        raise SymgraphError("internal: the float64 parameter graph differs in structure from the group's graph")
    return g64


def _graph_permutation_diff(model: nn.Module, graph: Any, perm: torch.Tensor, x: torch.Tensor) -> float:
    """Max output difference after applying Phi(perm) through ``graph`` (e.g. a computation graph)."""
    try:
        state = graph.permute(perm, check=False).to_state_dict()
    except ValueError:
        return math.inf  # no induced edge permutation, or weight sharing broken: no Phi exists
    base = copy.deepcopy(model).double()
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(state)
    permuted = permuted.double()
    xd = x.double() if x.is_floating_point() else x
    worst = 0.0
    for mode in ("train", "eval"):
        outs = []
        for m in (base, permuted):
            m.train(mode == "train")
            for mod in m.modules():  # dropout masks would differ between the two: compare without them
                if isinstance(mod, nn.modules.dropout._DropoutNd):
                    mod.eval()
            with torch.no_grad():
                outs.append([t for t in _flatten(m(xd)) if isinstance(t, torch.Tensor)])
        for a, b in zip(*outs, strict=True):
            if a.numel():
                worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst


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
        "order": str(aut.order),
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


def _summary_text(out: dict[str, Any]) -> str:
    lines = [
        f"model:      {out['model']}",
        f"graph:      {out['graph']} graph ({out['encoding']} encoding): {out['num_nodes']} nodes, "
        f"{out['num_edges']} edges",
        f"|Aut|:      {out['order']}",
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
    suffix = _check_save_path(args.save_generators)
    device = resolve_device(args.device)
    with _stdout_for(args), Spinner("loading the model"), held_stderr():
        loaded = _load(args)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    threads = args.threads if args.threads is not None else (1 if n_params < SMALL_MODEL_PARAMS else None)
    with torch_threads(threads):
        return _run(args, loaded, suffix, device)


def _stdout_for(args: Any) -> contextlib.AbstractContextManager:
    # With --json, stdout carries exactly one object: anything else printed on the way goes to stderr.
    return contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()


def _run(args: Any, loaded: _Loaded, suffix: str | None, device: torch.device) -> int:
    with _stdout_for(args):
        example = _example_input(loaded.model, loaded.input_shape, required=args.graph == "computation")

        t0 = time.perf_counter()
        with Spinner(f"computing the automorphism group of the {args.graph} graph"), held_stderr():
            aut = _api("automorphism_group")(
                loaded.model, example_input=example, graph=args.graph, encoding=args.encoding
            )
            base = dict(aut.as_dict())
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = dict(base)
        out.update(
            model=loaded.label,
            source=loaded.source,
            graph=args.graph,
            encoding=args.encoding,
            order=str(aut.order),
            log10_order=float(aut.log10_order),
            num_nodes=int(base.get("num_nodes", 0)),
            num_edges=int(base.get("num_edges", 0)),
            generators=int(torch.as_tensor(aut.generators).shape[0]),
            factors=list(aut.factors),
            seconds=seconds,
        )
        failed = False
        if args.verify:
            if example is None:
                from ..trace import resolve_example_input

                example = resolve_example_input(loaded.model, None, None)
            with Spinner(f"verifying {args.verify} random automorphisms"), held_stderr():
                res = verify_automorphisms(loaded.model, aut, args.verify, example, seed=args.seed, device=device)
            out.update(res.as_dict())
            failed |= not res.verified
        report_text = None
        if args.report:
            soundness_report = _api("soundness_report")
            with Spinner("building the soundness report"), held_stderr():
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
