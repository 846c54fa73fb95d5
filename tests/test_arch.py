"""Architectures beyond the registry (``symgraph.arch``) through ``load_model`` and the CLI.

Here: ``sequential:act=``, ``package.module:Class``, wrapper-prefix stripping, tied weights, the hints for
plain ``nn.Sequential`` files, and Hugging Face folders (transformers is in the default environment).
torchvision and timm are in ``tests/test_arch_models.py`` (the models environment).
"""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.arch import ArchSpec, build_arch, parse_arch_spec
from symgraph.automorphisms.__main__ import main
from symgraph.errors import ModelLoadError
from symgraph.io import StateDictMismatchError, fit_state_dict, load_model


def _run(capsys, argv):
    capsys.readouterr()  # drop what fixtures printed (transformers' save_pretrained progress bars)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _bad_input_line(code: int, err: str) -> str:
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("... ")]  # progress lines of slow runs
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlp", ArchSpec("registry", "mlp", {})),
        ("cnn2d:hidden=8,norm=groupnorm", ArchSpec("registry", "cnn2d", {"hidden": 8, "norm": "groupnorm"})),
        ("torchvision:resnet18", ArchSpec("torchvision", "resnet18", {})),
        (
            "timm:vit_tiny_patch16_224:depth=1,img_size=32",
            ArchSpec("timm", "vit_tiny_patch16_224", {"depth": 1, "img_size": 32}),
        ),
        ("hf:some/dir:with:colons", ArchSpec("hf", "some/dir:with:colons", {})),
        ("sequential:act=relu", ArchSpec("sequential", "sequential", {"act": "relu"})),
        ("sequential", ArchSpec("sequential", "sequential", {})),
        ("pkg.mod:Net", ArchSpec("user", "pkg.mod:Net", {})),
        ("pkg.mod:Outer.Net:width=3,act=gelu", ArchSpec("user", "pkg.mod:Outer.Net", {"width": 3, "act": "gelu"})),
        ("mymodule:make_net", ArchSpec("user", "mymodule:make_net", {})),
    ],
)
def test_parse_arch_spec_reads_every_form(text, expected):
    assert parse_arch_spec(text) == expected


@pytest.mark.parametrize("text", ["", "torchvision:", "hf:", "mlp:hidden", "timm::x=1"])
def test_parse_arch_spec_rejects_malformed_strings_in_one_line(text):
    with pytest.raises(ModelLoadError) as ei:
        parse_arch_spec(text)
    assert "\n" not in str(ei.value) and "Expected" in str(ei.value)


def test_unknown_registry_name_lists_the_forms_and_a_close_match():
    with pytest.raises(ModelLoadError) as ei:
        build_arch("mpl")
    msg = str(ei.value)
    assert "did you mean mlp" in msg and "torchvision:NAME" in msg and "package.module:Class" in msg


# ------------------------------------------------------------------------------------------------ sequential
def _seq_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def test_sequential_state_dict_is_rebuilt_from_the_file_alone_with_the_same_function_and_group(tmp_path):
    ref = _seq_mlp()
    p = tmp_path / "mlp.pt"
    torch.save(ref.state_dict(), p)
    model, info = load_model(p, arch="sequential:act=relu")
    assert isinstance(model, nn.Sequential) and info.arch == "sequential:act=relu"
    assert _same_weights(model, ref)
    x = torch.randn(4, 5)
    assert _max_diff(model, ref, x) == 0.0
    assert symgraph.automorphism_group(model).order == math.factorial(7) * math.factorial(6)


def test_sequential_with_the_wrong_activation_changes_the_function(tmp_path):
    """Negative control: the activation is what the file does not record; a wrong one gives another function."""
    ref = _seq_mlp()
    p = tmp_path / "mlp.pt"
    torch.save(ref.state_dict(), p)
    model, _ = load_model(p, arch="sequential:act=tanh")
    assert _same_weights(model, ref)
    assert _max_diff(model, ref, torch.randn(16, 5)) > 1e-3


