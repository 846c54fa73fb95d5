"""Model zoos: data without download, Table 5 sampling, vmapped training, splits, resumable generation."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from gmn.zoo.data import load_data
from gmn.zoo.families import SMALLEST_HIDDEN, hidden_of, sample_config
from gmn.zoo.generate import load_zoo, plan_chunks
from gmn.zoo.splits import make_split
from gmn.zoo.train_many import HParams, train_group
from symgraph.errors import ModelLoadError

REPO = Path(__file__).resolve().parents[1]


def _tiny_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_digits_load_without_download_and_split_is_fixed():
    a, b = load_data("digits"), load_data("digits")
    assert a.image_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797
    assert torch.equal(a.y_test, b.y_test)
    assert float(a.x_train.max()) <= 1.0


def _write_cifar_dir(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        obj = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (root / name).write_bytes(pickle.dumps(obj))


def test_cifar10_python_batches_load_from_a_local_directory(tmp_path):
    _write_cifar_dir(tmp_path)
    d = load_data(f"cifar10:{tmp_path}")
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.y_train.tolist() == list(range(6)) * 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch MARKER_SHOULD_NOT_EXIST",))


def test_cifar10_loader_refuses_pickles_that_would_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(ModelLoadError, match="CIFAR-10"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "MARKER_SHOULD_NOT_EXIST").exists()


def test_bad_data_spec_and_missing_dir_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="Expected data"):
        load_data("mnist")
    with pytest.raises(ModelLoadError, match="CIFAR-10 directory"):
        load_data(f"cifar10:{tmp_path / 'nope'}")


def test_sampling_is_deterministic_and_follows_table5_ranges():
    cfgs = [sample_config("diverse", i, seed=3) for i in range(200)]
    assert cfgs == [sample_config("diverse", i, seed=3) for i in range(200)]
    assert {c.arch for c in cfgs} == set(SMALLEST_HIDDEN) - {"smallcnn"}
    for c in cfgs:
        assert 1e-3 <= c.lr <= 1e-1 and 1e-5 <= c.weight_decay <= 1e-2 and 0 <= c.label_smoothing <= 0.2
        assert c.optimizer in ("sgd", "adam", "rmsprop")
    assert {c.arch for c in (sample_config("varying-cnn", i, 0) for i in range(30))} == {"cnn2d"}


def test_chunks_partition_the_networks_and_group_equal_architectures():
    cfgs = [sample_config("diverse", i, seed=0) for i in range(120)]
    chunks = plan_chunks(cfgs, group_size=4)
    idx = [c.index for ch in chunks for c in ch]
    assert sorted(idx) == list(range(120))
    assert all(len({c.group_key() for c in ch}) == 1 and len(ch) <= 4 for ch in chunks)
    # groups ignore dropout and optimizer, so they are larger than singletons on a diverse zoo
    assert len(chunks) < 120 / 1.5


def test_vmapped_training_equals_sequential_training():
    data = load_data("digits")
    hps = [HParams(10 ** -(1 + s / 3), 1e-4, 0.05 * s, opt, s) for s, opt in enumerate(["adam"] * 4)]
    a = train_group(_tiny_mlp, hps, data, epochs=1, vectorize=True)
    b = train_group(_tiny_mlp, hps, data, epochs=1, vectorize=False)
    for ra, rb in zip(a, b):
        for k in ra.state_dict:
            assert torch.allclose(ra.state_dict[k], rb.state_dict[k], atol=1e-5, rtol=1e-4)
        assert abs(ra.test_acc - rb.test_acc) < 0.02
    # negative control: different hyperparameters give different networks
    assert not torch.allclose(a[0].state_dict["1.weight"], a[3].state_dict["1.weight"], atol=1e-3)


@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop"])
def test_each_optimizer_learns_digits(opt):
    data = load_data("digits")
    res = train_group(_tiny_mlp, [HParams(1e-2 if opt != "sgd" else 1e-1, 1e-4, 0.0, opt, 0)], data, epochs=3)
    assert res[0].test_acc > 0.6  # chance is 0.1


def test_one_group_mixes_optimizers_and_dropout_rates_exactly_like_separate_runs():
    data = load_data("digits")

    def maker(p):
        return lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 10))

    hps = [
        HParams(5e-2, 1e-4, 0.0, "sgd", 0),
        HParams(1e-2, 1e-4, 0.1, "adam", 1),
        HParams(1e-2, 0.0, 0.0, "rmsprop", 2),
    ]
    makers = [maker(0.0), maker(0.0), maker(0.0)]
    together = train_group(makers, hps, data, epochs=1, vectorize=True)
    alone = train_group(makers, hps, data, epochs=1, vectorize=False)
    for a, b in zip(together, alone):
        assert set(a.state_dict) == set(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 10)).state_dict()
        )  # no dropout buffer saved
        for k in a.state_dict:
            assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-5, rtol=1e-4)
    # dropout rates really differ per network in a group: with p = 0.9 for one, its training loss differs
    mixed = train_group([maker(0.0), maker(0.9)], [hps[1], hps[1]], data, epochs=1)
    assert mixed[0].final_loss != pytest.approx(mixed[1].final_loss, rel=1e-3)
    with pytest.raises(ValueError, match="optimizers among"):
        train_group(_tiny_mlp, [HParams(1e-2, 0, 0, "lbfgs", 0)], data)


def _fake_records():
    recs = []
    for i, c in enumerate(sample_config("diverse", j, 0) for j in range(300)):
        recs.append({"index": i, "arch": c.arch, "kwargs": dict(c.kwargs), "test_acc": 0.5})
    return recs


@pytest.mark.parametrize("split", ["50", "5", "ood"])
def test_splits_are_disjoint_and_cover_the_right_networks(split):
    recs = _fake_records()
    s = make_split(recs, split, seed=1)
    tr, va, te = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    if split == "ood":
        small = {i for i, r in enumerate(recs) if hidden_of(r["kwargs"]) == SMALLEST_HIDDEN[r["arch"]]}
        assert tr | va == small and te == set(range(len(recs))) - small
    else:
        frac = len(tr) / len(recs)
        assert abs(frac - (0.5 if split == "50" else 0.05)) < 0.01
        assert tr | va | te == set(range(len(recs)))


# ----------------------------------------------------------------------------------------------- generation
def _gen_cmd(out: Path, n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gmn.zoo",
        "generate",
        "--family",
        "varying-cnn",
        "--n",
        str(n),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--group-size",
        "2",
        "--train-subset",
        "128",
        "--json",
    ]


def test_generated_zoo_records_architecture_hyperparameters_and_accuracy(tmp_path):
    from gmn.zoo.generate import generate_zoo

    out = generate_zoo(tmp_path / "z", "varying-cnn", n=3, epochs=1, group_size=2, progress=False, train_subset=128)
    recs = load_zoo(out)
    assert [r["index"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert r["arch"] == "cnn2d" and 0 <= r["test_acc"] <= 1 and "state_dict" in r and "lr" in r
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["networks_done"] == 3
    # a restart with other settings is refused instead of mixing two zoos
    with pytest.raises(ValueError, match="settings this zoo was started with"):
        generate_zoo(out, "varying-cnn", n=4, epochs=1, group_size=2, progress=False, train_subset=128)


def test_zoo_built_in_parts_equals_one_run(tmp_path):
    """Two processes' parts (part=(0, 2), (1, 2)) write disjoint shards whose union equals a whole run."""
    from gmn.zoo.generate import generate_zoo

    kw = dict(n=5, epochs=1, group_size=2, progress=False, train_subset=64)
    whole = load_zoo(generate_zoo(tmp_path / "whole", "small-cnn", **kw))
    split = tmp_path / "split"
    generate_zoo(split, "small-cnn", **kw, part=(1, 2))
    odd = sorted(p.name for p in split.glob("shard_*.pt"))
    assert odd and all(int(name[6:11]) % 2 == 1 for name in odd)
    assert not json.loads((split / "manifest.json").read_text())["complete"]
    generate_zoo(split, "small-cnn", **kw, part=(0, 2))
    generate_zoo(split, "small-cnn", **kw)  # nothing left to train: rewrites the manifest
    assert json.loads((split / "manifest.json").read_text())["complete"]
    parts = load_zoo(split)
    assert [r["index"] for r in parts] == [r["index"] for r in whole] == list(range(5))
    for a, b in zip(whole, parts):
        assert a["test_acc"] == b["test_acc"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    with pytest.raises(ValueError, match="rank < world"):
        generate_zoo(split, "small-cnn", **kw, part=(2, 2))


@pytest.mark.slow
def test_ci_slow_zoo_generation_resumes_after_sigkill_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "zoo"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(_gen_cmd(out, 6), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard_*.pt"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(p.name for p in out.glob("shard_*.pt"))
    assert first, "the generator wrote no shard before the kill"
    # a temp file of the killed write may remain: it is never named like a shard, so it is never read as one
    assert all(p.name.startswith("shard_") and p.suffix == ".pt" for p in out.glob("shard_*"))
    done = subprocess.run(_gen_cmd(out, 6), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    recs = load_zoo(out)
    assert [r["index"] for r in recs] == list(range(6))
    # determinism: the interrupted-then-resumed zoo equals a fresh one network by network
    fresh = tmp_path / "fresh"
    subprocess.run(_gen_cmd(fresh, 6), cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=True)
    for a, b in zip(recs, load_zoo(fresh)):
        assert a["test_acc"] == b["test_acc"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


# ----------------------------------------------------------------------------------------------- Table 6 zoo
def _write_unterthiner(root: Path, n: int = 3, layout: bool = True) -> np.ndarray:
    from gmn.zoo.unterthiner import standard_layout

    rng = np.random.default_rng(0)
    w = rng.normal(size=(n, 4970)).astype(np.float32)
    np.save(root / "weights.npy", w)
    rows = "".join(f"{0.1 * i},{0.2}\n" for i in range(n))
    (root / "metrics.csv").write_text("test_accuracy,train_accuracy\n" + rows)
    if layout:
        lines, off = ["varname,start_idx,end_idx,size,shape"], 0
        for key, shape in standard_layout(1):
            k = int(np.prod(shape))
            lines.append(f'{key},{off},{off + k},{k},"{shape}"')
            off += k
        (root / "layout.csv").write_text("\n".join(lines) + "\n")
    return w


@pytest.mark.parametrize("layout", [True, False])
def test_unterthiner_small_cnn_zoo_loads_into_pytorch_layout(tmp_path, layout):
    from gmn.zoo.unterthiner import load_unterthiner
    from symgraph.models import build_model

    w = _write_unterthiner(tmp_path, layout=layout)
    recs = load_unterthiner(tmp_path)
    assert [r["test_acc"] for r in recs] == pytest.approx([0.0, 0.1, 0.2])
    sd = recs[1]["state_dict"]
    # Keras conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw]: entry (kh=1, kw=2, in=0, out=5)
    assert float(sd["features.0.weight"][5, 0, 1, 2]) == float(w[1].reshape(-1)[:144].reshape(3, 3, 1, 16)[1, 2, 0, 5])
    m = build_model(recs[1]["arch"], **recs[1]["kwargs"])
    m.load_state_dict(sd)  # every tensor has its torch shape
    import symgraph

    g = symgraph.parameter_graph(m)
    assert int(g.edge_param.has_param().sum()) == 4970


def test_unterthiner_loader_rejects_wrong_shapes_and_pickles(tmp_path):
    from gmn.zoo.unterthiner import load_unterthiner

    np.save(tmp_path / "weights.npy", np.zeros((2, 100), dtype=np.float32))
    (tmp_path / "metrics.csv").write_text("test_accuracy\n0.1\n0.2\n")
    with pytest.raises(ModelLoadError, match=r"\[N, 4970\]"):
        load_unterthiner(tmp_path)
    np.save(tmp_path / "weights.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelLoadError, match="numeric weights.npy"):
        load_unterthiner(tmp_path)


@pytest.mark.parametrize(
    "arch,norm,engine",
    [("cnn2d", "batchnorm", "grouped"), ("cnn2d", "groupnorm", "grouped-cl"), ("cnn1d", "batchnorm", "grouped")],
)
def test_grouped_convolution_training_equals_sequential_training(arch, norm, engine):
    from symgraph.models import build_model

    data = load_data("digits")
    kw = dict(hidden=8, conv_layers=2, linear_layers=2, norm=norm, dropout=0.0)

    def make():
        return build_model(arch, **kw)

    # a conv bias before BatchNorm has a zero gradient up to round-off, which Adam/RMSprop scale up to full
    # steps: with BatchNorm the networks use SGD (their lr and label smoothing still differ)
    opts = ["sgd"] * 3 if norm == "batchnorm" else ["adam", "sgd", "rmsprop"]
    hps = [HParams(1e-2 * (s + 1), 1e-4, 0.05 * s, opt, s) for s, opt in enumerate(opts)]
    grouped = train_group(make, hps, data, epochs=1, vectorize=True, engine=engine)
    alone = train_group(make, hps, data, epochs=1, vectorize=False)
    for a, b in zip(grouped, alone):
        assert set(a.state_dict) == set(b.state_dict)
        for k in a.state_dict:
            assert torch.allclose(a.state_dict[k].float(), b.state_dict[k].float(), atol=1e-4, rtol=1e-3), k
        assert abs(a.test_acc - b.test_acc) < 0.02
    # negative control: networks of the group really differ (their own hyperparameters)
    first = [k for k in grouped[0].state_dict if k.endswith("weight")][0]
    assert not torch.allclose(grouped[0].state_dict[first], grouped[1].state_dict[first], atol=1e-3)


def test_unknown_zoo_engine_is_refused():
    with pytest.raises(ValueError, match="engine"):
        train_group(_tiny_mlp, [HParams(1e-2, 0.0, 0.0, "adam", 0)], load_data("digits"), engine="warp")
