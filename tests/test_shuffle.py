"""Channel shuffle (ShuffleNet) and channel splits: random elements of the computed group keep the function
(float64, train and eval), nauty's order equals the declared one and an exact count, and negative controls
show that an encoding ignoring the shuffle, or the splits' declarations, is caught."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import symgraph
from symgraph.encoders.shuffle import GroupedChannels, shuffle_permutation
from symgraph.errors import UnsupportedModuleError
from symgraph.symmetry import analytic_order
from tests.strategies import perturbed_double, randomize_buffers

F64 = torch.float64


def channel_shuffle(x, groups: int):
    """torchvision's ``shufflenetv2.channel_shuffle``."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleBlocks(nn.Module):
    """A stem, then ShuffleNetV2 stride-1 blocks: chunk, a 1x1 / depthwise 3x3 / 1x1 branch on one half, concat,
    shuffle; a 1x1 conv head."""

    def __init__(self, c=4, blocks=2, groups=2, shuffle=True):
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.groups, self.shuffle = groups, shuffle
        h = c // 2
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(h, h, 1, bias=False),
                nn.BatchNorm2d(h),
                nn.ReLU(),
                nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False),
                nn.BatchNorm2d(h),
                nn.Conv2d(h, h, 1, bias=False),
                nn.BatchNorm2d(h),
                nn.ReLU(),
            )
            for _ in range(blocks)
        )
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for br in self.branches:
            x1, x2 = x.chunk(2, dim=1)
            x = torch.cat((x1, br(x2)), dim=1)
            if self.shuffle:
                x = channel_shuffle(x, self.groups)
        return self.head(x).mean((2, 3))