def test_sequential_conv_flatten_linear_chain_infers_its_input_size(tmp_path):
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 2)
    )
    p = tmp_path / "cnn.pt"
    torch.save(ref.state_dict(), p)
    model, _ = load_model(p, arch="sequential:act=relu")
    assert model.example_input_shape == (1, 3, 10, 10)
    assert _max_diff(model, ref, torch.randn(2, 3, 10, 10)) == 0.0
    g = symgraph.parameter_graph(model)  # no input shape given: the rebuilt model records it
    assert g.spec.input_shape == (1, 3, 10, 10)


def test_sequential_accepts_a_leading_flatten_and_back_to_back_linears(tmp_path):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    p = tmp_path / "m.pt"
    torch.save(ref.state_dict(), p)
    model, _ = load_model(p, arch="sequential")  # no activation needed: no index is skipped
    assert _max_diff(model, ref, torch.randn(3, 4)) == 0.0


@pytest.mark.parametrize(
    "make, arch, needle",
    [
        (lambda: _seq_mlp(), "sequential", "give it: sequential:act=relu"),
        (lambda: _seq_mlp(), "sequential:act=swishy", "Expected act among"),
        (lambda: _seq_mlp(), "sequential:act=relu,width=3", "Expected options among"),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)),
            "sequential:act=relu",
            "norm",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 1)),
            "sequential:act=relu",
            "(got 2",
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2)),
            "sequential:act=relu",
            "grouped",
        ),
        (lambda: nn.ModuleDict({"a": nn.Linear(2, 2)}), "sequential:act=relu", "Expected only '<index>.weight'"),
    ],
)
def test_sequential_refuses_what_the_file_cannot_say_in_one_line(tmp_path, make, arch, needle):
    p = tmp_path / "m.pt"
    torch.save(make().state_dict(), p)
    with pytest.raises(ModelLoadError) as ei:
        load_model(p, arch=arch)
    msg = str(ei.value)
    assert "\n" not in msg and needle in msg, msg


def test_sequential_needs_a_file():
    with pytest.raises(ModelLoadError, match="Expected a weights file"):
        build_arch("sequential:act=relu")


def test_a_sequential_file_without_arch_or_with_a_registry_arch_says_how_to_rebuild_it(capsys, tmp_path):
    p = tmp_path / "mlp.pt"
    torch.save(_seq_mlp().state_dict(), p)
    line = _bad_input_line(*_run(capsys, [str(p)])[::2])
    assert "sequential:act=relu" in line
    line = _bad_input_line(*_run(capsys, [str(p), "--arch", "mlp"])[::2])
    assert "Expected key" in line and "sequential:act=relu" in line


def test_cli_rebuilds_a_sequential_file_and_verifies(capsys, tmp_path):
    p = tmp_path / "mlp.pt"
    torch.save(_seq_mlp().state_dict(), p)
    code, out, _ = _run(capsys, [str(p), "--arch", "sequential:act=relu", "--verify", "2"])
    assert code == 0 and "passed" in out
    assert f"|Aut|:      {math.factorial(7) * math.factorial(6)}" in out
    assert "input:      1x5 (inferred: example_input_shape)" in out


# ------------------------------------------------------------------------------------------------ prefixes, ties
@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped_and_the_output_says_so(capsys, tmp_path, prefix):
    ref = symgraph.models.build_model("mlp:hidden=8-8").eval()
    p = tmp_path / "w.pt"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, p)
    model, info = load_model(p, arch="mlp:hidden=8-8")
    assert _same_weights(model, ref)
    stripped = [n for n in info.notes if "stripped the key prefix" in n]
    assert len(stripped) == prefix.count(".")
    code, out, _ = _run(capsys, [str(p), "--arch", "mlp:hidden=8-8"])
    assert code == 0 and "note:       stripped the key prefix" in out


def test_a_prefix_the_model_itself_has_is_not_stripped():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(2, 2)

    m = Wrapped()
    notes = fit_state_dict(m, Wrapped().state_dict())  # keys 'model.weight': the model's own names
    assert notes == []


def test_a_prefix_on_only_some_keys_keeps_the_clear_mismatch_message():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = {("module." + k if k.startswith("0") else k): v for k, v in m.state_dict().items()}
    with pytest.raises(StateDictMismatchError, match=r"Expected key '0.weight' of shape \(3, 2\) \(got no such key"):
        fit_state_dict(m, sd)


