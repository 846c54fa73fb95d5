"""What the experiment modules share: CLIs generated from frozen config dataclasses, and their common options.

Every option of an experiment is one field of a frozen dataclass, declared with :func:`option` (its help, flag,
choices, check): :func:`add_options` turns the fields into ``argparse`` options and :func:`options_from` turns
the parsed arguments back into the dataclass, so an option is spelled, documented and checked in one place.
Scale-dependent configs are added with ``scaled=True``: a flag that is not given keeps the scale's value.

:class:`RunOptions` holds the options every experiment has, with the same names everywhere: ``--metanets``,
``--seeds`` (a count ``3``, i.e. seeds 0, 1, 2, or a list ``0,1,2``; a single seed other than 0 is ``2,``),
``--device``, ``--out``, ``--resume``/``--no-resume``, ``--threads``, ``--json``, ``--no-progress``. The CLIs
keep :mod:`symgraph.cli_util`'s contract (bad input is one ``error: ...`` line and exit code 2).

Example
-------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Cfg:
...     epochs: int = option(5, "training epochs")
...     lr: float = option(1e-3, "learning rate")
>>> p = OneLineArgumentParser(prog="demo")
>>> add_options(p, Cfg, scaled=True)
>>> options_from(p.parse_args(["--lr", "0.1"]), Cfg, base=Cfg(epochs=7))
Cfg(epochs=7, lr=0.1)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from symgraph.cli_util import CLIError, OneLineArgumentParser, resolve_device, torch_threads

C = TypeVar("C")

__all__ = [
    "OneLineArgumentParser",
    "option",
    "check_options",
    "add_options",
    "options_from",
    "RunOptions",
    "experiment_parser",
    "run_options",
    "Experiment",
    "parse_experiment",
    "running",
    "ResultsFile",
    "parse_seeds",
    "comma_list",
    "int_list",
    "print_result",
    "with_overrides",
    "mean_std",
    "format_mean_std",
    "metanet_size",
]


@dataclass(frozen=True)
class _Option:
    help: str
    flags: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    check: tuple[Callable[[Any], bool], str] | None = None
    metavar: str | None = None


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flags: Sequence[str] | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    check: tuple[Callable[[Any], bool], str] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (``--field-name`` unless ``flags`` are given).

    ``parse`` reads the text (default: from the field's type; tuples are comma lists, bools
    ``--x/--no-x``); ``check=(predicate, "what is expected")`` is applied to the value, in the CLI and when
    the dataclass is made (see :func:`check_options`).
    """
    spec = _Option(help, tuple(flags) if flags else None, tuple(choices) if choices else None, parse, check, metavar)
    return field(default=default, metadata={"cli": spec})


def _flag(f) -> str:
    spec = f.metadata["cli"]
    return spec.flags[0] if spec.flags else "--" + f.name.replace("_", "-")


def check_options(cfg: Any) -> None:
    """Apply every field's ``check`` (call it in ``__post_init__``); :class:`CLIError` naming the flag.

    >>> @dataclass(frozen=True)
    ... class P:
    ...     p: float = option(0.5, "a probability", check=(lambda v: 0 <= v < 1, "a value in [0, 1)"))
    ...     def __post_init__(self):
    ...         check_options(self)
    >>> P(1.5)
    Traceback (most recent call last):
    ...
    symgraph.cli_util.CLIError: --p: Expected a value in [0, 1) (got 1.5)
    """
    for f in fields(cfg):
        spec = f.metadata.get("cli")
        if spec is None or spec.check is None:
            continue
        value = getattr(cfg, f.name)
        ok, expected = spec.check
        if not ok(value):
            raise CLIError(f"{_flag(f)}: Expected {expected} (got {value!r})")


def _number_list(kind: type, flag: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(s) for s in text.split(",") if s.strip())
        except ValueError:
            values = ()
        if not values:
            raise CLIError(f"{flag}: Expected comma-separated numbers, e.g. 1e-3,5e-3 (got {text!r})")
        return values

    return parse


def _parser_for(spec: _Option, hint: Any, flag: str) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else hint
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if spec.parse is not None:
        return {"type": spec.parse}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        elem = args[0] if args else str
        if elem is str:
            choices = spec.choices
            return {"type": lambda t: tuple(comma_list(t, choices, flag)) if choices else tuple(_strings(t))}
        return {"type": _number_list(elem, flag)}
    out: dict[str, Any] = {"type": hint if hint in (int, float, str) else str}
    if spec.choices:
        out["choices"] = list(spec.choices)
    return out


