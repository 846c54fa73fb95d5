"""``torchvision:`` and ``timm:`` architectures (the models environment: ``make test-models``).

Each test writes a state_dict of a randomly initialised library model, loads it back through
``load_model``/the CLI with the architecture named, and checks weights, the inferred input and the group.
Nothing may touch the network: socket connections and torch.hub downloads fail the test.
"""

from __future__ import annotations

import math
import socket

import pytest
import torch

import symgraph
from symgraph.automorphisms.__main__ import main
from symgraph.errors import ModelLoadError
from symgraph.input_shapes import infer_example_input
from symgraph.io import load_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tv():
    return pytest.importorskip("torchvision", reason="the models environment (make test-models) has torchvision")


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm", reason="the models environment (make test-models) has timm")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network access was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _run(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_torchvision_resnet18_state_dict_loads_with_inferred_input_and_verifies(capsys, tmp_path, tv):
    torch.manual_seed(0)
    ref = tv.models.resnet18(num_classes=10).eval()
    p = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), p)
    model, info = load_model(p, arch="torchvision:resnet18:num_classes=10")
    assert type(model).__name__ == "ResNet" and _same_weights(model, ref)
    guess = infer_example_input(model)
    assert guess.shape == (1, 3, 64, 64) and "torchvision" in guess.source  # the small-image guess (dafd1b5)
    code, out, err = _run(capsys, [str(p), "--arch", "torchvision:resnet18:num_classes=10", "--verify", "1", "--json"])
    assert code == 0, err
    import json

    d = json.loads(out)
    assert d["verified"] and d["input_shape"] == [1, 3, 64, 64]
    assert abs(d["log10_order"] - 5934.4926) < 1e-3  # the registry's resnet18-shaped value (README)


def test_torchvision_input_defaults_for_vit_swin_and_inception(tv):
    vit = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    assert infer_example_input(vit).shape == (1, 3, 32, 32)
    assert symgraph.parameter_graph(vit).spec.input_shape == (1, 3, 32, 32)
    swin = tv.models.swin_t(weights=None, num_classes=3)
    assert infer_example_input(swin).shape == (1, 3, 224, 224)
    inception = tv.models.inception_v3(weights=None, init_weights=False, aux_logits=False, num_classes=3)
    assert infer_example_input(inception).shape == (1, 3, 299, 299)


def test_timm_model_with_orig_mod_prefix_loads_and_says_so(capsys, tmp_path, timm):
    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", pretrained=False).eval()
    p = tmp_path / "w.pt"
    torch.save({"_orig_mod." + k: v for k, v in ref.state_dict().items()}, p)
    model, info = load_model(p, arch="timm:test_resnet")
    assert _same_weights(model, ref) and any("_orig_mod." in n for n in info.notes)
    code, out, err = _run(capsys, [str(p), "--arch", "timm:test_resnet", "--verify", "1"])
    assert code == 0, err
    assert "note:       stripped the key prefix '_orig_mod.'" in out
    assert "input:      1x3x160x160 (inferred: timm pretrained_cfg['input_size'])" in out
    assert "passed" in out


def test_timm_img_size_option_sets_the_inferred_input(timm):
    m = symgraph.io.build_arch("timm:vit_tiny_patch16_224:depth=1,img_size=32,num_classes=10")
    guess = infer_example_input(m)
    assert guess.shape == (1, 3, 32, 32) and "img_size" in guess.source
    g = symgraph.parameter_graph(m)
    assert g.spec.input_shape == (1, 3, 32, 32)


