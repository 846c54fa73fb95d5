"""Implicit neural representations: SIREN encoding, batched fitting, sine dataset, augmentations, probe,
weight-swapped GMN batches, NT-Xent, editing and the SSL experiment (bounded sizes)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch_geometric.data import Batch

import gmn
import symgraph
from gmn.experiments import inr_editing, ssl_sine
from gmn.inr.augment import WeightAugment, gaussian_noise, random_mask, sign_flip
from gmn.inr.fit import FitConfig, batched_siren_forward, fit_sirens, init_siren_params, stack, unstack
from gmn.inr.graph_batch import WeightGraphBatcher
from gmn.inr.ntxent import nt_xent
from gmn.inr.probe import linear_probe_mse
from gmn.inr.sine_dataset import SINE_FIT, generate, load_split, sine_grid, sine_targets
from symgraph.models.siren import SIREN

torch.set_num_threads(1)


def _sirens(n: int, in_dim: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    return init_siren_params(n, in_dim, (32, 32), 1, 30.0, generator=torch.Generator().manual_seed(seed))


def test_siren_parameter_graph_records_sin_and_omega0_and_inverts_exactly():
    net = SIREN(1, (32, 32), 1, omega0=30.0)
    g = symgraph.parameter_graph(net, input_shape=net.example_input_shape)
    hidden_keys = [k for k in g.node_color_keys if k[0] == "hidden"]
    assert hidden_keys and all(k[2] == ("mul(30)", "sin") for k in hidden_keys)
    assert g.num_edges == sum(p.numel() for p in net.parameters())
    sd = g.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
    other = symgraph.parameter_graph(SIREN(1, (32, 32), 1, omega0=10.0))
    assert other.node_color_keys != g.node_color_keys  # the frequency is part of the colour


def test_siren_init_uses_sitzmann_bounds():
    net = SIREN(2, (64, 64), 1, omega0=30.0)
    w0, w1 = net.layers[0].weight.detach(), net.layers[1].weight.detach()
    assert float(w0.abs().max()) <= 1 / 2 and float(w0.abs().max()) > 0.4
    bound = (6 / 64) ** 0.5 / 30
    assert float(w1.abs().max()) <= bound and float(w1.abs().max()) > 0.9 * bound


def test_batched_forward_equals_siren_forward_and_unstack_loads():
    p = _sirens(3, in_dim=2)
    x = torch.rand(50, 2) * 2 - 1
    out = batched_siren_forward(p, x, 30.0)
    for j in range(3):
        net = SIREN(2, (32, 32), 1)
        net.load_state_dict(unstack(p, j))
        torch.testing.assert_close(out[j], net(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(stack([unstack(p, j) for j in range(3)])[k], v) for k, v in p.items())


def test_a_dozen_sine_inrs_fit_to_under_one_percent_of_signal_power():
    g = torch.Generator().manual_seed(123)
    a, b = torch.rand(12, generator=g) * 10, torch.rand(12, generator=g) * 10
    a = a.clamp_min(0.5)  # keep the relative criterion meaningful
    x, y = sine_grid(), sine_targets(a, b)
    p0 = _sirens(12, seed=1)
    start = (batched_siren_forward(p0, x) - y).pow(2).mean(dim=(1, 2))
    _, mse = fit_sirens(p0, x, y, SINE_FIT, progress=False)
    power = a**2 / 2
    assert bool((start / power > 0.3).all())  # negative control: the unfitted INRs are far off
    assert bool((mse / power < 0.01).all()), (mse / power).max()
    assert float(mse.mean()) < 0.02


def test_sine_dataset_cli_writes_shards_and_resumes(tmp_path):
    from gmn.inr import sine_dataset

    out = tmp_path / "sine"
    rc = sine_dataset.main(
        [
            "--out",
            str(out),
            "--n-train",
            "3",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--shard-size",
            "2",
            "--steps",
            "5",
            "--json",
        ]
    )
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["splits"]["train"]["n"] == 3 and man["fit"]["steps"] == 5
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}
    assert len(mtimes) == 4
    generate(out, 3, 2, 2, shard_size=2, fit=replace(SINE_FIT, steps=5), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")} == mtimes  # resumed: nothing refitted
    params, a, b, mse = load_split(out, "train")
    assert params["layers.1.weight"].shape == (3, 32, 32) and a.shape == b.shape == mse.shape == (3,)
    assert bool(((a >= 0) & (a <= 10) & (b >= 0) & (b <= 10)).all())
    assert sine_dataset.main(["--out", str(out), "--shard-size", "0"]) == 2


def test_navon_init_has_low_first_layer_frequencies_and_zero_biases():
    from gmn.inr.sine_dataset import initial_params

    g = torch.Generator().manual_seed(0)
    p = initial_params(64, "navon", generator=g)
    bound = 6**0.5 / 30  # hidden-layer SIREN bound with fan_in 1: angular frequencies within +-2.45
    w0 = p["layers.0.weight"]
    assert float(w0.abs().max()) <= bound and float(w0.abs().max()) > 0.9 * bound
    assert all(float(v.abs().max()) == 0.0 for k, v in p.items() if k.endswith(".bias") and k != "layers.2.bias")
    h = (6 / 32) ** 0.5 / 30
    assert float(p["layers.1.weight"].abs().max()) <= h and float(p["layers.1.weight"].abs().max()) > 0.9 * h
    last = 1 / 32**0.5  # the last layer is a plain nn.Linear in Navon et al.'s INRs: PyTorch's default bound
    for k in ("layers.2.weight", "layers.2.bias"):
        assert float(p[k].abs().max()) <= last and float(p[k].abs().max()) > 0.8 * last
    s = initial_params(64, "siren", generator=torch.Generator().manual_seed(0))
    assert float(s["layers.0.weight"].abs().max()) > 0.9  # Sitzmann's first-layer bound 1/fan_in
    assert float(s["layers.0.bias"].abs().max()) > 0.5
    with pytest.raises(ValueError):
        initial_params(2, "xavier")


def test_sine_dataset_records_init_and_refuses_to_mix_inits(tmp_path):
    out = tmp_path / "sine"
    fit = FitConfig(steps=2, lr=5e-3)
    man = generate(out, 2, 1, 1, shard_size=2, fit=fit, progress=False)
    assert man["init"] == "navon"
    p, *_ = load_split(out, "train")
    assert float(p["layers.0.weight"].abs().max()) < 0.2  # low frequencies (siren init: up to 1)
    with pytest.raises(ValueError, match="init"):
        generate(out, 2, 1, 1, shard_size=2, fit=fit, progress=False, init="siren")
    legacy = json.loads((out / "manifest.json").read_text())
    del legacy["init"]  # manifests written before the option hold siren-initialised INRs
    (out / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="init"):
        generate(out, 2, 1, 1, shard_size=2, fit=fit, progress=False)


def test_sine_dataset_refuses_to_resume_with_another_schedule(tmp_path):
    out = tmp_path / "sine"
    generate(out, 2, 1, 1, shard_size=2, fit=FitConfig(steps=2, lr=1e-3), progress=False)
    with pytest.raises(ValueError, match="fitted with"):
        generate(out, 2, 1, 1, shard_size=2, fit=FitConfig(steps=3, lr=1e-3), progress=False)
    man = generate(out, 2, 1, 1, shard_size=2, fit=FitConfig(steps=2, lr=1e-3), progress=False)  # same: resumes
    assert man["splits"]["train"]["steps_median"] == 2.0 and man["splits"]["train"]["stopped_early"] == 0.0


def test_early_stop_per_inr_equals_fitting_each_alone_and_stops_at_the_stated_loss():
    """``stop_mse``: each INR stops after the first step whose (pre-update) loss is <= stop_mse, exactly as if
    it were fitted alone; the others go on. Negative control: without the stop every INR runs all steps."""
    from gmn.inr.sine_dataset import initial_params

    g = torch.Generator().manual_seed(3)
    a, b = torch.tensor([2.0, 8.0, 5.0]), torch.tensor([0.5, 1.0, 9.0])
    p0 = {k: v.double() for k, v in initial_params(3, "navon", generator=g).items()}  # float64: no drift
    x, y = sine_grid().double(), sine_targets(a, b).double()
    cfg = FitConfig(steps=300, lr=1e-3, weight_decay=1e-4, stop_mse=1e-3)
    p, mse, steps = fit_sirens(p0, x, y, cfg, progress=False, return_steps=True)
    assert int(steps.min()) < 300 and int(steps.max()) <= 300  # some stop early
    for j in range(3):
        pj, _, sj = fit_sirens(
            {k: v[j : j + 1] for k, v in p0.items()}, x, y[j : j + 1], cfg, progress=False, return_steps=True
        )
        assert int(sj) == int(steps[j])
        for k in p:
            torch.testing.assert_close(pj[k][0], p[k][j], rtol=1e-9, atol=1e-10)
        if int(steps[j]) < 300:
            before = (batched_siren_forward({k: v[j : j + 1] for k, v in p.items()}, x) - y[j : j + 1]).pow(2).mean()
            assert float(before) < 2e-3 and float(mse[j]) == pytest.approx(float(before), rel=1e-9)
    full, _, full_steps = fit_sirens(p0, x, y, replace(cfg, stop_mse=0.0), progress=False, return_steps=True)
    assert bool((full_steps == 300).all())
    stopped = int(steps.argmin())
    assert not torch.allclose(full["layers.1.weight"][stopped], p["layers.1.weight"][stopped])


def test_dropout_mask_rescales_kept_weights():
    w = torch.ones(4, 1000)
    g = torch.Generator().manual_seed(0)
    m = WeightAugment(noise_std=0.0, mask_prob=0.5, mask_rescale=True)(w, g)
    kept = m[m != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0)) and 0.4 < kept.numel() / w.numel() < 0.6
    assert torch.equal(random_mask(w, 0.5, torch.Generator().manual_seed(0)).unique(), torch.tensor([0.0, 1.0]))


def test_augmentations_keep_shapes_and_are_seeded():
    p = _sirens(4)
    aug = WeightAugment(noise_std=0.1, mask_prob=0.2)
    v1 = aug(p, torch.Generator().manual_seed(5))
    v2 = aug(p, torch.Generator().manual_seed(5))
    v3 = aug(p, torch.Generator().manual_seed(6))
    assert all(v1[k].shape == p[k].shape for k in p)
    assert all(torch.equal(v1[k], v2[k]) for k in p)
    assert any(not torch.equal(v1[k], v3[k]) for k in p)
    assert any(not torch.equal(v1[k], p[k]) for k in p)
    masked = random_mask(torch.ones(1000), 0.3, torch.Generator().manual_seed(0))
    assert 0.2 < float((masked == 0).float().mean()) < 0.4
    noisy = gaussian_noise(torch.zeros(4000), 0.5, torch.Generator().manual_seed(0))
    assert 0.45 < float(noisy.std()) < 0.55
    with pytest.raises(ValueError):
        random_mask(p, 1.5)


SIREN_CHAIN = (
    ("layers.0.weight", "layers.0.bias"),
    ("layers.1.weight", "layers.1.bias"),
    ("layers.2.weight", "layers.2.bias"),
)


def test_sign_flips_keep_the_siren_function_and_commute_with_standardisation():
    p = {k: v.double() for k, v in _sirens(4).items()}
    x = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1)
    q = sign_flip(p, SIREN_CHAIN, torch.Generator().manual_seed(0))
    assert any(not torch.equal(q[k], p[k]) for k in p) and torch.equal(q["layers.2.bias"], p["layers.2.bias"])
    assert (batched_siren_forward(q, x) - batched_siren_forward(p, x)).abs().max() < 1e-12
    # negative control: flipping a layer's rows without the next layer's columns changes the function
    broken = dict(p, **{k: q[k] for k in ("layers.0.weight", "layers.0.bias")})
    assert (batched_siren_forward(broken, x) - batched_siren_forward(p, x)).abs().max() > 1e-3
    # on standardised parameters, flipping about the standardised zero == standardising the raw flip
    stats = {k: (float(v.mean()) + 0.3, float(v.std())) for k, v in p.items()}
    norm = lambda d: {k: (v - stats[k][0]) / stats[k][1] for k, v in d.items()}  # noqa: E731
    zero = {k: -m / sd for k, (m, sd) in stats.items()}
    qn = sign_flip(norm(p), SIREN_CHAIN, torch.Generator().manual_seed(0), zero)
    assert all(torch.allclose(qn[k], norm(q)[k], atol=1e-12) for k in p)
    aug = WeightAugment(0.0, 0.0, flip_layers=SIREN_CHAIN)
    assert all(torch.equal(aug(p, torch.Generator().manual_seed(0))[k], q[k]) for k in p)
    with pytest.raises(ValueError, match="dict"):
        aug(torch.zeros(2, 3))


def test_probe_is_chance_on_random_embeddings_and_exact_on_true_features():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1200, 2, generator=g) * 10
    var = float(y.var(dim=0).mean())  # ~100/12
    rand = torch.randn(1200, 16, generator=g)
    mse_rand = linear_probe_mse(rand[:800], y[:800], rand[800:], y[800:])
    assert abs(mse_rand - var) / var < 0.2
    feats = torch.cat([y, torch.randn(1200, 3, generator=g)], 1) @ torch.randn(5, 5, generator=g)
    assert linear_probe_mse(feats[:800], y[:800], feats[800:], y[800:]) < 1e-6


def test_probe_leaves_out_features_constant_on_train_up_to_noise():
    # A ReLU unit dead on all train embeddings but one, firing on one test embedding: least squares fits its
    # coefficient to that one train row, and standardising by its tiny spread lets the test row swamp the
    # prediction. The guard leaves such features out; min_rel_std=0 (the unguarded probe) is the negative control.
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1200, 2, generator=g) * 10
    feats = torch.cat([y + 0.3 * torch.randn(1200, 2, generator=g), torch.randn(1200, 4, generator=g)], 1)
    dead = torch.zeros(1200, 1)
    dead[5], dead[1000] = 1e-5, 2e-3  # one train row, one test row
    x = torch.cat([feats, dead], 1)
    tr, te = slice(0, 800), slice(800, 1200)
    guarded = linear_probe_mse(x[tr], y[tr], x[te], y[te])
    clean = linear_probe_mse(feats[tr], y[tr], feats[te], y[te])
    assert abs(guarded - clean) < 1e-9
    assert linear_probe_mse(x[tr], y[tr], x[te], y[te], min_rel_std=0.0) > 10 * clean
    # exactly constant features change nothing either way; all-constant features give the train mean
    const = torch.cat([feats, torch.full((1200, 1), 3.0)], 1)
    assert abs(linear_probe_mse(const[tr], y[tr], const[te], y[te], min_rel_std=0.0) - clean) < 1e-6
    mean_mse = float((y[te] - y[tr].mean(0)).pow(2).mean())
    assert abs(linear_probe_mse(torch.ones(800, 3), y[tr], torch.ones(400, 3), y[te]) - mean_mse) < 1e-5


def test_weight_swapped_batch_equals_batch_of_built_graphs():
    p = _sirens(3)
    g = symgraph.parameter_graph(SIREN())
    wb = WeightGraphBatcher(g)
    fast = wb.batch(wb.edge_weights(p))
    graphs = []
    for j in range(3):
        net = SIREN()
        net.load_state_dict(unstack(p, j))
        graphs.append(gmn.graph_to_data(symgraph.parameter_graph(net)))
    ref = Batch.from_data_list(graphs)
    assert torch.equal(fast.edge_attr, ref.edge_attr) and torch.equal(fast.edge_index, ref.edge_index)
    # negative control: the same batch with the INRs in another order differs
    shuffled = wb.batch(wb.edge_weights({k: v[[1, 0, 2]] for k, v in p.items()}))
    assert not torch.equal(shuffled.edge_attr, ref.edge_attr)


def test_nt_xent_prefers_matched_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    near = z + 0.01 * torch.randn(16, 8, generator=g)
    assert float(nt_xent(z, near, 0.1)) < 0.1
    assert float(nt_xent(z, near[torch.randperm(16, generator=g)], 0.1)) > 1.0  # mismatched pairs


def test_editing_one_step_on_four_images_and_edited_state_dict_loads():
    from gmn.inr.image_dataset import make_images, pixel_grid

    imgs, targets = make_images("dilate", 4, 12, seed=0)
    assert imgs.shape == targets.shape == (4, 12, 12) and bool((targets >= imgs - 1e-6).all())  # dilation grows
    p = _sirens(4, in_dim=2)
    graph = symgraph.parameter_graph(SIREN(2, (32, 32), 1))
    stats = {k: (float(v.mean()), float(v.std())) for k, v in p.items()}
    grid = pixel_grid(12)
    for kind in ("gmn", "npnfn", "mlp"):
        torch.manual_seed(0)
        editor = inr_editing.INREditor(kind, graph, 8, 1, stats, gamma_init=0.01)
        assert torch.allclose(editor.gamma, torch.full_like(editor.gamma, 0.01))
        opt = torch.optim.Adam(editor.parameters(), lr=1e-3)
        loss = (batched_siren_forward(editor(p), grid)[..., 0] - targets.reshape(4, -1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and not torch.allclose(editor.gamma, torch.full_like(editor.gamma, 0.01))
        sd = inr_editing.edited_state_dict(editor, unstack(p, 2))
        net = SIREN(2, (32, 32), 1)
        net.load_state_dict(sd)
        with torch.no_grad():
            batched = batched_siren_forward(editor(p), grid)[2]
            torch.testing.assert_close(net(grid), batched, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(sd["layers.1.weight"], p["layers.1.weight"][2])


def test_ssl_cli_runs_tiny_and_rejects_bad_arguments(tmp_path):
    data = tmp_path / "sine"
    generate(data, 8, 4, 4, shard_size=8, fit=FitConfig(steps=3, lr=5e-3), progress=False)
    out = tmp_path / "ssl"
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--seeds",
        "1",  # a count: seed 0
        "--metanets",
        "gmn,npnfn,dws,mlp",
        "--no-progress",
    ]
    assert ssl_sine.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"gmn/seed0", "npnfn/seed0", "mlp/seed0", "raw_weights"} <= set(res["runs"])
    assert all(r["test_mse"] >= 0 for r in res["runs"].values())
    for r in res["runs"].values():  # the probe is separable: the joint MSE is the mean of the per-target ones
        assert r["test_mse"] == pytest.approx((r["test_mse_a"] + r["test_mse_b"]) / 2, rel=1e-4)
    if "dws/seed0" in res["runs"]:
        assert "| DWSNets (ours, DWSNet) |" in res["table"] and "| 1.39 ± .06 |" in res["table"]
    assert (out / "ckpt_gmn_seed0.pt").exists()
    assert ssl_sine.main(args) == 0  # resumed: finished runs are kept
    flip_out = tmp_path / "ssl_flip"
    flip_args = args[:3] + [str(flip_out), *args[4:-2], "gmn", "--sign-flip", "--no-progress"]
    assert ssl_sine.main(flip_args) == 0
    flipped = json.loads((flip_out / "results.json").read_text())
    assert flipped["config"]["sign_flip"] is True
    sel = flipped["runs"]["gmn/seed0"]["selected_epoch"]
    assert f"| 1 | {sel} | 1.13 ± .08 |" in flipped["table"]  # seeds, reported epoch, paper
    assert ssl_sine.main(["--data", str(data), "--out", str(out), "--metanets", "nope"]) == 2
    assert ssl_sine.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    for bad in (["--mask-prob", "1"], ["--mask-prob", "-0.1"], ["--noise-std", "-1"]):
        assert ssl_sine.main(["--data", str(data), "--out", str(tmp_path / "o3"), *bad]) == 2
    assert not (tmp_path / "o3").exists()


def test_ssl_selects_the_epoch_with_the_best_validation_probe(tmp_path):
    """select="val" reports the epoch whose validation probe MSE is lowest; "last" the final epoch.

    The reported ``val_mse`` is recomputed from the restored encoder, so it must equal the minimum of the
    curve recorded during training (it would not if the wrong state were restored); a resumed run keeps
    the same selection.
    """
    from dataclasses import replace

    data_dir = tmp_path / "sine"
    generate(data_dir, 16, 8, 8, shard_size=16, fit=FitConfig(steps=3, lr=5e-3), progress=False)
    data = ssl_sine.load_data(data_dir)
    cfg = replace(ssl_sine.SCALES["cpu"], epochs=4, batch_size=4, gmn_hidden=8, embed_dim=8, proj_dim=8, lr=5e-2)
    out = tmp_path / "o"
    out.mkdir()
    r = ssl_sine.run_one("gmn", 0, data, cfg, out, torch.device("cpu"), progress=False)
    assert len(r["val_history"]) == 4 and 1 <= r["selected_epoch"] <= 4
    best = min(r["val_history"])
    assert r["val_history"][r["selected_epoch"] - 1] == best
    assert r["val_mse"] == pytest.approx(best, rel=1e-4, abs=1e-5)
    again = ssl_sine.run_one("gmn", 0, data, cfg, out, torch.device("cpu"), progress=False)  # from checkpoint
    assert again["selected_epoch"] == r["selected_epoch"] and again["val_mse"] == pytest.approx(r["val_mse"])
    last = ssl_sine.run_one("gmn", 0, data, replace(cfg, select="last"), tmp_path, torch.device("cpu"), False)
    assert "selected_epoch" not in last
    if r["selected_epoch"] < 4:  # negative control: the last epoch is a different model from the selected one
        assert last["val_mse"] != pytest.approx(r["val_mse"], rel=1e-6)


def _permute_siren_hidden(p: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Stacked SIREN 1-32-32-1 parameters with both hidden layers' neurons permuted (same function)."""
    p0, p1 = torch.randperm(32, generator=g), torch.randperm(32, generator=g)
    return {
        "layers.0.weight": p["layers.0.weight"][:, p0],
        "layers.0.bias": p["layers.0.bias"][:, p0],
        "layers.1.weight": p["layers.1.weight"][:, p1][:, :, p0],
        "layers.1.bias": p["layers.1.bias"][:, p1],
        "layers.2.weight": p["layers.2.weight"][:, :, p1],
        "layers.2.bias": p["layers.2.bias"],
    }


