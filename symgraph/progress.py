"""Stages, progress lines and time limits of long computations (automorphism groups, verifications).

A :class:`Progress` is passed down the pipeline; every stage runs inside ``with progress.stage(name):``.

* **Time limit**: entering or leaving a stage, and :meth:`Progress.check` inside long loops, raise
  :class:`~symgraph.errors.TimeLimitError` naming the stage once the deadline has passed. Work that cannot
  be interrupted (nauty is one C call) asks :meth:`Progress.remaining` and runs where it can be killed
  (:func:`symgraph.automorphisms.nauty.layered_autgrp` forks a child process).
* **Progress lines**: when a stream is given, a background thread prints one line on it when a stage starts
  after the computation has run ``delay`` seconds, and again every ``every`` seconds while a stage lasts,
  e.g. ``... nauty: 412 vertices, 3 layers (6 s)``. Short computations print nothing.

Example
-------
>>> import io
>>> out = io.StringIO()
>>> with Progress(stream=out, delay=0.0) as p:
...     with p.stage("reductions", "10 vertices"):
...         pass
>>> out.getvalue().startswith("... reductions: 10 vertices")
True
>>> Progress(time_limit=0.0).check()
Traceback (most recent call last):
...
symgraph.errors.TimeLimitError: time limit of 0 s reached during setup (stopped after 0.0 s)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import IO

from .errors import TimeLimitError

__all__ = ["Progress"]


class Progress:
    """Current stage, deadline and (optional) progress lines of one computation.

    Parameters
    ----------
    time_limit : float, optional
        Seconds from construction after which :meth:`check` raises :class:`TimeLimitError`.
    stream : text stream, optional
        Where progress lines go (stderr in the CLIs); None prints nothing.
    delay : float
        Lines appear only once the computation has run this long (default 5 s).
    every : float
        A stage that lasts gets a new line this often (default 15 s).
    """

    def __init__(
        self, time_limit: float | None = None, stream: IO | None = None, delay: float = 5.0, every: float = 15.0
    ):
        if time_limit is not None and time_limit < 0:
            raise ValueError(f"Expected a time limit >= 0 seconds (got {time_limit})")
        self.time_limit = time_limit
        self.stream = stream
        self.delay = float(delay)
        self.every = float(every)
        self.start = time.monotonic()
        self.deadline = None if time_limit is None else self.start + float(time_limit)
        self.current = "setup"
        self.detail = ""
        self._stage_start = self.start
        self._printed_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ time limit
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None without a limit; may be <= 0)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> TimeLimitError:
        """The error to raise for the current stage (used by callers that stopped work themselves)."""
        return TimeLimitError(self.current, self.time_limit or 0.0, self.elapsed())

    def check(self) -> None:
        """Raise :class:`TimeLimitError` naming the current stage if the deadline has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise self.expired()

    # ------------------------------------------------------------------ stages
    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[Progress]:
        """Run the block as stage ``name`` (restoring the enclosing stage after); checks the deadline."""
        with self._lock:
            prev = (self.current, self.detail, self._stage_start)
            self.current, self.detail, self._stage_start = name, detail, time.monotonic()
            self._printed_at = None
        self.check()
        self._maybe_print()
        try:
            yield self
            self.check()
        finally:
            with self._lock:
                self.current, self.detail, self._stage_start = prev
                self._printed_at = time.monotonic()  # the enclosing stage was already shown (or is too short)

    def note(self, detail: str) -> None:
        """Replace the current stage's detail text (shown on its next line) and check the deadline."""
        with self._lock:
            self.detail = detail
        self.check()

    # ------------------------------------------------------------------ lines
    def _line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"... {self.current}{detail} ({self.elapsed():.0f} s)"

    def _maybe_print(self) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        with self._lock:
            due = now - self.start >= self.delay and (self._printed_at is None or now - self._printed_at >= self.every)
            if not due:
                return
            self._printed_at = now
            line = self._line()
        print(line, file=self.stream, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._maybe_print()

    def __enter__(self) -> Progress:
        if self.stream is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="symgraph-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
