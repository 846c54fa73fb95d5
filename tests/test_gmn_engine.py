"""The GMN engine (gmn.fused, GMN engine options, chunked inference): same function as the autograd path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch_geometric.data import Batch

import gmn
import symgraph
from gmn.fused import Incidence, retain_freed_memory
from gmn.layers import ConcatMLP, GMNLayer

ROOT = Path(__file__).resolve().parents[1]


def _batch(dtype=torch.float64):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, k), nn.ReLU(), nn.Linear(k, 2)) for k in (4, 6)]
    models.append(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)))
    graphs = [symgraph.parameter_graph(m, input_shape=(1, 2, 5, 5) if i == 2 else None) for i, m in enumerate(models)]
    return Batch.from_data_list([gmn.graph_to_data(g, normalize="graph", dtype=dtype) for g in graphs])


def _autograd_twin(model: gmn.GMN) -> gmn.GMN:
    twin = copy.deepcopy(model)
    for layer in twin.layers:
        layer.fused = False
    return twin


def _max_gap(a: nn.Module, b: nn.Module, batch, chunk_a=None) -> tuple[float, float]:
    """Largest output and gradient differences of two models on one batch (float64)."""
    out_a, out_b = a(batch), b(batch)
    out_a, out_b = (out_a if isinstance(out_a, tuple) else (out_a,)), (out_b if isinstance(out_b, tuple) else (out_b,))
    sum(o.sum() for o in out_a).backward()
    sum(o.sum() for o in out_b).backward()
    gap_out = max(float((x - y).detach().abs().max()) for x, y in zip(out_a, out_b))
    gap_grad = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is None and pb.grad is None:
            continue
        ga = pa.grad if pa.grad is not None else torch.zeros_like(pa)
        gb = pb.grad if pb.grad is not None else torch.zeros_like(pb)
        if ga.numel():
            gap_grad = max(gap_grad, float((ga - gb).abs().max()))
    return gap_out, gap_grad


CONFIGS = [
    dict(),
    dict(use_global=False, pool=("edge",)),
    dict(aggr="mean", norm=None),
    dict(edge_out_dim=1, out_dim=2, global_reduce="sum"),
    dict(residual=False),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_fused_edge_block_equals_autograd_path_outputs_and_gradients_in_float64(kw):
    batch = _batch()
    torch.manual_seed(1)
    model = gmn.GMN(hidden_dim=8, num_layers=3, **kw).double()
    for p in model.parameters():  # non-trivial LayerNorm affine and biases
        p.data.add_(0.1 * torch.randn_like(p))
    assert model.layers[0]._fusable(torch.zeros(1, 8, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.float64))
    gap_out, gap_grad = _max_gap(model, _autograd_twin(model), batch)
    assert gap_out < 1e-12 and gap_grad < 1e-11


@pytest.mark.parametrize("kw", [dict(), dict(aggr="mean", norm=None, use_global=False, pool=("edge",))])
def test_edge_as_message_fused_equals_autograd_and_chunked_equals_unchunked(kw):
    """``message="edge"``: the fused path (sparse incidence sum) and the plain path agree in float64,
    gradients included, and chunked inference gives the same outputs."""
    batch = _batch()
    torch.manual_seed(1)
    model = gmn.GMN(hidden_dim=8, num_layers=3, message="edge", **kw).double()
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    assert model.layers[0].msg_fn is None and model.layers[0].node_fn.in_dim == 8 + 8 + model.global_dim
    gap_out, gap_grad = _max_gap(model, _autograd_twin(model), batch)
    assert gap_out < 1e-12 and gap_grad < 1e-11
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch), model(batch, chunk_size=7), atol=1e-12, rtol=0)
    # negative control: the other message kind is a different function (the comparison is not vacuous)
    torch.manual_seed(1)
    other = gmn.GMN(hidden_dim=8, num_layers=3, **kw).double().eval()
    with torch.no_grad():
        assert float((other(batch) - model(batch)).abs().max()) > 1e-6


def test_edge_as_message_is_invariant_to_automorphisms_and_sees_an_input_swap():
    torch.manual_seed(0)
    g = symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)))
    model = gmn.GMN(hidden_dim=8, num_layers=2, message="edge").double().eval()

    def run(graph):
        return model(Batch.from_data_list([gmn.graph_to_data(graph, dtype=torch.float64)]))

    out = run(g)
    gen = torch.Generator().manual_seed(2)
    gp = g.permute(symgraph.automorphism_group(g).random_element(generator=gen))
    assert not torch.equal(gp.edge_weight, g.edge_weight)
    assert float((run(gp) - out).abs().max()) < 1e-12
    perm = torch.arange(g.num_nodes)
    a, b = int(g.input_nodes[0]), int(g.input_nodes[1])
    perm[a], perm[b] = b, a
    assert float((run(g.permute(perm, check=False)) - out).abs().max()) > 1e-6


def test_edge_as_message_refuses_a_message_function():
    with pytest.raises(ValueError, match="no msg_fn"):
        GMNLayer(4, 4, message="edge", msg_fn=lambda *a: a[2])
    with pytest.raises(ValueError, match="message 'mlp' or 'edge'"):
        GMNLayer(4, 4, message="sum")


def test_equality_check_flags_a_broken_reformulation():
    """Negative control: dropping the ``deg * b2`` term of the node-level message layer is caught."""
    batch = _batch()
    torch.manual_seed(1)
    model = gmn.GMN(hidden_dim=8, num_layers=2).double()
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    twin = _autograd_twin(model)

    original = GMNLayer._fused_agg

    def broken(self, v, e, u, dst, inc, batch_, pairs, chunks):
        agg = original(self, v, e, u, dst, inc, batch_, pairs, chunks)
        deg = torch.bincount(dst, minlength=v.shape[0]).to(v.dtype)
        return agg - deg[:, None] * self.msg_fn.net[2].bias

    GMNLayer._fused_agg = broken
    try:
        gap_out, gap_grad = _max_gap(model, twin, batch)
    finally:
        GMNLayer._fused_agg = original
    assert gap_out > 1e-6 or gap_grad > 1e-6


def test_incidence_scatter_equals_index_add():
    torch.manual_seed(0)
    src, dst = torch.randint(0, 7, (40,)), torch.randint(0, 7, (40,))
    x = torch.randn(40, 3, dtype=torch.float64)
    inc = Incidence(src, dst, 9, torch.float64)
    for which, idx in (("dst", dst), ("src", src)):
        expect = torch.zeros(9, 3, dtype=torch.float64).index_add_(0, idx, x)
        assert torch.allclose(inc.scatter(x, which), expect, atol=1e-14)
    assert inc.matches(9, 40, torch.float64) and not inc.matches(9, 41, torch.float64)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_chunked_inference_equals_unchunked(fused, chunk):
    batch = _batch()
    torch.manual_seed(2)
    model = gmn.GMN(hidden_dim=8, num_layers=2, edge_out_dim=1, fused=fused).double().eval()
    with torch.no_grad():
        full = model(batch)
        parts = model(batch, chunk_size=chunk)
    for a, b in zip(full, parts):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_chunked_layer_with_custom_functions_and_inside_global_equals_unchunked():
    torch.manual_seed(0)
    layer = GMNLayer(
        4,
        3,
        2,
        order=("global", "node", "edge"),
        global_aggr="inside",
        aggr="mean",
        msg_fn=ConcatMLP(13, 6, 4, num_layers=3),
    ).double()
    v, e, u = torch.randn(6, 4).double(), torch.randn(9, 3).double(), torch.randn(2, 2).double()
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 3, 1], [1, 2, 0, 4, 5, 3, 2, 5, 0]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        full = layer(v, ei, e, u, batch)
        parts = layer(v, ei, e.clone(), u, batch, chunk_size=2, inplace=True)
    for a, b in zip(full, parts):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_chunked_processing_with_gradients_is_refused():
    model = gmn.GMN(hidden_dim=4, num_layers=1).double()
    with pytest.raises(ValueError, match="without gradients"):
        model(_batch(), chunk_size=4)


def test_activation_checkpointing_gives_the_same_gradients():
    batch = _batch()
    torch.manual_seed(3)
    model = gmn.GMN(hidden_dim=8, num_layers=2).double()
    ckpt = copy.deepcopy(model)
    ckpt.checkpoint = True
    gap_out, gap_grad = _max_gap(model, ckpt, batch)
    assert gap_out < 1e-12 and gap_grad < 1e-12


def test_bf16_autocast_is_close_to_float32_and_the_tolerance_catches_a_perturbed_model():
    batch = _batch(torch.float32)
    torch.manual_seed(4)
    model = gmn.GMN(hidden_dim=16, num_layers=2, out_dim=4)
    bf16 = copy.deepcopy(model)
    bf16.autocast_dtype = torch.bfloat16
    with torch.no_grad():
        ref, low = model(batch), bf16(batch)
        scale = float(ref.abs().max())
        assert low.dtype == torch.float32
        assert float((low - ref).abs().max()) < 0.05 * scale + 1e-3
        # negative control: the same tolerance rejects a model whose first layer is perturbed
        bad = copy.deepcopy(bf16)
        bad.layers[0].edge_fn.net[0].weight.add_(0.5)
        assert float((bad(batch) - ref).abs().max()) > 0.05 * scale + 1e-3


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    batch = _batch()
    model = gmn.GMN(hidden_dim=8, num_layers=2).double()
    with torch.no_grad():
        expect = model(batch)

    def failing(layer, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing)
    model.compile = True
    with pytest.warns(UserWarning, match="running eager"), torch.no_grad():
        out = model(batch)
    assert torch.equal(out, expect) and model.compile is False


def test_retain_freed_memory_reports_a_bool():
    assert isinstance(retain_freed_memory(64 << 20), bool)


def test_benchmark_rejects_an_unknown_model_with_one_error_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gmn_engine.py"), "--models", "bogus", "--workloads", "siren"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_benchmark_runs_both_models_on_a_tiny_workload_and_prints_json():
    import json

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gmn_engine.py"), "--workloads", "tiny", "--hidden", "8"]
        + ["--layers", "1", "--steps", "1", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {(r["model"], r["mode"]): r for r in report["rows"]}
    assert set(rows) == {("ref", "train"), ("gmn", "train"), ("ref", "infer"), ("gmn", "infer")}
    assert all("error" not in r and r["edges_per_second"] > 0 for r in rows.values())
    assert rows[("gmn", "train")]["flops_per_edge_layer"] < rows[("ref", "train")]["flops_per_edge_layer"]
    assert report["matmul_gflops"]["fp32"] > 0
