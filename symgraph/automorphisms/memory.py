"""Freed heap memory handed back to the operating system between the large passes of a group computation.

glibc's allocator keeps freed blocks of its heap (arrays below its mmap threshold, which rises to 32 MB as
large arrays are freed) for reuse instead of returning them, so after a graph build or a chunked pass over
tens of millions of edges the process holds hundreds of MB it no longer uses, under the next pass's peak.
``malloc_trim(0)`` returns the free pages of every arena (about 50 ms on a fragmented heap of 200 MB); the
reductions call :func:`trim_heap` at their few large steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim_heap"]


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
    except OSError:
        return None
    fn = getattr(libc, "malloc_trim", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return the allocator's free heap pages to the operating system; True if some were released.

    A no-op (False) where the C library has no ``malloc_trim``.

    >>> isinstance(trim_heap(), bool)
    True
    """
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
