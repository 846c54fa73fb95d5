"""The coverage table: which real models symgraph encodes soundly, measured one model at a time.

``python -m symgraph.coverage [--source torchvision,timm,hf] [--max-params 1e8] [--json] [--out FILE]``
builds every model of the chosen sources at random init (never downloading), computes its parameter graph
and automorphism group, compares the group's order with the analytic order the encoders declare, and applies
random automorphisms to the model (float64, eval and train mode) to measure the largest output change. A
negative control swaps two input nodes (not an automorphism): the checker must see the output change, or the
function check of that model proves nothing.

Each model runs in its own subprocess with a time limit (a crash, a hang or an out-of-memory in one model
never stops the table); the results go to a JSON-lines file, one line per model, written as each finishes, so
an interrupted run resumes where it stopped (``--resume``, the default when the file exists).

Sources:

- ``torchvision``: ``torchvision.models.list_models(module=torchvision.models)`` (classification), at most
  ``--max-params`` parameters (counted on the meta device before the model is built);
- ``timm``: the smallest variant of each family the project tracks (:data:`TIMM_MODELS`);
- ``hf``: Hugging Face transformers models built from small configurations (:data:`HF_MODELS`);
- ``symgraph``: this package's own example models (:func:`symgraph.models.list_models`; not in the default
  ``--source``).

Example
-------
>>> row = run_one("symgraph:mlp", verify=1)
>>> row["status"], row["analytic_equal"], row["control_caught"]
('ok', True, True)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .cli_util import CLIError, OneLineArgumentParser, atomic_write, one_line, run_cli

__all__ = ["TIMM_MODELS", "HF_MODELS", "model_names", "build", "run_one", "main"]

SOURCES = ("torchvision", "timm", "hf", "symgraph")

#: The smallest variant of each timm family tracked by issue 20's coverage list.
TIMM_MODELS = (
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "regnetx_002",
    "regnety_002",
    "mixer_s32_224",
    "resmlp_12_224",
    "poolformer_s12",
    "levit_128s",
    "cait_xxs24_224",
    "xcit_nano_12_p16_224",
    "mobilevit_xxs",
    "edgenext_xx_small",
    "ghostnet_050",
    "lcnet_050",
    "dla46_c",
    "nf_resnet26",
    "fastvit_t8",
    "caformer_s18",
    "eva02_tiny_patch14_224",
    "convmixer_768_32",
    "repvgg_a0",
)

_TEXT = {"vocab_size": 100, "max_position_embeddings": 64}
_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
#: name -> (configuration class, model class, configuration keywords): small, never downloaded.
HF_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": (
        "BertConfig",
        "BertModel",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **_TEXT),
    ),
    "roberta": (
        "RobertaConfig",
        "RobertaModel",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **_TEXT),
    ),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertModel",
        dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **_TEXT),
    ),
    "albert": (
        "AlbertConfig",
        "AlbertModel",
        dict(
            embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **_TEXT
        ),
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **_TEXT,
        ),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **_TEXT,
        ),
    ),
    "t5-encoder": (
        "T5Config",
        "T5EncoderModel",
        dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=100),
    ),
    "vit": (
        "ViTConfig",
        "ViTModel",
        _VISION,
    ),
    "clip-vision": (
        "CLIPVisionConfig",
        "CLIPVisionModel",
        _VISION,
    ),
    "whisper-encoder": (
        "WhisperConfig",
        "WhisperEncoder",
        dict(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=16,
            vocab_size=100,
        ),
    ),
}


def model_names(source: str) -> list[str]:
    """The models of ``source``, as ``source:name`` strings."""
    if source == "torchvision":
        import torchvision

        return [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    if source == "timm":
        return [f"timm:{n}" for n in TIMM_MODELS]
    if source == "hf":
        return [f"hf:{n}" for n in HF_MODELS]
    if source == "symgraph":
        from .models import list_models

        return [f"symgraph:{n}" for n in list_models()]
    raise CLIError(f"--source: Expected some of {', '.join(SOURCES)} (got {source!r})")


def _constructor(name: str) -> Callable[[], nn.Module]:
    source, _, short = name.partition(":")
    if source == "torchvision":
        import torchvision

        builder = torchvision.models.get_model_builder(short)
        return lambda: builder(weights=None)
    if source == "timm":
        import timm

        return lambda: timm.create_model(short, pretrained=False)
    if source == "hf":
        import transformers

        from .arch import quiet_transformers

        if short not in HF_MODELS:
            raise CLIError(f"Expected a model among {', '.join(HF_MODELS)} (got {short!r})")
        config_cls, model_cls, kwargs = HF_MODELS[short]
        config = getattr(transformers, config_cls)(**kwargs)
        if model_cls == "WhisperEncoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
        else:
            cls = getattr(transformers, model_cls)

        def make() -> nn.Module:
            with quiet_transformers():
                return cls(config)

        return make
    if source == "symgraph":
        from .models import build_model

        return lambda: build_model(short)
    raise CLIError(f"Expected a model name like torchvision:resnet18, timm:resnet18 or hf:bert (got {name!r})")


def count_parameters(name: str) -> int:
    """Number of parameters of ``name``, counted on the meta device where its constructor allows."""
    make = _constructor(name)
    try:
        with torch.device("meta"):
            model = make()
    except Exception:  # a constructor that initialises with data (e.g. copies out of a tensor): build it for real
        model = make()
    return sum(p.numel() for p in model.parameters())


def build(name: str, seed: int = 0) -> nn.Module:
    """``name`` at random init (seeded), in eval mode."""
    make = _constructor(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def perturb_constant_parameters(model: nn.Module, seed: int = 0) -> int:
    """Add noise to every parameter whose entries are all equal (zero-initialised heads of timm's MLP-Mixer and
    ResMLP, LayerScale's constant init, BatchNorm's ones): with them, permuted units can compute identical
    values and a function check proves nothing (the input-swap control would report "unchecked"). The
    architecture, and so the graph and its group, is unchanged. Returns how many tensors were perturbed."""
    gen = torch.Generator().manual_seed(seed + 1)
    count = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and p.is_floating_point() and bool((p == p.reshape(-1)[0]).all()):
                scale = max(abs(float(p.reshape(-1)[0])), 1e-2) * 0.5
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
                count += 1
    return count


def _input_swap(graph) -> torch.Tensor | None:
    """Swap two input nodes (or, with one input, two output nodes): it moves fixed nodes, so it is not an
    automorphism, and a function check that does not see the output change proves nothing. None when the graph
    has fewer than two of both."""
    for nodes in (graph.input_nodes, graph.output_nodes):
        if nodes.numel() >= 2:
            perm = torch.arange(graph.num_nodes)
            a, b = int(nodes[0]), int(nodes[1])
            perm[a], perm[b] = b, a
            return perm
    return None


def run_one(name: str, verify: int = 3, seed: int = 0, max_params: float = math.inf) -> dict[str, Any]:
    """One row of the table for ``name`` (in this process). Errors are recorded in the row, not raised."""
    from . import automorphism_group, check_function_preservation
    from .automorphisms import verify_automorphisms
    from .errors import SymgraphError
    from .symmetry import analytic_order
    from .trace import resolve_example_input

    row: dict[str, Any] = {"model": name}
    stage = "count"
    try:
        row["params"] = count_parameters(name)
        if row["params"] > max_params:
            row["status"] = "skipped"
            row["error"] = f"{row['params']:,} parameters > --max-params {max_params:g}"
            return row
        stage = "build model"
        model = build(name, seed)
        row["constant_params_perturbed"] = perturb_constant_parameters(model, seed)
        stage = "graph and group"
        t0 = time.perf_counter()
        aut = automorphism_group(model)
        row["group_s"] = time.perf_counter() - t0
        g = aut.graph
        row.update(nodes=int(g.num_nodes), edges=int(g.num_edges), tracer=(g.meta or {}).get("tracer", "fx"))
        row["log10_aut"] = float(aut.log10_order)
        stage = "analytic order"
        try:
            row["analytic_equal"] = bool(analytic_order(g) == aut.order)
        except SymgraphError as exc:
            row["analytic_equal"] = None
            row["analytic_error"] = one_line(exc)
        stage = "function check"
        example = resolve_example_input(model, None, None)
        row["input_shape"] = list(example.shape)
        res = verify_automorphisms(model, aut, verify, example, seed=seed)
        row.update(max_output_change=res.max_abs_diff, tolerance=res.tolerance, verified=res.verified)
        if res.failures:
            row["verify_failures"] = res.failures[:3]
        stage = "negative control"
        swap = _input_swap(g)
        if swap is not None:
            x = torch.randn((4, *example.shape[1:]), generator=torch.Generator().manual_seed(seed))
            if not example.is_floating_point():
                x = torch.randint(0, int(example.max()) + 2, (4, *example.shape[1:]))
            diff = check_function_preservation(model, swap, x, graph=aut)
            row["control_caught"] = bool(not math.isfinite(diff) or diff > res.tolerance)
        if not row["verified"]:
            row["status"] = "unsound"  # a random element of the computed group changed the function
        elif row.get("control_caught") is False:
            row["status"] = "unchecked"  # the function check did not see a non-automorphism: it proves nothing
        else:
            row["status"] = "ok" if row["analytic_equal"] else "incomplete"
    except Exception as exc:  # a user's model can make torch raise anything: record it, one line
        row["status"] = "error"
        row["stage"] = stage
        row["error"] = f"{type(exc).__name__}: {one_line(exc)}"
    return row


# ------------------------------------------------------------------------------------------------ table
_COLUMNS = (
    "model",
    "params",
    "nodes",
    "edges",
    "tracer",
    "group_s",
    "log10_aut",
    "analytic_equal",
    "max_output_change",
)


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None:
        return "-"
    if col == "params":
        return f"{v / 1e6:.2f}M"
    if col in ("group_s",):
        return f"{v:.1f}"
    if col == "log10_aut":
        return f"{v:.1f}"
    if col == "max_output_change":
        return f"{v:.1e}"
    if col == "analytic_equal":
        return "yes" if v else "NO"
    return str(v)


def table_text(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (one per model) and a summary line per source."""
    head = list(_COLUMNS) + ["status / error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = r.get("status", "?")
        if r.get("error"):
            status += f": {r.get('stage', '')} — {r['error'][:160]}".replace("|", "/")
        lines.append("| " + " | ".join(_cell(r, c) for c in _COLUMNS) + f" | {status} |")
    lines.append("")
    lines.append(summary_text(rows))
    return "\n".join(lines)


_STATUSES = ("ok", "unsound", "incomplete", "unchecked", "error", "skipped")


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per source: how many models are ok / unsound / incomplete / error / skipped."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        src = r["model"].partition(":")[0]
        d = out.setdefault(src, dict.fromkeys(("total", *_STATUSES), 0))
        d[r.get("status", "error")] = d.get(r.get("status", "error"), 0) + 1
        d["total"] += r.get("status") != "skipped"
    return out


def summary_text(rows: Sequence[dict[str, Any]]) -> str:
    parts = []
    for src, d in summary(rows).items():
        pct = 100.0 * d["ok"] / d["total"] if d["total"] else 0.0
        parts.append(
            f"{src}: {d['ok']}/{d['total']} ok ({pct:.0f}%), {d['unsound']} unsound, {d['incomplete']} incomplete, "
            f"{d['unchecked']} unchecked, {d['error']} errors, {d['skipped']} skipped"
        )
    return "\n".join(parts)


def _read_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[r["model"]] = r
    return rows


def _write_rows(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in rows.values()))


