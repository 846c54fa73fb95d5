"""Helpers every symgraph CLI shares: one-line errors, atomic writes, a progress spinner, device parsing.

The contract of every ``python -m ...`` entry point in this project:

- exit code 0 when the job succeeded, 1 when a verification it ran failed, 2 on bad input;
- bad input prints exactly one line on stderr, starting with ``"error: "``, and no traceback
  (set ``SYMGRAPH_DEBUG=1`` to see the traceback anyway);
- machine-readable output (``--json``) goes to stdout, progress and diagnostics go to stderr;
- files are written atomically, so an interrupted run never leaves half a file behind.

Example
-------
>>> from symgraph.cli_util import OneLineArgumentParser, add_device_argument, run_cli
>>> def _main(argv):
...     p = OneLineArgumentParser(prog="demo")
...     add_device_argument(p)
...     args = p.parse_args(argv)
...     return 0
>>> run_cli(_main, ["--device", "cpu"])
0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import SymgraphError

__all__ = [
    "atomic_torch_save",
    "EXIT_OK",
    "EXIT_VERIFY_FAILED",
    "EXIT_BAD_INPUT",
    "CLIError",
    "OneLineArgumentParser",
    "one_line",
    "run_cli",
    "atomic_open",
    "atomic_write",
    "Spinner",
    "add_device_argument",
    "resolve_device",
    "parse_int_tuple",
    "torch_threads",
    "held_stderr",
    "SMALL_MODEL_PARAMS",
]

#: Below this many parameters a model's forward passes are microseconds of work, and intra-op threads only
#: add synchronisation (measured: a 4x64 @ 64x32 linear takes 3 us on 1 thread and up to 6 ms on 2 threads of
#: a loaded machine). CLIs run such models single-threaded.
SMALL_MODEL_PARAMS = 1_000_000

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2


class CLIError(SymgraphError):
    """Bad command-line input; ``run_cli`` prints it as one ``error: ...`` line and exits with 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`CLIError` instead of printing usage and exiting.

    argparse's own error path prints the whole usage block; our contract is one line on stderr.

    Example
    -------
    >>> p = OneLineArgumentParser(prog="x")
    >>> _ = p.add_argument("--n", type=int)
    >>> try:
    ...     p.parse_args(["--n", "two"])
    ... except CLIError as e:
    ...     print(e)
    argument --n: invalid int value: 'two' (see x --help)
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message} (see {self.prog} --help)")