def test_tied_parameters_stored_once_load_and_stay_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    m, ref = Tied(), Tied()
    sd = {k: v for k, v in ref.state_dict().items() if k != "head.weight"}
    notes = fit_state_dict(m, sd)
    assert any("tied to 'emb.weight'" in n for n in notes)
    assert torch.equal(m.head.weight, ref.emb.weight) and m.head.weight is m.emb.weight
    # negative control: an untied model still needs both keys
    untied = nn.ModuleDict({"emb": nn.Embedding(5, 3), "head": nn.Linear(3, 5, bias=False)})
    with pytest.raises(StateDictMismatchError, match="head.weight"):
        fit_state_dict(untied, sd)


# ------------------------------------------------------------------------------------------------ user classes
_USER_MODULE = """
import torch.nn as nn

class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(3, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

def make_net(width=4):
    return TinyNet(width=width)

NOT_A_CLASS = 3
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package ``userpkg_<n>.nets`` in a fresh current directory, as a user's project would have it."""
    name = f"userpkg_{tmp_path.name.replace('-', '_')}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(_USER_MODULE))
    (pkg / "broken.py").write_text("raise RuntimeError('this module fails on import')\n")
    (pkg / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_user_class_is_imported_from_the_current_directory_like_python_m(capsys, tmp_path, user_package):
    torch.manual_seed(0)
    arch = f"{user_package}.nets:TinyNet:width=5"
    ref = build_arch(arch)
    assert type(ref).__name__ == "TinyNet" and ref.fc1.out_features == 5
    assert "" not in sys.path  # the import path is restored
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    model, info = load_model(tmp_path / "w.pt", arch=arch)
    assert _same_weights(model, ref) and info.arch == arch
    code, out, _ = _run(capsys, ["w.pt", "--arch", arch, "--verify", "2"])
    assert code == 0 and f"|Aut|:      {math.factorial(5)}" in out and "passed" in out
    # a factory function works the same way
    assert type(build_arch(f"{user_package}.nets:make_net:width=2")).__name__ == "TinyNet"


@pytest.mark.parametrize(
    "target, needle",
    [
        ("no_such_package_xyz.nets:Net", "no module named 'no_such_package_xyz'"),
        ("{pkg}.missing:Net", "no module named '{pkg}.missing'"),
        ("{pkg}.nets:NoSuchNet", "to define 'NoSuchNet' (got no attribute 'NoSuchNet')"),
        ("{pkg}.nets:NOT_A_CLASS", "Expected a class or factory"),
        ("{pkg}.nets:TinyNet:depth=3", "raised TypeError"),
        ("{pkg}.broken:Net", "raised RuntimeError: this module fails on import"),
        ("{pkg}.needs_dep:Net", "importing '{pkg}.needs_dep' failed: No module named 'no_such_dependency_xyz'"),
    ],
)
def test_user_class_errors_are_one_line_exit_2(capsys, tmp_path, user_package, target, needle):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    arch = target.format(pkg=user_package)
    line = _bad_input_line(*_run(capsys, ["w.pt", "--arch", arch])[::2])
    assert needle.format(pkg=user_package) in line, line
    code, _, err = _run(capsys, ["--example", arch])
    assert needle.format(pkg=user_package) in _bad_input_line(code, err)


def test_help_shows_every_arch_form_and_warns_that_user_modules_run(capsys):
    code = main(["--help"])
    out = capsys.readouterr().out
    assert code == 0
    for form in ("torchvision:NAME", "timm:NAME", "hf:DIR", "sequential:act=relu", "package.module:Class"):
        assert form in out, form
    assert "runs your module" in out and "RUNS ITS CODE" in out


# ------------------------------------------------------------------------------------------------ malicious pickles
class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("arch", ["sequential:act=relu", "mlp", "{pkg}.nets:TinyNet"])
def test_malicious_pickle_never_runs_with_any_arch_form_and_does_with_trust(capsys, tmp_path, user_package, arch):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"0.weight": _Marker(str(marker))}, evil)
    arch = arch.format(pkg=user_package)
    _bad_input_line(*_run(capsys, [str(evil), "--arch", arch])[::2])
    with pytest.raises(ModelLoadError, match="arbitrary code"):
        load_model(evil, arch=arch)
    assert not marker.exists()
    # negative control: trusted, the same file does run its code
    _run(capsys, [str(evil), "--arch", arch, "--trust"])
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ Hugging Face
@pytest.fixture
def bert_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(cfg).eval()
    d = tmp_path / "bert"
    model.save_pretrained(str(d))
    return d, model


