"""Embeddings read at indices that are not the model's tokens: position ids (an ``arange`` buffer sliced to
the length), token-type ids (a zeros buffer: one row at every position), an integer buffer repeating rows, and
ids computed from the tokens without parameters (RoBERTa's padding-aware positions).

Claim: each table row is one fixed node with one edge per entry to the D embedding features, so automorphisms
permute the features (the table's columns) and never the rows; the group is the analytic one, every random
automorphism preserves the function (float64, train and eval), and unfixing the rows is caught.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.automorphisms import verify_automorphisms
from symgraph.builder import GraphBuilder
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order

V, P, D, H, O, T = 7, 6, 5, 3, 2, 4  # vocabulary, table rows, features, hidden units, outputs, tokens
PAD = 1


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.word = nn.Embedding(V, D, padding_idx=PAD)
        self.fc1 = nn.Linear(D, H)
        self.fc2 = nn.Linear(H, O)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(h)))


class PositionIds(_Head):
    """``pos(position_ids[:, :T])`` with a non-persistent ``arange`` buffer longer than the input (rows
    T..P-1 never read)."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(P, D)
        self.register_buffer("position_ids", torch.arange(P).view(1, P), persistent=False)

    def forward(self, x):
        return self.head(self.word(x) + self.pos(self.position_ids[:, : x.shape[1]]))


class TokenTypeZeros(PositionIds):
    """BERT's default token types: a zeros buffer, so row 0 is read at every position and row 1 never."""

    def __init__(self):
        super().__init__()
        self.types = nn.Embedding(2, D)
        self.register_buffer("token_type_ids", torch.zeros(1, P, dtype=torch.long), persistent=False)

    def forward(self, x):
        B, L = x.shape
        types = self.types(self.token_type_ids[:, :L].expand(B, L))
        return self.head(self.word(x) + types + self.pos(self.position_ids[:, :L]))


class RepeatedRows(_Head):
    """A persistent integer buffer (in the state_dict) reading rows 2, 0, 2, 1 of a 4-row table."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(4, D)
        self.register_buffer("ids", torch.tensor([[2, 0, 2, 1]]))

    def forward(self, x):
        return self.head(self.word(x) + self.table(self.ids))


class InputPositions(_Head):
    """RoBERTa's positions: counted over the non-padding tokens, ``PAD`` at padding (computed from the tokens,
    without parameters)."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(T + PAD + 1, D, padding_idx=PAD)

    def forward(self, x):
        mask = x.ne(PAD).int()
        ids = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + PAD
        return self.head(self.word(x) + self.pos(ids))


class ArangePositions(PositionIds):
    """nanoGPT's ``wpe(torch.arange(T, device=x.device))``: an op of the input's shape, folded by export."""

    def forward(self, x):
        return self.head(self.word(x) + self.pos(torch.arange(x.shape[1], device=x.device)))


CASES = {
    "position_ids": (PositionIds, ("fx", "export")),
    "arange_positions": (ArangePositions, ("export",)),  # fx: no encoder for x.device
    "token_type_zeros": (TokenTypeZeros, ("fx", "export")),
    "repeated_rows": (RepeatedRows, ("fx", "export")),
    "input_positions": (InputPositions, ("export",)),  # fx: no encoder for ne/cumsum
}
PARAMS = [(name, tracer) for name, (_, tracers) in CASES.items() for tracer in tracers]


def _model(name: str) -> nn.Module:
    """In float64 already: the function check then uses the group's own graph (it rebuilds a float32 model's
    graph with the default front end, which fx picks for ``input_positions`` and then cannot encode)."""
    torch.manual_seed(0)
    m = CASES[name][0]().double()
    with torch.no_grad():  # no zero padding row: a row that is zero cannot show a wrong permutation
        m.word.weight.normal_()
        for mod in m.modules():
            if isinstance(mod, nn.Embedding):
                mod.weight.normal_()
    return m.eval()


def _tokens(seed: int, batch: int = 3) -> torch.Tensor:
    x = torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(seed))
    x[0, -1] = PAD  # a padded position: RoBERTa's position id is PAD there
    return x


def _group(name: str, tracer: str):
    m = _model(name)
    g = symgraph.parameter_graph(m, example_input=_tokens(0), tracer=tracer)
    assert g.meta["tracer"] == tracer
    return m, g, symgraph.automorphism_group(g)