def _strings(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    scaled: bool = False,
    defaults: dict[str, Any] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
) -> None:
    """Add one option per :func:`option` field of ``cls`` to ``parser``.

    ``scaled``: the value comes from a scale's config unless the flag is given (argparse default ``None``).
    ``defaults``/``choices`` replace a field's default/choices for this parser (e.g. each experiment's metanets).
    """
    hints = typing.get_type_hints(cls)
    defaults, choices = defaults or {}, choices or {}
    for f in fields(cls):
        spec = f.metadata.get("cli")
        if spec is None:
            continue
        if f.name in choices:
            spec = replace(spec, choices=tuple(choices[f.name]))
        flags = spec.flags or ("--" + f.name.replace("_", "-"),)
        kwargs = _parser_for(spec, hints[f.name], flags[0])
        default = defaults.get(f.name, f.default)
        help_text = spec.help
        if scaled:
            kwargs["default"] = None
            help_text += " (default: the scale's)"
        elif default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            if not isinstance(default, bool) and shown not in (None, ""):
                help_text += f" (default: {shown})"
        if spec.choices and "choices" not in kwargs and kwargs.get("action") is None:
            help_text += f"; from {','.join(spec.choices)}"
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        parser.add_argument(*flags, dest=f.name, help=help_text.replace("%", "%%"), **kwargs)


def options_from(args: argparse.Namespace, cls: type[C], base: C | None = None) -> C:
    """The dataclass ``cls`` from parsed arguments: ``base`` with the given flags (``scaled``) or all of them."""
    names = [f.name for f in fields(cls) if "cli" in f.metadata]
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    if base is not None:
        return with_overrides(base, **given)
    return cls(**{k: v for k, v in given.items() if v is not None})


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: a count (``"3"`` -> seeds 0, 1, 2) or a comma list (``"0,2"``; one seed other than 0: ``"2,"``).

    >>> parse_seeds("3"), parse_seeds("0,2"), parse_seeds("4,")
    ((0, 1, 2), (0, 2), (4,))
    """
    t = str(text).strip()
    try:
        if "," in t:
            seeds = tuple(int(s) for s in t.split(",") if s.strip())
        else:
            seeds = tuple(range(int(t)))
    except ValueError:
        seeds = ()
    if not seeds:
        raise CLIError(
            f"--seeds: Expected a count such as 3 (seeds 0,1,2) or a comma-separated list such as 0,1,2 "
            f"(a single seed other than 0: 2,) (got {text!r})"
        )
    return seeds


@dataclass(frozen=True)
class RunOptions:
    """The options every experiment has (defaults per experiment: see :func:`experiment_parser`)."""

    metanets: tuple[str, ...] = option((), "comma-separated metanets to run")
    seeds: tuple[int, ...] | None = option(
        None, "training seeds: a count (3 = seeds 0,1,2) or a comma list (0,1,2; one seed: 2,)", parse=parse_seeds
    )
    out: str = option("", "results directory (checkpoints, results.json)")
    device: str = option("auto", "auto|cpu|cuda[:N]: 'auto' picks cuda when available", metavar="auto|cpu|cuda[:N]")
    resume: bool = option(
        True, "continue from the checkpoints and finished runs under --out (--no-resume: start afresh)"
    )
    threads: int = option(0, "torch CPU threads (0: torch default)")
    json: bool = option(False, "print the results as one JSON object")
    progress: bool = option(True, "progress bars (--no-progress: none)")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


def experiment_parser(
    prog: str,
    description: str,
    *,
    metanets: Sequence[str],
    default_metanets: Sequence[str],
    seeds: tuple[int, ...] | None,
    out: str,
    scales: Sequence[str],
    default_scale: str,
) -> OneLineArgumentParser:
    """A parser with ``--scale`` and the :class:`RunOptions` of one experiment (its metanets, default seeds and
    ``--out``)."""
    ap = OneLineArgumentParser(prog=prog, description=description)
    ap.add_argument(
        "--scale",
        choices=sorted(scales),
        default=default_scale,
        help="preset of the experiment's sizes (default: %(default)s)",
    )
    add_options(
        ap,
        RunOptions,
        defaults={"metanets": tuple(default_metanets), "seeds": seeds, "out": out},
        choices={"metanets": tuple(metanets)},
    )
    return ap


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment command line: its run options, its scale's config with the given flags, its data
    options and the scale's name."""

    run: RunOptions
    config: Any
    source: Any
    scale: str


def parse_experiment(
    argv: Sequence[str],
    prog: str,
    description: str,
    *,
    config: type,
    source: type,
    scales: dict[str, Any],
    metanets: Sequence[str],
    default_metanets: Sequence[str],
    seeds: tuple[int, ...] | None,
    out: str,
    default_scale: str = "cpu",
    epilog: str | None = None,
) -> Experiment:
    """Parse an experiment's command line: ``--scale``, the :class:`RunOptions`, the ``source`` dataclass's
    options and the scaled ``config`` dataclass's options (every option generated from its field)."""
    ap = experiment_parser(
        prog,
        description,
        metanets=metanets,
        default_metanets=default_metanets,
        seeds=seeds,
        out=out,
        scales=scales,
        default_scale=default_scale,
    )
    ap.epilog = epilog
    add_options(ap, source)
    add_options(ap, config, scaled=True)
    args = ap.parse_args(list(argv))
    return Experiment(
        run_options(args), options_from(args, config, base=scales[args.scale]), options_from(args, source), args.scale
    )