@pytest.mark.parametrize(
    "pool, readout",
    [(("edge",), "head"), (("edge", "node"), "head"), (("param",), "head"), (("param",), "pooled")],
)
def test_gmn_encoder_is_invariant_to_hidden_neuron_permutations_and_the_mlp_is_not(pool, readout):
    from gmn.inr.encoders import build_encoder

    graph = symgraph.parameter_graph(SIREN(1, (32, 32), 1))
    torch.manual_seed(0)
    p = _sirens(3)  # float32: the weight-swapped batches are float32
    q = _permute_siren_hidden(p, torch.Generator().manual_seed(1))
    gmn_enc = build_encoder("gmn", graph, 5, 8, num_layers=2, pool=pool, readout=readout).eval()
    mlp_enc = build_encoder("mlp", graph, embed_dim=5, hidden_dim=8).eval()
    with torch.no_grad():
        scale = gmn_enc(p).abs().max()
        assert (gmn_enc(p) - gmn_enc(q)).abs().max() < 1e-5 * max(1.0, float(scale))
        assert (mlp_enc(p) - mlp_enc(q)).abs().max() > 1e-3  # negative control: the check can fail
    assert gmn_enc.net.pool == pool
    assert gmn_enc(p).shape == (3, 5 if readout == "head" else 6 * 8)  # 6 parameter tensors x width 8


