"""2D image INR datasets for weight-space editing (paper Sec. 4.2, E.2; tasks of Zhou et al., 2023a), offline.

Tasks (images in [0, 1], one grey channel, ``size x size`` pixels):

- ``dilate``: sklearn's 8x8 digits resized to ``size`` (bilinear); target = grey morphological dilation with a
  3x3 square (``scipy.ndimage.grey_dilation``). Stands in for Zhou et al.'s MNIST dilation.
- ``contrast``: random ``size x size`` crops of skimage's bundled greyscale images (downscaled 4x first so
  that crops hold structure); target = CLAHE (``skimage.exposure.equalize_adapthist``, clip limit 0.03).
  Stands in for Zhou et al.'s CIFAR-10 contrast task.

Each *input* image is fitted by a SIREN 2 -> 32 -> 32 -> 1 (omega0 = 30) on the pixel grid in [-1, 1]^2
(full-batch Adam, lr 5e-3 with cosine decay to 5e-5, 150 steps; :data:`IMAGE_FIT`; mean MSE ~2e-5), many at once
(:func:`gmn.inr.fit.fit_sirens`). The editing metanet sees only the INR weights; its loss compares the edited
INR's rendering with the target image.

The dataset is cached as one ``.pt`` per split (written atomically) under a folder; :func:`build` resumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fit import FitConfig, fit_sirens, init_siren_params
from .io import atomic_torch_save, load_checked

__all__ = ["TASKS", "IMAGE_FIT", "IMAGE_ARCH", "pixel_grid", "make_images", "build", "load"]

TASKS = ("dilate", "contrast")
IMAGE_FIT = FitConfig(steps=150, lr=5e-3, lr_decay_to=0.01)
IMAGE_ARCH = {"in_dim": 2, "hidden": (32, 32), "out_dim": 1, "omega0": 30.0}
_GREY_IMAGES = ("camera", "coins", "moon", "page", "text", "horse", "clock", "grass", "gravel", "brick")
_RGB_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def pixel_grid(size: int) -> torch.Tensor:
    """``[size*size, 2]`` pixel-centre coordinates in [-1, 1]^2, row-major (y, x)."""
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


def _digits(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    imgs = load_digits().images / 16.0
    idx = rng.permutation(len(imgs))[:n] if n <= len(imgs) else rng.integers(0, len(imgs), n)
    return np.stack([resize(imgs[i], (size, size), order=1, anti_aliasing=False) for i in idx]).clip(0, 1)


def _crops(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    import skimage.data as skd
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    pool = []
    for name in _GREY_IMAGES + _RGB_IMAGES:
        im = getattr(skd, name)()
        im = rgb2gray(im[..., :3]) if im.ndim == 3 else im.astype(np.float64) / (255.0 if im.max() > 1 else 1.0)
        pool.append(rescale(im, 0.25, anti_aliasing=True))
    out = np.empty((n, size, size))
    for i in range(n):
        im = pool[rng.integers(len(pool))]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out[i] = im[y : y + size, x : x + size]
    return out.clip(0, 1)


def make_images(task: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, each ``[n, size, size]`` float32 in [0, 1]."""
    from scipy.ndimage import grey_dilation
    from skimage.exposure import equalize_adapthist

    rng = np.random.default_rng(seed)
    if task == "dilate":
        x = _digits(n, size, rng)
        y = np.stack([grey_dilation(im, size=(3, 3)) for im in x])
    elif task == "contrast":
        x = _crops(n, size, rng)
        y = np.stack([equalize_adapthist(im, kernel_size=max(size // 4, 2), clip_limit=0.03) for im in x])
    else:
        raise ValueError(f"Expected a task in {TASKS} (got {task!r})")
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def build(
    root: str | Path,
    task: str,
    sizes: dict[str, int],
    size: int = 28,
    seed: int = 0,
    device: torch.device | str = "cpu",
    fit: FitConfig = IMAGE_FIT,
    progress: bool = True,
    chunk: int = 50,
) -> dict:
    """Make (or load) every split of ``task`` under ``root``: ``{split: {"params", "images", "targets", "mse"}}``."""
    root = Path(root)
    out = {}
    offsets = {"train": 0, "val": 1, "test": 2}
    for split, n in sizes.items():
        path = root / f"{task}_{split}_{n}_{size}px_seed{seed}.pt"
        if path.exists():
            out[split] = load_checked(path, "delete it to rebuild it")
            continue
        imgs, targets = make_images(task, n, size, seed * 10 + offsets[split])
        g = torch.Generator().manual_seed(seed * 10 + offsets[split])
        a = IMAGE_ARCH
        p0 = init_siren_params(n, a["in_dim"], a["hidden"], a["out_dim"], a["omega0"], generator=g, device=device)
        y = imgs.reshape(n, -1, 1).to(device)
        grid = pixel_grid(size).to(device)
        chunks = []  # chunks of `chunk` INRs: batched matmuls stay cache-sized on CPU
        for i in range(0, n, chunk):
            sl = slice(i, i + chunk)
            chunks.append(
                fit_sirens(
                    {k: v[sl] for k, v in p0.items()},
                    grid,
                    y[sl],
                    fit,
                    a["omega0"],
                    progress,
                    f"fit {task} {split} {i}/{n}",
                )
            )
        params = {k: torch.cat([c[0][k] for c in chunks]).cpu() for k in p0}
        mse = torch.cat([c[1] for c in chunks]).cpu()
        rec = {"params": params, "images": imgs, "targets": targets, "mse": mse}
        atomic_torch_save(rec, path)
        out[split] = rec
    return out


def load(root: str | Path, task: str, sizes: dict[str, int], size: int = 28, seed: int = 0) -> dict:
    """Load splits written by :func:`build` (raises ``FileNotFoundError`` naming the missing file)."""
    root = Path(root)
    out = {}
    for split, n in sizes.items():
        path = root / f"{task}_{split}_{n}_{size}px_seed{seed}.pt"
        if not path.exists():
            raise FileNotFoundError(f"Expected {path} (run the experiment once to build it)")
        out[split] = load_checked(path, "delete it to rebuild it")
    return out
