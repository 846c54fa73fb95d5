"""symgraph.io.load_model: every format loads, every bad input fails with a one-line ModelLoadError."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from symgraph.errors import ModelLoadError, ShapeMismatchError
from symgraph.io import LoadInfo, StateDictMismatchError, detect_format, fit_state_dict, load_model
from symgraph.models import build_model, list_models

# TorchScript files are one of the formats users bring; torch deprecates writing them, not reading them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ARCH = "mlp:hidden=8-8"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH).eval()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _assert_one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    return msg


class _Marker:
    """A pickle that creates a file when unpickled: stands for any code a malicious file could run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------ formats
def test_state_dict_with_arch_loads_bit_identical_weights(tmp_path):
    m = _mlp()
    p = tmp_path / "w.pt"
    torch.save(m.state_dict(), p)
    loaded, info = load_model(p, arch=ARCH)
    assert _same_weights(loaded, m)
    assert not loaded.training
    assert isinstance(info, LoadInfo) and info.format == "state_dict" and info.arch == ARCH
    assert info.num_tensors == len(m.state_dict())
    json.dumps(info.as_dict())  # JSON-ready


def test_legacy_non_zip_torch_save_loads(tmp_path):
    m = _mlp()
    p = tmp_path / "legacy.pt"
    torch.save(m.state_dict(), p, _use_new_zipfile_serialization=False)
    assert detect_format(p) == "pickle"
    loaded, info = load_model(p, arch=ARCH)
    assert _same_weights(loaded, m) and info.format == "state_dict"


def test_checkpoint_dict_uses_its_state_dict_entry(tmp_path):
    m = _mlp()
    p = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": m.state_dict(), "lr": 0.1}, p)
    loaded, info = load_model(p, arch=ARCH)
    assert _same_weights(loaded, m)
    assert info.format == "checkpoint"
    assert any("state_dict" in n for n in info.notes) and any("epoch" in n for n in info.notes)


def test_dataparallel_module_prefix_is_stripped(tmp_path):
    m = _mlp()
    p = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, p)
    loaded, info = load_model(p, arch=ARCH)
    assert _same_weights(loaded, m)
    assert any("module." in n for n in info.notes)


def test_float64_state_dict_keeps_float64(tmp_path):
    m = _mlp().double()
    p = tmp_path / "w64.pt"
    torch.save(m.state_dict(), p)
    loaded, info = load_model(p, arch=ARCH)
    assert next(loaded.parameters()).dtype == torch.float64
    assert _same_weights(loaded, m)
    assert any("float64" in n for n in info.notes)


def test_pickled_module_loads_only_with_trust(tmp_path):
    m = _mlp()
    p = tmp_path / "full.pt"
    torch.save(m, p)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    msg = _assert_one_line(ei.value)
    assert "arbitrary code" in msg and "--trust" in msg
    loaded, info = load_model(p, trust=True)
    assert info.format == "pickled_module" and info.arch is None
    assert _same_weights(loaded, m)


def test_torchscript_needs_arch_and_then_loads_its_weights(tmp_path):
    m = _mlp()
    p = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(m), str(p))
    assert detect_format(p) == "torchscript"
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    msg = _assert_one_line(ei.value)
    assert "TorchScript" in msg and "--arch" in msg
    loaded, info = load_model(p, arch=ARCH)
    assert info.format == "torchscript"
    assert isinstance(loaded, nn.Module) and not isinstance(loaded, torch.jit.ScriptModule)
    assert _same_weights(loaded, m)


def _export(m: nn.Module, path: Path) -> None:
    x = torch.zeros(*m.example_input_shape)
    torch.export.save(torch.export.export(m, (x,)), str(path))


def test_export_pt2_loads_as_its_program_without_arch_and_as_weights_with_arch(tmp_path):
    m = _mlp()
    p = tmp_path / "m.pt2"
    _export(m, p)
    assert detect_format(p) == "export"
    program, info = load_model(p)  # the ATen graph itself (tests/test_export.py encodes it)
    assert info.format == "export" and info.arch is None and _same_weights(program, m)
    loaded, info = load_model(p, arch=ARCH)
    assert info.format == "export"
    assert _same_weights(loaded, m)
    assert info.example_input_shape == tuple(m.example_input_shape)


