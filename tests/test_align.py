"""symgraph.align: weight matching over exact automorphism groups (issue 19, items 1-5 and 7).

Claims tested: the permutation found is always in the group and the aligned model computes the model's
function (float64, train and eval); permuted copies are recovered exactly for every architecture family;
the objective derived from the group equals the textbook per-layer one on MLPs; bad input gives one-line
"Expected ... (got ...)" errors (exit 2 from the CLI, nothing written). Negative controls: an objective that
ignores the only parameter block identifying some units, and block factors scored without their inner
units, both fail to recover; the O(E) membership certificate rejects non-automorphisms.
"""

from __future__ import annotations

import contextlib
import copy
import doctest
import importlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import symgraph
from symgraph.align import Descent, GenericFactor, factors_of, objective, weight_matching
from symgraph.align.__main__ import main as cli_main
from symgraph.align.lmc import LMCConfig, _recompute_bn, barrier, interpolation_curve
from symgraph.errors import ShapeMismatchError, SymgraphError
from symgraph.models import build_model
from tests.strategies import architectures, build_arch, example_batch

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-12


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def _permuted_copy(model: nn.Module, aut, seed: int) -> nn.Module:
    return symgraph.permute_model(model, aut.random_element(torch.Generator().manual_seed(seed)), graph=aut.graph)


def _group(model: nn.Module, **kw):
    return symgraph.automorphism_group(model, input_shape=model.example_input_shape, **kw)


