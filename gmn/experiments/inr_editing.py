"""Editing 2D INRs in weight space (paper Sec. 4.2, E.2, Table 2).

A metanet reads the weights theta of a SIREN that represents an image and outputs an edit of every parameter;
the edited INR is ``theta' = theta + gamma * Metanet(theta)`` with a learned scalar ``gamma`` per parameter,
initialised to 0.01 (E.2). The loss is the MSE between the edited INR's rendering on the pixel grid and the
transformed image (``dilate``: morphological dilation of digits; ``contrast``: CLAHE of natural-image crops;
see :mod:`gmn.inr.image_dataset`).

Metanets (:mod:`gmn.metanets`, each through its ``edit`` output on the weight-swapped batch of the INRs):
``gmn`` (:class:`gmn.GMN` with the equivariant per-edge head; its output is mapped back to the parameters
through the graph's edge layout, as :func:`gmn.edge_output_to_state_dict` does), ``npnfn`` (equivariant
NP-NFN), ``dws`` (DWSNet's equivariant layers; not in the default table), ``mlp`` (flat weights -> flat
edit, no symmetry). ``identity`` (no edit) is reported as a reference row.

Scales
    ``cpu`` (default): 28x28 images, 500/50/150 INRs, GMN hidden 32 x 2 layers, 300 steps of batch 16.
    ``paper``: GMN hidden 512 x 4 layers (E.2), 50 000 steps of batch 32, Adam lr 1e-3 (meant for a GPU).

Trained by :func:`gmn.engine.fit`. Resumable: checkpoints per (method, seed) under ``--out`` (``--no-resume``
starts afresh); ``results.json`` written atomically; a PNG figure of originals, targets and edited
reconstructions. Every field of :class:`EditConfig` is a flag (``--steps``, ``--n-train``, ...).

CLI::

    python -m gmn.experiments.inr_editing --task dilate [--scale cpu] [--metanets gmn,mlp] [--seeds 0,1,2] [--json]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

import symgraph
from symgraph.cli_util import atomic_open, run_cli
from symgraph.models.siren import SIREN

from .. import metanets
from ..data import tensor_mean_std
from ..engine import fit, seed_everything
from ..inr.encoders import GMN_OPTIONS
from ..inr.fit import batched_siren_forward
from ..inr.graph_batch import WeightGraphBatcher
from ..inr.image_dataset import IMAGE_ARCH, TASKS, build, pixel_grid
from ..models import edge_output_to_state_dict
from .common import ResultsFile, format_mean_std, metanet_size, option, parse_experiment, print_result, running

__all__ = ["EditConfig", "EditData", "SCALES", "PAPER_TABLE2", "INREditor", "edited_state_dict", "run", "main"]

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
_LABEL = {"gmn": "GMN", "mlp": "MLP", "npnfn": "NP-NFN", "dws": "DWSNet", "identity": "no edit (input INR)"}
#: The metanets with a per-parameter output, in the table's order; the default run leaves out DWSNet.
METHODS = ("gmn", "npnfn", "dws", "mlp")
DEFAULT_METHODS = ("gmn", "npnfn", "mlp")
#: Each metanet's settings in this experiment (besides its size).
OPTIONS = {"gmn": GMN_OPTIONS}


@dataclass(frozen=True)
class EditConfig:
    """Sizes of one scale; every field is a command-line option (``--steps``, ``--n-train``, ...)."""

    size: int = option(28, "image side in pixels")
    n_train: int = option(500, "training images")
    n_val: int = option(50, "validation images")
    n_test: int = option(150, "test images")
    steps: int = option(300, "training steps")
    batch_size: int = option(16, "batch size")
    lr: float = option(1e-3, "Adam learning rate")
    gamma_init: float = option(0.01, "initial per-parameter edit scale gamma")
    gmn_hidden: int = option(32, "GMN width")
    gmn_layers: int = option(2, "GMN layers")
    mlp_hidden: int = option(256, "MLP width")
    mlp_layers: int = option(3, "MLP linear layers")
    baseline_hidden: int = option(64, "width of NP-NFN and DWSNet")
    baseline_layers: int = option(2, "layers of NP-NFN and DWSNet")


@dataclass(frozen=True)
class EditData:
    """The task and where its data and figure live (not part of a scale)."""

    task: str = option(help="the editing task", choices=TASKS)
    data: str = option("runs/inr_edit_data", "cache of fitted image INRs")
    figure: str | None = option(None, "PNG path (default <out>/inr_editing_<task>.png)")


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
        baseline_layers=4,
    ),
}


class INREditor(nn.Module):
    """``theta -> theta + gamma * Metanet(theta)`` for stacked SIREN parameters (one architecture).

    Parameters
    ----------
    kind : str
        A metanet of :mod:`gmn.metanets` with an ``edit`` output (one of :data:`METHODS`).
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
        if kind not in METHODS:
            raise ValueError(f"Expected a method in {METHODS} (got {kind!r})")
        self.kind = kind
        self.batcher = WeightGraphBatcher(graph, device=device)
        e = self.batcher.num_edges
        self.net: nn.Module = metanets.build(
            kind,
            hidden_dim=hidden,
            num_layers=layers,
            out_dim=None,
            edit_dim=1,
            example=self.batcher.data,
            **OPTIONS.get(kind, {}),
        )
        mean = self.batcher.edge_weights({k: torch.full((1, *self._shape(k)), m) for k, (m, _) in stats.items()})
        std = self.batcher.edge_weights({k: torch.full((1, *self._shape(k)), s) for k, (_, s) in stats.items()})
        self.register_buffer("mean", mean[0])
        self.register_buffer("std", std[0])
        self.gamma = nn.Parameter(torch.full((e,), float(gamma_init)))
        self.to(device)

    def _shape(self, name: str) -> tuple[int, ...]:
        return next(s.shape for s in self.batcher.edge_slots if s.name == name)

    def delta(self, edge_w: torch.Tensor) -> torch.Tensor:
        """Raw metanet output ``[B, E]`` for raw edge weights ``[B, E]`` (its ``edit`` of the standardised INR)."""
        z = (edge_w - self.mean) / self.std
        return self.net.edit(self.batcher.batch(z)).reshape(edge_w.shape)

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
    kind: str,
    seed: int,
    data: dict,
    graph,
    cfg: EditConfig,
    out: Path,
    device: torch.device,
    progress: bool = True,
    resume: bool = True,
) -> tuple[INREditor, dict]:
    """Train one editor with one seed (:func:`gmn.engine.fit`: a checkpoint every tenth of the steps) and test it."""
    seed_everything(seed)
    hidden, layers = metanet_size(cfg, kind)
    editor = INREditor(kind, graph, hidden, layers, tensor_mean_std(data["train"]["params"]), cfg.gamma_init, device)
    opt = torch.optim.Adam(editor.parameters(), lr=cfg.lr)
    grid = pixel_grid(cfg.size).to(device)
    train = data["train"]
    n = train["targets"].shape[0]
    save_every = max(cfg.steps // 10, 1)  # the engine's "epochs" are these chunks of steps

    def batches(chunk: int):
        for step in range(chunk * save_every, min((chunk + 1) * save_every, cfg.steps)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
            p = {k: v[idx].to(device) for k, v in train["params"].items()}
            yield p, train["targets"][idx].reshape(cfg.batch_size, -1).to(device)

    def step(net: nn.Module, batch) -> tuple[torch.Tensor, int]:
        p, y = batch
        return (_render(net(p), grid) - y).pow(2).mean(), 1

    history = fit(
        editor,
        opt,
        batches,
        step,
        math.ceil(cfg.steps / save_every),
        checkpoint=out / f"ckpt_{kind}_seed{seed}.pt",
        resume=resume,
        fingerprint={"metanet": kind, "seed": seed, "config": asdict(cfg)},
        device=device,
        progress=progress,
        desc=f"{kind} s{seed}",
    )
    losses = history.step_losses
    metrics = {
        "method": kind,
        "seed": seed,
        "steps": cfg.steps,
        "train_seconds": round(history.seconds, 1),
        "params": sum(p.numel() for p in editor.net.parameters()),
        "final_train_loss": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)) if losses else None,
        "val_mse": evaluate(editor, data["val"], grid, device),
        "test_mse": evaluate(editor, data["test"], grid, device),
    }
    return editor, metrics


