"""symgraph.draw, the figures package and the result plots: what is drawn matches the graph, saving is atomic.

All rendering is headless (Agg, set in conftest). Counts are taken from the artists on the Axes
(:func:`symgraph.draw.drawn_counts`), not only from what ``draw`` says it drew.
"""

from __future__ import annotations

import json
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import kendalltau
from sklearn.metrics import r2_score

import symgraph
from figures import FIGURE_MODULES, by_name, fig6_layers, figure_modules, plots, save_figure
from figures import __main__ as figures_cli
from symgraph.draw import EDGE_GID, drawn_counts, layered_layout
from symgraph.registry import encoder_for_module


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _mlp(widths=(3, 4, 2)):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 2),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    )


def _edge_patches(ax):
    return [p for p in ax.patches if p.get_gid() == EDGE_GID]


# ------------------------------------------------------------------------------------------------- draw
def test_draw_puts_one_marker_per_node_and_one_arrow_per_edge():
    g = symgraph.parameter_graph(_mlp((3, 5, 4, 2)))
    fig, ax = symgraph.draw(g)
    counts = drawn_counts(ax)
    assert counts == {"nodes": g.num_nodes, "edges": g.num_edges, "boxes": 0, "links": 0}
    rec = ax._symgraph_artists
    assert (rec["mode"], rec["nodes"], rec["edges"], rec["boxes"]) == ("full", g.num_nodes, g.num_edges, 0)
    assert fig is ax.figure


def test_draw_accepts_a_model_and_an_existing_axes():
    fig, ax0 = plt.subplots()
    fig2, ax = symgraph.draw(_cnn(), ax=ax0, input_shape=(1, 2, 6, 6))
    g = symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 6, 6))
    assert ax is ax0 and fig2 is fig
    assert drawn_counts(ax)["edges"] == g.num_edges == sum(p.numel() for p in _cnn().parameters())


def test_parallel_conv_edges_are_separate_arcs_coloured_by_kernel_position():
    g = symgraph.parameter_graph(_cnn(), input_shape=(1, 2, 6, 6))
    _, ax = symgraph.draw(g)
    patches = _edge_patches(ax)  # added in edge order
    assert len(patches) == g.num_edges
    src, dst = g.edge_index.tolist()
    pairs: dict[tuple[int, int], list[int]] = {}
    for e, (s, d) in enumerate(zip(src, dst)):
        pairs.setdefault((s, d), []).append(e)
    multi = [es for es in pairs.values() if len(es) > 1]
    assert multi and all(len(es) == 4 for es in multi)  # 2x2 kernels: four parallel edges per channel pair
    for es in multi:
        rads = [patches[e].get_connectionstyle().rad for e in es]
        assert len(set(np.round(rads, 6))) == len(es)
        colours = {tuple(patches[e].get_edgecolor()[:3]) for e in es}
        assert len(colours) == len(es)


def test_many_edges_are_drawn_as_one_polyline_each_without_arrowheads():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    g = symgraph.parameter_graph(net, input_shape=(1, 2, 8, 8))
    assert 250 < g.num_edges < 1500
    _, ax = symgraph.draw(g)
    assert drawn_counts(ax) == {"nodes": g.num_nodes, "edges": g.num_edges, "boxes": 0, "links": 0}
    assert not _edge_patches(ax)  # no per-edge patch: line collections
    polylines = [seg for c in ax.collections if c.get_gid() == EDGE_GID for seg in c.get_segments()]
    pairs = 2 * 6 + 6 * 4  # channel pairs, each joined by 9 parallel edges: 8 arcs around one straight edge
    assert sum(len(p) > 2 for p in polylines) == 8 * pairs


def test_single_edges_between_adjacent_columns_are_straight():
    g = symgraph.parameter_graph(_mlp())
    _, ax = symgraph.draw(g)
    assert all(p.get_connectionstyle().rad == 0 for p in _edge_patches(ax))


def test_bias_nodes_sit_left_of_the_layer_they_feed():
    g = symgraph.parameter_graph(_mlp((3, 4, 2)))
    pos = layered_layout(g)
    bias = g.role_mask("bias").nonzero().flatten().tolist()
    src, dst = g.edge_index
    for b in bias:
        fed = dst[src == b]
        assert np.all(pos[b, 0] < pos[fed.numpy(), 0])
        assert np.all(pos[b, 0] > pos[fed.numpy(), 0] - 1)


