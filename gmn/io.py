"""Reading gmn's own files back: checkpoints, shards and caches written with :func:`torch.save`.

Writes are atomic everywhere (:func:`symgraph.cli_util.atomic_torch_save`); reads go through
:func:`load_checked`, which turns an unreadable file into one clear error.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

import torch

__all__ = ["load_checked"]


def load_checked(path: str | os.PathLike, hint: str, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True, **kwargs)``; an unreadable file (truncated, not a torch file) is a
    ``ValueError`` naming it and ``hint`` (what to do), which the CLIs print as one line with exit code 2.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.pt")
    >>> _ = open(p, "wb").write(b"junk")
    >>> try:
    ...     load_checked(p, "delete it")
    ... except ValueError as e:
    ...     print(str(e).startswith("cannot read"), str(e).endswith("delete it"))
    True True
    """
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, struct.error) as exc:
        raise ValueError(f"cannot read {path} ({str(exc).splitlines()[0]}); {hint}") from exc