def _child(name: str, args) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "symgraph.coverage", "--one", name, "--verify", str(args.verify)]
    cmd += ["--max-params", repr(args.max_params), "--seed", str(args.seed)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_limit, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "error", "stage": "time limit", "error": f"over {args.time_limit:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": name, "status": "error", "stage": "subprocess", "error": f"exit {proc.returncode}: {tail[:200]}"}


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m symgraph.coverage",
        description=(
            "Build torchvision, timm and Hugging Face models at random init (nothing is downloaded), compute "
            "their parameter graphs and automorphism groups, compare with the analytic order, and check that "
            "random automorphisms keep the function (float64, eval and train mode), with an input-swap "
            "negative control. One subprocess per model, with a time limit; results are appended to a "
            "JSON-lines file as each model finishes, so an interrupted run resumes."
        ),
    )
    p.add_argument("--source", default="torchvision,timm,hf", help="comma list of torchvision, timm, hf")
    p.add_argument("--models", default=None, help="comma list of source:name to run instead of whole sources")
    p.add_argument("--max-params", type=float, default=1e8, help="skip models with more parameters (default 1e8)")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds per model (default 600)")
    p.add_argument("--verify", type=int, default=3, help="random automorphisms applied per model (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="coverage.jsonl", help="results file (JSON lines; default coverage.jsonl)")
    p.add_argument("--rerun", action="store_true", help="run models already in --out again")
    p.add_argument("--json", action="store_true", help="print the rows and the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-model subprocess
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.verify < 1:
        raise CLIError(f"--verify: Expected at least 1 (got {args.verify})")
    if args.time_limit <= 0:
        raise CLIError(f"--time-limit: Expected a positive number of seconds (got {args.time_limit:g})")
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.verify, args.seed, args.max_params), default=str))
        return 0
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        for n in names:
            if n.partition(":")[0] not in SOURCES:
                raise CLIError(f"--models: Expected source:name with a source among {', '.join(SOURCES)} (got {n!r})")
    else:
        names = [n for s in args.source.split(",") if s.strip() for n in model_names(s.strip())]
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CLIError(f"--out: directory {str(out.parent)!r} does not exist")
    rows = _read_rows(out)
    todo = [n for n in names if args.rerun or n not in rows]
    t_start = time.perf_counter()
    for i, name in enumerate(todo):
        if not args.no_progress:
            print(f"[{i + 1}/{len(todo)}] {name} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        row = _child(name, args)
        row["wall_s"] = time.perf_counter() - t0
        rows[name] = row
        _write_rows(out, rows)
        if not args.no_progress:
            print(f"    {row.get('status')}{': ' + row['error'][:120] if row.get('error') else ''}", file=sys.stderr)
    chosen = [rows[n] for n in names if n in rows]
    if args.json:
        print(json.dumps({"rows": chosen, "summary": summary(chosen)}, default=str))
    else:
        print(table_text(chosen))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
