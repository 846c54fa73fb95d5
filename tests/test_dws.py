"""DWSNets-like baseline: equivariance of each layer and of the stack to hidden-neuron permutations (float64),
completeness of the layer's basis against a brute-force commutant dimension, invariance of the encoder, and
the negative controls (input/output neurons are not symmetries; a broken layer fails the same checker)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

import symgraph
from gmn import WeightSpaceBatch
from gmn.baselines import DWSLinear, DWSNet, DWSSpec, UnsupportedArchitectureError
from gmn.baselines.dws import from_blocks, to_blocks
from gmn.inr.encoders import ENCODERS, build_encoder
from symgraph.models.siren import SIREN
from symgraph.symmetry import random_analytic_permutation

F64 = torch.float64
SIREN_SIZES = (1, 32, 32, 1)


# ---------------------------------------------------------------------------------------------- helpers
def _params(sizes, batch=3, channels=None, seed=0, prefix="layers", bias=True) -> dict[str, torch.Tensor]:
    """Random stacked MLP parameters ``{layers.i.weight: [B, d_i+1, d_i(, c)], layers.i.bias: [B, d_i+1(, c)]}``."""
    g = torch.Generator().manual_seed(seed)
    tail = () if channels is None else (channels,)
    out = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"{prefix}.{i}.weight"] = torch.randn(batch, b, a, *tail, generator=g, dtype=F64)
        if bias:
            out[f"{prefix}.{i}.bias"] = torch.randn(batch, b, *tail, generator=g, dtype=F64)
    return out


def _permute(params, perms: dict[int, torch.Tensor], prefix="layers") -> dict[str, torch.Tensor]:
    """Apply neuron permutations ``perms[h]`` (neuron set h; 0 inputs, L outputs): W_l rows/cols, b_l rows."""
    out = dict(params)
    i = 0
    while f"{prefix}.{i}.weight" in params:
        W = params[f"{prefix}.{i}.weight"]
        if i + 1 in perms:
            W = W[:, perms[i + 1]]
        if i in perms:
            W = W[:, :, perms[i]]
        out[f"{prefix}.{i}.weight"] = W
        bkey = f"{prefix}.{i}.bias"
        if bkey in params:
            out[bkey] = params[bkey][:, perms[i + 1]] if i + 1 in perms else params[bkey]
        i += 1
    return out


def _hidden_perms(sizes, seed) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {h: torch.randperm(sizes[h], generator=g) for h in range(1, len(sizes) - 1)}


def _batch(*graphs):
    return WeightSpaceBatch.from_graphs(graphs, dtype=F64)


def _diff(a, b) -> float:
    if isinstance(a, dict):
        return max(float((a[k] - b[k]).detach().abs().max()) for k in a)
    return float((a - b).detach().abs().max())


def equivariance_error(fn, params, perms, invariant=False) -> float:
    """``max |fn(perm . p) - perm . fn(p)|`` (``invariant``: ``max |fn(perm . p) - fn(p)|``)."""
    out, out_p = fn(params), fn(_permute(params, perms))
    return _diff(out_p, out if invariant else _permute(out, perms))


def _layer_fn(spec, layer, channels):
    def fn(p):
        like = {k: (v if channels is None else v[..., 0]) for k, v in p.items()}
        return from_blocks(spec, layer(to_blocks(spec, p, 1 if channels is None else channels)), like)

    return fn


ARCHS = {
    "siren": SIREN_SIZES,
    "mlp4": (3, 4, 5, 2),
    "deep": (2, 3, 4, 3, 2),
    "one_hidden": (2, 5, 1),
}


# ---------------------------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("channels", [None, 3])
def test_each_dws_layer_is_equivariant_to_random_hidden_neuron_permutations(arch, channels, tol):
    sizes = ARCHS[arch]
    spec = DWSSpec.from_sizes(sizes)
    torch.manual_seed(0)
    layer = DWSLinear(spec, 1 if channels is None else channels, 4).double()
    fn = _layer_fn(spec, layer, channels)
    p = _params(sizes, channels=channels)
    for seed in range(3):
        perms = _hidden_perms(sizes, seed)
        assert equivariance_error(fn, p, perms) < tol[F64]
        assert equivariance_error(fn, p, perms, invariant=True) > 1e-6  # not vacuous: the output does move


@pytest.mark.parametrize("bias", [True, False])
def test_dws_stack_is_equivariant_and_encoder_is_invariant(bias, tol):
    sizes = (3, 4, 5, 2)
    spec = DWSSpec.from_sizes(sizes, bias=bias)
    torch.manual_seed(1)
    model = DWSNet(spec, hidden_dim=6, num_layers=3, out_dim=4).double().eval()
    p = _params(sizes, bias=bias)
    for seed in range(3):
        perms = _hidden_perms(sizes, seed)
        assert equivariance_error(model.forward_equivariant, p, perms) < tol[F64]
        assert equivariance_error(model.forward_params, p, perms, invariant=True) < tol[F64]


def test_dws_encoder_is_invariant_under_the_automorphisms_of_the_siren_parameter_graph(tol):
    """Cross-check with symgraph's own symmetry (not this file's permutation helper)."""
    net = SIREN(1, (8, 6), 1).double()
    g = symgraph.parameter_graph(net)
    torch.manual_seed(2)
    model = DWSNet(g, hidden_dim=5, num_layers=2, out_dim=3).double().eval()
    out = model(_batch(g))
    for seed in range(3):
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        assert g.is_automorphism(perm)
        assert _diff(model(_batch(g.permute(perm))), out) < tol[F64]


def test_dws_handles_cnn_chains_with_kernel_and_flatten_positions_folded_into_channels(tol):
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    g = symgraph.parameter_graph(cnn.double(), input_shape=(1, 2, 6, 6))
    spec = DWSSpec.from_graph(g)
    assert [b.fold for b in spec.blocks] == [2 * 9, 1, 1, 1, 2 * 16, 2]
    torch.manual_seed(3)
    model = DWSNet(g, hidden_dim=4, num_layers=2, out_dim=2).double().eval()
    feats = model.forward_equivariant({k: v.unsqueeze(0) for k, v in cnn.state_dict().items()})
    assert {k: tuple(v.shape[1:-1]) for k, v in feats.items()} == {
        k: tuple(v.shape) for k, v in cnn.state_dict().items()
    }
    for seed in range(2):
        perm = random_analytic_permutation(g, torch.Generator().manual_seed(seed))
        assert _diff(model(_batch(g.permute(perm))), model(_batch(g))) < tol[F64]


# ---------------------------------------------------------------------------------------------- completeness
def _flat_perm(sizes, perms) -> torch.Tensor:
    """The permutation of the flattened parameter vector induced by neuron permutations."""
    idx = _params(sizes, batch=1)
    n = sum(v.numel() for v in idx.values())
    flat = torch.arange(n, dtype=F64)
    pos, off = {}, 0
    for k, v in idx.items():
        pos[k] = flat[off : off + v.numel()].view(v.shape)
        off += v.numel()
    moved = _permute(pos, perms)
    return torch.cat([moved[k].reshape(-1) for k in idx]).long()


def _group_elements(sizes):
    hidden = range(1, len(sizes) - 1)
    for choice in itertools.product(*(itertools.permutations(range(sizes[h])) for h in hidden)):
        yield _flat_perm(sizes, {h: torch.tensor(c) for h, c in zip(hidden, choice)})


def _as_matrix(spec, layer, sizes) -> torch.Tensor:
    """The layer's linear part as an ``[n, n]`` matrix on flattened parameters (affine offset removed)."""
    like = _params(sizes, batch=1)
    n = sum(v.numel() for v in like.values())
    eye, off, basis = torch.eye(n, dtype=F64), 0, {}
    for k, v in like.items():
        basis[k] = eye[:, off : off + v.numel()].reshape(n, *v.shape[1:])
        off += v.numel()
    zero = {k: torch.zeros_like(v[:1]) for k, v in basis.items()}
    flat = lambda p: torch.cat(
        [from_blocks(spec, layer(to_blocks(spec, p)), p)[k].reshape(p[k].shape[0], -1) for k in p], 1
    )  # noqa: E731
    return (flat(basis) - flat(zero)).T  # column j = image of basis vector j