def _row_groups(g):
    return [grp for grp in g.node_groups if grp.role == "position" and grp.kind == "embedding"]


@pytest.mark.parametrize(("name", "tracer"), PARAMS)
def test_constant_and_input_computed_index_embeddings_round_trip_bit_identically(name, tracer):
    m, g, _ = _group(name, tracer)
    sd, back = m.state_dict(), g.to_state_dict()
    assert list(back) == list(sd)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in sd.items())
    # every table row is one fixed node, read or not, repeated or not; every entry is one edge
    tables = {mod: m.get_submodule(mod).weight.shape[0] for mod in ("pos", "types", "table") if hasattr(m, mod)}
    rows = {grp.module: grp.count for grp in _row_groups(g)}
    assert rows == tables
    slots = {s.name: s for s in g.slots}
    for grp in _row_groups(g):
        s = slots[f"{grp.module}.weight"]
        assert s.location == "edge" and s.numel == grp.count * D
        src, dst = g.edge_index[:, s.start : s.start + s.numel]
        # row v's D entries are the edges v -> feature d: D edges from each row node, to D distinct features
        assert torch.equal(src.view(grp.count, D), torch.arange(grp.start, grp.stop).view(-1, 1).expand(-1, D))
        assert dst.view(grp.count, D).unique(dim=0).shape[0] == 1 and dst[:D].unique().numel() == D


@pytest.mark.parametrize(("name", "tracer"), PARAMS)
def test_group_order_is_the_analytic_one_feature_and_hidden_permutations_only(name, tracer):
    _, g, aut = _group(name, tracer)
    assert analytic_order(g) == aut.order == math.factorial(D) * math.factorial(H)
    fixed = torch.cat([torch.arange(grp.start, grp.stop) for grp in _row_groups(g)])
    assert bool((aut.generators[:, fixed] == fixed).all())  # rows are never moved


@pytest.mark.parametrize(("name", "tracer"), PARAMS)
def test_random_automorphisms_preserve_the_function_in_float64(name, tracer):
    m, _, aut = _group(name, tracer)
    res = verify_automorphisms(m, aut, 4, _tokens(0), seed=1)
    assert res.verified and res.max_abs_diff < 1e-12
    x, gen = _tokens(2, batch=5), torch.Generator().manual_seed(3)
    for _ in range(3):
        perm = aut.random_element(generator=gen)
        assert symgraph.check_function_preservation(m, perm, x, graph=aut.graph) < 1e-12


@pytest.mark.parametrize(("name", "tracer"), PARAMS)
def test_swapping_two_read_rows_is_not_an_automorphism_and_changes_the_function(name, tracer):
    """Negative control: a permutation that treats positions (rows) as permutable is caught."""
    m, g, aut = _group(name, tracer)
    grp = _row_groups(g)[0]
    read = {  # a row the model reads and another row (read elsewhere, or never: token type 1)
        "position_ids": (0, 1),
        "arange_positions": (1, 3),
        "token_type_zeros": (0, 1),
        "repeated_rows": (0, 2),
        "input_positions": (2, 3),
    }
    a, b = (grp.start + r for r in read[name])
    perm = torch.arange(g.num_nodes)
    perm[a], perm[b] = b, a
    assert not aut.contains(perm)
    assert symgraph.check_function_preservation(m, perm, _tokens(0), graph=g) > 1e-6


@pytest.mark.parametrize(("name", "tracer"), [("position_ids", "export"), ("token_type_zeros", "fx")])
def test_unfixed_rows_give_a_larger_group_that_the_function_check_rejects(name, tracer, monkeypatch):
    """Negative control of the encoding: with the row nodes hidden (permutable), rows with the same wiring
    become interchangeable and the function check must see it."""
    add_nodes = GraphBuilder.add_nodes

    def unfixed(self, count, role, kind, name_, **kw):
        if role == "position" and kind == "embedding":
            role = "hidden"
        return add_nodes(self, count, role, kind, name_, **kw)

    monkeypatch.setattr(GraphBuilder, "add_nodes", unfixed)
    m, g, aut = _group(name, tracer)
    assert aut.order > math.factorial(D) * math.factorial(H)
    assert not verify_automorphisms(m, aut, 6, _tokens(0), seed=0).verified