def test_param_pooling_is_the_mean_of_each_tensors_edge_features():
    """``pool=("param",)``: one mean per parameter tensor over its forward edges (checked against the final
    edge features by hand); a mean over all edges would weight the 1024 middle weights 32 times the first
    layer's. Negative control: a global edge mean is not what param pooling returns."""
    from gmn.inr.encoders import build_encoder

    graph = symgraph.parameter_graph(SIREN(1, (32, 32), 1))
    torch.manual_seed(0)
    p = _sirens(2)
    enc = build_encoder("gmn", graph, 5, 8, num_layers=2, pool=("param",), readout="pooled").eval()
    batch = enc.batcher.batch(enc.batcher.edge_weights(p))
    with torch.no_grad():
        got = enc(p)
        v, e, u, nb, eb = enc.net.encode(batch)
    e_fwd = e[batch.edge_is_forward].reshape(2, graph.num_edges, 8)
    want = torch.cat([e_fwd[:, s.start : s.start + s.numel].mean(1) for s in enc.batcher.edge_slots], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[:, :8], e.reshape(2, -1, 8).mean(1), atol=1e-3)
    assert enc.out_dim == 48


def test_pooled_readout_for_gmn_npnfn_dws_and_a_clear_error_for_the_others():
    from gmn.inr.encoders import build_encoder

    graph = symgraph.parameter_graph(SIREN(1, (32, 32), 1))
    p = _sirens(2)
    for kind in ("npnfn", "dws"):
        enc = build_encoder(kind, graph, 5, 4, num_layers=2, readout="pooled")
        out = enc(p)
        assert out.shape == (2, enc.out_dim) and enc.out_dim > 5
        assert build_encoder(kind, graph, 5, 4, num_layers=2).out_dim == 5
    for kind in ("statnn", "mlp"):
        with pytest.raises(ValueError, match="readout"):
            build_encoder(kind, graph, 5, 4, readout="pooled")
    with pytest.raises(ValueError, match="readout"):
        build_encoder("gmn", graph, 5, 4, readout="nope")