@pytest.mark.parametrize("sizes", [(2, 2, 3, 1), (2, 3, 2), (1, 2, 2, 2, 1)])
def test_dws_layer_spans_the_whole_commutant_of_the_hidden_permutation_group(sizes):
    """Brute-force oracle: dim of equivariant linear maps = mean over G of fix(g)^2 (Burnside on pairs)."""
    spec = DWSSpec.from_sizes(sizes)
    elems = list(_group_elements(sizes))
    n = elems[0].numel()
    fixes = torch.tensor([float((e == torch.arange(n)).sum()) for e in elems], dtype=F64)
    dim_commutant = round(float((fixes**2).mean()))
    dim_invariant = round(float(fixes.mean()))
    layer = DWSLinear(spec, 1, 1).double()
    weights = [p for name, p in layer.named_parameters() if not name.endswith("bias")]
    mats = []
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        for w in weights:
            for j in range(w.numel()):
                w.view(-1)[j] = 1.0
                M = _as_matrix(spec, layer, sizes)
                for e in elems:  # every basis element commutes with every group element
                    assert torch.equal(M[e][:, e], M)
                mats.append(M.reshape(-1))
                w.view(-1)[j] = 0.0
    assert torch.linalg.matrix_rank(torch.stack(mats)) == dim_commutant
    # affine offsets: the learned biases span exactly the invariant vectors
    offsets = []
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                for j in range(p.numel()):
                    p.view(-1)[j] = 1.0
                    z = {k: torch.zeros_like(v) for k, v in _params(sizes, batch=1).items()}
                    out = from_blocks(spec, layer(to_blocks(spec, z)), z)
                    offsets.append(torch.cat([v.reshape(-1) for v in out.values()]))
                    p.view(-1)[j] = 0.0
    assert torch.linalg.matrix_rank(torch.stack(offsets)) == dim_invariant


