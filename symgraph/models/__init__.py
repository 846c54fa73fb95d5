"""Model families of the paper (Table 5) and more, behind one registry.

>>> from symgraph.models import build_model, list_models
>>> model = build_model("cnn2d:hidden=8,conv_layers=1,norm=groupnorm")
>>> model.arch
('cnn2d', {'hidden': 8, 'conv_layers': 1, 'norm': 'groupnorm'})

Families: ``mlp``, ``cnn2d``, ``cnn1d``, ``deepsets``, ``resnet``, ``resnet50_like``, ``vit``, ``transformer``,
``grid_inr``, ``siren``. Every model has ``example_input_shape``.
"""

from .registry import build_model, format_arch, list_models, model_class, parse_arch, register_model  # noqa: I001
from . import cnn, deepsets, grid, mlp, resnet, siren, transformer, vit  # noqa: F401
from .cnn import CNN1D, CNN2D
from .deepsets import DeepSets, DeepSetsLayer
from .grid import GridINR, GridLookup
from .mlp import MLP
from .resnet import ResNet, resnet50_like
from .transformer import PreNormBlock, SelfAttention, Transformer
from .vit import ViT

__all__ = [
    "register_model",
    "build_model",
    "parse_arch",
    "format_arch",
    "list_models",
    "model_class",
    "MLP",
    "CNN2D",
    "CNN1D",
    "DeepSets",
    "DeepSetsLayer",
    "ResNet",
    "resnet50_like",
    "ViT",
    "Transformer",
    "PreNormBlock",
    "SelfAttention",
    "GridINR",
    "GridLookup",
]