def test_paper_scale_gmn_has_about_100k_parameters_as_e3():
    """Paper E.3: the SSL GMN is sized to about 100k trainable parameters."""
    import symgraph
    from gmn.inr.encoders import build_encoder
    from symgraph.models.siren import SIREN

    cfg = ssl_sine.SCALES["paper"]
    graph = symgraph.parameter_graph(SIREN(1, (32, 32), 1))
    enc = build_encoder(
        "gmn", graph, cfg.embed_dim, cfg.gmn_hidden, cfg.gmn_layers, pool=cfg.gmn_pool, readout=cfg.readout
    )
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert 90_000 <= n <= 110_000, n


def test_statistics_reference_features_equal_statnns_statistics():
    """The SSL table's no-learning reference row uses StatNN's statistics: the same numbers as
    :func:`gmn.baselines.statnn.tensor_statistics` on the parameter graph. Negative control: another
    network's statistics differ."""
    from gmn.baselines.statnn import tensor_statistics

    p = _sirens(2, seed=4)
    feats = ssl_sine.tensor_statistics_features(p)
    for j in range(2):
        vals = [p[k][j].reshape(-1) for k in p]
        seg = torch.cat([torch.full((v.numel(),), t) for t, v in enumerate(vals)])
        st, _ = tensor_statistics(torch.cat(vals), seg, len(vals))
        want = torch.cat([st[t] if v.numel() > 1 else v for t, v in enumerate(vals)])
        torch.testing.assert_close(feats[j], want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(feats[0], feats[1])
