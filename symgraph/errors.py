"""Typed exceptions. Library code raises these; only CLIs turn them into one line and exit code 2."""

from __future__ import annotations

__all__ = [
    "SymgraphError",
    "UnsupportedModuleError",
    "ShapeMismatchError",
    "TraceError",
    "ModelLoadError",
    "TimeLimitError",
]


class SymgraphError(Exception):
    """Base class of every error symgraph raises on purpose."""


class UnsupportedModuleError(SymgraphError):
    """A module or operation has no encoder.

    The message names the module path, its type, and how to register an encoder for it.
    """

    def __init__(self, path: str, what: str, hint: str | None = None):
        self.path = path
        self.what = what
        msg = f"Unsupported module at '{path or '<root>'}': {what}."
        msg += " " + (
            hint
            or "Register an encoder for it with @symgraph.register_encoder(YourModuleType) "
            "(see README, 'Adding an encoder')."
        )
        super().__init__(msg)


class ShapeMismatchError(SymgraphError, ValueError):
    """Raised as 'Expected X (got Y)'."""

    def __init__(self, expected: str, got: str, where: str | None = None):
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}Expected {expected} (got {got})")


class TraceError(SymgraphError):
    """torch.fx could not trace a model (data-dependent control flow, unsupported op, ...)."""


class ModelLoadError(SymgraphError):
    """A model file could not be loaded safely."""


class TimeLimitError(SymgraphError):
    """A computation ran past its time limit; ``stage`` names where it was stopped (e.g. ``"nauty"``)."""

    def __init__(self, stage: str, limit: float, elapsed: float):
        self.stage = stage
        self.limit = float(limit)
        self.elapsed = float(elapsed)
        super().__init__(f"time limit of {limit:g} s reached during {stage} (stopped after {elapsed:.1f} s)")
