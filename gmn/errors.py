"""Typed exceptions of gmn (subclasses of :class:`symgraph.errors.SymgraphError`: CLIs print them as one line)."""

from __future__ import annotations

from symgraph.errors import SymgraphError

__all__ = ["UnsupportedArchitectureError", "MetanetOutputError"]


class UnsupportedArchitectureError(SymgraphError):
    """A metanet cannot process this architecture (as the paper's tables mark with a dash).

    The message names the metanet, what it needs and what it got.
    """

    def __init__(self, baseline: str, needs: str, got: str):
        self.baseline, self.needs, self.got = baseline, needs, got
        super().__init__(f"{baseline} cannot process this architecture: expected {needs} (got {got})")


class MetanetOutputError(SymgraphError):
    """A metanet was asked for an output it does not have (e.g. ``edit`` of an invariant-only baseline).

    >>> str(MetanetOutputError("DeepSets", "edit", "an invariant output only"))
    'DeepSets has no edit output: expected a metanet with one (got an invariant output only)'
    """

    def __init__(self, metanet: str, output: str, got: str):
        self.metanet, self.output = metanet, output
        super().__init__(f"{metanet} has no {output} output: expected a metanet with one (got {got})")