@contextlib.contextmanager
def running(run: RunOptions) -> Iterator[None]:
    """The body of an experiment's CLI: ``--threads`` applied, and bad data or settings (``ValueError``,
    ``KeyError``) turned into :class:`CLIError` (``OSError`` is bad input for ``run_cli`` already)."""
    with torch_threads(run.threads if run.threads > 0 else None):
        try:
            yield
        except (ValueError, KeyError) as exc:
            raise CLIError(str(exc)) from exc


class ResultsFile:
    """An experiment's ``results.json``: kept across resumed runs (``resume``), refused if it was written for
    another configuration (the ``same`` entries), rewritten atomically with its table after every run.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "results.json")
    >>> rf = ResultsFile(path, True, lambda r: f"{len(r['runs'])} runs", config={"epochs": 2})
    >>> rf.results["runs"]["a"] = 1; rf.save()
    >>> ResultsFile(path, True, str, config={"epochs": 2}).results["table"]
    '1 runs'
    >>> ResultsFile(path, True, str, config={"epochs": 3})
    Traceback (most recent call last):
    ...
    ValueError: Expected ... from the same config (got another): use a new --out or --no-resume
    """

    def __init__(self, path: str | Path, resume: bool, table: Callable[[dict], str], **same: Any):
        from ..inr.io import atomic_write_json

        self.path, self.table, self._write = Path(path), table, atomic_write_json
        self.results = json.loads(self.path.read_text()) if resume and self.path.exists() else {"runs": {}}
        same = json.loads(json.dumps(same))  # as stored (tuples become lists)
        for key, value in same.items():
            if self.results.get(key) not in (None, value):
                raise ValueError(
                    f"Expected {self.path} from the same {key} (got another): use a new --out or --no-resume"
                )
        self.results.update(same)

    def save(self) -> None:
        self.results["table"] = self.table(self.results)
        self._write(self.path, self.results)


def run_options(args: argparse.Namespace) -> RunOptions:
    """:class:`RunOptions` from parsed arguments; the device is checked here (bad input -> CLIError)."""
    run = options_from(args, RunOptions)
    run.torch_device  # noqa: B018  (validates --device)
    return run


def comma_list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; :class:`CLIError` naming the option if a name is not in ``allowed``.

    >>> comma_list("gmn, mlp", ("gmn", "mlp", "npnfn"), "--metanets")
    ['gmn', 'mlp']
    """
    names = _strings(text)
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise CLIError(f"{option}: Expected a comma-separated subset of {','.join(allowed)} (got {text!r})")
    return names


def int_list(text: str, option: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; :class:`CLIError` naming the option otherwise.

    >>> int_list("0, 2", "--part")
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

    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     epochs: int = 5
    ...     lr: float = 1e-3
    >>> with_overrides(Cfg(), epochs=None, lr=0.1)
    Cfg(epochs=5, lr=0.1)
    """
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) in float64: every table's "mean ± std".

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    vals = torch.tensor([float(x) for x in xs], dtype=torch.float64)
    if vals.numel() == 0:
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std()) if vals.numel() > 1 else 0.0


def format_mean_std(xs: Sequence[float], digits: int = 2, std_digits: int | None = None) -> str:
    """``"m ± s"`` (``"m"`` for one value, ``"—"`` for none) with :func:`mean_std`.

    >>> format_mean_std([1.0, 2.0]), format_mean_std([0.5], 4), format_mean_std([])
    ('1.50 ± 0.71', '0.5000', '—')
    """
    if not xs:
        return "—"
    m, s = mean_std(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{std_digits if std_digits is not None else digits}f}"


def metanet_size(cfg: Any, name: str) -> tuple[int, int]:
    """``(hidden, layers)`` of metanet ``name`` in a config: its ``<name>_hidden``/``<name>_layers`` fields, else
    the ``baseline_hidden``/``baseline_layers`` ones.

    >>> @dataclass(frozen=True)
    ... class S:
    ...     gmn_hidden: int = 32
    ...     gmn_layers: int = 2
    ...     baseline_hidden: int = 16
    ...     baseline_layers: int = 3
    >>> metanet_size(S(), "gmn"), metanet_size(S(), "npnfn")
    ((32, 2), (16, 3))
    """
    prefix = name if hasattr(cfg, f"{name}_hidden") else "baseline"
    return getattr(cfg, f"{prefix}_hidden"), getattr(cfg, f"{prefix}_layers")
