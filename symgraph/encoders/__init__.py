"""Built-in encoders, one file per layer family. Importing this package registers them all.

Where an encoder extends another one's targets (attention and embedding handle their own values and fall back
to the shape/activation encoders), it imports the module it extends first, so import order does not matter.
"""

from ..graph import declare_vocabulary
from . import (  # noqa: F401
    activation,
    attention,
    conv,
    deepsets,
    embedding,
    gating,
    grid,
    levit,
    linear,
    norm,
    pooling,
    residual,
    scalar,
    shape,
    shuffle,
    swin,
    token_mixing,
)

# what activation.py emits (new nodes for an elementwise op on a value used elsewhere); declared here until that
# module declares its own
declare_vocabulary(edges={"identity": ("elementwise",)}, node_kinds=("act",))

__all__ = [
    "activation",
    "attention",
    "conv",
    "deepsets",
    "embedding",
    "gating",
    "grid",
    "levit",
    "linear",
    "norm",
    "pooling",
    "residual",
    "scalar",
    "shape",
    "shuffle",
    "swin",
    "token_mixing",
]