class Routed(nn.Module):
    """conv -> shuffle -> chunk: each half feeds a conv of its own (channels 0, 2 vs 1, 3 of the first conv)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = channel_shuffle(torch.tanh(self.a(x)), 2)
        p, q = y.chunk(2, dim=1)
        return torch.cat((self.b(p), torch.tanh(self.c(q))), dim=1).mean((2, 3))


class ShuffleTokens(nn.Module):
    """A channels-last shuffle of token features: (B, T, D) -> (B, T, g, D/g) -> transpose -> (B, T, D)."""

    def __init__(self, d=6, groups=2):
        super().__init__()
        self.a, self.b, self.groups = nn.Linear(3, d), nn.Linear(d // groups, 2), groups

    def forward(self, x):
        y = torch.relu(self.a(x))
        b, t, d = y.shape
        y = y.view(b, t, self.groups, d // self.groups).transpose(2, 3).reshape(b, t, d)
        return self.b(y.chunk(self.groups, dim=-1)[0])


def _prep(model, seed=0):
    return randomize_buffers(perturbed_double(model, seed), torch.Generator().manual_seed(seed))


def _worst(model, aut, x, n=6):
    gen = torch.Generator().manual_seed(0)
    return max(
        symgraph.check_function_preservation(model, aut.random_element(generator=gen), x, graph=aut) for _ in range(n)
    )


def test_shuffle_permutation_is_torchvisions_channel_shuffle():
    x = torch.randn(2, 12, 3, 3)
    for g in (2, 3, 4):
        assert torch.equal(channel_shuffle(x, g), x[:, shuffle_permutation(12, g)])


def _routed_order() -> int:
    # a's outputs 0, 2 (to b) and 1, 3 (to c): S_2 x S_2; b's and c's outputs are model outputs
    return math.factorial(2) ** 2


# (model, input shape, exact order). ShuffleBlocks(c=4, blocks=2): stem outputs [s0..s3]; block 1 keeps s0, s1
# and maps s2, s3 through its branch (hidden h1 = 2 channels, the 1x1 and depthwise tied: S_2; outputs o1 = 2);
# after the shuffle the stream is [s0, o1_0, s1, o1_1]; block 2 keeps s0, o1_0 and branches s1, o1_1 (S_2 on its
# hidden, outputs o2); the head reads [s0, o2_0, o1_0, o2_1]. Free: s0 alone, s1 alone, s2 <-> s3 (both into
# block 1's first 1x1: S_2), o1_0 alone, o1_1 alone, two hidden S_2, o2 S_2.
CASES = {
    "routed": (Routed, (3, 2, 4, 4), _routed_order()),
    "shuffle_blocks": (lambda: ShuffleBlocks(), (3, 2, 4, 4), 2**4),
    "shuffle_blocks_c8_g4": (lambda: ShuffleBlocks(c=8, blocks=2, groups=4), (2, 2, 3, 3), None),
    "shuffle_tokens": (ShuffleTokens, (3, 4, 3), math.factorial(3) * math.factorial(3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_automorphisms_of_shuffled_channels_keep_the_function_and_the_order_is_analytic(name):
    build, shape, expected = CASES[name]
    model = _prep(build())
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert _worst(model, aut, x) < 1e-10
    assert aut.order == analytic_order(aut.graph)
    if expected is not None:
        assert aut.order == expected


def test_the_shuffle_reindexes_nodes_without_new_ones():
    # the shuffle has no parameters and no nodes: the unshuffled model has the same node count
    model = _prep(ShuffleBlocks())
    a = symgraph.parameter_graph(model, input_shape=(1, 2, 4, 4))
    b = symgraph.parameter_graph(_prep(ShuffleBlocks(shuffle=False)), input_shape=(1, 2, 4, 4))
    assert a.num_nodes == b.num_nodes and a.num_edges == b.num_edges
    sd = a.to_state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_negative_control_ignoring_the_shuffle_is_caught(monkeypatch):
    # merge the split axes back in the unshuffled order: the graph is then that of the model without a shuffle,
    # and its automorphisms move channels the real routing keeps apart
    def naive(self, op, out):
        return symgraph.builder.Features(self.nodes.reshape(-1), tuple(out), self.first, None, 1)

    monkeypatch.setattr(GroupedChannels, "merged", naive)
    model = _prep(Routed())
    x = torch.randn(3, 2, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert _worst(model, aut, x) > 1e-6


def test_negative_control_chunks_without_their_declarations_overstate_the_order(monkeypatch):
    # without the pieces' "perm" declarations the first conv's S_4 stays whole: above nauty's exact order
    from symgraph import builder

    orig = builder.GraphBuilder.declare

    def declare(self, decl):
        if decl.label.startswith("piece "):
            return
        return orig(self, decl)

    monkeypatch.setattr(builder.GraphBuilder, "declare", declare)
    model = _prep(Routed())
    aut = symgraph.automorphism_group(model, input_shape=(1, 2, 4, 4))
    assert analytic_order(aut.graph) > aut.order == _routed_order()


class BadMerge(nn.Module):
    """Split channels, then transpose a split axis with a position axis before merging: not a channel shuffle."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = self.a(x).view(1, 2, 2, 2, 2).transpose(2, 3).reshape(1, 4, 2, 2)
        return self.b(y)


