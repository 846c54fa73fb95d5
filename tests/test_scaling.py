"""The data-scaling study of the accuracy-prediction experiment (``--scaling``), at a tiny scale."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from gmn.experiments.accuracy_prediction import main, parse_sizes, run_scaling, scaling_split
from gmn.zoo import make_split
from symgraph.cli_util import CLIError

from .test_accuracy_prediction import TINY


def _nested(subsets: dict[int, list[int]]) -> bool:
    sizes = sorted(subsets)
    return all(set(subsets[a]) <= set(subsets[b]) for a, b in zip(sizes, sizes[1:]))


def test_training_sets_are_nested_and_share_validation_and_test():
    records = [{}] * 200
    split = scaling_split(records, (5, 20, 50, 100), seed=3)
    base = make_split(records, "50", seed=3)
    assert split["val"] == base["val"] and split["test"] == base["test"] and split["pool"] == 100
    train = split["train"]
    assert {k: len(v) for k, v in train.items()} == {5: 5, 20: 20, 50: 50, 100: 100}
    assert _nested(train)
    assert set(train[100]) == set(base["train"])  # the largest size is the whole training split
    held_out = set(split["val"]) | set(split["test"])
    assert all(not (set(v) & held_out) for v in train.values())
    assert train[5] != sorted(base["train"])[:5]  # a random draw, not the first indices
    assert scaling_split(records, (5, 20), seed=3)["train"][20] == train[20]  # independent of the other sizes
    # negative control: independent draws of the same sizes are not nested, and the check sees it
    gen = torch.Generator().manual_seed(0)
    pool = base["train"]
    independent = {k: [pool[j] for j in torch.randperm(len(pool), generator=gen)[:k].tolist()] for k in (5, 20, 50)}
    assert not _nested(independent)


def test_sizes_are_parsed_and_bad_ones_refused():
    assert parse_sizes("150, 50,450") == (50, 150, 450)
    for bad in ("", "a", "1.5,3", "0,5", "-3", "5,5"):
        with pytest.raises(CLIError, match="--scaling"):
            parse_sizes(bad)
    with pytest.raises(ValueError, match="at most 10"):
        scaling_split([{}] * 20, (5, 11))


def _unterthiner_zoo(path, n=16):
    rng = np.random.default_rng(0)
    np.save(path / "weights.npy", (0.1 * rng.normal(size=(n, 4970))).astype(np.float32))
    (path / "metrics.csv").write_text("test_accuracy\n" + "".join(f"{a}\n" for a in rng.uniform(size=n)))
    return path


def test_study_writes_json_and_png_with_one_row_per_size_and_metanet(tmp_path):
    zoo = _unterthiner_zoo(tmp_path)
    lines = []
    res = run_scaling(
        (2, 4, 8),
        scale=replace(TINY, n=16, seeds=(0, 1)),
        out_dir=tmp_path / "o",
        metanets=("statnn", "dmc"),
        device="cpu",
        progress=False,
        log=lines.append,
        unterthiner=zoo,
    )
    assert res["sizes"] == [2, 4, 8] and res["pool"] == 8
    assert _nested({int(k): v for k, v in res["train"].items()})
    for k in ("2", "4", "8"):
        rows = {r["metanet"]: r for r in res["rows"][k]}
        assert set(rows) == {"statnn", "dmc"}
        for r in rows.values():
            assert r["supported"] and len(r["test_r2"]) == 2 and np.isfinite(r["r2"][0])
    # one progress line per (size, metanet, seed)
    for k in (2, 4, 8):
        for name in ("statnn", "dmc"):
            for seed in (0, 1):
                assert any(line.startswith(f"[size {k}] {name}: seed {seed} test R2") for line in lines), (k, name)
    stored = json.loads((tmp_path / "o" / "scaling.json").read_text())
    assert stored["rows"]["8"][0]["r2"] == list(res["rows"]["8"][0]["r2"]) and "table" in stored
    png = (tmp_path / "o" / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing


def test_cli_runs_the_study_with_the_gmn_and_records_the_command(tmp_path, capsys):
    zoo = _unterthiner_zoo(tmp_path)
    argv = ["--unterthiner", str(zoo), "--n", "16", "--scaling", "4,8", "--metanets", "gmn,npnfn"]
    argv += ["--epochs", "1", "--search-epochs", "1", "--lrs", "1e-3", "--seeds", "1", "--budget", "3000"]
    argv += ["--device", "cpu", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "npnfn" in out and "gmn" in out
    stored = json.loads((tmp_path / "o" / "scaling.json").read_text())
    assert stored["command"].endswith("--scaling 4,8 --metanets gmn,npnfn" + " " + " ".join(argv[8:]))
    assert stored["rows"]["4"][0]["supported"] and stored["rows"]["4"][1]["supported"]  # GMN; NP-NFN takes small CNNs
    assert (tmp_path / "o" / "scaling.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scaling", "10,abc"], "Expected distinct positive integers"),
        (["--scaling", "2.5"], "Expected distinct positive integers"),
        (["--scaling", "50,151", "--n", "300"], "at most 150, the training networks"),
        (["--scaling", "10", "--split", "ood"], "Expected no --split"),
    ],
)
def test_bad_scaling_input_is_one_error_line_and_exit_2(args, message, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "o"), "--zoo", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --scaling") and "\n" not in err and message in err
    assert not (tmp_path / "zoo").exists()  # refused before any zoo network was trained