def test_swapping_two_input_tokens_changes_the_function():
    """Sensitivity: the token vocabulary nodes are fixed for a reason."""
    m, g, _ = _group("token_type_zeros", "export")
    vocab = next(grp for grp in g.node_groups if grp.role == "input" and grp.kind == "token")
    perm = torch.arange(g.num_nodes)
    perm[vocab.start], perm[vocab.start + 2] = vocab.start + 2, vocab.start
    x = torch.zeros(2, T, dtype=torch.long)
    assert symgraph.check_function_preservation(m, perm, x, graph=g) > 1e-6


class _ParamIndex(nn.Module):
    """An index that depends on a parameter: permuting features could change it, so it must be refused."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.ones(1))
        self.emb = nn.Embedding(V + 1, D)

    def forward(self, x):
        return self.emb(x + (self.shift > 0).long())


class _FeatureIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.emb = nn.Embedding(V, D)

    def forward(self, x):
        return self.emb(self.fc(x).long().squeeze(-1))


def test_an_index_computed_with_parameters_is_refused_naming_the_op():
    with pytest.raises(UnsupportedModuleError, match="aten.gt"):
        symgraph.parameter_graph(_ParamIndex(), example_input=_tokens(0), tracer="export")
    with pytest.raises(UnsupportedModuleError, match="'long'"):
        symgraph.parameter_graph(_FeatureIndex(), example_input=torch.zeros(1, T, 2), tracer="fx")


class _IndexReadElsewhere(InputPositions):
    """The computed position ids also reach the output: the fusion must not swallow a value other ops read."""

    def forward(self, x):
        mask = x.ne(PAD).int()
        ids = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + PAD
        return self.head(self.word(x) + self.pos(ids)) + ids.unsqueeze(-1).to(self.fc2.weight.dtype)


def test_an_input_computed_index_read_by_other_ops_is_refused_naming_an_op():
    with pytest.raises(UnsupportedModuleError, match="aten.ne|aten.cumsum"):
        symgraph.parameter_graph(_IndexReadElsewhere().double(), example_input=_tokens(0), tracer="export")


@pytest.mark.parametrize("name", ["repeated_rows", "input_positions"])
def test_an_exported_graph_module_encodes_the_same_group_and_keeps_its_function(name):
    """The ATen GraphModule of ``ExportedProgram.module()`` (what a ``.pt2`` file loads as) goes through the
    same constant folding and index fusion."""
    m = _model(name)
    gm = torch.export.export(m, (_tokens(0),), strict=False).module()
    g = symgraph.parameter_graph(gm)
    aut = symgraph.automorphism_group(g)
    assert analytic_order(g) == aut.order == math.factorial(D) * math.factorial(H)
    back = g.to_state_dict()
    assert all(torch.equal(back[k], v) for k, v in gm.state_dict().items())
    res = verify_automorphisms(gm, aut, 3, _tokens(0), seed=0)
    assert res.verified and res.max_abs_diff < 1e-12


# ---------------------------------------------------------------------------------------------- Hugging Face
def _hf_row(name: str):
    pytest.importorskip("transformers")
    from symgraph.coverage import run_one

    row = run_one(f"hf:{name}", verify=2)
    assert row["status"] == "ok", row
    assert row["analytic_equal"] is True and row["control_caught"] is True
    assert row["max_output_change"] < 1e-12
    return row


@pytest.mark.slow
def test_hf_distilbert_position_embeddings_encode_soundly():
    _hf_row("distilbert")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta", "clip-vision", "whisper-encoder"])
def test_hf_models_with_position_and_token_type_embeddings_encode_soundly(name):
    _hf_row(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_hf_text_models_round_trip_bit_identically(name):
    pytest.importorskip("transformers")
    from symgraph.coverage import build

    m = build(f"hf:{name}")
    g = symgraph.parameter_graph(m)
    assert g.meta["tracer"] == "export"
    back = g.to_state_dict()
    assert all(torch.equal(back[k], v) for k, v in m.state_dict().items())


def _hf_classifier(name: str) -> nn.Module:
    T = pytest.importorskip("transformers")
    import warnings

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    small.update(max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = getattr(T, f"{name}Config")(**small)
        return getattr(T, f"{name}ForSequenceClassification")(cfg).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Bert", "Roberta"])
def test_hf_classifier_permutes_its_embedding_columns_and_keeps_its_rows_fixed(name):
    """With a classification head the residual stream (and so every embedding table's columns) is permuted
    by the group, unlike BertModel's whose stream is its output; two position rows swapped must be caught."""
    m = _hf_classifier(name)
    aut = symgraph.automorphism_group(m)
    g = aut.graph
    assert g.meta["tracer"] == "export" and analytic_order(g) == aut.order
    stream = [grp for grp in g.node_groups if grp.module.endswith("word_embeddings") and grp.role == "hidden"]
    assert len(stream) == 1
    x = torch.randint(2, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    res = verify_automorphisms(m, aut, 3, x, seed=0)
    assert res.verified and res.max_abs_diff < 1e-12
    moved = aut.generators[:, stream[0].start : stream[0].stop] != torch.arange(stream[0].start, stream[0].stop)
    assert bool(moved.any())  # the embedding features are permuted, not pinned by the outputs
    rows = next(grp for grp in _row_groups(g) if grp.module.endswith("position_embeddings"))
    first = 2 if name == "Roberta" else 0  # RoBERTa counts positions from padding_idx + 1
    perm = torch.arange(g.num_nodes)
    perm[rows.start + first], perm[rows.start + first + 1] = rows.start + first + 1, rows.start + first
    assert not aut.contains(perm)
    assert symgraph.check_function_preservation(m, perm, x, graph=g) > 1e-6


def test_auto_falls_back_to_export_when_an_encoder_refuses_an_op_of_the_fx_trace():
    """fx traces RoBERTa-style positions but no encoder takes ``ne``/``cumsum``; ``auto`` then encodes the
    export trace (which fuses them). Control: ``tracer="fx"`` still refuses, naming the op."""
    m = _model("input_positions")
    g = symgraph.parameter_graph(m, example_input=_tokens(0))
    assert g.meta["tracer"] == "export"
    assert all(torch.equal(g.to_state_dict()[k], v) for k, v in m.state_dict().items())
    with pytest.raises(UnsupportedModuleError):
        symgraph.parameter_graph(m, example_input=_tokens(0), tracer="fx")


def test_auto_reports_the_fx_refusal_when_export_refuses_too():
    class Both(nn.Module):  # ids computed with a parameter: refused by both front ends
        def __init__(self):
            super().__init__()
            self.pick = nn.Linear(T, T)
            self.pos = nn.Embedding(T, D)

        def forward(self, x):
            return self.pos(self.pick(x.double()).argmax(-1))

    with pytest.raises(UnsupportedModuleError) as fx_err:
        symgraph.parameter_graph(Both().double(), example_input=_tokens(0), tracer="fx")
    with pytest.raises(UnsupportedModuleError) as auto_err:
        symgraph.parameter_graph(Both().double(), example_input=_tokens(0))
    assert str(auto_err.value) == str(fx_err.value)


def test_permute_model_on_an_exported_graph_module_with_a_non_persistent_position_buffer():
    """``ExportedProgram.module()`` asks for its non-persistent ``position_ids`` in ``load_state_dict``
    though its ``state_dict`` leaves them out; ``permute_model`` keeps them. Control: a row swap (not an
    automorphism, applied with ``check=False``) changes the output of the same module."""
    m = _model("position_ids")
    gm = torch.export.export(m, (_tokens(0),), strict=False).module()
    assert "position_ids" not in gm.state_dict() and "position_ids" in dict(gm.named_buffers())
    aut = symgraph.automorphism_group(gm)
    x = _tokens(1)
    for seed in range(2):
        out = symgraph.permute_model(gm, aut.random_element(generator=torch.Generator().manual_seed(seed)), graph=aut)
        assert (out(x) - gm(x)).abs().max() <= 1e-12
    a = _row_groups(aut.graph)[0].start
    swap = torch.arange(aut.graph.num_nodes)
    swap[a], swap[a + 1] = a + 1, a
    assert not aut.contains(swap)
    bad = symgraph.permute_model(gm, swap, graph=aut, check=False)
    assert (bad(x) - gm(x)).abs().max() > 1e-6