def test_big_graph_is_summarised_per_group_not_drawn_node_by_node():
    g = symgraph.parameter_graph(_mlp((400, 64, 10)))
    assert g.num_nodes > 300
    _, ax = symgraph.draw(g)
    counts = drawn_counts(ax)
    src, dst = g.edge_index
    gi = g.node_group_index()
    n_pairs = torch.unique(gi[src] * len(g.node_groups) + gi[dst]).numel()
    assert counts == {"nodes": 0, "edges": 0, "boxes": len(g.node_groups), "links": n_pairs}
    assert ax._symgraph_artists["mode"] == "summary"
    assert len(ax.patches) < 20  # a handful of boxes and arrows, never a hairball


def test_summary_check_detects_node_by_node_drawing():
    """Negative control: the same graph under a threshold above its size is drawn node by node and caught."""
    g = symgraph.parameter_graph(_mlp((8, 24, 2)))
    _, ax_small = symgraph.draw(g, max_nodes=30)
    _, ax_full = symgraph.draw(g, max_nodes=100)
    assert drawn_counts(ax_small)["nodes"] == 0 and drawn_counts(ax_small)["boxes"] == len(g.node_groups)
    assert drawn_counts(ax_full)["nodes"] == g.num_nodes and drawn_counts(ax_full)["boxes"] == 0


def test_many_groups_are_summarised_per_depth():
    g = symgraph.parameter_graph(_mlp((50, 40, 40, 40, 40, 40, 40, 3)))
    _, ax = symgraph.draw(g, max_nodes=100, max_boxes=4)
    rec = ax._symgraph_artists
    assert rec["per"] == "depth"
    # a bias node counts at the depth of the layer it feeds, in a box of its own
    src, dst = g.edge_index
    depth = g.node_layer.clone()
    bias = g.role_mask("bias")
    for b in bias.nonzero().flatten():
        depth[b] = g.node_layer[dst[src == b]].min()
    assert rec["boxes"] == torch.unique(depth * 2 + bias.long()).numel() == 2 * 7 + 1


def test_orbit_colouring_gives_one_colour_per_orbit_and_grey_to_fixed_nodes():
    g = symgraph.parameter_graph(_mlp((2, 3, 2)))
    hidden = g.role_mask("hidden").nonzero().flatten()
    others = (~g.role_mask("hidden")).nonzero().flatten()
    orbits = [hidden] + [o.view(1) for o in others]
    _, ax = symgraph.draw(g, orbits=orbits)
    colours = {}
    for coll in ax.collections:
        for xy, fc in zip(coll.get_offsets(), coll.get_facecolors()):
            colours[tuple(np.round(xy, 6))] = tuple(np.round(fc, 4))
    pos = layered_layout(g)
    hid = {colours[tuple(np.round(pos[i], 6))] for i in hidden.tolist()}
    fixed = {colours[tuple(np.round(pos[i], 6))] for i in others.tolist()}
    assert len(hid) == 1 and len(fixed) == 1 and hid != fixed


def test_layer_and_value_colourings():
    g = symgraph.parameter_graph(_mlp((2, 3, 2)))
    _, ax = symgraph.draw(g, node_color_by="layer")
    assert drawn_counts(ax)["nodes"] == g.num_nodes
    values = torch.arange(g.num_nodes, dtype=torch.float64)
    _, ax = symgraph.draw(g, node_color_by=values)
    faces = np.concatenate([c.get_facecolors() for c in ax.collections])
    assert len({tuple(np.round(f, 4)) for f in faces}) == g.num_nodes  # distinct values, distinct colours
    with pytest.raises(ValueError, match="node values"):
        symgraph.draw(g, node_color_by=values[:-1])
    with pytest.raises(ValueError, match="node_color_by"):
        symgraph.draw(g, node_color_by="size")


def test_orbits_true_computes_the_automorphism_group():
    g = symgraph.parameter_graph(_mlp((2, 3, 2)))
    _, ax = symgraph.draw(g, orbits=True)
    assert drawn_counts(ax)["nodes"] == g.num_nodes
    assert "orbit of 3" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_orbit_colouring_rejects_missing_or_bad_orbits():
    g = symgraph.parameter_graph(_mlp())
    with pytest.raises(ValueError, match="needs orbits"):
        symgraph.draw(g, node_color_by="orbit")
    with pytest.raises(ValueError, match="orbit node ids"):
        symgraph.draw(g, orbits=[torch.tensor([0, g.num_nodes])])
    with pytest.raises(TypeError, match="Expected a NeuralGraph"):
        symgraph.draw(42)


