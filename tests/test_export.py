"""The torch.export front end (symgraph/export.py) and .pt2 files: the same graphs as torch.fx where both
work, Hugging Face models fx cannot trace, .pt2 archives encoded without an architecture, and archives that
could run code refused without being executed."""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symgraph
from symgraph import export as sx
from symgraph.automorphisms.verify import verify_automorphisms
from symgraph.errors import ModelLoadError, ShapeMismatchError, TraceError, UnsupportedModuleError
from symgraph.io import load_model, vet_export_archive
from symgraph.models import build_model
from symgraph.symmetry import analytic_order
from symgraph.trace import resolve_example_input

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

#: Registry models torch.fx traces; resnet50_like (23.5M edges) is in the slow test below.
FX_MODELS = ["mlp", "cnn2d", "cnn1d", "deepsets", "grid_inr", "resnet", "siren", "transformer", "vit"]


def graph_diffs(a, b) -> list[str]:
    """The fields in which two parameter graphs differ (empty: the same graph, bit for bit)."""
    diffs = []
    for f in ("edge_index", "edge_weight", "edge_color", "node_color", "node_weight", "node_layer"):
        x, y = getattr(a, f), getattr(b, f)
        if x.shape != y.shape or not torch.equal(x, y):
            diffs.append(f)
    for f in ("edge_color_keys", "node_color_keys", "state_keys", "node_weight_columns"):
        if getattr(a, f) != getattr(b, f):
            diffs.append(f)
    sa, sb = a.to_state_dict(), b.to_state_dict()
    if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
        diffs.append("to_state_dict")
    return diffs


def _registry(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name).eval()


def _save_pt2(model: nn.Module, path: Path, *args) -> Path:
    args = args or (resolve_example_input(model),)
    torch.export.save(torch.export.export(model, args, strict=False), str(path))
    return path


# ---------------------------------------------------------------------------------------------- fx == export
@pytest.mark.parametrize("name", FX_MODELS)
def test_export_front_end_gives_the_fx_graph_on_registry_models(name):
    m = _registry(name)
    gf = symgraph.parameter_graph(m, tracer="fx")
    ge = symgraph.parameter_graph(m, tracer="export")
    assert (gf.meta["tracer"], ge.meta["tracer"]) == ("fx", "export")
    assert graph_diffs(gf, ge) == []
    state = m.state_dict()
    assert all(torch.equal(ge.to_state_dict()[k], v) for k, v in state.items())


@pytest.mark.slow
def test_export_front_end_gives_the_fx_graph_on_resnet50_like():
    m = _registry("resnet50_like")
    assert graph_diffs(symgraph.parameter_graph(m, tracer="fx"), symgraph.parameter_graph(m, tracer="export")) == []


def test_a_wrong_aten_mapping_is_caught_by_the_fx_comparison(monkeypatch):
    """Negative control: recording aten.relu as tanh changes the graph (fx records torch.relu as relu)."""

    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    m = Fn()
    gf = symgraph.parameter_graph(m, tracer="fx")
    assert graph_diffs(gf, symgraph.parameter_graph(m, tracer="export")) == []
    monkeypatch.setitem(sx.ATEN_OPS, "relu", sx.AtenMapping("call_function", torch.tanh))
    assert "node_color_keys" in graph_diffs(gf, symgraph.parameter_graph(m, tracer="export"))


def test_a_wrong_stand_in_is_caught_by_the_pt2_comparison(tmp_path, monkeypatch):
    m = _registry("cnn2d")
    gf = symgraph.parameter_graph(m, tracer="fx")
    program, _ = load_model(_save_pt2(m, tmp_path / "m.pt2"))
    assert graph_diffs(gf, symgraph.parameter_graph(program)) == []
    good = sx.STANDIN_OPS["conv2d"]

    def wrong(node, tensors, fqns):  # the right module, but with dilation 2
        module, inputs = good.build(node, tensors, fqns)
        module.dilation = (2, 2)
        return module, inputs

    monkeypatch.setitem(sx.STANDIN_OPS, "conv2d", sx.StandIn(good.tensors, wrong))
    assert "edge_color_keys" in graph_diffs(gf, symgraph.parameter_graph(program))


def test_auto_uses_fx_where_it_traces_and_export_where_it_cannot():
    class Branchy(nn.Module):  # fx cannot branch on a traced size; export sees the concrete one
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) if x.shape[1] == 4 else self.b(x)

    with pytest.raises(TraceError):
        symgraph.parameter_graph(Branchy(), input_shape=(1, 4), tracer="fx")
    g = symgraph.parameter_graph(Branchy(), input_shape=(1, 4))
    assert g.meta["tracer"] == "export"
    assert g.num_edges == 4 * 3 + 3 and g.meta["unencoded"] == ["b.weight", "b.bias"]  # b is never called
    assert symgraph.parameter_graph(_registry("mlp")).meta["tracer"] == "fx"


