"""Token mixing: an ``nn.Linear`` applied over a non-feature (token) axis, with the same weights for every
channel (MLP-Mixer's token MLP ``fc2(act(fc1(x.transpose(1, 2))))``, ResMLP's ``linear_tokens``).

A value ``x`` of shape ``(B, C, T)`` with its features (channels) on axis 1 and tokens on the last axis,
mapped by ``W [T', T]``: ``y[b, c, t'] = sum_t W[t', t] x[b, c, t] + bias[t']``. Every channel goes through the
same map, so a channel permutation commutes with it: the channels stay tied to the stream. The map's weights
live on a token subgraph of their own, attached to the layer:

- ``T`` fixed **input token positions** (role ``position``, one set per layer): parameter-free edges
  ``x[c] -> position[t]`` from every channel (colour ``("identity", "token_read")``);
- ``W[t', t]`` is the edge ``position[t] -> out[t']`` (colour ``("linear", "tokens")``), the bias one bias
  node with edges ``bias[t']`` (colour ``("bias", "tokens")``), in ``W``'s flat order (``to_state_dict`` exact);
- ``out`` are fixed **output token positions** when the result goes back into the stream (tokens are
  positions of the stream, fixed by the input image: never permuted), with parameter-free edges
  ``out[t'] -> y[c]`` to new channel nodes ``y`` (kind ``tokens``) and an edge ``x[c] -> y[c]`` per channel
  (colour ``("identity", "token_channel")``) that ties ``y`` to ``x``;
- or **hidden token units** (role ``hidden``, kind ``linear``) when the result feeds another token-axis
  linear layer through elementwise ops only (MLP-Mixer's ``fc1 -> act -> dropout -> fc2``; looked up in the
  traced ops): the activation is recorded on these units, and the next layer's weights leave from them. The
  value in between is a :class:`TokenHidden`, which only the encoders of this module accept, so no other
  encoder can read those units' axis as fixed positions.

Why this is sound: the hidden units of a token MLP are twins (same edges from the fixed input positions,
the same bias node, the same edges into the fixed output positions): permuting them permutes ``W1``'s rows,
``b1`` and ``W2``'s columns together, which keeps the function. They are joined to their own layer's fixed
positions, so they can never move to another layer, and two layers' token MLPs can never be swapped. The
channel nodes ``y`` are tied to ``x`` by the per-channel edges.

Analytic symmetry: ``S_{T'}`` on each hidden token layer (a ``"perm"``), and a tie between ``x`` and ``y``.

Example
-------
>>> import torch, torch.nn as nn, symgraph
>>> class TokenMLP(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.embed, self.fc1, self.fc2 = nn.Linear(3, 2), nn.Linear(4, 5), nn.Linear(5, 4)
...         self.head = nn.Linear(2, 1)
...     def forward(self, x):  # x: (B, T=4, 3)
...         x = self.embed(x)
...         return self.head(x + self.fc2(torch.relu(self.fc1(x.transpose(1, 2)))).transpose(1, 2))
>>> aut = symgraph.automorphism_group(TokenMLP(), input_shape=(1, 4, 3))
>>> aut.order == 2 * 120  # the two channels (tied along the stream) and the five hidden token units
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..activations import ACTIVATION_MODULES, ACTIVATIONS, activation_for_target, module_activation_key
from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError, UnsupportedModuleError
from ..graph import declare_vocabulary
from ..registry import encoder_for_function, register_encoder, register_function
from ..trace import Ref, split_kwargs
from . import activation as _activation
from . import linear as _linear

declare_vocabulary(
    edges={"linear": ("tokens",), "bias": ("tokens",), "identity": ("token_read", "token_write", "token_channel")},
    node_kinds=("tokens", "linear", "position"),
)

__all__ = ["TokenHidden", "encode_token_linear"]


@dataclass(frozen=True)
class TokenHidden:
    """A value whose token axis is the hidden units of a token MLP (``tokens``), on the channels of
    ``stream`` (the value the token MLP reads, whose channel nodes it keeps). Only this module's encoders
    accept it (every other one refuses a value that is not ``Features``)."""

    stream: Features
    tokens: torch.Tensor
    shape: tuple[int, ...]


#: modules and functions that may stand between two token-axis linear layers (elementwise, one user)
_DROPOUTS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _users(spec, name: str) -> list:
    """The ops of ``spec`` that read the value ``name``."""

    def reads(a) -> bool:
        if isinstance(a, Ref):
            return a.name == name
        if isinstance(a, tuple | list):
            return any(reads(v) for v in a)
        if isinstance(a, slice):
            return reads(a.start) or reads(a.stop) or reads(a.step)
        return False

    return [o for o in spec.ops if reads(o.args) or reads(o.kwargs)]


def _feeds_token_linear(ctx, name: str) -> bool:
    """Whether the value ``name`` reaches an ``nn.Linear`` as its input through single-use elementwise ops only
    (then its token axis is that layer's input: hidden units)."""
    model = ctx.model
    while True:
        users = _users(ctx.spec, name)
        if len(users) != 1:
            return False
        u = users[0]
        if not u.args or u.args[0] != Ref(name):
            return False
        if u.op == "call_module":
            m = model.get_submodule(u.target)
            if isinstance(m, nn.Linear):
                return True
            if not (isinstance(m, _DROPOUTS) or module_activation_key(m) is not None):
                return False
        elif u.op in ("call_function", "call_method"):
            if activation_for_target(u.target) is None:
                return False
        else:
            return False
        name = u.name


def _token_sources(ctx, x) -> tuple[Features, torch.Tensor]:
    """(the stream, the nodes of the input token axis): a :class:`TokenHidden`'s units, or new fixed input
    positions read from every channel of ``x``."""
    if isinstance(x, TokenHidden):
        return x.stream, x.tokens
    b = ctx.builder
    T = int(x.shape[-1])
    path = ctx.module_path()
    pos = b.add_nodes(
        T, "position", "position", f"{path} input token positions", module=path, level=b.level_of(x.nodes) + 1
    )
    C = x.size
    ctx.identity_edges(x.nodes.repeat_interleave(T), pos.repeat(C), ("identity", "token_read"))
    return x, pos


def encode_token_linear(ctx, op, module: nn.Linear, x) -> Features | TokenHidden:
    """``module`` applied over the last axis of ``x`` (a :class:`TokenHidden` or features on another axis)."""
    b = ctx.builder
    path = op.target
    if isinstance(x, Features):
        x = ctx.materialize(x)
        rank = len(x.shape)
        if rank < 3 or x.axis % rank == 0:
            raise ShapeMismatchError("features on the last axis for nn.Linear", f"axis {x.axis}", ctx.where())
        if x.num_pos != 1:
            raise UnsupportedModuleError(path, "a linear layer over the tokens of a flattened value")
        if torch.unique(x.nodes).numel() != x.size:
            raise UnsupportedModuleError(path, "a linear layer over the tokens of a value with repeated channels")
    stream, src = _token_sources(ctx, x)
    n_out, n_in = module.weight.shape
    if src.numel() != n_in:
        raise ShapeMismatchError(f"{n_in} tokens for nn.Linear over the token axis", f"{src.numel()}", ctx.where())
    level = b.level_of(src) + 1
    hidden = _feeds_token_linear(ctx, op.name)
    if hidden:
        out = b.add_nodes(n_out, "hidden", "linear", f"{path} hidden token units", module=path, level=level)
        b.declare(SymmetryDecl("perm", out, f"S_{n_out} on {path} hidden token units", module=path))
    else:
        out = b.add_nodes(n_out, "position", "position", f"{path} output token positions", module=path, level=level)
    b.add_dense(src, out, b.edge_color(("linear", "tokens")), module.weight, f"{path}.weight")
    if module.bias is not None:
        _linear.add_bias(ctx, out, module.bias, f"{path}.bias", "tokens")
    if hidden:
        return TokenHidden(stream, out, tuple(op.shape))
    C = stream.size
    y = ctx.new_hidden(C, "tokens", f"{path} outputs (token mixing)", out)
    ctx.identity_edges(out.repeat_interleave(C), y.repeat(n_out), ("identity", "token_write"))
    ctx.identity_edges(stream.nodes, y, ("identity", "token_channel"))
    b.declare(SymmetryDecl("tie", stream.nodes, f"token mixing at {path}", other=y, module=path))
    return Features(y, tuple(op.shape), stream.axis % len(stream.shape), None, 1, owned=op.num_users == 1)


def _is_token_axis(x) -> bool:
    if isinstance(x, TokenHidden):
        return True
    return isinstance(x, Features) and x.axis % len(x.shape) != len(x.shape) - 1


@register_encoder(nn.Linear, reads_ops=True)
def encode_linear_any_axis(ctx, op, module: nn.Linear, args):
    """``nn.Linear`` on the feature axis (:func:`symgraph.encoders.linear.encode_linear`) or over the tokens."""
    if _is_token_axis(args[0]):
        return encode_token_linear(ctx, op, module, args[0])
    return _linear.encode_linear(ctx, op, module, args)


def _on_tokens(ctx, op, x: TokenHidden, act: str) -> TokenHidden:
    """An elementwise op on the hidden token units: recorded on them (the chain has one user per step)."""
    if op.num_users != 1:
        raise UnsupportedModuleError(op.name, "a hidden token-mixing value used more than once")
    ctx.builder.add_activation(x.tokens, act)
    return dataclasses.replace(x, shape=tuple(op.shape))


@register_encoder(*ACTIVATION_MODULES)
def encode_activation_module(ctx, op, module, args):
    if isinstance(args[0], TokenHidden):
        return _on_tokens(ctx, op, args[0], module_activation_key(module))
    return _activation.encode_activation_module(ctx, op, module, args)


def _wrap_function(act, previous):
    def enc(ctx, op, module, args):
        if args and isinstance(args[0], TokenHidden):
            a, kw = split_kwargs(args)
            return _on_tokens(ctx, op, a[0], act.key(tuple(a[1:]), kw))
        return previous(ctx, op, module, args)

    return enc


for _act in ACTIVATIONS.values():
    for _t in _act.targets:
        register_function(_t)(_wrap_function(_act, encoder_for_function(_t)))