# ---------------------------------------------------------------------------------------------- negative controls
def test_permuting_input_or_output_neurons_or_one_side_of_a_hidden_layer_changes_the_embedding():
    sizes = (3, 4, 5, 2)
    torch.manual_seed(4)
    model = DWSNet(DWSSpec.from_sizes(sizes), hidden_dim=6, num_layers=2, out_dim=4).double().eval()
    p = _params(sizes)
    swap = lambda n: torch.tensor([1, 0, *range(2, n)])  # noqa: E731
    fn = model.forward_params
    assert equivariance_error(fn, p, {0: swap(3)}, invariant=True) > 1e-6  # input neurons: no symmetry
    assert equivariance_error(fn, p, {3: swap(2)}, invariant=True) > 1e-6  # output neurons: no symmetry
    one_side = dict(p, **{"layers.0.weight": p["layers.0.weight"][:, swap(4)]})  # rows of W_1 without W_2 cols
    assert _diff(fn(one_side), fn(p)) > 1e-6


class _BrokenDWSLinear(DWSLinear):
    """Adds ``b'_1 += M b_1`` with a full learned ``M`` over the hidden index: not equivariant."""

    def __init__(self, spec, c_in, c_out, width):
        super().__init__(spec, c_in, c_out)
        self.mix = nn.Parameter(torch.randn(width, width))

    def forward(self, xs):
        out = super().forward(xs)
        out[1] = out[1] + torch.einsum("ij,bjc->bic", self.mix, xs[1])[..., :1]
        return out


