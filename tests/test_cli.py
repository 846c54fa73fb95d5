"""`python -m symgraph.automorphisms` and the shared CLI helpers (symgraph.cli_util).

Most tests run the CLI in-process through ``main(argv)``; two run it end to end in a subprocess.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from symgraph.automorphisms import AutomorphismGroup
from symgraph.automorphisms.__main__ import VERIFY_RTOL, main
from symgraph.cli_util import (
    CLIError,
    OneLineArgumentParser,
    Spinner,
    atomic_open,
    atomic_write,
    parse_int_tuple,
    resolve_device,
    run_cli,
)
from symgraph.errors import ModelLoadError
from symgraph.models import build_model, list_models

# TorchScript files are one of the formats users bring; torch deprecates writing them, not reading them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ARCH = "mlp:hidden=8-8"
REPO = Path(__file__).resolve().parents[1]


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, argv: list[str]) -> tuple[int, dict]:
    code, out, err = _run(capsys, argv + ["--json"])
    assert out.count("\n") == 1, out  # exactly one JSON object, one line
    return code, json.loads(out)


def _assert_bad_input(code: int, out: str, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return build_model(ARCH).eval()


# ------------------------------------------------------------------------------------------------ examples
def test_example_mlp_json_has_the_documented_fields(capsys):
    code, d = _json(capsys, ["--example", "mlp"])
    assert code == 0
    for key in ("order", "log10_order", "num_nodes", "num_edges", "generators", "factors", "seconds"):
        assert key in d, key
    assert isinstance(d["order"], str) and int(d["order"]) >= 1
    # the default mlp has hidden widths (32, 32): |Aut| = 32! * 32! (Prop. 5), computed, not hard-coded here
    m = build_model("mlp")
    widths = [layer.out_features for layer in m.modules() if isinstance(layer, torch.nn.Linear)][:-1]
    assert int(d["order"]) == math.prod(math.factorial(w) for w in widths)
    assert abs(d["log10_order"] - math.log10(int(d["order"]))) < 1e-9
    assert isinstance(d["generators"], int) and d["generators"] >= 1
    assert isinstance(d["factors"], list) and d["factors"]


def test_example_mlp_text_summary_is_readable(capsys):
    code, out, _ = _run(capsys, ["--example", "mlp"])
    assert code == 0
    for label in ("model:", "graph:", "|Aut|:", "log10|Aut|:", "factors:", "time:"):
        assert label in out


def test_example_mlp_verify_passes_and_reports_max_abs_diff(capsys):
    code, d = _json(capsys, ["--example", "mlp", "--verify", "4"])
    assert code == 0
    assert d["verified"] is True and d["verify"] == 4
    assert 0.0 <= d["max_abs_diff"] <= VERIFY_RTOL * max(1.0, d["output_scale"])
    assert d["tolerance"] == pytest.approx(VERIFY_RTOL * max(1.0, d["output_scale"]))


def test_readme_main_command_is_fast(capsys):
    # CPU time, not wall time: the test machines are shared, and the CLI runs small models on one thread
    t0 = time.process_time()
    code, out, _ = _run(capsys, ["--example", "mlp", "--verify", "8"])
    assert code == 0 and "passed" in out
    assert time.process_time() - t0 < 5.0


@pytest.mark.parametrize("name", ["cnn2d", "resnet", "vit"])
def test_other_examples_verify(capsys, name):
    if name not in list_models():
        pytest.fail(f"model {name!r} missing from the registry: {list_models()}")
    code, d = _json(capsys, ["--example", name, "--verify", "2"])
    assert code == 0, d
    assert d["verified"] is True


def test_computation_graph_of_small_mlp_verifies(capsys):
    code, d = _json(
        capsys, ["--example", "mlp:in_shape=1x4,hidden=3-3,out_dim=2", "--graph", "computation", "--verify", "3"]
    )
    assert code == 0, d
    assert d["graph"] == "computation" and d["verified"] is True
    assert d["order"] == str(math.factorial(3) ** 2)


# ------------------------------------------------------------------------------------------------ negative controls
def _swap_two_inputs(aut: AutomorphismGroup) -> torch.Tensor:
    perm = torch.arange(aut.graph.num_nodes)
    a, b = aut.graph.input_nodes[:2].tolist()
    perm[a], perm[b] = b, a
    return perm


def test_verify_fails_with_exit_1_when_a_drawn_permutation_is_not_an_automorphism(capsys, monkeypatch):
    monkeypatch.setattr(AutomorphismGroup, "random_element", lambda self, generator=None: _swap_two_inputs(self))
    code, d = _json(capsys, ["--example", "mlp", "--verify", "2"])
    assert code == 1
    assert d["verified"] is False and d["verify_failures"]


def test_verify_function_check_catches_a_non_automorphism_even_if_membership_is_faked(capsys, monkeypatch):
    # contains() lies; only the output comparison can catch the swapped input pixels
    monkeypatch.setattr(AutomorphismGroup, "random_element", lambda self, generator=None: _swap_two_inputs(self))
    monkeypatch.setattr(AutomorphismGroup, "contains", lambda self, perm: True)
    code, d = _json(capsys, ["--example", "mlp", "--verify", "2"])
    assert code == 1
    assert d["verified"] is False
    assert d["max_abs_diff"] is None or d["max_abs_diff"] > d["tolerance"]


def test_verify_text_output_says_failed(capsys, monkeypatch):
    monkeypatch.setattr(AutomorphismGroup, "random_element", lambda self, generator=None: _swap_two_inputs(self))
    monkeypatch.setattr(AutomorphismGroup, "contains", lambda self, perm: True)
    code, out, _ = _run(capsys, ["--example", "mlp", "--verify", "1"])
    assert code == 1 and "FAILED" in out


# ------------------------------------------------------------------------------------------------ model files
def _order_of(capsys, argv) -> str:
    code, d = _json(capsys, argv)
    assert code == 0, d
    return d["order"]


def test_every_file_format_gives_the_same_group_as_the_model(capsys, tmp_path, mlp):
    expected = _order_of(capsys, ["--example", ARCH])
    torch.save(mlp.state_dict(), tmp_path / "sd.pt")
    torch.save(mlp, tmp_path / "full.pt")
    torch.jit.save(torch.jit.script(mlp), str(tmp_path / "ts.pt"))
    torch.export.save(torch.export.export(mlp, (torch.zeros(*mlp.example_input_shape),)), str(tmp_path / "m.pt2"))
    runs = [
        [str(tmp_path / "sd.pt"), "--arch", ARCH],
        [str(tmp_path / "full.pt"), "--trust"],
        [str(tmp_path / "ts.pt"), "--arch", ARCH],
        [str(tmp_path / "m.pt2"), "--arch", ARCH],
    ]
    from safetensors.torch import save_file  # the 'io' extra: installed by make test

    save_file(mlp.state_dict(), str(tmp_path / "w.safetensors"))
    runs.append([str(tmp_path / "w.safetensors"), "--arch", ARCH])
    for argv in runs:
        assert _order_of(capsys, argv + ["--verify", "1"]) == expected, argv


def test_pickled_module_without_trust_is_bad_input(capsys, tmp_path, mlp):
    torch.save(mlp, tmp_path / "full.pt")
    line = _assert_bad_input(*_run(capsys, [str(tmp_path / "full.pt")]))
    assert "--trust" in line and "arbitrary code" in line


def test_malicious_pickle_does_not_run_without_trust(capsys, tmp_path):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name, data in [("evil.pt", None), ("evil.pkl", pickle.dumps(Evil()))]:
        p = tmp_path / name
        if data is None:
            torch.save(Evil(), p)
        else:
            p.write_bytes(data)
        _assert_bad_input(*_run(capsys, [str(p)]))
        _assert_bad_input(*_run(capsys, [str(p), "--arch", ARCH]))
        assert not marker.exists()


def test_state_dict_without_arch_is_bad_input_listing_models(capsys, tmp_path, mlp):
    torch.save(mlp.state_dict(), tmp_path / "sd.pt")
    line = _assert_bad_input(*_run(capsys, [str(tmp_path / "sd.pt")]))
    assert "--arch" in line and all(n in line for n in list_models())


def test_state_dict_that_does_not_fit_arch_is_bad_input(capsys, tmp_path, mlp):
    torch.save(mlp.state_dict(), tmp_path / "sd.pt")
    line = _assert_bad_input(*_run(capsys, [str(tmp_path / "sd.pt"), "--arch", "mlp:hidden=8-9"]))
    assert "Expected" in line and "(got shape" in line


@pytest.mark.parametrize("trust", [False, True])
def test_bad_files_are_bad_input(capsys, tmp_path, mlp, trust):
    torch.save(mlp.state_dict(), tmp_path / "sd.pt")
    data = (tmp_path / "sd.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    extra = ["--trust"] if trust else []
    for name in ("trunc.pt", "random.pt", "list.pt", "missing.pt"):
        _assert_bad_input(*_run(capsys, [str(tmp_path / name), "--arch", ARCH] + extra))
    _assert_bad_input(*_run(capsys, [str(tmp_path), "--arch", ARCH] + extra))  # a directory


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--example", "no_such_model"],
        ["--example", "mlp", "--input-shape", "1,x"],
        ["--example", "mlp", "--verify", "-1"],
        ["--example", "mlp", "--graph", "nonsense"],
        ["--example", "mlp", "--save-generators", "gens.txt"],
        ["--example", "mlp", "--arch", "mlp"],
        ["--example", "mlp", "--device", "tpu"],
        ["--example", "mlp", "--no-such-flag"],
        ["model.pt", "--example", "mlp"],
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, argv):
    _assert_bad_input(*_run(capsys, argv))


def test_cuda_device_when_unavailable_is_bad_input(capsys):
    if torch.cuda.is_available():
        code, _, _ = _run(capsys, ["--example", "mlp", "--device", "cuda"])
        assert code == 0
    else:
        line = _assert_bad_input(*_run(capsys, ["--example", "mlp", "--device", "cuda"]))
        assert "CUDA" in line


def test_help_explains_options_with_examples(capsys):
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0
    for word in ("--verify", "--json", "--trust", "--arch", "--save-generators", "examples:", "exit codes"):
        assert word in out


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_save_generators_writes_automorphisms(capsys, tmp_path, suffix):
    path = tmp_path / f"gens{suffix}"
    code, d = _json(capsys, ["--example", ARCH, "--save-generators", str(path)])
    assert code == 0 and d["saved_generators"] == str(path)
    if suffix == ".pt":
        saved = torch.load(path, weights_only=True)
        gens = saved["generators"]
    else:
        saved = json.loads(path.read_text())
        gens = torch.tensor(saved["generators"])
    assert saved["order"] == d["order"] and gens.shape == (d["generators"], d["num_nodes"])
    import symgraph

    g = symgraph.parameter_graph(build_model(ARCH))
    assert all(g.is_automorphism(p) for p in gens)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temp file left behind


def test_input_shape_is_used(capsys):
    code, d = _json(capsys, ["--example", "mlp", "--input-shape", "1,1,8,8"])
    assert code == 0
    code, _, err = _run(capsys, ["--example", "mlp", "--input-shape", "1,3,5"])
    _assert_bad_input(code, "", err)


def test_report_on_sound_encoding_exits_0(capsys):
    code, out, _ = _run(capsys, ["--example", ARCH, "--report"])
    assert code == 0
    assert len(out.strip().splitlines()) > 8  # summary plus the report text


def test_report_flags_the_papers_unsound_encoding(capsys):
    # negative control for --report: the paper's Q/K/V encoding admits automorphisms that change the function
    code, d = _json(capsys, ["--example", "vit", "--encoding", "paper", "--report"])
    assert code == 1 and d["sound"] is False
    code, d = _json(capsys, ["--example", "vit", "--encoding", "sound", "--report"])
    assert code == 0 and d["sound"] is True


# ------------------------------------------------------------------------------------------------ subprocess
def _subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SYMGRAPH_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "symgraph.automorphisms", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_end_to_end_json_in_a_subprocess():
    r = _subprocess(["--example", "mlp", "--verify", "2", "--json"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["verified"] is True and int(d["order"]) > 1


def test_end_to_end_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(os.urandom(512))
    r = _subprocess([str(bad)])
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


_HEAVY = ("torch._dynamo", "sympy", "scipy", "networkx", "matplotlib", "torch_geometric")


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_cli_cold_start_loads_no_heavy_module_and_the_probe_sees_them_when_used():
    """Issue 21 item 6: the built-in MLP's CLI run imports neither torch._dynamo (meta shape propagation)
    nor sympy, scipy, networkx, matplotlib or torch_geometric."""
    loaded = _modules_after(
        "from symgraph.automorphisms.__main__ import main; main(['--example', 'mlp', '--verify', '2'])"
    )
    assert not [m for m in _HEAVY if m in loaded], [m for m in _HEAVY if m in loaded]
    # negative control: the probe does see them once they are used (to_networkx; the meta path of big models)
    used = _modules_after(
        "import torch.nn as nn, symgraph, symgraph.trace as t\n"
        "symgraph.parameter_graph(nn.Sequential(nn.Linear(2, 2))).to_networkx()\n"
        "t.REAL_SHAPE_PROP_WORK = 0\n"
        "symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 2)))"
    )
    assert {"networkx", "torch._dynamo", "sympy"} <= used


def test_shapes_are_propagated_for_real_on_small_models_and_on_meta_on_big_ones(monkeypatch):
    import torch.nn as nn

    import symgraph
    from symgraph import trace

    calls = []
    for name in ("_run_real", "_run_meta"):
        fn = getattr(trace, name)
        monkeypatch.setattr(trace, name, lambda gm, x, _f=fn, _n=name: (calls.append(_n), _f(gm, x))[1])
    symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1)), input_shape=(1, 1, 8, 8))
    symgraph.parameter_graph(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 1, 4096, 4096))
    assert calls == ["_run_real", "_run_meta"]


# ------------------------------------------------------------------------------------------------ cli_util
def test_run_cli_maps_errors_to_exit_codes(capsys):
    def raise_(exc):
        def f(argv):
            raise exc

        return f

    assert run_cli(lambda argv: 0, []) == 0
    assert run_cli(lambda argv: 1, []) == 1
    assert run_cli(raise_(ModelLoadError("bad\nfile")), []) == 2
    assert capsys.readouterr().err == "error: bad file\n"
    assert run_cli(raise_(FileNotFoundError("nope")), []) == 2
    assert run_cli(raise_(RuntimeError("boom")), []) == 2
    assert "unexpected RuntimeError: boom" in capsys.readouterr().err


def test_run_cli_reraises_with_debug(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_DEBUG", "1")

    def f(argv):
        raise CLIError("x")

    with pytest.raises(CLIError):
        run_cli(f, [])


def test_one_line_parser_raises_instead_of_printing_usage():
    p = OneLineArgumentParser(prog="prog")
    p.add_argument("--n", type=int)
    with pytest.raises(CLIError, match=r"invalid int value: 'x' \(see prog --help\)"):
        p.parse_args(["--n", "x"])


def test_atomic_open_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(CLIError, match="does not exist"):
        atomic_write(tmp_path / "nodir" / "x", "y")


def test_spinner_is_silent_for_short_runs_and_reports_long_ones():
    quiet = io.StringIO()
    with Spinner("fast job", delay=2.0, stream=quiet):
        pass
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with Spinner("slow job", delay=0.05, stream=loud):
        time.sleep(0.3)
    text = loud.getvalue()
    assert "slow job" in text and "done in" in text


def test_device_and_shape_parsing():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(CLIError):
        resolve_device("gpu")
    assert parse_int_tuple("1,3,32,32") == (1, 3, 32, 32)
    assert parse_int_tuple("(1, 3, 32, 32)") == (1, 3, 32, 32)
    assert parse_int_tuple("1x3x32x32") == (1, 3, 32, 32)
    for bad in ("", "1,,a", "0,3", "-1,2"):
        with pytest.raises(CLIError):
            parse_int_tuple(bad, "--input-shape")


def test_time_limit_stops_with_one_line_naming_the_stage(capsys):
    code, out, err = _run(capsys, ["--example", "mlp", "--time-limit", "0.000001"])
    line = _assert_bad_input(code, out, err)
    assert "time limit of 1e-06 s reached during" in line
    assert any(f"during {s}" in line for s in ("build", "reductions", "nauty", "quotient", "lifting")), line


def test_time_limit_holds_inside_nauty(capsys, monkeypatch):
    import pynauty

    def slow(g):  # a search that never ends, in the child process the CLI kills at the deadline
        time.sleep(60)

    monkeypatch.setattr(pynauty, "autgrp", slow)
    t0 = time.monotonic()
    code, out, err = _run(capsys, ["--example", "mlp", "--time-limit", "1.5", "--quiet"])
    assert "during nauty" in _assert_bad_input(code, out, err)
    assert time.monotonic() - t0 < 15


def test_bad_time_limit_is_bad_input(capsys):
    _assert_bad_input(*_run(capsys, ["--example", "mlp", "--time-limit", "0"]))


def test_progress_lines_on_stderr_unless_quiet_and_json_unchanged(capsys, monkeypatch):
    import functools

    import symgraph.automorphisms.__main__ as cli
    from symgraph.progress import Progress

    monkeypatch.setattr(cli, "Progress", functools.partial(Progress, delay=0.0))  # show even short work
    code, out, err = _run(capsys, ["--example", "mlp", "--verify", "2", "--json"])
    assert code == 0 and out.count("\n") == 1
    for stage in ("reductions", "nauty", "lifting", "verification"):
        assert f"... {stage}" in err, err
    loud = json.loads(out)
    code, out, err = _run(capsys, ["--example", "mlp", "--verify", "2", "--json", "--quiet"])
    assert code == 0 and err == ""
    quiet = json.loads(out)
    assert {k for k in loud if k != "seconds"} == {k for k in quiet if k != "seconds"}
    assert loud["order"] == quiet["order"] and loud["verified"] and quiet["verified"]
