"""Atomic file writes for the INR datasets and results: thin names over :mod:`symgraph.cli_util`.

Readers see either the old file or the complete new one (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from symgraph.cli_util import atomic_torch_save, atomic_write

from ..io import load_checked

__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_bytes", "load_checked"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent directories created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``json.dump`` with indentation, atomically (parent directories created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
