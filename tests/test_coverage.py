"""The coverage table's row logic and CLI (symgraph's own models; torchvision/timm/hf rows need those packages)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import symgraph.automorphisms
from symgraph import coverage
from symgraph.automorphisms.verify import VerifyResult


def test_row_of_a_sound_model_is_ok_with_the_analytic_order_and_the_control_caught():
    row = coverage.run_one("symgraph:resnet", verify=2)
    assert row["status"] == "ok", row
    assert row["analytic_equal"] is True
    assert row["max_output_change"] <= row["tolerance"]
    assert row["control_caught"] is True
    assert row["nodes"] > 0 and row["edges"] > 0 and row["params"] > 0


def test_a_failed_function_check_makes_the_row_unsound(monkeypatch):
    # negative control: the table must not call a model ok when a random automorphism changed its output
    def broken(model, aut, n, example, seed=0, **_):
        return VerifyResult(n=n, max_abs_diff=1.0, output_scale=1.0, tolerance=1e-9, failures=["#0: changed"])

    monkeypatch.setattr(symgraph.automorphisms, "verify_automorphisms", broken)
    row = coverage.run_one("symgraph:mlp", verify=1)
    assert row["status"] == "unsound"


def test_an_input_swap_that_is_not_caught_fails_the_row(monkeypatch):
    # negative control of the negative control: an identity 'swap' changes nothing, so the row is not ok
    import torch

    monkeypatch.setattr(coverage, "_input_swap", lambda g: torch.arange(g.num_nodes))
    row = coverage.run_one("symgraph:mlp", verify=1)
    assert row["control_caught"] is False and row["status"] == "unchecked"


def _zero_head_build(name, seed=0):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    nn.init.zeros_(model[4].weight)  # timm's MLP-Mixer / ResMLP: zero-initialised classifier head
    nn.init.zeros_(model[4].bias)
    return model.eval()


def test_a_zero_initialised_head_is_perturbed_so_the_check_is_not_vacuous(monkeypatch):
    monkeypatch.setattr(coverage, "build", _zero_head_build)
    monkeypatch.setattr(coverage, "count_parameters", lambda name: 49)
    row = coverage.run_one("symgraph:mlp", verify=2)
    assert row["constant_params_perturbed"] == 2 and row["status"] == "ok", row
    # negative control: without the perturbation every output is 0 and the input swap goes unseen
    monkeypatch.setattr(coverage, "perturb_constant_parameters", lambda model, seed=0: 0)
    row = coverage.run_one("symgraph:mlp", verify=2)
    assert row["max_output_change"] == 0.0 and row["status"] == "unchecked", row


def test_errors_are_recorded_with_their_stage_not_raised():
    row = coverage.run_one("symgraph:no_such_model", verify=1)
    assert row["status"] == "error" and row["stage"] == "count" and "no_such_model" in row["error"]


def test_parameters_above_the_limit_skip_the_model():
    row = coverage.run_one("symgraph:resnet", max_params=10)
    assert row["status"] == "skipped" and "max-params" in row["error"]


def test_cli_runs_each_model_in_a_subprocess_and_resumes_from_its_file(tmp_path):
    out = tmp_path / "cov.jsonl"
    cmd = [sys.executable, "-m", "symgraph.coverage", "--models", "symgraph:mlp", "--out", str(out), "--json"]
    first = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["rows"][0]["status"] == "ok" and doc["summary"]["symgraph"]["ok"] == 1
    assert len(out.read_text().splitlines()) == 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # resumes: nothing to run
    assert again.returncode == 0 and "[1/" not in again.stderr
    table = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)
    assert "| symgraph:mlp |" in table.stdout and "symgraph: 1/1 ok" in table.stdout


@pytest.mark.parametrize(
    "argv",
    [["--models", "nowhere:mlp"], ["--verify", "0"], ["--time-limit", "-1"], ["--out", "/no/such/dir/x.jsonl"]],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "symgraph.coverage", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
