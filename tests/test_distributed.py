"""Multi-process training (torchrun): sharding logic, and a 2-process gloo run against one process.

The slow test launches this file under ``python -m torch.distributed.run --nproc_per_node 2 --standalone``
(see ``_worker``); each rank dumps what it trained on and its final state, and the test compares them with
the same training in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

from gmn.distributed import DistContext, RankBatchSampler, init_distributed, main_first, shard_batch, shard_loader

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, BATCH, VAL_BATCH, EPOCHS = 9, 5, 4, 2, 3  # last batches of 1: a padding step on rank 1


# --------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("m", [1, 2, 4, 7, 16])
def test_shards_of_a_global_batch_are_disjoint_contiguous_and_cover_it(m, world):
    batch = list(range(100, 100 + m))
    shares = [shard_batch(batch, r, world) for r in range(world)]
    real = [s[:n_real] for s, n_real in shares]
    assert sum(real, []) == batch  # disjoint, covering, in the batch's order
    sizes = [len(r) for r in real]
    assert max(sizes) - min(sizes) <= 1
    for s, n_real in shares:  # an empty share is one padding sample taken from the batch, weighted zero
        assert (n_real == len(s)) or (n_real == 0 and s == [batch[0]])
    assert shares == [shard_batch(batch, r, world) for r in range(world)]  # deterministic


def test_shard_batch_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank"):
        shard_batch([1, 2], 2, 2)


def _rank_samplers(n, batch_size, world, seed):
    """One RankBatchSampler per rank, each over its own identically seeded shuffle (as on separate ranks)."""
    out = []
    for r in range(world):
        inner = BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)), batch_size, False)
        out.append(RankBatchSampler(inner, r, world))
    return out


@pytest.mark.parametrize("n,batch_size,world", [(9, 4, 2), (10, 3, 3), (5, 8, 2), (2, 4, 3)])
def test_rank_batch_samplers_split_each_epoch_disjointly_and_reproducibly(n, batch_size, world):
    samplers = _rank_samplers(n, batch_size, world, seed=0)
    ref = BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), batch_size, False)
    epochs = []
    for _ in range(3):
        per_rank = [list(s) for s in samplers]
        global_batches = [list(b) for b in ref]  # what one process would train on this epoch
        assert {len(p) for p in per_rank} == {len(global_batches)}  # every rank takes every step
        seen = []
        for t, gb in enumerate(global_batches):
            real = [per_rank[r][t][: samplers[r].plan[t][0]] for r in range(world)]
            assert sum(real, []) == gb  # the ranks' real shares, in rank order, are the global batch
            assert all(samplers[r].plan[t][1] == len(gb) for r in range(world))
            seen += gb
        assert sorted(seen) == list(range(n))  # each sample once per epoch
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]  # reshuffled each epoch ...
    again = _rank_samplers(n, batch_size, world, seed=0)
    assert [[list(s) for s in again] for _ in range(3)] == epochs  # ... the same way on every run


def test_only_map_style_dataloaders_are_sharded():
    ctx = DistContext(rank=0, world_size=1)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(4))

    assert shard_loader([[1, 2], [3]], ctx) is None
    assert shard_loader(DataLoader(Stream(), batch_size=2), ctx) is None
    assert shard_loader(DataLoader(range(4), batch_size=None), ctx) is None
    assert shard_loader(DataLoader(range(4), batch_sampler=BatchSampler(SequentialSampler(range(4)), 2, False)), ctx)


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    import torch.distributed as dist

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert not dist.is_initialized()
    assert main_first(lambda: 42, ctx) == 42


def test_every_metanets_loader_is_a_shardable_torch_dataloader():
    """Accuracy prediction feeds every metanet (NP-NFN included, which had a loader of its own) from one
    ``weight_space_loader``: a map-style torch DataLoader, which torchrun shards per global batch."""
    import gmn
    import symgraph
    from gmn.weight_space import WeightSpaceBatch, weight_space_loader

    data = [gmn.graph_to_data(symgraph.parameter_graph(nn.Linear(2, 1 + i % 2)), y=float(i)) for i in range(5)]
    loader = weight_space_loader(data, 2, shuffle=True)
    sharded = shard_loader(loader, DistContext(rank=1, world_size=2))
    assert sharded is not None
    sharded.sampler.sync = None  # no process group here: rank 1's view without the broadcast from rank 0
    torch.manual_seed(0)
    shares = [(b.y.flatten().tolist(), n_real, n_global) for b, n_real, n_global in sharded]
    torch.manual_seed(0)
    whole = [b.y.flatten().tolist() for b in loader]
    assert [s[2] for s in shares] == [len(b) for b in whole]
    assert all(isinstance(b, WeightSpaceBatch) for b, _, _ in sharded)
    for (ys, n_real, _), batch in zip(shares, whole):  # rank 1's share is the second half of each global batch
        assert ys[:n_real] == batch[len(batch) - n_real :] if n_real else ys == batch[:1]


# ------------------------------------------------------------------------------------ 2 processes (gloo)


def _problem():
    """Tiny accuracy-prediction problem: parameter graphs of small MLPs, each with its sample index."""
    import gmn
    import symgraph

    torch.manual_seed(123)
    data = []
    for i in range(N_TRAIN + N_VAL):
        mlp = nn.Sequential(nn.Linear(2, 2 + i % 4), nn.ReLU(), nn.Linear(2 + i % 4, 1))
        d = gmn.graph_to_data(symgraph.parameter_graph(mlp), y=0.05 + 0.06 * i)
        d.idx = torch.tensor([i])
        data.append(d)
    return data[:N_TRAIN], data[N_TRAIN:]


def _train(out: Path, batch_size: int = BATCH) -> dict:
    """Train a small GMN (shuffled batches, checkpoint in ``out``); what this process saw and ended with."""
    from torch_geometric.loader import DataLoader as PygLoader

    import gmn

    train, val = _problem()
    seen: list[list[int]] = []

    def forward(model, batch):
        if model.training:
            seen.append(batch.idx.flatten().tolist())
        out_ = model(batch)
        return out_, batch.y.view(out_.shape).to(out_.dtype)

    torch.manual_seed(0)
    model = gmn.GMN(hidden_dim=8, num_layers=1)
    hist = gmn.train_regressor(
        model,
        PygLoader(train, batch_size=batch_size, shuffle=True),
        PygLoader(val, batch_size=VAL_BATCH),
        epochs=EPOCHS,
        lr=1e-2,
        device="cpu",
        checkpoint=out / "ckpt.pt",
        forward=forward,
        seed=1,
    )
    ev = gmn.evaluate(model, PygLoader(val, batch_size=VAL_BATCH), device="cpu")
    torch.manual_seed(7)  # resume: a fresh model continues from the checkpoint (read by rank 0, broadcast)
    resumed = gmn.GMN(hidden_dim=8, num_layers=1)
    hist2 = gmn.train_regressor(
        resumed,
        PygLoader(train, batch_size=batch_size, shuffle=True),
        PygLoader(val, batch_size=VAL_BATCH),
        epochs=EPOCHS + 1,
        lr=1e-2,
        device="cpu",
        checkpoint=out / "ckpt.pt",
        restore_best=False,
    )
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": [{k: v for k, v in row.items() if k != "time_s"} for row in hist["epochs"]],
        "best_epoch": hist["best_epoch"],
        "seen": seen,
        "val_pred": ev["pred"].flatten(),
        "val_r2": ev["r2"],
        "resumed_params": {k: v.detach().clone() for k, v in resumed.state_dict().items()},
        "resumed_epochs": [row["epoch"] for row in hist2["epochs"]],
    }


def _worker(out: Path) -> None:
    """Body of one torchrun rank: its prints go to files, its result to ``rank{RANK}.pt``."""
    import gmn.engine

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    sys.stdout = open(out / f"stdout{rank}.txt", "w")  # noqa: SIM115  (closed when the process ends)
    sys.stderr = open(out / f"stderr{rank}.txt", "w")  # noqa: SIM115
    save = gmn.engine.atomic_torch_save

    def recording_save(obj, path):  # who writes the checkpoint
        (out / f"checkpoint_written_by_rank{rank}").touch()
        save(obj, path)

    gmn.engine.atomic_torch_save = recording_save
    res = _train(out)
    torch.save(res, out / f"rank{rank}.pt")
    from gmn.distributed import shutdown

    shutdown()


def _max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.mark.slow
def test_ci_slow_two_gloo_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
    ddp, single, other = tmp_path / "ddp", tmp_path / "single", tmp_path / "other"
    for d in (ddp, single, other):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, str(Path(__file__)), str(ddp)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    logs = "".join((ddp / f).read_text() for f in sorted(os.listdir(ddp)) if f.endswith(".txt"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-3000:]
    print(f"torchrun with 2 processes: {time.perf_counter() - t0:.1f} s")

    # only rank 0 writes the checkpoint and prints
    assert sorted(p.name for p in ddp.glob("checkpoint_written_by_rank*")) == ["checkpoint_written_by_rank0"]
    assert (ddp / "ckpt.pt").exists()
    assert f"epoch {EPOCHS}/{EPOCHS}" in (ddp / "stdout0.txt").read_text()
    assert "epoch" not in (ddp / "stdout1.txt").read_text() + (ddp / "stderr1.txt").read_text()

    r0, r1 = torch.load(ddp / "rank0.pt", weights_only=False), torch.load(ddp / "rank1.pt", weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _train(single)
        other_batches = _train(other, batch_size=BATCH // 2)  # negative control: another global batch
    finally:
        torch.set_num_threads(threads)

    # each rank trained on its share of the single-process global batches: disjoint, together the epoch
    steps = len(ref["seen"]) // EPOCHS
    assert len(r0["seen"]) == len(r1["seen"]) == len(ref["seen"]) == 3 * EPOCHS
    for t, batch in enumerate(ref["seen"]):
        if len(batch) >= 2:
            assert r0["seen"][t] + r1["seen"][t] == batch
            assert not set(r0["seen"][t]) & set(r1["seen"][t])
        else:  # a global batch of one sample: rank 1 takes a zero-weight padding step on the same sample
            assert r0["seen"][t] == r1["seen"][t] == batch
    for e in range(EPOCHS):
        epoch = ref["seen"][e * steps : (e + 1) * steps]
        assert sorted(sum(epoch, [])) == list(range(N_TRAIN))

    # identical state and history on both ranks; the same as one process up to float rounding
    assert _max_param_diff(r0["params"], r1["params"]) == 0.0
    assert r0["history"] == r1["history"] and torch.equal(r0["val_pred"], r1["val_pred"])
    assert len(r0["val_pred"]) == N_VAL  # evaluated on the full validation set
    diff = _max_param_diff(r0["params"], ref["params"])
    control = _max_param_diff(other_batches["params"], ref["params"])
    print(f"max |param diff|: 2 processes vs 1 {diff:.2e}; other global batch vs 1 {control:.2e}")
    assert diff < 1e-5
    assert control > 1e-3  # the comparison would catch training on different batches
    assert r0["best_epoch"] == ref["best_epoch"]
    for a, b in zip(r0["history"], ref["history"]):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a if k != "val_tau")
    assert torch.allclose(r0["val_pred"], ref["val_pred"], atol=1e-6)

    # resuming from rank 0's checkpoint: one more epoch on both ranks, in step with one process
    assert r0["resumed_epochs"] == r1["resumed_epochs"] == ref["resumed_epochs"] == list(range(EPOCHS + 1))
    assert _max_param_diff(r0["resumed_params"], r1["resumed_params"]) == 0.0
    assert _max_param_diff(r0["resumed_params"], ref["resumed_params"]) < 1e-5


@pytest.mark.slow
def test_accuracy_prediction_under_torchrun_prints_and_writes_once_and_matches_one_process(tmp_path):
    from gmn.experiments.accuracy_prediction import SCALES, run_experiment

    zoo, out = tmp_path / "zoo", tmp_path / "out"
    args = "--dataset small-cnn --scale smoke --networks 24 --metanets gmn,npnfn --split 50 --seeds 1 --epochs 2"
    args += f" --search-epochs 1 --lrs 1e-3 --device cpu --zoo {zoo} --out {out}"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["gmn.experiments.accuracy_prediction", *args.split()]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[3/3] split 50") == 1 and proc.stdout.count("test R2 (ours)") == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "results.json", "runs.json"]
    ddp = json.loads((out / "results.json").read_text())
    assert ddp["world_size"] == 2

    sc = replace(SCALES["smoke"], n=24, seeds=(0,), epochs=2, search_epochs=1, lrs=(1e-3,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the zoo is there: one process trains on it
        one = run_experiment(
            "small-cnn",
            ("50",),
            sc,
            zoo_dir=zoo,
            out_dir=tmp_path / "one",
            metanets=("gmn", "npnfn"),
            device="cpu",
            progress=False,
            log=lambda *a, **k: None,
        )
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(ddp["splits"]["50"], one["splits"]["50"]):
        assert a["metanet"] == b["metanet"] and a["supported"] and b["supported"]
        pa, pb = torch.tensor(a["runs"][0]["test_pred"]), torch.tensor(b["runs"][0]["test_pred"])
        assert pa.shape == pb.shape and torch.allclose(pa, pb, atol=1e-5), (a["metanet"], pa, pb)


if __name__ == "__main__":  # a torchrun rank of the slow test
    _worker(Path(sys.argv[1]))