def test_bad_tracer_arguments_are_typed_errors():
    with pytest.raises(ShapeMismatchError):
        symgraph.parameter_graph(_registry("mlp"), tracer="jit")
    with pytest.raises(ShapeMismatchError):
        symgraph.parameter_graph(_registry("mlp"), example_input=(torch.zeros(1, 2),), tracer="fx")


# ---------------------------------------------------------------------------------------------- inputs
def test_several_inputs_keyword_inputs_and_token_ids():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(3, 5), nn.Linear(2, 5), nn.Linear(5, 1)

        def forward(self, x, y=None, scale: float = 1.0):
            return self.out(torch.relu(self.a(x) + self.b(y)) * scale)

    g = symgraph.parameter_graph(Two(), example_input=(torch.zeros(1, 3), torch.zeros(1, 2)))
    gk = symgraph.parameter_graph(Two(), example_input=(torch.zeros(1, 3),), example_kwargs={"y": torch.zeros(1, 2)})
    assert g.meta["tracer"] == gk.meta["tracer"] == "export"
    n_params = 3 * 5 + 5 + 2 * 5 + 5 + 5 + 1
    assert g.num_edges == gk.num_edges == n_params + 2 * 5  # and the sum's parameter-free edges
    assert int(g.role_mask("input").sum()) == 3 + 2
    assert symgraph.automorphism_group(g).order == 120  # S_5 on the hidden units

    tok = nn.Sequential(nn.Embedding(11, 4), nn.ReLU(), nn.Linear(4, 2))
    ids = torch.zeros(1, 6, dtype=torch.long)
    gt = symgraph.parameter_graph(tok, example_input=ids, tracer="export")
    assert graph_diffs(symgraph.parameter_graph(tok, example_input=ids, tracer="fx"), gt) == []


def test_constant_causal_mask_is_folded_into_is_causal():
    class Attn(nn.Module):
        def __init__(self, how: str):
            super().__init__()
            self.how = how
            self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            T = x.shape[1]
            q, k, v = (f(x).view(1, T, 2, 2).transpose(1, 2) for f in (self.q, self.k, self.v))
            if self.how == "flag":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # the mask Hugging Face builds from arange: input-independent, folded at conversion
                i = torch.arange(T)
                mask = i.view(-1, 1) >= i.view(1, -1)
                if self.how == "other":
                    mask = mask & (i.view(1, -1) != 0)  # masks column 0 too: not causal
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return y.transpose(1, 2).reshape(1, T, 4)

    def attn(how: str) -> Attn:
        torch.manual_seed(0)
        return Attn(how)

    x = torch.zeros(1, 5, 4)
    flag = symgraph.parameter_graph(attn("flag"), example_input=x, tracer="export")
    folded = symgraph.parameter_graph(attn("mask"), example_input=x, tracer="export")
    assert graph_diffs(flag, folded) == []
    with pytest.raises(UnsupportedModuleError, match="attention mask"):
        symgraph.parameter_graph(attn("other"), example_input=x, tracer="export")


def test_constant_mask_kind():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    assert sx.constant_mask_kind(torch.ones(1, 1, 4, 4, dtype=torch.bool), 4, 4) == "none"
    assert sx.constant_mask_kind(causal, 4, 4) == "causal"
    additive = torch.zeros(4, 4).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert sx.constant_mask_kind(additive, 4, 4) == "causal"
    assert sx.constant_mask_kind(torch.zeros(4, 4), 4, 4) == "none"
    off = causal.clone()
    off[3, 0] = False  # negative controls: one more masked entry, a finite additive penalty
    assert sx.constant_mask_kind(off, 4, 4) is None
    assert sx.constant_mask_kind(additive.clamp(min=-10.0), 4, 4) is None


def test_unmapped_aten_op_names_the_op_and_the_module_path():
    class Inner(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.l, self.block = nn.Linear(3, 3), nn.Sequential(Inner())

        def forward(self, x):
            return self.block(self.l(x))

    with pytest.raises(UnsupportedModuleError) as ei:
        symgraph.parameter_graph(Outer(), input_shape=(1, 3), tracer="export")
    msg = str(ei.value)
    assert "aten.cumsum" in msg and "'block.0'" in msg and "Inner" in msg


def test_in_place_op_on_a_value_read_elsewhere_is_refused():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 3)

        def forward(self, x):
            y = self.l(x)
            v = y.view(3)
            y.relu_()  # mutates y, and v with it: the output is 2 * relu(l(x)), not 2 * l(x)
            return v * 2

    with pytest.raises(UnsupportedModuleError, match="in place"):
        symgraph.parameter_graph(InPlace(), input_shape=(1, 3), tracer="export")