class SwappedPositions(nn.Module):
    """A shuffle whose transposes also swap H and W (equal sizes): the other axes are out of order."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 1, (1, 2))

    def forward(self, x):
        y = self.a(x).view(1, 2, 2, 3, 3).permute(0, 2, 1, 4, 3).reshape(1, 4, 3, 3)
        return self.b(y)


@pytest.mark.parametrize("cls", [BadMerge, SwappedPositions])
def test_other_reshapes_of_a_split_channel_axis_are_refused(cls):
    shape = (1, 2, 2, 2) if cls is BadMerge else (1, 2, 3, 3)
    with pytest.raises(UnsupportedModuleError, match="split channel axis"):
        symgraph.parameter_graph(cls(), input_shape=shape)


# ------------------------------------------------------------------ stride-2 blocks: depthwise convs of a mixed stream
def _dw(c, stride):
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pw(cin, cout):
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShuffleUnit(nn.Module):
    """torchvision's ``shufflenetv2.InvertedResidual``: branch1 = depthwise 3x3 (stride), 1x1; branch2 = 1x1,
    depthwise 3x3 (stride), 1x1. Stride 1: chunk, branch2 on one half; stride 2: both branches read the input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, h = stride, cout // 2
        self.branch1 = nn.Sequential(*_dw(cin, stride), *_pw(cin, h)) if stride > 1 else None
        self.branch2 = nn.Sequential(*_pw(cin if stride > 1 else h, h), *_dw(h, stride), *_pw(h, h))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class TinyShuffleNet(nn.Module):
    """stem, stride-2 unit, stride-1 unit, stride-2 unit, head: the second stride-2 unit's depthwise conv reads a
    stream whose channels come from several non-interchangeable sources."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.units = nn.Sequential(ShuffleUnit(4, 8, 2), ShuffleUnit(8, 8, 1), ShuffleUnit(8, 8, 2))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(self.units(torch.relu(self.stem(x)))).mean((2, 3))


class DepthwiseOfConcat(nn.Module):
    """A depthwise conv of cat(conv_a(x), conv_b(x)): its channels 0-1 and 2-4 are not interchangeable."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 1)
        self.dw, self.h = nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], 1)
        return self.h(torch.relu(self.dw(y))).mean((2, 3))


@pytest.mark.parametrize(
    "build,shape,expected",
    [(DepthwiseOfConcat, (3, 2, 5, 5), math.factorial(2) * math.factorial(3)), (TinyShuffleNet, (2, 2, 8, 8), None)],
)
def test_depthwise_conv_of_a_mixed_stream_keeps_the_function_and_the_order_is_analytic(build, shape, expected):
    model = _prep(build())
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    if expected is not None:
        assert aut.order == expected
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert _worst(model, aut, x) < 1e-10


def _declare_depthwise_as_blocks(monkeypatch):
    """The previous declaration of a depthwise conv: its channels as blocks (rows [in_i, out_i]) plus a singleton
    ``"perm"`` each, which lets rows of non-interchangeable input channels be swapped."""
    from symgraph import builder

    orig = builder.GraphBuilder.declare

    def declare(self, decl):
        if decl.kind == "tie" and decl.label.startswith("depthwise "):
            orig(self, builder.SymmetryDecl("blocks", torch.stack([decl.other, decl.nodes], 1), decl.label))
            for node in torch.cat([decl.nodes, decl.other]):
                orig(self, builder.SymmetryDecl("perm", node.view(1), decl.label))
            return None
        return orig(self, decl)

    monkeypatch.setattr(builder.GraphBuilder, "declare", declare)


@pytest.mark.parametrize("build,shape", [(DepthwiseOfConcat, (1, 2, 5, 5)), (TinyShuffleNet, (1, 2, 8, 8))])
def test_negative_control_depthwise_as_blocks_overstates_the_order(monkeypatch, build, shape):
    _declare_depthwise_as_blocks(monkeypatch)
    aut = symgraph.automorphism_group(_prep(build()), input_shape=shape)
    assert analytic_order(aut.graph) > aut.order


@pytest.mark.models
@pytest.mark.parametrize("arch", ["shufflenet_v2_x0_5"])
def test_torchvision_shufflenet_order_is_analytic_and_automorphisms_keep_the_function(arch):
    tv = pytest.importorskip("torchvision", reason="the models environment (make test-models) has torchvision")
    model = _prep(getattr(tv.models, arch)())
    x = torch.randn(2, 3, 64, 64, dtype=F64, generator=torch.Generator().manual_seed(1))
    aut = symgraph.automorphism_group(model, example_input=x[:1])
    assert aut.order == analytic_order(aut.graph)
    assert _worst(model.eval(), aut, x, n=2) < 1e-10