def one_line(exc: BaseException | str) -> str:
    """Collapse an error message to a single line (whitespace runs become one space).

    >>> one_line(ValueError("bad\\n  input"))
    'bad input'
    """
    text = exc if isinstance(exc, str) else str(exc)
    text = " ".join(text.split())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` under the CLI contract and return the exit code (never raises for bad input).

    ``SymgraphError`` (which includes :class:`CLIError`) and ``OSError`` are bad input: one line, exit 2.
    Any other exception is reported the same way but labelled as unexpected, since a user's model can make
    torch raise anything. ``SYMGRAPH_DEBUG=1`` re-raises, to get the traceback.

    Example
    -------
    >>> def _bad(argv):
    ...     raise CLIError("no model given")
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = run_cli(_bad, [])
    >>> code, err.getvalue()
    (2, 'error: no model given\\n')
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SYMGRAPH_DEBUG", "") not in ("", "0")
    try:
        return int(main(args))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help and --version exit through argparse with code 0
        return int(exc.code or 0) if isinstance(exc.code, int | None) else EXIT_BAD_INPUT
    except (SymgraphError, OSError) as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if debug:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {one_line(exc)} (set SYMGRAPH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one ``os.replace``.

    Readers never see a half-written file, and a failure (or Ctrl-C) leaves the old ``path`` untouched.

    Example
    -------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with atomic_open(os.path.join(d, "out.txt"), "w") as f:
    ...     _ = f.write("hello")
    >>> open(os.path.join(d, "out.txt")).read()
    'hello'
    """
    if mode not in ("w", "wb"):
        raise CLIError(f"atomic_open: Expected mode 'w' or 'wb' (got {mode!r})")
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"cannot write {str(target)!r}: directory {str(parent)!r} does not exist")
    if target.is_dir():
        raise CLIError(f"cannot write {str(target)!r}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (see :func:`atomic_open`), creating the parent directory if needed.

    The one implementation of atomic checkpoints and shards for the whole project (gmn uses it too).
    """
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.json")
    >>> atomic_write(p, '{"a": 1}')
    >>> open(p).read()
    '{"a": 1}'
    """
    if isinstance(data, str):
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(data)
    else:
        with atomic_open(path, "wb") as f:
            f.write(data)


class Spinner:
    """A progress indicator on stderr that appears only when the work takes longer than ``delay`` seconds.

    On a terminal it animates in place and erases itself; elsewhere (logs, pipes, tests) it prints one
    "still working" line after ``delay`` seconds and one "done" line at the end, so logs stay readable.
    Short runs print nothing. Use as a context manager; ``update(text)`` changes the message.

    Example
    -------
    >>> import time
    >>> with Spinner("computing", delay=2.0) as sp:
    ...     sp.update("computing, step 2")
    """

    _FRAMES = "|/-\\"

    def __init__(self, message: str, delay: float = 2.0, stream: IO | None = None, enabled: bool = True):
        self.message = message
        self.delay = float(delay)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False
        self._start = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, message: str) -> None:
        self.message = message

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        self._shown = True
        if not self._tty:
            print(f"... {self.message} (still working after {self.delay:.0f} s)", file=self.stream, flush=True)
            return
        i = 0
        while not self._stop.is_set():
            elapsed = time.perf_counter() - self._start
            self.stream.write(f"\r{self._FRAMES[i % 4]} {self.message} ({elapsed:.0f} s)\033[K")
            self.stream.flush()
            i += 1
            self._stop.wait(0.2)

    def __enter__(self) -> Spinner:
        self._start = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="symgraph-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            elapsed = time.perf_counter() - self._start
            if self._tty:
                self.stream.write("\r\033[K")
            print(f"... {self.message}: done in {elapsed:.1f} s", file=self.stream, flush=True)


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add the project's standard ``--device auto|cpu|cuda[:N]`` option to ``parser``."""
    parser.add_argument(
        "--device",
        default=default,
        metavar="auto|cpu|cuda[:N]",
        help="where to run forward passes: 'auto' picks cuda when available, else cpu (default: %(default)s)",
    )


def resolve_device(spec: str):
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``torch.device``; :class:`CLIError` if unavailable.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    s = str(spec).strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        try:
            dev = torch.device(s)
        except RuntimeError:
            raise CLIError(f"--device: Expected auto, cpu, cuda or cuda:N (got {spec!r})") from None
        if not torch.cuda.is_available():
            raise CLIError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device: Expected a CUDA index below {torch.cuda.device_count()} (got {dev.index})")
        return dev
    raise CLIError(f"--device: Expected auto, cpu, cuda or cuda:N (got {spec!r})")


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Hold what the block writes to ``sys.stderr``; pass it on only if the block succeeds.

    Libraries print tracebacks before raising (torch.fx's ShapeProp does); when the CLI turns the error into
    one line, that output would break the one-line contract. Spinners keep the stream they were made with.

    >>> import sys, io, contextlib
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     try:
    ...         with held_stderr():
    ...             print("noise", file=sys.stderr)
    ...             raise ValueError
    ...     except ValueError:
    ...         pass
    >>> err.getvalue()
    ''
    """
    real = sys.stderr
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield
    real.write(buf.getvalue())


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the old value after.

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parse_int_tuple(text: str, option: str = "value", positive: bool = True) -> tuple[int, ...]:
    """Parse ``"1,3,32,32"`` (also ``"1x3x32x32"`` or ``"(1, 3, 32, 32)"``) into a tuple of ints.

    >>> parse_int_tuple("1,3,32,32", "--input-shape")
    (1, 3, 32, 32)
    """
    cleaned = str(text).strip().strip("()[]").replace(" ", "")
    values: tuple[int, ...] = ()
    if re.fullmatch(r"-?\d+(?:[,x]-?\d+)*,?", cleaned):
        values = tuple(int(p) for p in re.split(r"[,x]", cleaned) if p)
    if not values or (positive and any(v <= 0 for v in values)):
        kind = "positive integers" if positive else "integers"
        raise CLIError(f"{option}: Expected comma-separated {kind} like 1,3,32,32 (got {text!r})")
    return values