# ---------------------------------------------------------------------------------------------- .pt2 files
@pytest.mark.parametrize("name", ["mlp", "cnn2d", "resnet", "transformer", "vit"])
def test_pt2_file_is_encoded_without_arch_into_the_fx_graph(tmp_path, name):
    m = _registry(name)
    program, info = load_model(_save_pt2(m, tmp_path / "m.pt2"))
    assert info.format == "export" and info.arch is None
    assert sx.is_aten_graph_module(program)
    g = symgraph.parameter_graph(program)
    assert g.meta["tracer"] == "export"
    assert graph_diffs(symgraph.parameter_graph(m, tracer="fx"), g) == []
    state = m.state_dict()
    assert all(torch.equal(g.to_state_dict()[k], v) for k, v in state.items())


def test_pool_on_one_branch_only_gives_the_fx_graph_through_export_and_pt2(tmp_path):
    """GoogLeNet-style: a pool on one branch only; interpolation, padding and average pooling after the concat."""

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)
            self.pool, self.up, self.avg = nn.MaxPool2d(3, 1, 1), nn.Upsample(scale_factor=2), nn.AvgPool2d(2)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(self.pool(x))], 1)
            return self.c(F.pad(self.avg(self.up(y)), (1, 1, 1, 1)))

    torch.manual_seed(0)
    m, x = Branches().eval(), torch.zeros(1, 3, 8, 8)
    gf = symgraph.parameter_graph(m, example_input=x, tracer="fx")
    program, _ = load_model(_save_pt2(m, tmp_path / "b.pt2", x))
    assert graph_diffs(gf, symgraph.parameter_graph(m, example_input=x, tracer="export")) == []
    assert graph_diffs(gf, symgraph.parameter_graph(program)) == []
    assert symgraph.automorphism_group(program).order == 24 * 24  # S_4 x S_4: the branches never swap


def test_pt2_program_keeps_its_function_under_automorphisms_and_not_under_an_input_swap(tmp_path):
    program, info = load_model(_save_pt2(_registry("mlp"), tmp_path / "m.pt2"))
    aut = symgraph.automorphism_group(program)
    x = torch.randn(4, *info.example_input_shape[1:])
    assert verify_automorphisms(program, aut, 3, x, seed=0).verified  # runs the program's module
    # negative control: swapping two input nodes maps the coloured edges onto themselves but changes f
    perm = torch.arange(aut.graph.num_nodes)
    a, b = torch.nonzero(aut.graph.role_mask("input")).flatten()[:2].tolist()
    perm[a], perm[b] = b, a
    assert symgraph.check_function_preservation(program, perm, x, graph=aut.graph) > 1e-6


def test_float64_verification_rebuilds_with_the_groups_tracer(monkeypatch):
    """verify_automorphisms rebuilds the float64 graph with the front end of the group's graph, not "auto"."""
    import symgraph.build

    m = _registry("mlp").float()
    x = torch.randn(2, *resolve_example_input(m).shape[1:])
    aut = symgraph.automorphism_group(symgraph.parameter_graph(m, example_input=x[:1], tracer="export"))
    assert aut.graph.meta["tracer"] == "export"
    seen = []
    real = symgraph.build.parameter_graph

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tracer"))
        return real(*args, **kwargs)

    monkeypatch.setattr(symgraph.build, "parameter_graph", spy)
    assert verify_automorphisms(m, aut, 2, x, seed=0).verified
    assert seen == ["export"]


def test_cli_encodes_a_pt2_file_and_says_it_used_export(tmp_path, capsys):
    from symgraph.automorphisms.__main__ import main

    p = _save_pt2(_registry("mlp"), tmp_path / "m.pt2")
    assert main([str(p), "--json", "--verify", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tracer"] == "export" and out["verified"] is True
    assert main(["--example", "mlp"]) == 0
    assert "(traced by fx)" in capsys.readouterr().out


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item)))
    return dst


