"""Command-line pieces shared by the experiment modules (on top of :mod:`symgraph.cli_util`'s contract:
bad input is one ``error: ...`` line and exit code 2)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from symgraph.cli_util import CLIError

C = TypeVar("C")

__all__ = ["comma_list", "int_list", "print_result", "with_overrides"]


def comma_list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; :class:`CLIError` naming the option if a name is not in ``allowed``.

    >>> comma_list("gmn, mlp", ("gmn", "mlp", "npnfn"), "--methods")
    ['gmn', 'mlp']
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise CLIError(f"{option}: Expected a comma-separated subset of {','.join(allowed)} (got {text!r})")
    return names


def int_list(text: str, option: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; :class:`CLIError` naming the option otherwise.

    >>> int_list("0, 2", "--seeds")
    [0, 2]
    """
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out:
        raise CLIError(f"{option}: Expected comma-separated integers, e.g. 0,1,2 (got {text!r})")
    return out


def print_result(res: dict, as_json: bool, summary: str) -> None:
    """The whole result as one JSON object (``--json``), else its ``table`` and a summary line."""
    if as_json:
        print(json.dumps(res))
    else:
        print(res["table"])
        print(summary)
    sys.stdout.flush()


def with_overrides(cfg: C, **overrides) -> C:
    """A scale's frozen config with the options the user gave (``None``: not given, keep the scale's value).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     epochs: int = 5
    ...     lr: float = 1e-3
    >>> with_overrides(Cfg(), epochs=None, lr=0.1)
    Cfg(epochs=5, lr=0.1)
    """
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
