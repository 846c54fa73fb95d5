"""``nn.Conv1d/2d/3d``: one node per output channel, parallel edges per kernel position (paper Fig. 3).

``W[o, i, *k]`` is the edge ``in_channel(g * in_per_group + i) -> out_channel(o)`` (``g`` the group of
``o``), coloured by the kernel position ``k`` *and* the layer's stride, padding, dilation, groups and padding
mode, so that convolutions differing in any of them never give the same coloured graph, and by the structural
ops of its input (``Features.ops``: a conv after a max-pool is not the same layer as one without it). Grouped
convolutions only connect channels within a group.

Analytic symmetry: output channels may be permuted (S_out) when groups == 1; a depthwise convolution
(groups == in == out channels) ties each output channel to its input channel; otherwise, with groups > 1,
channels are permuted within groups and groups as wholes (the groups of the next layer constrain this further).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import ConvSettings, EdgeKey, declare_vocabulary
from ..registry import register_encoder
from .linear import add_bias

declare_vocabulary(edges={"conv": ("conv1d", "conv2d", "conv3d")}, node_kinds=("conv1d", "conv2d", "conv3d"))


def _conv_settings(module: nn.Module) -> ConvSettings:
    pad = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return ConvSettings(
        tuple(module.kernel_size),
        tuple(module.stride),
        pad,
        tuple(module.dilation),
        module.groups,
        module.padding_mode,
    )


@register_encoder(nn.Conv1d, nn.Conv2d, nn.Conv3d, reads_ops=True)
def encode_conv(ctx, op, module, args):
    ndim = (
        {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(module)]
        if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        else len(module.kernel_size)
    )
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedModuleError(op.target, "transposed convolutions are not encoded yet")
    x = ctx.features(args[0], axis=1)
    b = ctx.builder
    w = module.weight
    c_out, c_in_g = w.shape[:2]
    groups = module.groups
    if x.axis != 1 or x.num_pos != 1:
        raise ShapeMismatchError(
            f"a channels-first input for {type(module).__name__}", f"features on axis {x.axis}", ctx.where()
        )
    if x.size != c_in_g * groups:
        raise ShapeMismatchError(f"{c_in_g * groups} input channels", f"{x.size}", ctx.where())
    kind = f"conv{ndim}d"
    out = ctx.new_hidden(c_out, kind, f"{op.target} output channels", x.nodes)
    st = _conv_settings(module)
    kpos = list(itertools.product(*[range(k) for k in module.kernel_size]))
    keys = [EdgeKey("conv", kind, st, kernel=(st.kernel_size, k), after=x.ops) for k in kpos]
    lut = b.edge_colors(keys)
    K = len(kpos)
    out_per_g = c_out // groups
    # flat order of W: (o, i, k)
    o = torch.arange(c_out)
    src_ch = (o // out_per_g).view(c_out, 1) * c_in_g + torch.arange(c_in_g).view(1, c_in_g)  # [c_out, c_in_g]
    src_nodes = x.nodes[src_ch]  # [c_out, c_in_g]

    def fill(s, d, c):
        s.view(c_out, c_in_g, K).copy_(src_nodes.view(c_out, c_in_g, 1).expand(c_out, c_in_g, K))
        d.view(c_out, c_in_g, K).copy_(out.view(c_out, 1, 1).expand(c_out, c_in_g, K))
        c.view(c_out, c_in_g, K).copy_(lut.view(1, 1, K).expand(c_out, c_in_g, K))

    b.add_edge_block(w.numel(), fill, w, f"{op.target}.weight")
    if module.bias is not None:
        add_bias(ctx, out, module.bias, f"{op.target}.bias", kind)
    if groups == 1:
        b.declare(SymmetryDecl("perm", out, f"S_{c_out} on {op.target} output channels", module=op.target))
    elif c_in_g == 1 and out_per_g == 1:
        # depthwise: output channel i moves exactly with input channel i, so a tie, not a block structure (whose
        # rows could be swapped even when the input channels come from streams that are not interchangeable,
        # e.g. a depthwise conv of cat(conv_a(x), conv_b(x)) or of ShuffleNet's shuffled stream)
        b.declare(SymmetryDecl("tie", out, f"depthwise {op.target} output channels", x.nodes, module=op.target))
    else:
        # a group swap must move the group's input channels with its output channels (row = both); within a
        # group, input channels and output channels permute freely
        in_rows = x.nodes.view(groups, c_in_g)
        b.declare(
            SymmetryDecl(
                "blocks",
                torch.cat([in_rows, out.view(groups, out_per_g)], dim=1),
                f"groups of {op.target} output channels",
                module=op.target,
            )
        )
        for gi in range(groups):
            b.declare(
                SymmetryDecl(
                    "perm",
                    out[gi * out_per_g : (gi + 1) * out_per_g],
                    f"S_{out_per_g} within group {gi} of {op.target}",
                    module=op.target,
                )
            )
            b.declare(
                SymmetryDecl(
                    "perm", in_rows[gi], f"S_{c_in_g} within input group {gi} of {op.target}", module=op.target
                )
            )
    return Features(out, op.shape, axis=1, owned=op.num_users == 1)
