"""Editing 2D INRs in weight space (paper Sec. 4.2, E.2, Table 2).

A metanet reads the weights theta of a SIREN that represents an image and outputs an edit of every parameter;
the edited INR is ``theta' = theta + gamma * Metanet(theta)`` with a learned scalar ``gamma`` per parameter,
initialised to 0.01 (E.2). The loss is the MSE between the edited INR's rendering on the pixel grid and the
transformed image (``dilate``: morphological dilation of digits; ``contrast``: CLAHE of natural-image crops;
see :mod:`gmn.inr.image_dataset`).

Metanets: ``gmn`` (:class:`gmn.GMN` with the equivariant per-edge head; its output is mapped back to the
parameters through the graph's edge layout, as :func:`gmn.edge_output_to_state_dict` does), ``mlp`` (flat
weights -> flat edit, no symmetry), and ``npnfn`` when :mod:`gmn.baselines` provides an equivariant NP-NFN.
``identity`` (no edit) is reported as a reference row.

Scales
    ``cpu`` (default): 28x28 images, 500/50/150 INRs, GMN hidden 32 x 2 layers, 300 steps of batch 16.
    ``paper``: GMN hidden 512 x 4 layers (E.2), 50 000 steps of batch 32, Adam lr 1e-3 (meant for a GPU).

Resumable: checkpoints per (method, seed) under ``--out``; ``results.json`` written atomically; a PNG figure
of originals, targets and edited reconstructions.

CLI::

    python -m gmn.experiments.inr_editing --task dilate [--scale cpu] [--methods gmn,mlp] [--json]
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

import symgraph
from symgraph.cli_util import (
    CLIError,
    OneLineArgumentParser,
    add_device_argument,
    atomic_open,
    resolve_device,
    run_cli,
    torch_threads,
)
from symgraph.models.siren import SIREN

from ..baselines.npnfn import NFNSpec
from ..inr.encoders import GRAPH_BASELINES, _baseline_class, npnfn_stacked
from ..inr.fit import batched_siren_forward
from ..inr.graph_batch import WeightGraphBatcher
from ..inr.image_dataset import IMAGE_ARCH, TASKS, build, pixel_grid
from ..inr.io import atomic_torch_save, atomic_write_json, load_checked
from ..models import GMN, edge_output_to_state_dict
from .common import comma_list, int_list, print_result, with_overrides

__all__ = ["EditConfig", "SCALES", "PAPER_TABLE2", "INREditor", "edited_state_dict", "run", "main"]

#: Paper Table 2 (test MSE; baselines from Zhou et al., 2023a;b): method -> (contrast, dilate).
PAPER_TABLE2: dict[str, tuple[str, str]] = {
    "MLP": (".031", ".306"),
    "MLP-Aug": (".029", ".307"),
    "NFN-PT": (".029", ".197"),
    "NFN-HNP": (".0204 ± .0000", ".0706 ± .0005"),
    "NFN-NP": (".0203 ± .0000", ".0693 ± .0009"),
    "NFT": (".0200 ± .0002", ".0510 ± .0004"),
    "GMN (ours)": (".0197 ± .0000", ".0603 ± .0010"),
}
_PAPER_ROW = {"gmn": "GMN (ours)", "mlp": "MLP", "npnfn": "NFN-NP"}
_LABEL = {"gmn": "GMN", "mlp": "MLP", "npnfn": "NP-NFN", "identity": "no edit (input INR)"}
METHODS = ("gmn", "npnfn", "mlp")


@dataclass(frozen=True)
class EditConfig:
    size: int = 28
    n_train: int = 500
    n_val: int = 50
    n_test: int = 150
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    gamma_init: float = 0.01
    gmn_hidden: int = 32
    gmn_layers: int = 2
    mlp_hidden: int = 256
    baseline_hidden: int = 64


SCALES = {
    "cpu": EditConfig(),
    "paper": EditConfig(
        n_train=10000,
        n_val=1000,
        n_test=2000,
        steps=50_000,
        batch_size=32,
        gmn_hidden=512,
        gmn_layers=4,
        mlp_hidden=1024,
        baseline_hidden=128,
    ),
}


class INREditor(nn.Module):
    """``theta -> theta + gamma * Metanet(theta)`` for stacked SIREN parameters (one architecture).

    Parameters
    ----------
    kind : {"gmn", "mlp", "npnfn"}
    graph : NeuralGraph
        Parameter graph of the SIREN architecture.
    hidden, layers : int
        Metanet width and depth.
    stats : dict
        Per-tensor (mean, std) used to standardise the metanet's *input* (the edit is added to raw theta).
    gamma_init : float
        Initial value of the per-parameter scale ``gamma``.
    """

    def __init__(
        self,
        kind: str,
        graph,
        hidden: int,
        layers: int,
        stats: dict[str, tuple[float, float]],
        gamma_init: float = 0.01,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.kind = kind
        self.batcher = WeightGraphBatcher(graph, device=device)
        e = self.batcher.num_edges
        if kind == "gmn":
            self.net: nn.Module = GMN(
                hidden_dim=hidden, num_layers=layers, out_dim=None, edge_out_dim=1, use_global=False
            )
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(e, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, e)
            )
        elif kind == "npnfn":
            cls = _baseline_class("npnfn")
            if cls is None:
                raise ValueError(f"Expected gmn.baselines to provide NP-NFN {GRAPH_BASELINES['npnfn']} (got none)")
            self.net = cls(graph, hidden_dim=hidden, num_layers=layers, out_dim=None, edge_out_dim=1)
            self.spec = NFNSpec.from_graph(graph)
        else:
            raise ValueError(f"Expected a method in {METHODS} (got {kind!r})")
        mean = self.batcher.edge_weights({k: torch.full((1, *self._shape(k)), m) for k, (m, _) in stats.items()})
        std = self.batcher.edge_weights({k: torch.full((1, *self._shape(k)), s) for k, (_, s) in stats.items()})
        self.register_buffer("mean", mean[0])
        self.register_buffer("std", std[0])
        self.gamma = nn.Parameter(torch.full((e,), float(gamma_init)))
        self.to(device)

    def _shape(self, name: str) -> tuple[int, ...]:
        return next(s.shape for s in self.batcher.edge_slots if s.name == name)

    def delta(self, edge_w: torch.Tensor) -> torch.Tensor:
        """Raw metanet output ``[B, E]`` for raw edge weights ``[B, E]``."""
        z = (edge_w - self.mean) / self.std
        if self.kind == "mlp":
            return self.net(z)
        if self.kind == "npnfn":
            return self.batcher.edge_weights(
                npnfn_stacked(self.net, self.spec, self.batcher.params_from_edges(z), edges=True)
            )
        return self.net(self.batcher.batch(z)).reshape(edge_w.shape)

    def forward(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Edited stacked parameters."""
        w = self.batcher.edge_weights(params)
        return self.batcher.params_from_edges(w + self.gamma * self.delta(w))


