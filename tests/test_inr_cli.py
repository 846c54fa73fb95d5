"""INR editing CLI: unreadable caches and checkpoints are bad input (exit 2, one line), not tracebacks."""

from __future__ import annotations

from gmn.experiments import inr_editing


def test_corrupt_dataset_cache_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    bad = data / "dilate_train_4_28px_seed0.pt"
    bad.write_bytes(b"not a torch file")
    argv = ["--task", "dilate", "--data", str(data), "--out", str(tmp_path / "out"), "--n-train", "4"]
    argv += ["--n-val", "2", "--n-test", "2", "--steps", "1", "--metanets", "mlp", "--seeds", "0,", "--no-progress"]
    code = inr_editing.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: cannot read") and str(bad) in err[-1] and "delete it" in err[-1]
    assert bad.read_bytes() == b"not a torch file"  # nothing overwritten


def test_bad_options_are_one_line_exit_2(capsys):
    for argv, needle in (
        (["--task", "dilate", "--seeds", "x"], "--seeds"),
        (["--task", "dilate", "--metanets", "gmn,foo"], "--metanets"),
        (["--task", "dilate", "--seeds", "0"], "--seeds"),  # a count of zero seeds
        (["--task", "blur"], "--task"),
        (["--task", "dilate", "--device", "tpu"], "--device"),
    ):
        assert inr_editing.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_ssl_sine_bad_options_and_corrupt_data_are_one_line_exit_2(tmp_path, capsys):
    from gmn.experiments import ssl_sine

    for argv, needle in (
        (["--seeds", "a,b"], "--seeds"),
        (["--metanets", "gmn,bogus"], "--metanets"),
        (["--device", "tpu"], "--device"),
        (["--data", str(tmp_path / "missing")], "missing"),
    ):
        assert ssl_sine.main(argv + ["--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error:") and needle in err[-1]
