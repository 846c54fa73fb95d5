"""Shared helpers of the figure modules: deterministic models, atomic saving, skip notes.

Every figure is drawn from objects symgraph builds (models, their graphs, groups); nothing is hand-placed.
A figure module exposes ``NAME`` (``"fig2"``), ``STEM`` (the file name without extension), ``TITLE``,
and ``make(notes: list[str]) -> Figure`` (``notes`` collects one line per remark the CLI prints).

Example
-------
>>> import matplotlib; matplotlib.use("Agg")
>>> import matplotlib.pyplot as plt, tempfile
>>> fig, _ = plt.subplots()
>>> paths = save_figure(fig, "demo", tempfile.mkdtemp(), ("png",))
>>> paths[0].endswith("demo.png")
True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import torch

__all__ = ["save_figure", "seeded", "DEFAULT_OUT", "FORMATS"]

#: Where ``python -m figures`` writes by default (PNGs there are committed; SVGs are gitignored).
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
FORMATS = ("png", "svg")


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Deterministic model initialisation without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(
    fig, stem: str, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS, dpi: int = 150
) -> list[str]:
    """Write ``fig`` as ``out_dir/stem.<fmt>`` for each format, atomically (temp file, then os.replace).

    A render error leaves neither a partial target nor the temp file behind: the old file, if any, stays.
    SVGs get a fixed hash salt and no date, so reruns give identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        fmt = fmt.strip().lower()
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"Expected a format among png, svg, pdf (got {fmt!r})")
        target = out / f"{stem}.{fmt}"
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{fmt}.tmp", dir=out)
        os.close(fd)
        try:
            meta = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else None)
            with matplotlib.rc_context({"svg.hashsalt": "symgraph"}):
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        written.append(str(target))
    return written
