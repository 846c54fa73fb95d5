"""The small-CNN zoo of Unterthiner et al. (2020), used in the paper's Table 6, from a local directory.

That zoo stores, per image dataset, one row of flattened weights per network and one row of metrics:

- ``weights.npy``: float array [N, 4970] (for 1-channel inputs), Keras order: per layer the kernel
  (conv: [kh, kw, c_in, c_out], dense: [in, out]) then the bias;
- ``metrics.csv`` or ``metrics.csv.gz``: one row per network with a ``test_accuracy`` column;
- ``layout.csv`` (optional): one row per tensor with ``varname``, ``start_idx``, ``end_idx`` and ``shape``
  (e.g. ``"(3, 3, 1, 16)"``). Without it the standard layout below is assumed.

The architecture: three 3x3 convolutions with 16 channels and stride 2, global average pooling and a dense
layer to 10 classes (160 + 2320 + 2320 + 170 = 4970 parameters for 1 input channel). Only arrays are read
(``numpy.load(allow_pickle=False)``), never pickles. Weights are converted to PyTorch's layout
(conv [c_out, c_in, kh, kw], linear [out, in]) and returned as zoo records that :mod:`gmn.experiments.
accuracy_prediction` consumes like a generated zoo. ``SmallCNN`` is registered as ``smallcnn`` so that the
same protocol runs on a digits zoo generated with ``--family small-cnn``.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from symgraph.errors import ModelLoadError
from symgraph.models import register_model

__all__ = ["SmallCNN", "load_unterthiner", "standard_layout"]


@register_model("smallcnn")
class SmallCNN(nn.Module):
    """Unterthiner et al.'s small CNN: 3 x (Conv 3x3, stride 2) -> global average pool -> Linear."""

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        hidden: int = 16,
        out_dim: int = 10,
        activation: str = "relu",
        padding: int = 1,
    ):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"Expected activation 'relu' or 'tanh' (got {activation!r})")
        self.example_input_shape = (1, *in_shape)
        c = in_shape[0]
        layers = []
        for _ in range(3):
            layers += [nn.Conv2d(c, hidden, 3, stride=2, padding=padding), acts[activation]()]
            c = hidden
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def standard_layout(in_channels: int = 1, hidden: int = 16, classes: int = 10) -> list[tuple[str, tuple]]:
    """(torch state_dict key, Keras shape) in the order the flattened weights store them."""
    out = []
    c = in_channels
    for i in range(3):
        out += [(f"features.{2 * i}.weight", (3, 3, c, hidden)), (f"features.{2 * i}.bias", (hidden,))]
        c = hidden
    return out + [("fc.weight", (hidden, classes)), ("fc.bias", (classes,))]


def _read_layout(path: Path, in_channels: int) -> list[tuple[str, tuple]]:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows or not {"start_idx", "end_idx", "shape"} <= set(rows[0]):
        got = list(rows[0]) if rows else []
        raise ModelLoadError(f"Expected layout.csv columns varname,start_idx,end_idx,shape (got {got})")
    rows.sort(key=lambda r: int(r["start_idx"]))
    std = standard_layout(in_channels)
    if len(rows) != len(std):
        raise ModelLoadError(f"Expected {len(std)} tensors in layout.csv (got {len(rows)})")
    out = []
    for (key, _), r in zip(std, rows):
        shape = tuple(ast.literal_eval(r["shape"]))
        if int(r["end_idx"]) - int(r["start_idx"]) != int(np.prod(shape)):
            raise ModelLoadError(f"Expected {r.get('varname', key)} to span prod{shape} entries in layout.csv")
        out.append((key, shape))
    return out


def _read_metrics(root: Path) -> list[float]:
    if (root / "metrics.csv").exists():
        text = (root / "metrics.csv").read_text()
    elif (root / "metrics.csv.gz").exists():
        text = gzip.decompress((root / "metrics.csv.gz").read_bytes()).decode()
    else:
        raise ModelLoadError(f"Expected metrics.csv or metrics.csv.gz in {root}")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "test_accuracy" not in rows[0]:
        raise ModelLoadError(f"Expected a test_accuracy column in the metrics of {root}")
    return [float(r["test_accuracy"]) for r in rows]


def load_unterthiner(root: str | Path, limit: int | None = None, in_channels: int = 1) -> list[dict]:
    """Zoo records (arch ``smallcnn``, PyTorch state_dict, ``test_acc``) of a local Unterthiner et al. zoo."""
    root = Path(root)
    if not (root / "weights.npy").exists():
        raise ModelLoadError(f"Expected weights.npy in {root} (the small-CNN zoo's published arrays)")
    try:
        w = np.load(root / "weights.npy", allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"Expected a numeric weights.npy in {root} (got {type(exc).__name__}: {exc})") from None
    accs = _read_metrics(root)
    layout = (
        _read_layout(root / "layout.csv", in_channels)
        if (root / "layout.csv").exists()
        else standard_layout(in_channels)
    )
    total = sum(int(np.prod(s)) for _, s in layout)
    if w.ndim != 2 or w.shape[1] != total:
        raise ModelLoadError(f"Expected weights.npy of shape [N, {total}] (got {list(w.shape)})")
    if len(accs) != w.shape[0]:
        raise ModelLoadError(f"Expected one metrics row per network ({w.shape[0]}) (got {len(accs)})")
    n = w.shape[0] if limit is None else min(limit, w.shape[0])
    kwargs = {"in_shape": (in_channels, 32, 32), "hidden": 16, "out_dim": 10}
    records = []
    for i in range(n):
        row = torch.from_numpy(np.array(w[i], dtype=np.float32))
        sd, off = {}, 0
        for key, shape in layout:
            k = int(np.prod(shape))
            t = row[off : off + k].reshape(shape)
            off += k
            if t.dim() == 4:  # Keras conv [kh, kw, in, out] -> torch [out, in, kh, kw]
                t = t.permute(3, 2, 0, 1)
            elif t.dim() == 2:  # Keras dense [in, out] -> torch [out, in]
                t = t.t()
            sd[key] = t.contiguous()
        records.append(
            {
                "index": i,
                "arch": "smallcnn",
                "kwargs": dict(kwargs),
                "state_dict": sd,
                "test_acc": accs[i],
                "data": f"unterthiner:{root}",
            }
        )
    return records
