"""The training engine (gmn.engine): resume after SIGKILL, one checkpoint layout, model selection, seeding; and
the experiment CLIs generated from their configs with the same run flags everywhere."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gmn import engine
from gmn.experiments import accuracy_prediction, inr_editing, ssl_sine
from gmn.experiments.common import format_mean_std, mean_std, parse_seeds
from symgraph.cli_util import CLIError

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5


def _problem():
    """A small regression whose batch order comes from torch's global generator (a shuffling DataLoader)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(24, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    return loader, (x, y)


def _step(net, batch):
    if os.environ.get("GMN_ENGINE_TEST_SLOW"):
        time.sleep(0.25)  # the child process is slow, so that the test can kill it mid-run
    x, y = batch
    return ((net(x) - y) ** 2).mean(), x.shape[0]


def train_to(ckpt: Path, epochs: int = EPOCHS, select: bool = True, resume: bool = True) -> nn.Module:
    """The run the SIGKILL test interrupts (also run by a child process through ``__main__`` below)."""
    torch.set_num_threads(1)
    loader, (x, y) = _problem()
    engine.seed_everything(3)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def validate(m):
        with torch.no_grad():
            return {"val_mse": float(((m(x) - y) ** 2).mean())}

    engine.fit(
        model,
        opt,
        loader,
        _step,
        epochs,
        validate=validate,
        select=("val_mse", "min") if select else None,
        checkpoint=ckpt,
        resume=resume,
        fingerprint={"problem": "linear", "lr": 1e-2},
        seed=3,
        device="cpu",
        progress=False,
    )
    return model


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_run_killed_with_sigkill_resumes_to_the_parameters_of_an_uninterrupted_run(tmp_path):
    ref = _params(train_to(tmp_path / "ref.pt", select=False))
    ckpt = tmp_path / "killed.pt"
    env = dict(os.environ, GMN_ENGINE_TEST_SLOW="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    child = subprocess.Popen([sys.executable, str(Path(__file__)), str(ckpt)], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and child.poll() is None:
            if ckpt.exists() and engine.read_checkpoint(ckpt)["epoch"] >= 1:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    killed_at = engine.read_checkpoint(ckpt)["epoch"]
    assert 1 <= killed_at < EPOCHS, killed_at  # interrupted mid-run
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written checkpoint left
    resumed = _params(train_to(ckpt, select=False))
    state = engine.read_checkpoint(ckpt)
    assert state["epoch"] == EPOCHS and [r["epoch"] for r in state["history"]["epochs"]] == list(range(EPOCHS))
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)  # bit for bit (negative control: next test)


def test_resuming_without_the_generator_state_would_not_reproduce_the_run(tmp_path, monkeypatch):
    """Negative control of the test above: the resumed run's equality depends on the saved generator state
    (the loader's shuffle draws from it), so the test can fail."""
    ref = _params(train_to(tmp_path / "ref.pt", select=False))
    train_to(tmp_path / "cut.pt", epochs=2, select=False)  # the same run, stopped after two epochs
    monkeypatch.setattr(engine, "_set_rng_state", lambda state: None)  # resume keeps the seed's fresh state
    broken = _params(train_to(tmp_path / "cut.pt", select=False))
    assert any(not torch.equal(broken[k], ref[k]) for k in ref)
    monkeypatch.undo()
    train_to(tmp_path / "cut2.pt", epochs=2, select=False)
    fixed = _params(train_to(tmp_path / "cut2.pt", select=False))  # with the state restored: equal again
    assert all(torch.equal(fixed[k], ref[k]) for k in ref)