def test_residual_edges_are_dashed_and_skip_edges_arc():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(h + torch.relu(self.b(h)))

    g = symgraph.parameter_graph(Res())
    _, ax = symgraph.draw(g)
    patches = _edge_patches(ax)
    residual = [i for i, k in enumerate(g.edge_color_keys) if k[0] == "residual"]
    is_res = np.isin(g.edge_color.numpy(), residual)
    assert is_res.sum() == 6
    assert all(patches[e].get_linestyle() == "--" for e in np.nonzero(is_res)[0])
    pos = layered_layout(g)
    src, dst = g.edge_index.numpy()
    skips = np.nonzero(pos[dst, 0] - pos[src, 0] > 1.5)[0]
    assert skips.size == 3 and all(patches[e].get_connectionstyle().rad != 0 for e in skips)


def test_computation_graph_draws():
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    cg = symgraph.computation_graph(net, torch.randn(1, 1, 3, 3))
    _, ax = symgraph.draw(cg)
    assert drawn_counts(ax) == {"nodes": cg.num_nodes, "edges": cg.num_edges, "boxes": 0, "links": 0}


# ------------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("name", FIGURE_MODULES)
def test_every_figure_renders_headless(name):
    mod = by_name(name)
    notes: list[str] = []
    fig = mod.make(notes)
    assert fig.axes
    fig.canvas.draw()  # the whole render path, Agg


def test_fig2_draws_one_edge_per_mlp_parameter():
    mod = by_name("fig2")
    fig = mod.make([])
    ax = fig.axes[0]
    n_params = sum(p.numel() for p in mod.model().parameters())
    assert drawn_counts(ax)["edges"] == n_params
    assert drawn_counts(ax)["nodes"] == symgraph.parameter_graph(mod.model()).num_nodes


def test_fig6_draws_every_panel_whose_encoder_exists():
    notes: list[str] = []
    drawn = fig6_layers.panel_graphs(notes)
    assert len(drawn) + len(notes) == len(fig6_layers.PANELS)
    keys = {p.key for p, _ in drawn}
    for panel in fig6_layers.PANELS:
        try:
            _, _, key_module = panel.build()
        except Exception:  # the panel's module class does not exist yet (a skip note says so)
            assert panel.key not in keys
            continue
        if key_module is None or encoder_for_module(key_module) is not None:
            assert panel.key in keys, f"panel {panel.key} has an encoder but was skipped: {notes}"
    assert {"layernorm", "residual"} <= keys


def test_fig6_raises_instead_of_dropping_a_panel_whose_encoder_fails(monkeypatch):
    """Negative control: a failing encoder that exists must surface, not become a skip note."""

    def broken(*args, **kwargs):
        raise symgraph.UnsupportedModuleError("x", "simulated failure")

    monkeypatch.setattr(fig6_layers.symgraph, "parameter_graph", broken)
    with pytest.raises(symgraph.UnsupportedModuleError):
        fig6_layers.panel_graphs([])