def test_equivariance_checker_flags_a_layer_that_mixes_hidden_neurons_with_a_full_matrix(tol):
    sizes = (3, 4, 5, 2)
    spec = DWSSpec.from_sizes(sizes)
    torch.manual_seed(5)
    good = DWSLinear(spec, 1, 2).double()
    broken = _BrokenDWSLinear(spec, 1, 2, width=4).double()
    broken.load_state_dict(good.state_dict(), strict=False)
    p = _params(sizes)
    perms = _hidden_perms(sizes, 0)
    assert equivariance_error(_layer_fn(spec, good, None), p, perms) < tol[F64]
    assert equivariance_error(_layer_fn(spec, broken, None), p, perms) > 1e-3


# ---------------------------------------------------------------------------------------------- encoder, params
def test_build_encoder_dws_on_a_siren_gives_invariant_embeddings(tol):
    assert "dws" in ENCODERS
    net = SIREN(1, (32, 32), 1)
    enc = build_encoder("dws", symgraph.parameter_graph(net), embed_dim=7, hidden_dim=8, num_layers=2).double()
    enc.eval()
    p = _params(SIREN_SIZES, batch=4)
    out = enc(p)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    assert _diff(enc(_permute(p, _hidden_perms(SIREN_SIZES, 1))), out) < tol[F64]


def test_parameter_count_grows_with_hidden_dim_and_not_with_the_input_networks_widths():
    counts = {
        h: DWSNet(DWSSpec.from_sizes(SIREN_SIZES), hidden_dim=h, num_layers=3).num_parameters for h in (8, 16, 32)
    }
    assert counts[8] < counts[16] < counts[32]
    narrow = DWSNet(DWSSpec.from_sizes((1, 8, 16, 1)), hidden_dim=16, num_layers=3).num_parameters
    assert narrow == counts[16]
    assert f"params={counts[16]}" in repr(DWSNet(DWSSpec.from_sizes(SIREN_SIZES), hidden_dim=16, num_layers=3))


def test_one_model_processes_networks_of_other_hidden_widths_and_graph_lists_match_dicts(tol):
    torch.manual_seed(6)
    model = DWSNet(DWSSpec.from_sizes(SIREN_SIZES), hidden_dim=4, num_layers=2, out_dim=3).double().eval()
    assert model.forward_params(_params((1, 8, 16, 1))).shape == (3, 3)
    nets = [SIREN(1, (32, 32), 1).double() for _ in range(2)]
    graphs = [symgraph.parameter_graph(n) for n in nets]
    stacked = {k: torch.stack([n.state_dict()[k] for n in nets]) for k in nets[0].state_dict()}
    assert _diff(model(_batch(*graphs)), model.forward_params(stacked)) < tol[F64]
    assert _diff(model(_batch(*graphs[::-1])), model.forward_params(stacked)) > 1e-6  # negative control: order


def test_non_chain_architectures_raise_unsupported_architecture_naming_dwsnets():
    from symgraph.models import build_model

    m = build_model("resnet", in_shape=(2, 6, 6), hidden=4, norm="none")
    g = symgraph.parameter_graph(m, input_shape=m.example_input_shape)
    with pytest.raises(UnsupportedArchitectureError, match="DWSNets"):
        DWSNet(g)


def test_dws_encoder_learns_a_permutation_invariant_target_in_a_few_steps():
    sizes = (1, 8, 8, 1)
    torch.manual_seed(7)
    p = _params(sizes, batch=64, seed=7)
    p = {k: v.float() for k, v in p.items()}
    y = (p["layers.1.weight"] ** 2).mean(dim=(1, 2)) + p["layers.0.bias"].mean(1)  # invariant target
    y = ((y - y.mean()) / y.std()).unsqueeze(1)
    model = DWSNet(DWSSpec.from_sizes(sizes), hidden_dim=16, num_layers=2, out_dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = ((model.forward_params(p) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    assert math.isfinite(losses[-1])