def test_export_pt2_with_pickled_payload_is_refused_without_trust(tmp_path):
    m = _mlp()
    p = tmp_path / "m.pt2"
    _export(m, p)
    # Rewrite the archive so that one weight claims to be a pickle: torch.export.load would unpickle it fully.
    q = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(q, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(ModelLoadError) as ei:
        load_model(q, arch=ARCH)
    assert "--trust" in _assert_one_line(ei.value)


def test_safetensors_with_arch_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    m = _mlp()
    p = tmp_path / "w.safetensors"
    safetensors.save_file(m.state_dict(), str(p))
    assert detect_format(p) == "safetensors"
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    assert "--arch" in _assert_one_line(ei.value)
    loaded, info = load_model(p, arch=ARCH)
    assert info.format == "safetensors" and _same_weights(loaded, m)


def test_format_is_read_from_content_not_extension(tmp_path):
    m = _mlp()
    p = tmp_path / "weights.bin"
    torch.save(m.state_dict(), p)
    loaded, _ = load_model(p, arch=ARCH)
    assert _same_weights(loaded, m)


# ------------------------------------------------------------------------------------------------ refusals
def test_state_dict_without_arch_names_the_available_architectures(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_mlp().state_dict(), p)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    msg = _assert_one_line(ei.value)
    assert "--arch" in msg
    assert all(name in msg for name in list_models())


def test_state_dict_with_wrong_shape_names_first_mismatching_key(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(build_model("mlp:hidden=16-8").state_dict(), p)
    with pytest.raises(StateDictMismatchError) as ei:
        load_model(p, arch=ARCH)
    msg = _assert_one_line(ei.value)
    first_bad = next(k for k, v in _mlp().state_dict().items() if v.shape[0] == 8)
    assert f"Expected {first_bad!r} of shape" in msg and "(got shape (16," in msg
    assert isinstance(ei.value, ModelLoadError) and isinstance(ei.value, ShapeMismatchError)


def test_state_dict_with_missing_key_names_it(tmp_path):
    state = _mlp().state_dict()
    last = list(state)[-1]
    del state[last]
    p = tmp_path / "w.pt"
    torch.save(state, p)
    with pytest.raises(StateDictMismatchError) as ei:
        load_model(p, arch=ARCH)
    msg = _assert_one_line(ei.value)
    assert f"Expected key {last!r}" in msg and "got no such key" in msg


def test_state_dict_with_extra_key_is_refused(tmp_path):
    state = dict(_mlp().state_dict())
    state["stray.weight"] = torch.zeros(3)
    p = tmp_path / "w.pt"
    torch.save(state, p)
    with pytest.raises(StateDictMismatchError, match="unexpected key 'stray.weight'"):
        load_model(p, arch=ARCH)


def test_unknown_arch_name_lists_available(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_mlp().state_dict(), p)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p, arch="no_such_net")
    assert "mlp" in _assert_one_line(ei.value)


def test_fit_state_dict_accepts_a_fitting_state_dict_and_rejects_a_wrong_one():
    # negative control for the checker itself: it must pass a fitting state_dict
    m = nn.Linear(2, 3)
    assert fit_state_dict(m, nn.Linear(2, 3).state_dict()) == []
    with pytest.raises(StateDictMismatchError, match=r"Expected 'weight' of shape \(3, 2\) \(got shape \(4, 2\)\)"):
        fit_state_dict(m, nn.Linear(2, 4).state_dict())


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_malicious_pickle_never_runs_without_trust(tmp_path, kind):
    marker = tmp_path / "MARKER"
    p = tmp_path / "evil.pt"
    if kind == "zip":
        torch.save(_Marker(str(marker)), p)
    else:
        p.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ModelLoadError) as ei:
        load_model(p)
    msg = _assert_one_line(ei.value)
    assert "--trust" in msg and "arbitrary code" in msg
    with pytest.raises(ModelLoadError):
        load_model(p, arch=ARCH)
    assert not marker.exists()
    # positive control: the file really does run code when trusted (so the test above proves something)
    with pytest.raises(ModelLoadError):
        load_model(p, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_pickle_of_a_list_is_not_a_model(tmp_path, trust):
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p, trust=trust)
    msg = _assert_one_line(ei.value)
    assert "Expected an nn.Module" in msg and "got a list of 3 items" in msg


def test_pickle_of_a_foreign_object_needs_trust_and_is_still_not_a_model(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save(io.BytesIO(b"x"), p)
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(p)
    with pytest.raises(ModelLoadError, match="Expected an nn.Module"):
        load_model(p, trust=True)


def _truncated(tmp_path: Path) -> Path:
    p = tmp_path / "full.pt"
    torch.save(_mlp().state_dict(), p)
    data = p.read_bytes()
    q = tmp_path / "truncated.pt"
    q.write_bytes(data[: len(data) // 2])
    return q


def _random(tmp_path: Path) -> Path:
    p = tmp_path / "random.pt"
    p.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy().tobytes()
    )
    return p


def _random_after_pickle_header(tmp_path: Path) -> Path:
    p = tmp_path / "random_pickle.pt"
    p.write_bytes(b"\x80\x04" + _random(tmp_path).read_bytes())
    return p


def _truncated_safetensors(tmp_path: Path) -> Path:
    safetensors = pytest.importorskip("safetensors.torch")
    p = tmp_path / "w.safetensors"
    safetensors.save_file(_mlp().state_dict(), str(p))
    q = tmp_path / "cut.safetensors"
    q.write_bytes(p.read_bytes()[:100])
    return q


def _directory(tmp_path: Path) -> Path:
    d = tmp_path / "a_dir"
    d.mkdir()
    return d


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    "make, needle",
    [
        (_truncated, "truncated"),
        (_random, "not a model file"),
        (_random_after_pickle_header, "damaged"),
        (_truncated_safetensors, "damaged safetensors"),
        (_directory, "directory"),
        (_empty, "empty"),
        (lambda tmp: tmp / "missing.pt", "no such file"),
    ],
    ids=["truncated", "random-bytes", "random-pickle", "truncated-safetensors", "directory", "empty", "missing"],
)
@pytest.mark.parametrize("trust", [False, True])
def test_bad_files_raise_one_line_model_load_error(tmp_path, make, needle, trust):
    p = make(tmp_path)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p, arch=ARCH, trust=trust)
    msg = _assert_one_line(ei.value)
    assert needle in msg, msg
    assert os.fspath(p.name) in msg


def test_detect_format_on_each_container(tmp_path):
    m = _mlp()
    torch.save(m.state_dict(), tmp_path / "a.pt")
    torch.jit.save(torch.jit.script(m), str(tmp_path / "b.pt"))
    assert detect_format(tmp_path / "a.pt") == "pickle"
    assert detect_format(tmp_path / "b.pt") == "torchscript"
    with pytest.raises(ModelLoadError):
        detect_format(_random(tmp_path))
