"""What input a model expects, read from the model itself: ``infer_example_input(model) -> InputGuess | None``.

Parameter graphs need an example input where shapes matter (convolutions, attention). Where the model says
what it takes, nobody should have to type it. The sources, in order:

1. the input this model's last parameter graph was built with (remembered on the instance, so that
   ``permute_model(cnn, aut.random_element())`` builds the same graph as ``automorphism_group(cnn, input_shape=s)``);
2. ``model.example_input_shape`` (and ``example_input_dtype``): symgraph's registry models and rebuilt
   ``sequential`` architectures;
3. Hugging Face ``model.config``: ``image_size`` and ``num_channels`` (vision), ``num_mel_bins`` (audio),
   else token ids of a short sequence (text);
4. timm: the patch embedding's ``img_size`` (models built with ``img_size=...``), else
   ``pretrained_cfg["input_size"]``;
5. torchvision: ``VisionTransformer.image_size``; 224 for Swin and MaxViT; 299 for Inception-v3; other
   classification CNNs (they pool adaptively, DenseNet in its forward) as in 6. below;
6. the first layer: ``nn.Linear`` -> ``(1, in_features)``; ``nn.Embedding`` -> token ids ``(1, 8)``; a
   convolution, when adaptive pooling comes before the head (so any size works): 64 per spatial axis
   (alternatives 128, 224, 299 are tried if that is too small for the model's strides).

Example
-------
>>> import torch.nn as nn
>>> cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
>>> guess = infer_example_input(cnn)
>>> guess.shape, guess.source
((1, 3, 64, 64), 'first layer Conv2d with adaptive pooling before the head')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["InputGuess", "infer_example_input", "remember_example_input", "REMEMBERED_ATTR"]

#: Instance attribute holding ``(shape, dtype or None)`` of the last explicitly given example input.
REMEMBERED_ATTR = "_symgraph_example_input"

#: Token-id sequence length for text models (short: the parameter graph does not depend on it).
TEXT_SEQ_LEN = 8

_ADAPTIVE = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_SIDES = (64, 128, 224, 299)


@dataclass(frozen=True)
class InputGuess:
    """An inferred example input: ``shape``, ``dtype`` (None: the model's floating dtype), where it came from,
    and larger ``alternatives`` to try when the first shape is too small for the model."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None
    source: str
    alternatives: tuple[tuple[int, ...], ...] = ()


def remember_example_input(model: nn.Module, x: torch.Tensor) -> None:
    """Remember ``x``'s shape (and its dtype if not floating) on ``model`` for later graph builds."""
    dtype = None if x.is_floating_point() else x.dtype
    try:
        object.__setattr__(model, REMEMBERED_ATTR, (tuple(int(s) for s in x.shape), dtype))
    except (AttributeError, TypeError):  # e.g. a ScriptModule or a class with __slots__: nothing to remember
        pass


def infer_example_input(model: nn.Module) -> InputGuess | None:
    """The example input ``model`` says it takes, or None (see the module docstring for the sources)."""
    remembered = getattr(model, REMEMBERED_ATTR, None)
    if remembered is not None:
        shape, dtype = remembered
        return InputGuess(tuple(shape), dtype, "the input its last parameter graph was built with")
    shape = getattr(model, "example_input_shape", None)
    if shape is not None:
        dtype = getattr(model, "example_input_dtype", None)
        return InputGuess(tuple(int(s) for s in shape), dtype, "example_input_shape")
    for probe in (_huggingface, _timm, _torchvision, _first_layer):
        guess = probe(model)
        if guess is not None:
            return guess
    return None


def _side(value) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _huggingface(model: nn.Module) -> InputGuess | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(config, "model_type"):
        return None
    hw = _side(getattr(config, "image_size", None))
    if hw is not None:
        channels = int(getattr(config, "num_channels", 3) or 3)
        source = f"Hugging Face config ({config.model_type}): image_size, num_channels"
        return InputGuess((1, channels) + hw, None, source)
    mels = getattr(config, "num_mel_bins", None)
    if isinstance(mels, int) and mels > 0:
        frames = getattr(config, "max_source_positions", None)
        length = 2 * int(frames) if isinstance(frames, int) and frames > 0 else 3000  # two frames per position
        return InputGuess((1, mels, length), None, f"Hugging Face config ({config.model_type}): num_mel_bins")
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        n = min(TEXT_SEQ_LEN, int(limit)) if isinstance(limit, int) and limit > 0 else TEXT_SEQ_LEN
        return InputGuess((1, n), torch.long, f"Hugging Face config ({config.model_type}): token ids")
    return None


def _timm(model: nn.Module) -> InputGuess | None:
    if not type(model).__module__.startswith("timm."):
        return None
    patch = getattr(model, "patch_embed", None)
    hw = _side(tuple(getattr(patch, "img_size", None) or ())) if patch is not None else None
    if hw is not None:
        proj = getattr(patch, "proj", None)
        channels = getattr(proj, "in_channels", None) or _cfg_size(model, 0) or 3
        return InputGuess((1, int(channels)) + hw, None, "timm patch embedding img_size")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, list | tuple) and all(isinstance(s, int) and s > 0 for s in size):
        return InputGuess((1,) + tuple(size), None, "timm pretrained_cfg['input_size']")
    return None


def _cfg_size(model: nn.Module, i: int) -> int | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[i]) if isinstance(size, list | tuple) and len(size) > i else None


def _torchvision(model: nn.Module) -> InputGuess | None:
    mod = type(model).__module__
    if not mod.startswith("torchvision.models"):
        return None
    name = type(model).__name__
    if name == "VisionTransformer" and isinstance(getattr(model, "image_size", None), int):
        s = int(model.image_size)
        return InputGuess((1, 3, s, s), None, "torchvision VisionTransformer.image_size")
    if name in ("SwinTransformer", "MaxVit"):
        return InputGuess((1, 3, 224, 224), None, f"torchvision {name}: 224 x 224")
    if name == "Inception3":
        return InputGuess((1, 3, 299, 299), None, "torchvision Inception3: 299 x 299")
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear,) + _CONVS)), None)
    if isinstance(first, _CONVS):  # the classification CNNs pool adaptively (DenseNet in its forward, no module)
        dims = len(first.kernel_size)
        shapes = [(1, first.in_channels) + (side,) * dims for side in _CONV_SIDES]
        return InputGuess(shapes[0], None, f"torchvision {name}: a small image", tuple(shapes[1:]))
    return None


def _first_layer(model: nn.Module) -> InputGuess | None:
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding) + _CONVS)), None)
    if isinstance(first, nn.Linear):
        return InputGuess((1, first.in_features), None, "first layer Linear")
    if isinstance(first, nn.Embedding):
        return InputGuess((1, TEXT_SEQ_LEN), torch.long, "first layer Embedding: token ids")
    if isinstance(first, _CONVS) and any(isinstance(m, _ADAPTIVE) for m in model.modules()):
        dims = len(first.kernel_size)
        shapes = [(1, first.in_channels) + (side,) * dims for side in _CONV_SIDES]
        source = f"first layer {type(first).__name__} with adaptive pooling before the head"
        return InputGuess(shapes[0], None, source, tuple(shapes[1:]))
    return None