class _Plant:
    """A pickle that, when unpickled, writes a marker file (what an attacker's payload would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pt2_archives_are_refused_and_nothing_is_executed(tmp_path):
    clean = _save_pt2(_registry("mlp"), tmp_path / "clean.pt2")
    assert vet_export_archive(clean) == []  # negative control: an ordinary archive passes
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(str(marker)))

    def pickled_weight(name, data):
        if name.endswith("_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("/data/weights/weight_0"):
            return payload
        return data

    def pickled_sample(name, data):
        return payload if "/data/sample_inputs/" in name else data

    def os_target(name, data):
        if name.endswith("models/model.json"):
            prog = json.loads(data)
            prog["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
            return json.dumps(prog).encode()
        return data

    def sympy_string(name, data):
        if name.endswith("models/model.json"):
            prog = json.loads(data)
            prog["range_constraints"] = {"__import__('os').system('true')": {"min_val": 0, "max_val": 1}}
            return json.dumps(prog).encode()
        return data

    cases = {
        "pickled payload": pickled_weight,
        "sample inputs": pickled_sample,
        "operator 'torch.os.system'": os_target,
        "shape expression": sympy_string,
    }
    for what, edit in cases.items():
        bad = _rewrite(clean, tmp_path / f"{what.split()[0]}.pt2", edit)
        problems = vet_export_archive(bad)
        assert any(what in p for p in problems), (what, problems)
        with pytest.raises(ModelLoadError, match="--trust"):
            load_model(bad)
        assert not marker.exists(), what


# ---------------------------------------------------------------------------------------------- Hugging Face
def _hf(name: str) -> nn.Module:
    T = pytest.importorskip("transformers")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "vit":
            return T.ViTModel(T.ViTConfig(image_size=8, patch_size=4, num_channels=3, **small)).eval()
        if name == "bert":
            return T.BertModel(T.BertConfig(vocab_size=50, max_position_embeddings=16, **small)).eval()
        if name == "bert_no_dropout":  # attention dropout inside sdpa is not switched off by the train-mode check
            cfg = T.BertConfig(vocab_size=50, max_position_embeddings=16, attention_probs_dropout_prob=0.0, **small)
            return T.BertModel(cfg).eval()
        if name == "gpt2":
            cfg = T.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0)
            return T.GPT2Model(cfg).eval()
    raise KeyError(name)


@pytest.mark.slow
def test_hf_vit_goes_through_export_with_the_analytic_group():
    m = _hf("vit")
    with pytest.raises(TraceError):
        symgraph.parameter_graph(m, tracer="fx")
    aut = symgraph.automorphism_group(m)
    g = aut.graph
    assert g.meta["tracer"] == "export"
    assert all(torch.equal(g.to_state_dict()[k], v) for k, v in m.state_dict().items())
    assert analytic_order(g) == aut.order


@pytest.mark.slow
def test_random_automorphism_preserves_hf_vit_function():
    m = _hf("vit")
    aut = symgraph.automorphism_group(m)
    x = torch.randn(1, 3, 8, 8)
    assert verify_automorphisms(m, aut, 3, x, seed=0).verified
    perm = torch.arange(aut.graph.num_nodes)  # negative control: two input pixels' channels swapped
    a, b = torch.nonzero(aut.graph.role_mask("input")).flatten()[:2].tolist()
    perm[a], perm[b] = b, a
    assert symgraph.check_function_preservation(m, perm, x, graph=aut.graph) > 1e-6


@pytest.mark.slow
def test_hf_bert_encodes_with_its_position_and_token_type_ids_as_inputs():
    """With the ids BERT would build itself passed as inputs, its embeddings are of model inputs (fixed
    token nodes per table row); the function is that of the default call."""
    import copy

    m = copy.deepcopy(_hf("bert_no_dropout")).double()
    ids = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    kw = {"token_type_ids": torch.zeros(1, 8, dtype=torch.long), "position_ids": torch.arange(8).view(1, 8)}
    g = symgraph.parameter_graph(m, example_input=ids, example_kwargs=kw)
    assert g.meta["tracer"] == "export" and g.meta["unencoded"] == []
    aut = symgraph.automorphism_group(g)
    assert analytic_order(g) == aut.order
    x = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert symgraph.check_function_preservation(m, aut.random_element(generator=gen), x, graph=g) < 1e-9
    # negative control: moving one learned position's row onto another changes the function
    pos = [gr for gr in g.node_groups if gr.name.startswith("embeddings.position_embeddings")][0]
    perm = torch.arange(g.num_nodes)
    perm[pos.start], perm[pos.start + 1] = pos.start + 1, pos.start
    assert symgraph.check_function_preservation(m, perm, x, graph=g) > 1e-6


def test_hf_pt2_round_trip(tmp_path):
    m = _hf("vit")
    p = _save_pt2(m, tmp_path / "vit.pt2", torch.zeros(1, 3, 8, 8))
    program, _ = load_model(p)
    assert graph_diffs(symgraph.parameter_graph(m), symgraph.parameter_graph(program)) == []


def test_a_program_saved_and_loaded_through_memory_encodes_the_same():
    m = _registry("mlp")
    buf = io.BytesIO()
    torch.export.save(torch.export.export(m, (resolve_example_input(m),), strict=False), buf)
    buf.seek(0)
    gm = torch.export.load(buf).module()
    assert graph_diffs(symgraph.parameter_graph(m, tracer="fx"), symgraph.parameter_graph(gm)) == []
