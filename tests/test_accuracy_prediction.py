"""Accuracy prediction (paper Sec. 4.1): the pipeline on a tiny fake zoo, and the metrics against scipy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score

from gmn.experiments.accuracy_prediction import (
    PAPER_TABLE1,
    Scale,
    format_table,
    run_metanet,
    sized,
    zoo_data,
)
from gmn.train import regression_metrics
from gmn.zoo import make_split, sample_config
from symgraph.models import build_model

TINY = Scale(
    n=0, zoo_epochs=0, train_subset=None, epochs=1, search_epochs=1, seeds=(0,), budget=3000, lrs=(1e-3,), batch_size=8
)


def _fake_records(family="diverse", n=15):
    """Untrained networks with made-up accuracies: enough to run every metanet end to end."""
    recs = []
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        c = sample_config(family, i, 0)
        torch.manual_seed(i)
        m = build_model(c.arch, **dict(c.kwargs))
        recs.append(dict(c.to_dict(), state_dict=m.state_dict(), test_acc=float(torch.rand(1, generator=gen))))
    return recs


def _mlp_records(n=12):
    recs = []
    for i in range(n):
        torch.manual_seed(i)
        kw = {"hidden": (8 + (i % 2) * 8,)}
        m = build_model("mlp", **kw)
        recs.append({"index": i, "arch": "mlp", "kwargs": kw, "state_dict": m.state_dict(), "test_acc": 0.05 * i})
    return recs


def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    t = rng.uniform(size=50)
    p = t + rng.normal(scale=0.1, size=50)
    m = regression_metrics(torch.tensor(p), torch.tensor(t))
    assert m["r2"] == pytest.approx(r2_score(t, p), abs=1e-12)
    assert m["tau"] == pytest.approx(kendalltau(p, t).statistic, abs=1e-12)
    # negative control: a shuffled prediction scores far worse
    bad = regression_metrics(torch.tensor(rng.permutation(p)), torch.tensor(t))
    assert bad["r2"] < m["r2"] - 0.5 and bad["tau"] < m["tau"] - 0.5


@pytest.fixture(scope="module")
def diverse_zoo():
    recs = _fake_records()
    return recs, zoo_data(recs)


@pytest.mark.parametrize("name", ["gmn", "deepsets", "dmc", "statnn"])
def test_one_epoch_of_each_metanet_runs_on_diverse_architectures(name, diverse_zoo):
    recs, data = diverse_zoo
    split = make_split(recs, "50", seed=0)
    res = run_metanet(name, data, split, TINY, "cpu", log=lambda *a: None)
    assert res["supported"] and len(res["runs"]) == 1
    run = res["runs"][0]
    assert len(run["test_pred"]) == len(split["test"]) and all(0 <= p <= 1 for p in run["test_pred"])
    assert np.isfinite(res["tau"][0]) or len(split["test"]) < 2


def test_npnfn_is_marked_not_applicable_on_diverse_architectures_as_in_the_paper(diverse_zoo):
    recs, data = diverse_zoo
    res = run_metanet("npnfn", data, make_split(recs, "50"), TINY, "cpu", log=lambda *a: None)
    assert not res["supported"] and res["reason"]
    table = format_table({"dataset": "diverse", "splits": {"50": [res]}})
    assert "n/a" in table


def test_npnfn_runs_where_it_applies():
    recs = _mlp_records()
    data = zoo_data(recs)
    res = run_metanet("npnfn", data, make_split(recs, "50"), TINY, "cpu", log=lambda *a: None)
    assert res["supported"], res.get("reason")


def test_parameter_budgets_are_comparable(diverse_zoo):
    _, data = diverse_zoo
    counts = {}
    for name in ["gmn", "deepsets", "dmc", "statnn"]:
        make, _ = sized(name, 40_000, data[0])
        counts[name] = sum(p.numel() for p in make().parameters())
    assert max(counts.values()) / min(counts.values()) < 3.0, counts


def test_paper_table_has_all_six_settings():
    assert {(d, s) for d in ("diverse", "varying-cnn") for s in ("50", "5", "ood")} == set(PAPER_TABLE1)


def test_table6_protocol_runs_on_the_small_cnn_zoo_format_with_npnfn_and_statnn(tmp_path):
    from gmn.experiments.accuracy_prediction import run_experiment

    rng = np.random.default_rng(0)
    np.save(tmp_path / "weights.npy", (0.1 * rng.normal(size=(14, 4970))).astype(np.float32))
    (tmp_path / "metrics.csv").write_text("test_accuracy\n" + "".join(f"{a}\n" for a in rng.uniform(size=14)))
    res = run_experiment(
        splits=("50",),
        scale=replace(TINY, n=14),
        out_dir=tmp_path / "o",
        metanets=("npnfn", "statnn"),
        device="cpu",
        progress=False,
        log=lambda *a: None,
        unterthiner=tmp_path,
    )
    rows = {r["metanet"]: r for r in res["splits"]["50"]}
    assert rows["npnfn"]["supported"] and rows["statnn"]["supported"]
    assert (tmp_path / "o" / "results.json").exists() and (tmp_path / "o" / "runs.json").exists()
    assert ".922" in format_table(res)  # the paper's Table 6 NFN-NP tau is printed beside ours
