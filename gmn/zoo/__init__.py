"""Model zoos generated offline: Table 5 architectures trained with vmap, sharded and resumable."""

from .data import ImageData, load_data
from .families import NetConfig, sample_config
from .generate import generate_zoo, load_zoo
from .splits import make_split
from .train_many import HParams, train_group

__all__ = [
    "ImageData",
    "load_data",
    "NetConfig",
    "sample_config",
    "generate_zoo",
    "load_zoo",
    "make_split",
    "HParams",
    "train_group",
]