def test_checkpoints_have_one_key_layout_and_refuse_another_run_or_a_foreign_file(tmp_path):
    ckpt = tmp_path / "run.pt"
    train_to(ckpt, epochs=2)
    state = engine.read_checkpoint(ckpt)
    assert set(state) == {"format", "fingerprint", "epoch", "model", "optimizer", "history", "best_model", "rng"}
    assert state["format"] == engine.CHECKPOINT_FORMAT and state["fingerprint"] == {"problem": "linear", "lr": 0.01}
    assert set(state["history"]) == {"epochs", "step_losses", "best_epoch", "best_metric", "seconds", "extra", "device"}
    assert len(state["history"]["step_losses"]) == 2 * 3  # 24 samples in batches of 8, two epochs
    with pytest.raises(ValueError, match="same run"):
        engine.read_checkpoint(ckpt, fingerprint={"problem": "linear", "lr": 0.02})
    torch.save({"model": {}}, tmp_path / "old.pt")  # e.g. a checkpoint of the loops this engine replaced
    with pytest.raises(ValueError, match="Expected a gmn.engine/1 checkpoint"):
        engine.read_checkpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        engine.read_checkpoint(tmp_path / "junk.pt")
    train_to(tmp_path / "old.pt", epochs=1, resume=False)  # --no-resume: starts afresh and overwrites
    assert engine.read_checkpoint(tmp_path / "old.pt")["epoch"] == 1


def test_model_selection_restores_the_best_validation_epoch_and_nan_never_wins():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = [(torch.randn(4, 2, generator=torch.Generator().manual_seed(i)), torch.ones(4, 1)) for i in range(2)]
    scores = iter([float("nan"), 3.0, 1.0, 2.0])
    states = []

    def validate(m):
        states.append(_params(m))
        return {"score": next(scores)}

    h = engine.fit(model, opt, data, _step, 4, validate=validate, select=("score", "min"), progress=False, device="cpu")
    assert h.best_epoch == 2 and h.best_metric == 1.0 and math.isnan(h.metric("score")[0])
    assert all(torch.equal(v, states[2][k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, states[3][k]) for k, v in model.state_dict().items())  # not the last epoch
    with pytest.raises(ValueError, match="select"):
        engine.fit(model, opt, data, _step, 1, select=("score", "min"), progress=False)


def test_seeding_repeats_a_run_and_another_seed_changes_it(tmp_path):
    def run(seed):
        engine.seed_everything(seed)
        model = nn.Linear(3, 1)
        loader, _ = _problem()
        engine.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, _step, 2, seed=seed, progress=False)
        return _params(model)

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_extra_is_computed_once_when_a_run_starts_and_kept_on_resume(tmp_path):
    calls = []
    model = nn.Linear(2, 1)
    data = [(torch.ones(2, 2), torch.zeros(2, 1))]

    def fit(epochs):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return engine.fit(
            model,
            opt,
            data,
            _step,
            epochs,
            checkpoint=tmp_path / "c.pt",
            extra=lambda: calls.append(1) or {"x": 1},
            progress=False,
        )

    assert fit(1).extra == {"x": 1} and fit(2).extra == {"x": 1} and calls == [1]


# ------------------------------------------------------------------------------------------- CLIs
@pytest.mark.parametrize("module", [accuracy_prediction, ssl_sine, inr_editing])
def test_every_experiment_cli_has_the_same_run_flags(module, capsys):
    assert module.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--metanets", "--seeds", "--device", "--out", "--resume", "--no-resume", "--threads", "--json"):
        assert flag in text, (module.__name__, flag)
    assert "--no-progress" in text and "--scale" in text
    for old in ("--encoders", "--methods"):
        assert old not in text


def test_seeds_are_a_count_or_a_list_in_every_cli():
    assert parse_seeds("3") == (0, 1, 2) == parse_seeds("0,1,2")
    assert parse_seeds("5,") == (5,) and parse_seeds("2, 7") == (2, 7)
    for bad in ("0", "x", "1,a", ""):
        with pytest.raises(CLIError, match="--seeds"):
            parse_seeds(bad)


def test_one_mean_std_for_every_table():
    xs = [0.1, 0.4, 0.35]
    m, s = mean_std(xs)
    assert m == pytest.approx(statistics.mean(xs), abs=1e-15) and s == pytest.approx(statistics.stdev(xs), abs=1e-15)
    assert s != pytest.approx(statistics.pstdev(xs))  # the sample std (n - 1), not the population one
    assert mean_std([2.0]) == (2.0, 0.0)
    assert format_mean_std(xs, 4, 5) == f"{m:.4f} ± {s:.5f}" and format_mean_std([]) == "—"


if __name__ == "__main__":  # the child process of the SIGKILL test
    train_to(Path(sys.argv[1]), select=False)