def table(results: dict, task: str) -> str:
    col = 0 if task == "contrast" else 1
    lines = [f"| Metanetwork | ours: {task} test MSE | seeds | paper Table 2 ({task}) |", "|---|---|---|---|"]
    for kind in ("identity", *METHODS):
        runs = [r for r in results["runs"].values() if r["method"] == kind]
        if runs:
            paper = PAPER_TABLE2[_PAPER_ROW[kind]][col] if kind in _PAPER_ROW else "—"
            mse = format_mean_std([r["test_mse"] for r in runs], 4, 5)
            lines.append(f"| {_LABEL[kind]} | {mse} | {len(runs)} | {paper} |")
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
    resume: bool = True,
) -> dict:
    """Train and test every (method, seed) editor; ``results.json`` and the figure under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    data = build(data_dir, task, sizes, cfg.size, seed=0, device=device, progress=progress)
    graph = symgraph.parameter_graph(
        SIREN(IMAGE_ARCH["in_dim"], IMAGE_ARCH["hidden"], IMAGE_ARCH["out_dim"], IMAGE_ARCH["omega0"])
    )
    store = ResultsFile(out / "results.json", resume, lambda r: table(r, task), config=asdict(cfg))
    results = store.results
    results.update(
        task=task,
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
            editor, metrics = train_one(kind, seed, data, graph, cfg, out, device, progress, resume)
            results["runs"][key] = metrics
            editors.setdefault(kind, editor)
            store.save()
    fig_path = Path(fig_path) if fig_path else out / f"inr_editing_{task}.png"
    if editors:
        figure(fig_path, data, editors, cfg.size, device)
        results["figure"] = str(fig_path)
    store.save()
    return results


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one ``error:`` line and exit code 2 (:func:`symgraph.cli_util.run_cli`)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ex = parse_experiment(
        argv,
        "python -m gmn.experiments.inr_editing",
        __doc__.split("\n\n")[0],
        config=EditConfig,
        source=EditData,
        scales=SCALES,
        metanets=METHODS,
        default_metanets=DEFAULT_METHODS,
        seeds=(0,),
        out="",
        epilog="--out defaults to runs/inr_edit_<task>",
    )
    run_opts, src = ex.run, ex.source
    t0 = time.time()
    with running(run_opts):
        res = run(
            src.task,
            src.data,
            run_opts.out or f"runs/inr_edit_{src.task}",
            list(run_opts.metanets),
            list(run_opts.seeds),
            ex.config,
            run_opts.torch_device,
            run_opts.progress,
            src.figure,
            resume=run_opts.resume,
        )
    res["wall_seconds_this_run"] = round(time.time() - t0, 1)
    summary = f"figure: {res.get('figure')}; wall time this run: {res['wall_seconds_this_run']} s"
    print_result(res, run_opts.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