def edited_state_dict(editor: INREditor, state: dict[str, torch.Tensor]):
    """The edited state_dict of one INR, mapped back through :func:`gmn.edge_output_to_state_dict`."""
    net = SIREN(IMAGE_ARCH["in_dim"], IMAGE_ARCH["hidden"], IMAGE_ARCH["out_dim"], IMAGE_ARCH["omega0"])
    net.load_state_dict(state)
    g = symgraph.parameter_graph(net)
    w = editor.batcher.edge_weights({k: v.unsqueeze(0).to(editor.gamma.device) for k, v in state.items()})
    edit = (editor.gamma * editor.delta(w))[0]
    return edge_output_to_state_dict(g, edit.cpu(), residual_scale=1.0)


def _render(params: dict[str, torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
    return batched_siren_forward(params, grid, IMAGE_ARCH["omega0"])[..., 0]


def _stats(params: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    return {k: (float(v.mean()), float(v.std().clamp_min(1e-8))) for k, v in params.items()}


@torch.no_grad()
def evaluate(editor: INREditor | None, split: dict, grid: torch.Tensor, device: torch.device, bs: int = 64):
    """Mean test MSE of the edited renderings against the targets (``editor=None``: no edit)."""
    n = split["targets"].shape[0]
    tot = 0.0
    for i in range(0, n, bs):
        p = {k: v[i : i + bs].to(device) for k, v in split["params"].items()}
        if editor is not None:
            editor.eval()
            p = editor(p)
        y = split["targets"][i : i + bs].reshape(p["layers.0.weight"].shape[0], -1).to(device)
        tot += float((_render(p, grid) - y).pow(2).sum())
    return tot / (n * grid.shape[0])


def train_one(
    kind: str, seed: int, data: dict, graph, cfg: EditConfig, out: Path, device: torch.device, progress: bool = True
) -> tuple[INREditor, dict]:
    torch.manual_seed(seed)
    hidden = {"gmn": cfg.gmn_hidden, "mlp": cfg.mlp_hidden}.get(kind, cfg.baseline_hidden)
    editor = INREditor(kind, graph, hidden, cfg.gmn_layers, _stats(data["train"]["params"]), cfg.gamma_init, device)
    opt = torch.optim.Adam(editor.parameters(), lr=cfg.lr)
    ckpt = out / f"ckpt_{kind}_seed{seed}.pt"
    step, seconds, losses = 0, 0.0, []
    if ckpt.exists():
        st = load_checked(ckpt, "delete it to restart", map_location=device)
        editor.load_state_dict(st["editor"])
        opt.load_state_dict(st["opt"])
        step, seconds, losses = st["step"], st["seconds"], list(st["losses"])
    grid = pixel_grid(cfg.size).to(device)
    train = data["train"]
    n = train["targets"].shape[0]
    save_every = max(cfg.steps // 10, 1)
    bar = tqdm(range(step, cfg.steps), desc=f"{kind} s{seed}", disable=not progress, leave=False)
    t0 = time.time()
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        p = {k: v[idx].to(device) for k, v in train["params"].items()}
        y = train["targets"][idx].reshape(cfg.batch_size, -1).to(device)
        editor.train()
        loss = (_render(editor(p), grid) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % save_every == 0 or step + 1 == cfg.steps:
            seconds_now = seconds + time.time() - t0
            atomic_torch_save(
                {
                    "editor": editor.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "seconds": seconds_now,
                    "losses": losses,
                },
                ckpt,
            )
    seconds += time.time() - t0
    metrics = {
        "method": kind,
        "seed": seed,
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in editor.net.parameters()),
        "final_train_loss": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)) if losses else None,
        "val_mse": evaluate(editor, data["val"], grid, device),
        "test_mse": evaluate(editor, data["test"], grid, device),
    }
    return editor, metrics


def _mean_std(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{m:.4f} ± {sd:.5f}" if len(xs) > 1 else f"{m:.4f}"


def table(results: dict, task: str) -> str:
    col = 0 if task == "contrast" else 1
    lines = [f"| Metanetwork | ours: {task} test MSE | seeds | paper Table 2 ({task}) |", "|---|---|---|---|"]
    for kind in ("identity", *METHODS):
        runs = [r for r in results["runs"].values() if r["method"] == kind]
        if runs:
            paper = PAPER_TABLE2[_PAPER_ROW[kind]][col] if kind in _PAPER_ROW else "—"
            lines.append(f"| {_LABEL[kind]} | {_mean_std([r['test_mse'] for r in runs])} | {len(runs)} | {paper} |")
    shown = {_PAPER_ROW[r["method"]] for r in results["runs"].values() if r["method"] in _PAPER_ROW}
    for name, vals in PAPER_TABLE2.items():
        if name not in shown:
            lines.append(f"| {name} | — | — | {vals[col]} |")
    return "\n".join(lines)


@torch.no_grad()
def figure(path: Path, data: dict, editors: dict[str, INREditor], size: int, device: torch.device, k: int = 4):
    """PNG: per test example, the input image, its INR, the target, and each method's edited INR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = data["test"]
    grid = pixel_grid(size).to(device)
    p = {key: v[:k].to(device) for key, v in test["params"].items()}
    cols = [
        ("input image", test["images"][:k]),
        ("input INR", _render(p, grid).cpu().reshape(k, size, size)),
        ("target", test["targets"][:k]),
    ]
    for name, ed in editors.items():
        ed.eval()
        cols.append((f"{_LABEL[name]} edit", _render(ed(p), grid).cpu().reshape(k, size, size)))
    fig, axes = plt.subplots(k, len(cols), figsize=(1.6 * len(cols), 1.6 * k), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(k):
            ax = axes[i][j]
            ax.imshow(imgs[i].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def run(
    task: str,
    data_dir: str | Path,
    out: str | Path,
    methods: list[str],
    seeds: list[int],
    cfg: EditConfig,
    device: torch.device,
    progress: bool = True,
    fig_path: str | Path | None = None,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    data = build(data_dir, task, sizes, cfg.size, seed=0, device=device, progress=progress)
    graph = symgraph.parameter_graph(
        SIREN(IMAGE_ARCH["in_dim"], IMAGE_ARCH["hidden"], IMAGE_ARCH["out_dim"], IMAGE_ARCH["omega0"])
    )
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}
    if results.get("config") not in (None, asdict(cfg)):
        raise ValueError(f"Expected {res_path} from the same configuration (got another): use a new --out")
    results.update(
        task=task,
        config=asdict(cfg),
        device=str(device),
        inr_fit_mse={s: float(d["mse"].mean()) for s, d in data.items()},
    )
    grid = pixel_grid(cfg.size).to(device)
    results["runs"]["identity"] = {
        "method": "identity",
        "seed": 0,
        "test_mse": evaluate(None, data["test"], grid, device),
    }
    editors = {}
    for kind in methods:
        for seed in seeds:
            key = f"{kind}/seed{seed}"
            editor, metrics = train_one(kind, seed, data, graph, cfg, out, device, progress)
            results["runs"][key] = metrics
            editors.setdefault(kind, editor)
            results["table"] = table(results, task)
            atomic_write_json(res_path, results)
    fig_path = Path(fig_path) if fig_path else out / f"inr_editing_{task}.png"
    if editors:
        figure(fig_path, data, editors, cfg.size, device)
        results["figure"] = str(fig_path)
    results["table"] = table(results, task)
    atomic_write_json(res_path, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = OneLineArgumentParser(prog="python -m gmn.experiments.inr_editing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=TASKS, required=True)
    ap.add_argument("--data", default="runs/inr_edit_data", help="cache of fitted image INRs")
    ap.add_argument("--out", help="checkpoints, results.json, figure (default runs/inr_edit_<task>)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--methods", default="gmn,npnfn,mlp", help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (default: %(default)s)")
    ap.add_argument("--steps", type=int, help="override the scale's training steps")
    ap.add_argument("--n-train", type=int, help="override the scale's number of training images")
    ap.add_argument("--n-val", type=int, help="override the scale's number of validation images")
    ap.add_argument("--n-test", type=int, help="override the scale's number of test images")
    ap.add_argument("--figure", help="PNG path (default <out>/inr_editing_<task>.png)")
    add_device_argument(ap)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    methods = comma_list(args.methods, METHODS, "--methods")
    if "npnfn" in methods and _baseline_class("npnfn") is None:
        print("note: skipping npnfn (gmn.baselines has no NP-NFN yet)", file=sys.stderr)
        methods.remove("npnfn")
    cfg = with_overrides(
        SCALES[args.scale], steps=args.steps, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test
    )
    seeds = int_list(args.seeds, "--seeds")
    t0 = time.time()
    with torch_threads(args.threads if args.threads > 0 else None):
        try:
            res = run(
                args.task,
                args.data,
                args.out or f"runs/inr_edit_{args.task}",
                methods,
                seeds,
                cfg,
                device,
                not args.no_progress,
                args.figure,
            )
        except (ValueError, KeyError) as e:  # bad data or settings; OSError is bad input for run_cli too
            raise CLIError(str(e)) from e
    res["wall_seconds_this_run"] = round(time.time() - t0, 1)
    print_result(res, args.json, f"figure: {res.get('figure')}; wall time this run: {res['wall_seconds_this_run']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
