"""Architecture and hyperparameter distributions of the paper's Table 5 (appendix E.1).

``sample_config(family, index, seed)`` draws one network's architecture (a registered ``symgraph.models``
name + kwargs) and training hyperparameters, deterministically from ``(seed, index)``. Families:

- ``diverse``: uniformly one of CNN2D, CNN1D, DeepSets, ResNet, ViT (the "Diverse Architectures" zoo);
- ``varying-cnn``: CNN2D only (the "Varying CNNs" zoo);
- ``small-cnn``: the fixed small CNN of Unterthiner et al. (Table 6 setting), varying only its activation
  and the training hyperparameters.

The smallest hidden dimension of each architecture (CNNs 24, DeepSets 32, ResNet 16, ViT 32) is what the
OOD split trains on (E.1.2); ``config["hidden"]`` records it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

__all__ = ["NetConfig", "sample_config", "hidden_of", "FAMILIES", "SMALLEST_HIDDEN"]

SMALLEST_HIDDEN = {"cnn2d": 24, "cnn1d": 24, "deepsets": 32, "resnet": 16, "vit": 32, "smallcnn": 16}
FAMILIES = {
    "diverse": ["cnn2d", "cnn1d", "deepsets", "resnet", "vit"],
    "varying-cnn": ["cnn2d"],
    "small-cnn": ["smallcnn"],
}


@dataclass(frozen=True)
class NetConfig:
    index: int
    arch: str
    kwargs: tuple  # sorted (key, value) pairs: hashable, JSON-able via dict()
    lr: float
    weight_decay: float
    label_smoothing: float
    optimizer: str
    seed: int

    @property
    def hidden(self) -> int:
        return hidden_of(dict(self.kwargs))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kwargs"] = dict(self.kwargs)
        return d

    def group_key(self) -> tuple:
        """Networks with equal keys are trained together: same parameter shapes (dropout rates and
        optimizers may differ within a group)."""
        return (self.arch, tuple((k, v) for k, v in self.kwargs if k != "dropout"))


def _arch(rng: random.Random, name: str, image_shape, num_classes: int) -> dict:
    """kwargs of the registered ``symgraph.models`` builders (their names and defaults)."""
    c, h, w = image_shape
    drop = round(rng.uniform(0, 0.25), 3)
    base = {"in_shape": (c, h, w), "out_dim": num_classes}
    if name in ("cnn2d", "cnn1d"):
        return dict(
            base,
            hidden=rng.choice([24, 28, 32]),
            conv_layers=rng.choice([1, 2, 3]),
            linear_layers=rng.choice([1, 2]),
            norm=rng.choice(["batchnorm", "groupnorm"]),
            dropout=drop,
            kernel=3 if name == "cnn2d" else 9,
        )
    if name == "deepsets":
        return dict(
            base,
            hidden=rng.choice([32, 64]),
            layers=rng.choice([2, 3, 4]),
            linear_layers=rng.choice([1, 2]),
            norm=rng.choice(["batchnorm", "groupnorm"]),
            dropout=drop,
        )
    if name == "resnet":
        # Table 5's "# blocks" as one stage of that many basic blocks at the hidden width (keeps the parameter
        # count in the paper's range, < 90k); BatchNorm, no dropout
        return dict(base, hidden=rng.choice([16, 32]), blocks=(rng.choice([2, 3, 4]),), norm="batchnorm")
    if name == "smallcnn":
        return dict(base, hidden=16, activation=rng.choice(["relu", "tanh"]))
    if name == "vit":
        return dict(
            base, dim=rng.choice([32, 48]), depth=rng.choice([2, 3]), heads=2, dropout=drop, patch=2 if h <= 8 else 4
        )
    raise ValueError(f"Expected an architecture in {sorted(SMALLEST_HIDDEN)} (got {name!r})")


def hidden_of(kwargs: dict) -> int:
    """The 'hidden dimension' of Table 5 (ViT calls it ``dim``)."""
    return int(kwargs["hidden"] if "hidden" in kwargs else kwargs["dim"])


def sample_config(family: str, index: int, seed: int, image_shape=(1, 8, 8), num_classes: int = 10) -> NetConfig:
    """The ``index``-th network of a zoo: architecture + Table 5 hyperparameters (deterministic)."""
    if family not in FAMILIES:
        raise ValueError(f"Expected a family in {sorted(FAMILIES)} (got {family!r})")
    rng = random.Random(f"{family}:{seed}:{index}")
    name = rng.choice(FAMILIES[family])
    kw = _arch(rng, name, image_shape, num_classes)
    return NetConfig(
        index=index,
        arch=name,
        kwargs=tuple(sorted(kw.items())),
        lr=10 ** -rng.uniform(1, 3),
        weight_decay=10 ** -rng.uniform(2, 5),
        label_smoothing=rng.uniform(0, 0.2),
        optimizer=rng.choice(["sgd", "adam", "rmsprop"]),
        seed=rng.randrange(2**31),
    )