def test_hf_folder_loads_its_weights_offline_and_infers_token_ids(tmp_path, bert_dir, monkeypatch):
    import socket

    d, ref = bert_dir

    def _no_network(*args, **kwargs):
        raise AssertionError("symgraph tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    for target in (f"hf:{d}", str(d)):
        model, info = load_model(target)
        assert info.arch == f"hf:{d}" and info.format == "safetensors" and type(model).__name__ == "BertModel"
        assert _same_weights(model, ref)
    from symgraph.input_shapes import infer_example_input

    guess = infer_example_input(model)
    assert guess.shape == (1, 8) and guess.dtype == torch.long and "token ids" in guess.source
    from symgraph.trace import resolve_example_input

    assert resolve_example_input(model, None, (2, 5)).dtype == torch.long  # --input-shape keeps token ids


def test_hf_pytorch_model_bin_is_read_weights_only_and_a_malicious_one_is_refused(capsys, tmp_path, bert_dir):
    d, ref = bert_dir
    (d / "model.safetensors").unlink()
    torch.save(ref.state_dict(), d / "pytorch_model.bin")
    model, info = load_model(f"hf:{d}")
    assert info.format == "state_dict" and _same_weights(model, ref)
    marker = tmp_path / "MARKER"
    torch.save({"x": _Marker(str(marker))}, d / "pytorch_model.bin")
    line = _bad_input_line(*_run(capsys, [f"hf:{d}"])[::2])
    assert "arbitrary code" in line and not marker.exists()
    _run(capsys, [f"hf:{d}", "--trust"])  # negative control: trusted, it runs
    assert marker.exists()


def test_hf_state_dict_file_with_arch_and_mismatches_keep_the_clear_message(tmp_path, bert_dir):
    d, ref = bert_dir
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, tmp_path / "ft.pt")
    model, info = load_model(tmp_path / "ft.pt", arch=f"hf:{d}")
    assert _same_weights(model, ref) and any("module." in n for n in info.notes)
    bad = dict(ref.state_dict())
    bad["pooler.dense.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(StateDictMismatchError) as ei:
        load_model(tmp_path / "bad.pt", arch=f"hf:{d}")
    assert "pooler.dense.weight" in str(ei.value) and "(got shape (3, 3))" in str(ei.value)


def test_hf_folder_without_weights_or_config_or_with_remote_code_is_one_line(capsys, tmp_path, bert_dir):
    d, _ = bert_dir
    (d / "model.safetensors").unlink()
    assert "--example hf:DIR" in _bad_input_line(*_run(capsys, [f"hf:{d}"])[::2])
    # random init from the config alone: loads, fx fails, torch.export encodes it (position/token-type ids too)
    code, out, err = _run(capsys, ["--example", f"hf:{d}", "--json"])
    assert code == 0 and '"order"' in out, err
    assert "config.json" in _bad_input_line(*_run(capsys, [f"hf:{tmp_path / 'nowhere'}"])[::2])
    cfg = (d / "config.json").read_text()
    (d / "config.json").write_text(cfg.replace('"model_type"', '"auto_map": {"AutoModel": "x.Y"}, "model_type"'))
    assert "never runs code from a model folder" in _bad_input_line(*_run(capsys, ["--example", f"hf:{d}"])[::2])


def test_hf_model_loads_and_encodes_through_torch_export_with_its_function_kept(capsys, bert_dir):
    import json

    d, _ = bert_dir
    code, out, err = _run(capsys, [f"hf:{d}", "--json", "--verify", "2"])  # after fx failed, through torch.export
    assert code == 0, err
    row = json.loads(out)
    assert float(row["log10_order"]) > 0 and row["max_abs_diff"] < 1e-12, row