def test_permute_model_reuses_the_shape_the_group_was_computed_with(tv, timm):
    """Issue 21 item 3: no ShapeMismatchError when the shape is not passed again."""
    torch.manual_seed(0)
    cnn = tv.models.resnet18(num_classes=4).eval()
    aut = symgraph.automorphism_group(cnn, input_shape=(1, 3, 32, 32))
    perm = aut.random_element(torch.Generator().manual_seed(0))
    permuted = symgraph.permute_model(cnn, perm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert float((permuted(x) - cnn(x)).abs().max()) < 1e-4
    assert symgraph.check_function_preservation(cnn, perm, x, graph=aut) < 1e-9


@pytest.mark.parametrize(
    "arch, needle",
    [
        ("torchvision:resnet18:weights=IMAGENET1K_V1", "would load pretrained weights"),
        ("timm:resnet18:pretrained=true", "would load pretrained weights"),
        ("timm:hf-hub:timm/resnet18.a1_in1k", "would fetch"),
        ("timm:resnet18:checkpoint_path=x.pth", "would load pretrained weights"),
        ("torchvision:resnet1800", "did you mean resnet18"),
        ("timm:resnet1800", "Expected a timm model name"),
        ("torchvision:resnet18:no_such_option=3", "torchvision could not build it"),
    ],
)
def test_downloads_and_unknown_names_are_refused_in_one_line(capsys, arch, needle, tv, timm):
    with pytest.raises(ModelLoadError) as ei:
        symgraph.io.build_arch(arch)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    code, _, err = _run(capsys, ["--example", arch])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_malicious_pickle_never_runs_with_torchvision_or_timm_arch(capsys, tmp_path, tv, timm):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil()}, evil)
    for arch in ("torchvision:resnet18", "timm:test_resnet"):
        code, _, err = _run(capsys, [str(evil), "--arch", arch])
        assert code == 2 and "arbitrary code" in err
    assert not marker.exists()
    _run(capsys, [str(evil), "--arch", "timm:test_resnet", "--trust"])  # negative control
    assert marker.exists()


def _branch_model(tv, name: str):
    """Random init with random BatchNorm statistics and affine parameters (torchvision's own init leaves every
    BatchNorm the identity and gives outputs near the fc bias, where a wrong permutation hardly shows)."""
    from tests.strategies import randomize_buffers

    torch.manual_seed(0)
    if name == "googlenet":
        m = tv.models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=10)
        shape = (1, 3, 64, 64)
    else:
        m = tv.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=10)
        shape = (1, 3, 75, 75)  # the smallest input Inception-v3 takes
    return randomize_buffers(m.double(), torch.Generator().manual_seed(0)).eval(), shape


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_inception_branches_are_sound_and_the_order_is_analytic(tv, name):
    """Issue 20 item 3: branch 1 (1x1 conv) and branch 4 (max-pool, then 1x1 conv) of every Inception block are
    no longer interchangeable: nauty's order is the analytic one and a random automorphism keeps the function
    (float64, eval mode). GoogLeNet at 64x64: ~15 s for the group, ~10 s per check; Inception-v3 at 75x75:
    ~60 s and ~35 s (2 cores, one thread)."""
    from symgraph.symmetry import analytic_order

    model, shape = _branch_model(tv, name)
    torch.set_num_threads(1)
    aut = symgraph.automorphism_group(model, input_shape=shape)
    assert aut.order == analytic_order(aut.graph)
    perm = aut.random_element(torch.Generator().manual_seed(0))
    assert int((perm != torch.arange(perm.numel())).sum()) > 1000  # it moves thousands of channels
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert symgraph.check_function_preservation(model, perm, x, graph=aut, modes=("eval",)) < 1e-10 * _scale(model, x)


def _scale(model, x) -> float:
    with torch.no_grad():
        return float(model(x).abs().max())


def test_negative_control_googlenet_with_the_old_passthrough_pooling_is_unsound(tv, monkeypatch):
    """The same check catches the old encoding (pooling as shape bookkeeping: the structural ops dropped)."""
    from symgraph.encoders import pooling, shape
    from symgraph.symmetry import analytic_order

    def old(original):
        return lambda ctx, op, x, record, axis=None, lazy=True, **kw: original(ctx, op, x, None, axis, False, **kw)

    monkeypatch.setattr(shape, "then", old(shape.then))
    monkeypatch.setattr(pooling, "then", old(pooling.then))
    model, shp = _branch_model(tv, "googlenet")
    torch.set_num_threads(1)
    aut = symgraph.automorphism_group(model, input_shape=shp)
    assert aut.log10_order > math.log10(analytic_order(aut.graph)) + 100  # issue 20: 10^13647.7 vs 10^13018.1
    x = torch.randn(2, *shp[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    perm = aut.random_element(torch.Generator().manual_seed(0))
    # relative: torchvision's init (std 0.01) gives outputs of order 1e-7
    assert symgraph.check_function_preservation(model, perm, x, graph=aut, modes=("eval",)) > 1e-4 * _scale(model, x)


def test_torchvision_densenet_input_is_inferred_though_it_pools_in_its_forward(tv):
    # DenseNet pools adaptively with F.adaptive_avg_pool2d (no module): the torchvision rule still applies
    guess = infer_example_input(tv.models.densenet121(weights=None))
    assert guess is not None and guess.shape == (1, 3, 64, 64) and "torchvision" in guess.source