# ---------------------------------------------------------------------------------------------- the API
def test_symgraph_align_is_the_function_and_python_m_symgraph_align_is_the_cli():
    assert callable(symgraph.align) and symgraph.align.__name__ == "align"
    assert "align" in symgraph.__all__
    pkg = importlib.import_module("symgraph.align")  # the package stays importable under the function's name
    assert pkg.weight_matching is weight_matching
    out = subprocess.run(
        [sys.executable, "-m", "symgraph.align", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "weight-matching objective" in out.stdout and "--demo" in out.stdout and "exit codes" in out.stdout


def test_docstring_examples_of_the_align_package_run():
    for name in ("problem", "descent", "matching", "lmc", "__init__"):
        mod = importlib.import_module("symgraph.align" + ("" if name == "__init__" else f".{name}"))
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0, f"{name}: {res}"


# ---------------------------------------------------------------------------------------------- recovery
@given(architectures(), st.integers(0, 2**16))
def test_align_recovers_any_permuted_copy_exactly_and_stays_in_the_group(arch, seed):
    model = build_arch(*arch)
    aut = _group(model)
    moved = _permuted_copy(model, aut, seed)
    res = weight_matching(model, moved, group=aut)
    assert aut.contains(res.perm)
    assert _max_diff(res.aligned, model) <= EXACT
    # the aligned state is Phi(perm) of the moved model, as the library's own permute_model computes it
    assert _max_diff(res.aligned, symgraph.permute_model(moved, res.perm, graph=aut.graph)) == 0.0
    assert res.objective_after >= res.objective_before - 1e-9 * max(1.0, abs(res.objective_before))


REGISTRY_CASES = {
    "mlp": ("mlp", dict(in_shape=(1, 3, 3), hidden=(5, 4, 6), out_dim=3)),
    "cnn_batchnorm": ("cnn2d", dict(in_shape=(2, 4, 4), hidden=5, conv_layers=2, norm="batchnorm", out_dim=3)),
    "cnn_groupnorm": ("cnn2d", dict(in_shape=(1, 4, 4), hidden=6, conv_layers=2, norm="groupnorm", groups=3)),
    "resnet_basic_bn": ("resnet", dict(in_shape=(1, 4, 4), hidden=3, blocks=(2, 1), norm="batchnorm", out_dim=2)),
    "resnet_bottleneck_gn": (
        "resnet",
        dict(in_shape=(1, 4, 4), hidden=2, blocks=(1, 1), block="bottleneck", norm="groupnorm", out_dim=2),
    ),
    "attention_manual": (
        "transformer",
        dict(seq_len=3, in_dim=2, dim=6, depth=1, heads=2, mlp_dim=4, out_dim=2, impl="manual", image_input=False),
    ),
    "transformer_encoder_mha": (
        "transformer",
        dict(seq_len=3, in_dim=2, dim=6, depth=2, heads=3, mlp_dim=4, out_dim=2, layer="torch", impl="mha"),
    ),
    "deepsets": ("deepsets", dict(in_shape=(1, 3, 2), hidden=4, layers=2, norm="groupnorm", out_dim=2)),
    "vit_packed": ("vit", dict(in_shape=(1, 4, 4), patch=2, dim=6, depth=2, heads=2, mlp_dim=5, impl="packed")),
}


@pytest.mark.parametrize("case", sorted(REGISTRY_CASES))
def test_symgraph_align_recovers_registry_models_and_preserves_the_function(case, tol):
    name, kw = REGISTRY_CASES[case]
    if name == "transformer":
        kw = {**kw, "image_input": False}
    model = build_arch(name, kw, seed=3)
    aut = _group(model)
    moved = _permuted_copy(model, aut, seed=7)
    aligned, perm = symgraph.align(model, moved)  # the public function: graph and group built inside
    assert aut.contains(perm)
    assert _max_diff(aligned, model) <= EXACT
    x = example_batch(model, batch=4, seed=1)
    assert symgraph.check_function_preservation(moved, perm, x) <= tol[torch.float64]  # train and eval mode


@pytest.mark.parametrize("case", ["cnn_batchnorm", "resnet_basic_bn", "attention_manual", "vit_packed"])
def test_aligning_two_different_models_keeps_the_function_and_raises_the_objective(case, tol):
    name, kw = REGISTRY_CASES[case]
    ref, model = build_arch(name, kw, seed=0), build_arch(name, kw, seed=1)
    res = weight_matching(ref, model)
    assert res.group.contains(res.perm) and res.converged
    assert res.objective_after > res.objective_before
    assert abs(objective(ref, res.aligned) - res.objective_after) <= 1e-9 * abs(res.objective_after)
    x = example_batch(model, batch=4, seed=2)
    assert symgraph.check_function_preservation(model, res.perm, x) <= tol[torch.float64]
    for mode in (True, False):  # and directly: aligned(x) == model(x)
        a, b = copy.deepcopy(res.aligned).train(mode), copy.deepcopy(model).train(mode)
        with torch.no_grad():
            assert float((a(x) - b(x)).abs().max()) <= tol[torch.float64]


def test_float32_models_align_without_rounding_their_weights():
    ref = build_model("cnn2d", in_shape=(1, 4, 4), hidden=4, norm="batchnorm")
    aut = _group(ref)
    moved = _permuted_copy(ref, aut, seed=3)
    aligned, _ = symgraph.align(ref, moved)
    assert all(torch.equal(aligned.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_quotient_factors_symmetric_and_generic_are_matched_too():
    """Without twin reduction the whole group comes from nauty's quotient: symmetric orbits tied through
    perfect matchings (residual streams) and non-symmetric factors (heads with their dimensions), which the
    descent tries element by element."""
    resnet = build_arch("resnet", dict(in_shape=(1, 4, 4), hidden=2, blocks=(1, 1), norm="batchnorm", out_dim=2))
    vit = build_arch("vit", dict(in_shape=(1, 4, 4), patch=4, dim=4, depth=1, heads=2, mlp_dim=2, impl="manual"))
    for model in (resnet, vit):
        aut = _group(model, reduce_twins=False)
        assert not aut.reduction.levels and aut.quotient.factors
        factors = factors_of(aut)
        for seed in range(3):
            res = weight_matching(model, _permuted_copy(model, aut, seed), group=aut)
            assert aut.contains(res.perm) and _max_diff(res.aligned, model) <= EXACT
    assert any(isinstance(f, GenericFactor) and f.exhaustive for f in factors)  # the ViT's head factor
    assert aut.quotient.dependents or any(len(q.orbits) for q in aut.quotient.factors)


# ---------------------------------------------------------------------------------------------- structure
def test_factors_are_derived_from_the_group_heads_and_groupnorm_groups_are_blocks_with_inner_classes():
    att = build_arch(*REGISTRY_CASES["attention_manual"])
    heads = [f for f in factors_of(_group(att)) if f.root.children]
    assert len(heads) == 1 and heads[0].k == 2  # 2 heads, each with its q/k pairs and its v dimensions
    assert sorted(c.k for c in heads[0].root.children) == [3, 3]
    gn = build_arch(*REGISTRY_CASES["cnn_groupnorm"])
    groups = [f for f in factors_of(_group(gn)) if f.root.children]
    assert [f.k for f in groups] == [3, 3] and all(f.root.children[0].k == 2 for f in groups)
    # a residual stream is one factor, tied across all its node sets
    res = build_arch(*REGISTRY_CASES["resnet_basic_bn"])
    names = [f.name for f in factors_of(_group(res))]
    assert any("tied across" in n for n in names)


# ---------------------------------------------------------------------------------------------- negative controls
def test_negative_control_objective_ignoring_attention_in_projection_fails_to_recover():
    """q/k dimensions are told apart only by the q/k rows of nn.MultiheadAttention's in_proj (their edges to
    the head node carry no parameter): leaving that block out of the objective loses them. (Leaving out the
    output projection alone does not: v dimensions are still identified by their v rows.)"""
    model = build_arch(
        "transformer",
        dict(seq_len=3, in_dim=2, dim=6, depth=1, heads=2, mlp_dim=3, out_dim=2, impl="mha", image_input=False),
    )
    aut = _group(model)
    moved = _permuted_copy(model, aut, seed=0)
    full = weight_matching(model, moved, group=aut)
    assert _max_diff(full.aligned, model) <= EXACT
    in_proj = [k for k in model.state_dict() if "in_proj" in k]
    broken = weight_matching(model, moved, group=aut, ignore=in_proj)
    assert aut.contains(broken.perm)  # still a symmetry: the function is kept, the weights are not recovered
    assert _max_diff(broken.aligned, model) > 0.1


def test_negative_control_groupnorm_groups_scored_without_their_channels_fail_to_recover_some_case():
    name, kw = REGISTRY_CASES["cnn_groupnorm"]
    model = build_arch(name, kw, seed=0)
    aut = _group(model)
    flat, nested = [], []
    for seed in range(6):
        moved = _permuted_copy(model, aut, seed)
        nested.append(_max_diff(weight_matching(model, moved, group=aut).aligned, model))
        flat.append(_max_diff(weight_matching(model, moved, group=aut, nested=False).aligned, model))
    assert max(nested) <= EXACT
    assert max(flat) > 0.1


def test_negative_control_membership_certificate_rejects_non_automorphisms():
    model = build_arch(*REGISTRY_CASES["mlp"])
    aut = _group(model)
    g = aut.graph
    ew, nw = g.edge_weight.double().numpy(), g.node_weight.double().numpy()
    d = Descent(g, factors_of(aut), ew, nw, ew, nw)
    colors = g.node_color.numpy()
    assert d.certify(colors)
    inputs = g.input_nodes.tolist()
    swap = np.arange(g.num_nodes)
    swap[inputs[0]], swap[inputs[1]] = inputs[1], inputs[0]
    d.perm = swap  # moves fixed input nodes (the edges would follow, but inputs are fixed)
    assert not d.certify(colors)
    d.perm = np.arange(g.num_nodes)
    d.src_of = d.src_of.copy()
    d.src_of[[0, 1]] = d.src_of[[1, 0]]  # an edge map that does not follow the (identity) node map
    assert not d.certify(colors)


# ---------------------------------------------------------------------------------------------- textbook
def _benchmark():
    spec = importlib.util.spec_from_file_location("align_speed", ROOT / "benchmarks" / "align_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@settings(max_examples=10)
@given(st.lists(st.integers(2, 12), min_size=1, max_size=3), st.integers(0, 1000))
def test_group_derived_objective_and_descent_equal_the_textbook_ones_on_mlps(hidden, seed):
    bench = _benchmark()
    arch = dict(in_shape=(1, 2, 3), hidden=tuple(hidden), out_dim=3)
    torch.manual_seed(seed)
    ref = build_model("mlp", **arch).double()
    model = build_model("mlp", **arch).double()
    aut = symgraph.automorphism_group(model)
    other = _permuted_copy(model, aut, seed)  # any group element: the two objectives agree
    assert abs(objective(ref, other) - bench.mlp_objective(ref, other)) <= 1e-12 * max(1.0, abs(objective(ref, other)))
    _, text_obj, text_passes = bench.textbook_weight_matching(ref, model, seed=seed)
    res = weight_matching(ref, model, group=aut, sweep=False, seed=seed)
    assert abs(res.objective_after - text_obj) <= 1e-9 * max(1.0, abs(text_obj))
    assert res.iterations == text_passes


def test_negative_control_textbook_comparison_sees_a_different_objective():
    """The equality above can fail: a descent on another objective (bias entries left out) lands elsewhere."""
    bench = _benchmark()
    torch.manual_seed(5)
    ref, model = build_model("mlp", hidden=(16, 16)).double(), build_model("mlp", hidden=(16, 16)).double()
    _, text_obj, _ = bench.textbook_weight_matching(ref, model)
    biased = weight_matching(ref, model, sweep=False, ignore=["net.1.bias", "net.4.bias"])
    assert abs(biased.objective_after - text_obj) > 1e-6


# ---------------------------------------------------------------------------------------------- bad input
def test_different_architectures_name_the_first_mismatching_parameter():
    a, b = build_model("mlp", hidden=(8, 8)), build_model("mlp", hidden=(8, 6))
    with pytest.raises(ShapeMismatchError, match=r"Expected the reference's 'net.4.weight' of shape \(6, 8\).*got"):
        symgraph.align(a, b)


def test_reference_with_missing_or_extra_entries_is_refused():
    model = build_model("mlp", hidden=(4,))

    class Missing(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(model.net)
            self.net[1].bias = None

    with pytest.raises(ShapeMismatchError, match=r"Expected the reference to have the model's 'net.1.bias'"):
        symgraph.align(Missing(), model)
    with pytest.raises(ShapeMismatchError, match=r"Expected only the model's .* \(got 'net.1.bias'\)"):
        symgraph.align(model, Missing())


def test_same_state_entries_but_other_wiring_is_refused():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Skip(Plain):
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)) + x)

    with pytest.raises(ShapeMismatchError, match=r"Expected a reference of the model's architecture \(got a param"):
        symgraph.align(Skip(), Plain())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_iter_below_one_or_not_an_int_is_refused(bad):
    m = build_model("mlp", hidden=(4,))
    with pytest.raises(ShapeMismatchError, match=r"Expected max_iter >= 1 \(got"):
        symgraph.align(m, m, max_iter=bad)


def test_unknown_method_and_non_modules_are_refused():
    m = build_model("mlp", hidden=(4,))
    with pytest.raises(ShapeMismatchError, match=r"Expected method in \('weights',\) \(got 'activations'\)"):
        symgraph.align(m, m, method="activations")
    with pytest.raises(ShapeMismatchError, match=r"Expected the reference to be an nn.Module \(got OrderedDict\)"):
        symgraph.align(m.state_dict(), m)
    assert issubclass(ShapeMismatchError, SymgraphError)


# ---------------------------------------------------------------------------------------------- CLI
def _run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    arch = "mlp:hidden=6-5"
    torch.manual_seed(0)
    torch.save(build_model(arch).state_dict(), tmp_path / "a.pt")
    torch.manual_seed(1)
    torch.save(build_model(arch).state_dict(), tmp_path / "b.pt")
    torch.save(build_model("mlp:hidden=6-4").state_dict(), tmp_path / "other.pt")
    missing = build_model(arch).state_dict()
    missing.pop("net.4.bias")
    torch.save(missing, tmp_path / "missing.pt")
    return tmp_path, arch


def test_cli_writes_the_aligned_state_dict_and_json(files):
    d, arch = files
    code, out, err = _run_cli([d / "a.pt", d / "b.pt", "--arch", arch, "--out", d / "al.pt", "--json", "--verify"])
    assert code == 0, err
    rep = json.loads(out)
    for key in ("objective_before", "objective_after", "iterations", "seconds", "converged", "verified"):
        assert key in rep
    assert rep["objective_after"] >= rep["objective_before"] and rep["verified"]
    from symgraph.io import load_model

    ref, _ = load_model(d / "a.pt", arch=arch)
    model, _ = load_model(d / "b.pt", arch=arch)
    expect = weight_matching(ref, model).aligned.state_dict()
    got = torch.load(d / "al.pt", weights_only=True)
    assert set(got) == set(expect) and all(torch.equal(got[k], expect[k]) for k in expect)
    code, out, _ = _run_cli([d / "a.pt", d / "b.pt", "--arch", arch, "--out", d / "al.safetensors"])
    assert code == 0 and "objective:" in out and (d / "al.safetensors").is_file()


@pytest.mark.parametrize(
    "case",
    ["other_arch", "missing_keys", "max_iter", "bad_suffix", "no_dir", "one_file", "demo_arch", "demo_with_files"],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(files, case):
    d, arch = files
    out = d / "x.pt"
    argv = {
        "other_arch": [d / "a.pt", d / "other.pt", "--arch", arch, "--out", out],
        "missing_keys": [d / "missing.pt", d / "b.pt", "--arch", arch, "--out", out],
        "max_iter": [d / "a.pt", d / "b.pt", "--arch", arch, "--out", out, "--max-iter", "0"],
        "bad_suffix": [d / "a.pt", d / "b.pt", "--arch", arch, "--out", d / "x.txt"],
        "no_dir": [d / "a.pt", d / "b.pt", "--arch", arch, "--out", d / "nope" / "x.pt"],
        "one_file": [d / "a.pt", "--arch", arch, "--out", out],
        "demo_arch": ["--demo", "lmc", "--arch", "lenet", "--out", d / "lmc"],
        "demo_with_files": [d / "a.pt", "--demo", "lmc"],
    }[case]
    before = sorted(p.name for p in d.iterdir())
    code, stdout, err = _run_cli(argv)
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in d.iterdir()) == before
    if case in ("other_arch", "missing_keys", "max_iter", "bad_suffix", "demo_arch"):
        assert "Expected" in err


# ---------------------------------------------------------------------------------------------- LMC
def test_barrier_is_the_largest_gap_above_the_chord_and_zero_below_it():
    assert barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier([0, 0.5, 1], [1.0, 1.0, 2.0]) == 0.0  # a convex path has no barrier


def test_recomputed_batchnorm_statistics_are_those_of_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(50, 1, 2, 2) * 3 + 1
    model[0].running_mean.fill_(7.0)  # as an interpolation of two networks' statistics might leave them
    _recompute_bn(model, x)
    assert torch.allclose(model[0].running_mean, x.mean().reshape(1), atol=1e-5)
    assert torch.allclose(model[0].running_var, x.var().reshape(1), atol=1e-4)
    assert not model.training


def test_interpolation_curves_recompute_batchnorm_and_differ_from_interpolated_statistics():
    xs, ys = torch.randn(60, 1, 8, 8), torch.randint(0, 10, (60,))
    data = (xs[:40], ys[:40], xs[40:], ys[40:])
    torch.manual_seed(0)
    a = build_model("cnn2d:hidden=4,conv_layers=1,norm=batchnorm").eval()
    b = build_model("cnn2d:hidden=4,conv_layers=1,norm=batchnorm").eval()
    plain = interpolation_curve(a, b, data, points=3)
    recomputed = interpolation_curve(a, b, data, points=3, recompute_bn=True)
    with torch.no_grad():
        loss_a = float(nn.functional.cross_entropy(a(data[2]), data[3]))
    assert len(plain["t"]) == 3 and plain["test_loss"][0] == pytest.approx(loss_a)
    assert plain["test_loss"][1] != pytest.approx(recomputed["test_loss"][1])


def test_lmc_demo_writes_png_and_json_with_barriers_before_and_after(tmp_path):
    code, out, err = _run_cli(["--demo", "lmc", "--arch", "mlp", "--epochs", "2", "--out", tmp_path, "--json"])
    assert code == 0, err
    rep = json.loads(out)
    (res,) = rep["results"]
    assert set(res["barriers"]) == {"naive/plain", "aligned/plain"}
    assert res["alignment"]["max_output_change_on_test"] < 1e-4
    assert Path(res["files"]["png"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(res["files"]["json"]).read_text())
    assert len(saved["curves"]["aligned/plain"]["test_loss"]) == LMCConfig().points