def test_save_figure_is_atomic_when_rendering_raises(tmp_path, monkeypatch):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    (tmp_path / "old.png").write_bytes(b"previous version")

    def failing_savefig(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")  # a render that dies half-way
        raise RuntimeError("render failed")

    monkeypatch.setattr(fig, "savefig", failing_savefig)
    for stem in ("new", "old"):
        with pytest.raises(RuntimeError, match="render failed"):
            save_figure(fig, stem, tmp_path, ("png", "svg"))
    assert not (tmp_path / "new.png").exists() and not (tmp_path / "new.svg").exists()
    assert (tmp_path / "old.png").read_bytes() == b"previous version"
    assert sorted(os.listdir(tmp_path)) == ["old.png"]  # no temp file left behind


def test_save_figure_writes_each_format(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    paths = save_figure(fig, "x", tmp_path, ("png", "svg"))
    assert [os.path.basename(p) for p in paths] == ["x.png", "x.svg"]
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "x.svg").read_bytes()[:400]
    assert sorted(os.listdir(tmp_path)) == ["x.png", "x.svg"]


def test_cli_reports_a_failing_figure_and_still_writes_the_others(tmp_path, monkeypatch, capsys):
    def broken(notes):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(by_name("fig2"), "make", broken)
    assert figures_cli.main(["--only", "fig2,fig3", "--format", "png", "--out", str(tmp_path)]) == 1
    assert sorted(os.listdir(tmp_path)) == [by_name("fig3").STEM + ".png"]
    captured = capsys.readouterr()
    assert "fig2 (" in captured.out and "FAILED" in captured.out and "simulated bug" in captured.err


def test_cli_only_and_format(tmp_path, capsys):
    assert figures_cli.main(["--only", "fig2", "--format", "png", "--out", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == [by_name("fig2").STEM + ".png"]
    assert "[1/1] fig2" in capsys.readouterr().out
    assert figures_cli.main(["--only", "fig99", "--out", str(tmp_path)]) == 2
    assert figures_cli.main(["--only", "fig2", "--format", "gif", "--out", str(tmp_path)]) == 2
    assert figures_cli.main(["--help"]) == 0  # run_cli turns argparse's exit into the return code
    assert figures_cli.main(["--list"]) == 0
    assert len(figure_modules()) == len(FIGURE_MODULES)


# ------------------------------------------------------------------------------------------------- result plots
def _synthetic_runs(seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for name, noise in (("deepsets", 0.1), ("gmn", 0.03)):
        for sub in ("val", "test"):
            true = rng.uniform(0.1, 0.8, 40)
            runs.append(
                {
                    "metanet": name,
                    "split": "ood",
                    "subset": sub,
                    "true": true.tolist(),
                    "pred": (true + rng.normal(0, noise, 40)).tolist(),
                    "arch": rng.choice(["cnn2d", "vit"], 40).tolist(),
                }
            )
    return runs


def test_result_metrics_match_scipy_and_sklearn(tmp_path):
    raw = _synthetic_runs()
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": raw}))
    runs = plots.load_results(path)
    assert len(runs) == 4
    for r, d in zip(runs, raw):
        m = plots.metrics(r)
        assert m["r2"] == pytest.approx(r2_score(d["true"], d["pred"]), abs=1e-12)
        assert m["tau"] == pytest.approx(kendalltau(d["true"], d["pred"]).statistic, abs=1e-12)
    fig = plots.plot_fig5(runs)
    titles = [ax.get_title() for ax in fig.axes]
    test_runs = [r for r in runs if r.subset == "test"]
    for r, t in zip(test_runs, titles):
        m = plots.metrics(r)
        assert t == f"{r.metanet}: R² = {m['r2']:.3f}, τ = {m['tau']:.3f}"
    fig8 = plots.plot_fig8(runs)
    assert len(fig8.axes) == 4
    assert fig8.axes[0].get_title().startswith("validation · deepsets")
    assert fig8.axes[2].get_title().startswith("test · deepsets")


def test_result_metrics_see_a_bad_predictor():
    """Negative control: reversed predictions give negative tau and R² below zero."""
    true = np.linspace(0.1, 0.9, 30)
    good = plots.metrics(plots.Run("m", "", "test", true + 0.01, true))
    bad = plots.metrics(plots.Run("m", "", "test", true[::-1].copy(), true))
    assert good["tau"] == pytest.approx(1.0) and good["r2"] > 0.99
    assert bad["tau"] == pytest.approx(-1.0) and bad["r2"] < 0


def test_results_csv_and_cli(tmp_path, capsys):
    raw = _synthetic_runs(1)
    lines = ["metanet,split,subset,pred,true,arch"]
    for d in raw:
        lines += [
            f"{d['metanet']},{d['split']},{d['subset']},{p},{t},{a}" for p, t, a in zip(d["pred"], d["true"], d["arch"])
        ]
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    runs = plots.load_results(path)
    assert [(r.metanet, r.subset, r.pred.size) for r in runs] == [(d["metanet"], d["subset"], 40) for d in raw]
    assert plots.metrics(runs[0])["tau"] == pytest.approx(kendalltau(raw[0]["true"], raw[0]["pred"]).statistic)
    out = tmp_path / "out"
    assert plots.main([str(path), "--out", str(out), "--format", "png"]) == 0
    assert sorted(os.listdir(out)) == ["fig5_pred_vs_true.png", "fig8_val_test.png"]
    assert "R2=" in capsys.readouterr().out


def test_results_reject_mismatched_lengths(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"runs": [{"metanet": "gmn", "pred": [0.1, 0.2], "true": [0.1]}]}))
    with pytest.raises(ValueError, match="equal length"):
        plots.load_results(path)
    assert plots.main([str(path), "--out", str(tmp_path)]) == 2
