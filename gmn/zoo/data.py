"""Image-classification data for model zoos, with no download.

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes), scaled to [0, 1], split 80/20
  with a fixed seed.
- ``cifar10:/path``: CIFAR-10 in its standard "python batches" format (``data_batch_1..5``, ``test_batch``)
  from a local directory. Those files are pickles; they are read with a restricted unpickler that only
  rebuilds dicts, lists, bytes and numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from symgraph.errors import ModelLoadError

__all__ = ["ImageData", "load_data"]


@dataclass(frozen=True)
class ImageData:
    name: str
    x_train: torch.Tensor  # [n, C, H, W] float32 in [0, 1]
    y_train: torch.Tensor  # [n] int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def _digits(seed: int = 0) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    return ImageData("digits", x[tr], y[tr], x[te], y[te], 10)


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(obj[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(obj[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise ModelLoadError(f"Expected a CIFAR-10 python batch at {path} (got {type(exc).__name__}: {exc})") from None
    if len(data) != len(labels):
        raise ModelLoadError(f"Expected as many labels as images in {path} (got {len(labels)} and {len(data)})")
    return data, labels


def _cifar10(root: str) -> ImageData:
    r = Path(root)
    if not r.is_dir():
        raise ModelLoadError(f"Expected a CIFAR-10 directory with data_batch_1..5 and test_batch (got {root!r})")
    train = sorted(r.glob("data_batch_*"))
    if not train or not (r / "test_batch").exists():
        names = sorted(p.name for p in r.iterdir())
        raise ModelLoadError(f"Expected data_batch_* and test_batch files in {root} (got {names})")
    xs, ys = zip(*(_read_batch(p) for p in train))
    xt, yt = _read_batch(r / "test_batch")

    def t(a):
        return torch.from_numpy(np.concatenate(a) if isinstance(a, tuple) else a).float() / 255.0

    return ImageData("cifar10", t(xs), torch.from_numpy(np.concatenate(ys)), t(xt), torch.from_numpy(yt), 10)


def load_data(spec: str = "digits", seed: int = 0) -> ImageData:
    """``"digits"`` or ``"cifar10:/path/to/cifar-10-batches-py"``."""
    if spec == "digits":
        return _digits(seed)
    if spec.startswith("cifar10:"):
        return _cifar10(spec.split(":", 1)[1])
    raise ModelLoadError(f"Expected data 'digits' or 'cifar10:/path' (got {spec!r})")
