"""Safe model loading: ``load_model(path, arch=None, trust=False) -> (nn.Module, LoadInfo)``.

A model file is untrusted input. Python pickles run code while they load (``__reduce__``), so a pickle
is only unpickled in full when the caller says they trust the file. What each format needs:

=====================  ===========================================  ==========================================
format                 how it is read                                what else is needed
=====================  ===========================================  ==========================================
state_dict (.pt)       ``torch.load(weights_only=True)``             ``arch`` (see :mod:`symgraph.arch`)
checkpoint dict        same; the state_dict under ``state_dict``,    ``arch``
                       ``model_state_dict``, ``model``, ...
pickled ``nn.Module``  ``torch.load(weights_only=False)``            ``trust=True`` (it can run any code)
TorchScript            ``torch.jit.load`` (no Python code runs)      ``arch``: torch.fx cannot trace a
                                                                     ScriptModule, so we rebuild the
                                                                     architecture and load its weights
``torch.export`` .pt2  vetted statically (``vet_export_archive``),    nothing: its ATen graph is encoded
                       then ``torch.export.load``; ``trust=True``    directly; with ``arch``, its raw weight
                       where loading could run code from the file    payloads go into the rebuilt architecture
safetensors            ``safetensors.torch.load_file``               ``arch``
=====================  ===========================================  ==========================================

The format is detected from the file's content (zip layout, pickle opcode, safetensors header), not from
its extension. ``arch`` is any form of :mod:`symgraph.arch`: a registry name, ``torchvision:NAME``,
``timm:NAME``, ``hf:DIR``, ``sequential:act=relu`` or ``package.module:Class``. A Hugging Face folder
(``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``, sharded or not) loads from its path
alone: ``load_model("hf:path/to/bert")`` or ``load_model("path/to/bert")``; its weight files are read by
the same safe readers. State_dicts saved through ``DataParallel`` (``module.``), ``torch.compile``
(``_orig_mod.``) or a wrapper (``model.``) load after the prefix is stripped (``LoadInfo.notes`` says so), and
tied parameters (e.g. an ``lm_head`` tied to the embedding) may be stored once.

Every failure is a :class:`~symgraph.errors.ModelLoadError` with a one-line message; a state_dict that does
not fit its architecture raises :class:`StateDictMismatchError` (a ModelLoadError and a ShapeMismatchError)
naming the first mismatching key: ``"Expected ... (got ...)"``.

Example
-------
>>> import tempfile, os, torch, symgraph.io as sio
>>> from symgraph.models import build_model
>>> path = os.path.join(tempfile.mkdtemp(), "mlp.pt")
>>> torch.save(build_model("mlp").state_dict(), path)
>>> model, info = sio.load_model(path, arch="mlp")
>>> info.format
'state_dict'
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import arch as _arch
from .errors import ModelLoadError, ShapeMismatchError

__all__ = [
    "load_model",
    "load_state_dict_file",
    "load_exported_program",
    "vet_export_archive",
    "build_arch",
    "fit_state_dict",
    "detect_format",
    "LoadInfo",
    "StateDictMismatchError",
    "FORMATS",
]

#: The formats ``detect_format`` reports (``"pickle"`` is a torch.save file or a raw pickle; what it holds,
#: a state_dict or a whole module, is only known after reading it).
FORMATS = ("pickle", "torchscript", "export", "safetensors")

# Keys under which training scripts commonly nest the state_dict inside a checkpoint dictionary.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")

_TRUST_HINT = (
    "unpickling it can execute arbitrary code, so it is refused by default; if you trust the file, "
    "pass trust=True (CLI: --trust), or save model.state_dict() instead and pass its architecture with --arch"
)


class StateDictMismatchError(ModelLoadError, ShapeMismatchError):
    """A state_dict does not fit the architecture it was given: ``"<file>: Expected ... (got ...)"``."""


@dataclass(frozen=True)
class LoadInfo:
    """What :func:`load_model` found and did.

    Attributes
    ----------
    path : str
    format : str
        ``"state_dict"``, ``"checkpoint"``, ``"pickled_module"``, ``"torchscript"``, ``"export"`` or
        ``"safetensors"``.
    arch : str or None
        The ``NAME[:k=v,...]`` the model was rebuilt from, if any.
    model_type : str
        Class name of the returned module.
    num_tensors : int
        Entries in the loaded state_dict.
    example_input_shape : tuple or None
        An input shape the file itself records (``torch.export`` archives keep sample inputs).
    notes : tuple of str
        Anything the user should know (ignored checkpoint keys, dtype conversion, ...).
    """

    path: str
    format: str
    arch: str | None
    model_type: str
    num_tensors: int
    example_input_shape: tuple[int, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        if self.example_input_shape is not None:
            d["example_input_shape"] = list(self.example_input_shape)
        return d


# ---------------------------------------------------------------------------------------------- detection
def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{str(p)!r}: no such file")
    if p.is_dir():
        raise ModelLoadError(f"{str(p)!r} is a directory; Expected a model file (.pt, .pt2, .safetensors)")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{str(p)!r} is empty; Expected a model file (got 0 bytes)")
    return p


def _is_safetensors(head: bytes, size: int) -> bool:
    # safetensors: an 8-byte little-endian header length, then a JSON object.
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    # A header length beyond the file size still means safetensors (a truncated one): reading reports it.
    return 0 < n < 2**32 and head[8:9] == b"{"


def detect_format(path: str | Path) -> str:
    """The container format of ``path``, from its content: one of :data:`FORMATS`.

    Raises :class:`ModelLoadError` for missing files, directories, empty files and unknown content.

    Example
    -------
    >>> import tempfile, os, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"w": torch.zeros(2)}, p)
    >>> detect_format(p)
    'pickle'
    """
    p = _check_path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ModelLoadError(f"{str(p)!r} is a damaged or truncated zip archive ({exc})") from None
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("archive_format") for n in names) or any(
            "/models/" in n and n.endswith(".json") for n in names
        ):
            return "export"
        if any(n.endswith("data.pkl") for n in names):
            return "pickle"
        raise ModelLoadError(
            f"{str(p)!r} is a zip archive but not a torch.save, TorchScript or torch.export file "
            f"(got members {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        )
    # Pickle protocols 2-5 start with PROTO (0x80) and the protocol number; torch's legacy format too.
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if _is_safetensors(head, size):
        return "safetensors"
    raise ModelLoadError(
        f"{str(p)!r} is not a model file: Expected a torch.save file, a TorchScript or torch.export archive, "
        f"or a safetensors file (got {size} bytes starting with {head[:8]!r})"
    )


# ---------------------------------------------------------------------------------------------- readers
def _pickle_globals(p: Path) -> list[str] | None:
    """The Python globals a pickle refers to, read statically (nothing is executed); None if unparseable."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = p.read_bytes()
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                break
        return found
    except Exception:  # damaged data: the caller reports it as such
        return None


def _read_pickle(p: Path, trust: bool, map_location: Any) -> tuple[Any, bool]:
    """Unpickle a torch.save file; returns (object, needed_full_unpickling)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; our errors say enough
            return torch.load(p, map_location=map_location, weights_only=True), False
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" not in msg:
            raise ModelLoadError(f"{str(p)!r} is damaged or truncated: {_first_line(msg)}") from None
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if not trust:
            unsafe = [found.group(1)] if found else (_pickle_globals(p) or [])
            if unsafe:
                raise ModelLoadError(
                    f"{str(p)!r} is a pickled Python object that refers to {unsafe[0]} (whole nn.Modules "
                    f"are saved this way); {_TRUST_HINT}"
                ) from None
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", msg)
            raise ModelLoadError(
                f"{str(p)!r} is damaged or not a torch.save file (weights-only reading failed: "
                f"{detail.group(1).strip() if detail else 'unknown reason'}); if it is a pickle you trust, "
                "pass trust=True (CLI: --trust)"
            ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for damaged files
        raise ModelLoadError(f"{str(p)!r} is damaged or truncated: {type(exc).__name__}: {_first_line(exc)}") from None
    # Only reached with trust=True and a file that needs full unpickling.
    try:
        return torch.load(p, map_location=map_location, weights_only=False), True
    except Exception as exc:
        raise ModelLoadError(
            f"{str(p)!r} is damaged or not a model file (unpickling with trust failed: {type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from None


def _read_safetensors(p: Path, map_location: Any) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # optional dependency (extra "io")
        raise ModelLoadError(
            f"{str(p)!r} is a safetensors file; install the 'safetensors' package to read it "
            "(pip install 'symgraph[io]')"
        ) from None
    device = str(map_location) if map_location is not None else "cpu"
    try:
        return load_file(str(p), device=device)
    except Exception as exc:
        raise ModelLoadError(f"{str(p)!r} is a damaged safetensors file: {_first_line(exc)}") from None


def _read_torchscript(p: Path, map_location: Any) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript; users still have files
            return torch.jit.load(str(p), map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(f"{str(p)!r} is a damaged TorchScript archive: {_first_line(exc)}") from None


def _export_dtype_table() -> dict[int, torch.dtype]:
    # torch.export stores dtypes as its schema's ScalarType codes; the table is torch's own.
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    return {int(k.value if hasattr(k, "value") else k): v for k, v in _SERIALIZE_TO_TORCH_DTYPE.items()}


def _open_archive(p) -> zipfile.ZipFile:
    """The zip archive at ``p`` (a torch.export ``.pt2``), or one ModelLoadError for a damaged one."""
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{str(p)!r} is a damaged torch.export archive ({exc})") from None


def _read_export_weights(p: Path) -> tuple[dict[str, torch.Tensor] | None, tuple[int, ...] | None]:
    """Read the weights of a torch.export archive as plain data, without unpickling anything.

    Returns ``(None, shape)`` when some payload is pickled (then only ``torch.export.load`` with trust
    can read it). ``shape`` is the first sample input's shape when it is readable as weights only.
    """
    z = _open_archive(p)
    with z:
        names = z.namelist()
        configs = [n for n in names if n.endswith("_weights_config.json") and "/data/weights/" in n]
        if len(configs) != 1:
            raise ModelLoadError(
                f"{str(p)!r}: Expected a torch.export archive with one model (got {len(configs)} weight configs)"
            )
        cfg_name = configs[0]
        weights_dir = cfg_name.rsplit("/", 1)[0] + "/"
        try:
            config = json.loads(z.read(cfg_name))["config"]
            const_names = [n for n in names if n.endswith("_constants_config.json")]
            constants = {} if not const_names else json.loads(z.read(const_names[0]))["config"]
        except Exception as exc:
            raise ModelLoadError(f"{str(p)!r} is a damaged torch.export archive: {_first_line(exc)}") from None
        shape = _export_sample_shape(z, names)
        if any(m.get("use_pickle") for m in config.values()) or any(
            m.get("use_pickle") or not str(m.get("path_name", "")).startswith("tensor_") for m in constants.values()
        ):
            return None, shape
        table = _export_dtype_table()
        state: dict[str, torch.Tensor] = {}
        try:
            for fqn, meta in config.items():
                tm = meta["tensor_meta"]
                dtype = table[int(tm["dtype"])]
                raw = bytearray(z.read(weights_dir + meta["path_name"]))
                flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                sizes = [int(s["as_int"]) for s in tm["sizes"]]
                strides = [int(s["as_int"]) for s in tm["strides"]]
                offset = int(tm["storage_offset"]["as_int"])
                state[fqn] = torch.as_strided(flat, sizes, strides, offset).clone()
        except Exception as exc:
            raise ModelLoadError(
                f"{str(p)!r} is a damaged torch.export archive: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        return state, shape


def _export_sample_shape(z: zipfile.ZipFile, names: list[str]) -> tuple[int, ...] | None:
    samples = [n for n in names if "/data/sample_inputs/" in n]
    if not samples:
        return None
    try:
        obj = torch.load(io.BytesIO(z.read(samples[0])), weights_only=True)
    except Exception:  # sample inputs are a convenience; anything odd is simply not used
        return None
    stack = [obj]
    while stack:
        x = stack.pop(0)
        if isinstance(x, torch.Tensor):
            return tuple(x.shape)
        if isinstance(x, list | tuple):
            stack = list(x) + stack
        elif isinstance(x, Mapping):
            stack = list(x.values()) + stack
    return None


def _read_export_trusted(p: Path) -> tuple[dict[str, torch.Tensor], tuple[int, ...] | None]:
    try:
        ep = torch.export.load(str(p))
    except Exception as exc:
        raise ModelLoadError(f"{str(p)!r} could not be loaded by torch.export.load: {_first_line(exc)}") from None
    shape = None
    args = getattr(ep, "example_inputs", None)
    if args and args[0] and isinstance(args[0][0], torch.Tensor):
        shape = tuple(args[0][0].shape)
    return dict(ep.module().state_dict()), shape


#: What an operator target in a ``.pt2`` graph may be without ``trust``: an ATen op, or tuple indexing.
_SAFE_EXPORT_TARGET = re.compile(r"^(torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)$")
#: A symbolic shape expression ``torch.export.load`` may hand to ``sympy.sympify`` (which evaluates it as
#: Python) without ``trust``: symbols like ``s0``, integers, arithmetic, and torch's own sympy functions.
_SAFE_SYM_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\*\*|//|[-+*/%(),. <>=!]")
_SYM_FUNCTIONS = frozenset(
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift "
    "PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt "
    "RoundToInt RoundDecimal ToFloat Identity Max Min Abs Eq Ne Lt Le Gt Ge And Or Not True False oo".split()
)


def _safe_sym_expr(text: str) -> bool:
    pos = 0
    for m in _SAFE_SYM_TOKEN.finditer(text):
        if m.start() != pos:
            return False
        tok = m.group(0)
        if tok[0].isalpha() or tok[0] == "_":
            if not (re.fullmatch(r"[a-z]+\d+", tok) or tok in _SYM_FUNCTIONS):
                return False
        pos = m.end()
    return pos == len(text)


def _walk_json(obj: Any, found: dict[str, list]) -> None:
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "target" and isinstance(v, str):
                    found["targets"].append(v)
                elif k == "expr_str" and isinstance(v, str):
                    found["exprs"].append(v)
                elif k in ("as_graph", "as_custom_obj", "as_custom_objs", "as_operator", "as_opaque_obj"):
                    found["kinds"].append(k)
                stack.append(v)
        elif isinstance(x, list):
            stack.extend(x)


def vet_export_archive(path: str | Path) -> list[str]:
    """Why ``torch.export.load`` could run code from this ``.pt2`` archive (empty: it cannot), read statically.

    ``torch.export.load`` (torch 2.13) reads the archive's JSON program and raw tensor payloads without
    running code from the file, except through: pickled weights or constants (``torch.load(...,
    weights_only=False)``), TorchBind and opaque constants (``torch._C._pickle_load_obj``, ``pickle.loads``),
    sample inputs that fail weights-only loading (it retries with ``weights_only=False``), symbolic
    shape expressions (``sympy.sympify``, which evaluates its string), guard code (which
    ``ExportedProgram.module()`` runs with ``exec``; symgraph calls ``module(check_guards=False)``, which does
    not), AOTInductor members (compiled shared libraries) and
    non-ATen operators (higher-order ops with subgraphs, extension or custom ops). This lists each of those it finds.

    Example
    -------
    >>> import tempfile, os, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "m.pt2")
    >>> torch.export.save(torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),)), p)
    >>> vet_export_archive(p)
    []
    """
    p = _check_path(path)
    problems: list[str] = []
    z = _open_archive(p)
    with z:
        names = z.namelist()
        if any("/data/aotinductor/" in n or n.startswith("data/aotinductor/") for n in names):
            problems.append("AOTInductor members (compiled shared libraries, loaded as native code)")
        models = [n for n in names if n.endswith(".json") and ("/models/" in n or n.startswith("models/"))]
        if len(models) != 1:
            problems.append(f"{len(models)} programs (Expected one, models/model.json)")
        for cfg_name in [
            n for n in names if n.endswith("_weights_config.json") or n.endswith("_constants_config.json")
        ]:
            try:
                config = json.loads(z.read(cfg_name))["config"]
            except Exception as exc:
                raise ModelLoadError(f"{str(p)!r} is a damaged torch.export archive: {_first_line(exc)}") from None
            for fqn, meta in config.items():
                if meta.get("use_pickle"):
                    problems.append(f"pickled payload '{fqn}' (read with torch.load(weights_only=False))")
                elif not str(meta.get("path_name", "")).startswith(("tensor_", "weight_")):
                    problems.append(f"non-tensor constant '{fqn}' ({meta.get('path_name')}: unpickled)")
        for sample in [n for n in names if "/data/sample_inputs/" in n]:
            try:
                torch.load(io.BytesIO(z.read(sample)), weights_only=True)
            except Exception:  # noqa: BLE001 - torch.export.load would retry it with weights_only=False
                problems.append("sample inputs that only load with weights_only=False (arbitrary unpickling)")
        for model_name in models[:1]:
            try:
                program = json.loads(z.read(model_name))
            except Exception as exc:
                raise ModelLoadError(f"{str(p)!r} is a damaged torch.export archive: {_first_line(exc)}") from None
            if program.get("guards_code"):
                problems.append(
                    f"{len(program['guards_code'])} lines of guard code (exec'd by ExportedProgram.module())"
                )
            found: dict[str, list] = {"targets": [], "exprs": [], "kinds": []}
            _walk_json(program.get("graph_module", {}), found)
            for t in sorted(set(found["targets"])):
                if not _SAFE_EXPORT_TARGET.match(t):
                    problems.append(f"operator {t!r} (only ATen ops and getitem are read without trust)")
            for k in sorted(set(found["kinds"])):
                problems.append(f"arguments of kind {k} (subgraphs, custom objects or operator values)")
            for e in found["exprs"] + [str(k) for k in (program.get("range_constraints") or {})]:
                if not _safe_sym_expr(e):
                    problems.append(f"shape expression {e[:60]!r} (sympy.sympify evaluates it)")
    return problems


def load_exported_program(
    path: str | Path, trust: bool = False, map_location: Any = "cpu"
) -> tuple[nn.Module, LoadInfo]:
    """A ``.pt2`` archive as its ATen ``GraphModule`` (``ExportedProgram.module()``), without an architecture.

    The archive is vetted first (:func:`vet_export_archive`); without ``trust`` anything through which
    ``torch.export.load`` could run code from the file is refused. No user class is imported: the module's
    graph holds ATen ops only, and its ``nn_module_stack`` names module types as strings.
    :func:`symgraph.parameter_graph` encodes the graph directly (``g.meta["tracer"] == "export"``); calling
    the module runs those ATen ops.

    Example
    -------
    >>> import tempfile, os, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "m.pt2")
    >>> torch.export.save(torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),)), p)
    >>> module, info = load_exported_program(p)
    >>> info.format, info.example_input_shape
    ('export', (1, 2))
    """
    p = _check_path(path)
    where = str(p)
    if detect_format(p) != "export":
        raise ModelLoadError(f"{where}: Expected a torch.export .pt2 archive (got a {detect_format(p)} file)")
    problems = vet_export_archive(p)
    if problems and not trust:
        raise ModelLoadError(
            f"{where} is a torch.export archive through which loading could run code from the file: "
            f"{problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; if you trust the "
            "file, pass trust=True (CLI: --trust)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(str(p))
            module = ep.module(check_guards=False)  # no guard code from the file is exec'd
        # torch makes train()/eval() raise on this module: its graph fixed the mode at export time, and
        # switching the flag changes nothing, so callers that set a mode (verification does) may
        for name in ("train", "eval"):
            module.__dict__.pop(name, None)
    except Exception as exc:
        raise ModelLoadError(f"{where} could not be loaded by torch.export.load: {_first_line(exc)}") from None
    shape = dtype = None
    for n in module.graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and isinstance(val, torch.Tensor):
            shape, dtype = tuple(int(s) for s in val.shape), val.dtype
            break
    if shape is not None:
        # the CLI's --verify and later graph builds read the input the program was exported with
        object.__setattr__(module, "example_input_shape", shape)
        object.__setattr__(module, "example_input_dtype", None if dtype.is_floating_point else dtype)
    if map_location is not None:
        module.to(map_location)
    notes = [f"encoded from the program's ATen graph ({sum(1 for _ in module.graph.nodes)} nodes), no architecture"]
    if problems:
        notes.append(f"loaded with trust despite: {'; '.join(problems[:3])}")
    info = LoadInfo(where, "export", None, type(module).__name__, len(module.state_dict()), shape, tuple(notes))
    return module, info


# ---------------------------------------------------------------------------------------------- state dicts
def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:3]
        return f"a {type(obj).__name__} with keys {keys}{' ...' if len(obj) > 3 else ''}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _unwrap(obj: Any, where: str) -> tuple[Any, str, list[str]]:
    """A loaded object -> (nn.Module or state_dict, format, notes); ModelLoadError for anything else."""
    if isinstance(obj, nn.Module):
        return obj, "pickled_module", []
    if _is_state_dict(obj):
        return dict(obj), "state_dict", []
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module) or _is_state_dict(inner):
                others = [k for k in obj if k != key]
                notes = [f"used checkpoint entry {key!r}"]
                if others:
                    notes.append(f"ignored checkpoint entries {others[:5]}{' ...' if len(others) > 5 else ''}")
                return (inner if isinstance(inner, nn.Module) else dict(inner)), "checkpoint", notes
    raise ModelLoadError(
        f"{where}: Expected an nn.Module, a state_dict (str -> Tensor) or a checkpoint dict with one of "
        f"the keys {list(_CHECKPOINT_KEYS[:3])} (got {_describe(obj)})"
    )


#: Key prefixes that wrappers add: DataParallel/DistributedDataParallel, torch.compile, Lightning-style wrappers.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Strip wrapper prefixes (repeatedly: ``_orig_mod.module.``) shared by every key and by no expected key."""
    notes = []
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                notes.append(f"stripped the key prefix {prefix!r} from every key")
                changed = True
    return state, notes


def _tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """state_dict key -> the other keys that are the same tensor (tied parameters, e.g. lm_head = embedding)."""
    groups: dict[tuple, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if v.numel() and v.device.type != "meta":
            groups.setdefault((v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype), []).append(k)
    return {k: [o for o in ks if o != k] for ks in groups.values() if len(ks) > 1 for k in ks}


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "state_dict") -> list[str]:
    """Load ``state`` into ``model`` strictly, after checking keys and shapes; returns notes.

    The model is converted to the state's floating dtype when all its floating tensors share one (a
    float64 file stays float64 instead of being silently rounded to float32).

    Raises
    ------
    StateDictMismatchError
        ``"Expected ... (got ...)"`` for the first missing key, unexpected key or shape mismatch.

    Example
    -------
    >>> import torch.nn as nn
    >>> m = nn.Linear(2, 3)
    >>> fit_state_dict(m, nn.Linear(2, 3).state_dict())
    []
    >>> try:
    ...     fit_state_dict(m, nn.Linear(2, 4).state_dict(), where="w.pt")
    ... except StateDictMismatchError as e:
    ...     print(e)
    w.pt: Expected 'weight' of shape (3, 2) (got shape (4, 2))
    """
    expected = model.state_dict()
    state, notes = _strip_wrapper_prefix(dict(state), expected)
    tied = _tied_aliases(model)
    for k, v in expected.items():
        if k not in state:
            alias = next((a for a in tied.get(k, ()) if a in state), None)
            if alias is not None:
                state[k] = state[alias]
                notes.append(f"{k!r} is tied to {alias!r} (stored once in the file)")
                continue
            near = [s for s in state if s not in expected][:3]
            got = "no such key" + (f"; the file has unmatched keys {near}" if near else "")
            if _arch.looks_sequential(state) and not _arch.looks_sequential(expected):
                got += "; the file looks like a plain nn.Sequential state_dict: try --arch sequential:act=relu"
            raise StateDictMismatchError(f"key {k!r} of shape {tuple(v.shape)}", got, where)
        if tuple(state[k].shape) != tuple(v.shape):
            raise StateDictMismatchError(f"{k!r} of shape {tuple(v.shape)}", f"shape {tuple(state[k].shape)}", where)
    extra = [k for k in state if k not in expected]
    if extra:
        raise StateDictMismatchError(
            f"only the {len(expected)} keys of {type(model).__name__}", f"unexpected key {extra[0]!r}", where
        )
    float_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    model_dtypes = {v.dtype for v in expected.values() if v.is_floating_point()}
    if len(float_dtypes) == 1 and float_dtypes != model_dtypes:
        (dt,) = float_dtypes
        model.to(dt)
        notes.append(f"converted the model to {str(dt).replace('torch.', '')} to match the file")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StateDictMismatchError("a state_dict the model accepts", _first_line(exc), where) from None
    return notes


def build_arch(arch: str, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the architecture ``arch`` (any form of :mod:`symgraph.arch`) at random init.

    ``state`` is needed by ``sequential:...``, which rebuilds an ``nn.Sequential`` from the keys and shapes of
    a state_dict.

    Example
    -------
    >>> type(build_arch("mlp")).__name__
    'MLP'
    """
    return _arch.build_arch(arch, state=state)


def _need_arch(where: str, what: str, state: Mapping[str, Any] | None = None) -> ModelLoadError:
    from .models import list_models

    hint = ""
    if state is not None and _arch.looks_sequential(state):
        hint = " (its keys look like a plain nn.Sequential: --arch sequential:act=relu rebuilds it from the file)"
    return ModelLoadError(
        f"{where} holds {what}; give its architecture with --arch (arch=...){hint}: a registry name "
        f"({', '.join(list_models())}) or one of {', '.join(_arch.ARCH_FORMS[1:])}"
    )


# ---------------------------------------------------------------------------------------------- public
def load_state_dict_file(
    path: str | Path, trust: bool = False, map_location: Any = "cpu"
) -> tuple[nn.Module | dict[str, torch.Tensor], str, list[str], tuple[int, ...] | None]:
    """Read a model file into a module (pickled modules only) or a state_dict, without building anything.

    Returns ``(module_or_state_dict, format, notes, example_input_shape)``. TorchScript archives come back
    as their state_dict (format ``"torchscript"``), so callers can rebuild an fx-traceable model.

    Example
    -------
    >>> import tempfile, os, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"w": torch.zeros(2)}, p)
    >>> obj, fmt, notes, shape = load_state_dict_file(p)
    >>> fmt, list(obj)
    ('state_dict', ['w'])
    """
    p = _check_path(path)
    where = str(p)
    kind = detect_format(p)
    if kind == "pickle":
        obj, _ = _read_pickle(p, trust, map_location)
        obj, fmt, notes = _unwrap(obj, where)
        return obj, fmt, notes, None
    if kind == "safetensors":
        state = _read_safetensors(p, map_location)
        if not state:
            raise ModelLoadError(f"{where}: Expected a safetensors file with tensors (got none)")
        return state, "safetensors", [], None
    if kind == "torchscript":
        sm = _read_torchscript(p, map_location)
        name = getattr(sm, "original_name", type(sm).__name__)
        return dict(sm.state_dict()), "torchscript", [f"TorchScript module {name}: weights only"], None
    # kind == "export"
    state, shape = _read_export_weights(p)
    if state is None:
        if not trust:
            raise ModelLoadError(f"{where} is a torch.export archive with pickled payloads; {_TRUST_HINT}")
        state, shape2 = _read_export_trusted(p)
        shape = shape or shape2
    if map_location is not None:
        state = {k: v.to(map_location) for k, v in state.items()}
    return state, "export", [], shape


#: Weight files of a Hugging Face folder, in the order ``from_pretrained`` prefers them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_target(path: str | Path | None, arch: str | None) -> tuple[Path | None, str | None]:
    """``("hf:DIR", None)`` or ``(DIR with config.json, None)`` -> ``(None, "hf:DIR")``; anything else unchanged."""
    text = str(path) if path is not None else None
    if text is not None and text.startswith("hf:"):
        if arch is not None and arch != text:
            raise ModelLoadError(f"{text!r} names its architecture itself; Expected no --arch (got {arch!r})")
        return None, text
    if path is not None and Path(path).is_dir() and (Path(path) / "config.json").is_file() and arch is None:
        return None, f"hf:{text}"
    return (Path(path) if path is not None else None), arch


def hf_weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a Hugging Face folder (one file, or the shards its ``*.index.json`` lists).

    Example
    -------
    >>> import tempfile
    >>> hf_weight_files(tempfile.mkdtemp())
    []
    """
    d = Path(folder)
    for name in HF_WEIGHT_FILES:
        p = d / name
        if not p.is_file():
            continue
        if not name.endswith(".index.json"):
            return [p]
        try:
            weight_map = json.loads(p.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except Exception as exc:
            raise ModelLoadError(
                f"{str(p)!r}: Expected a shard index with a 'weight_map' ({_first_line(exc)})"
            ) from None
        files = [d / s for s in shards]
        bad = [s for s, f in zip(shards, files, strict=True) if Path(s).name != s or not f.is_file()]
        if bad:
            raise ModelLoadError(f"{str(p)!r}: Expected the shard {bad[0]!r} in {str(d)!r} (got no such file)")
        return files
    return []


def _load_hf(
    file: Path | None, arch: str, trust: bool, map_location: Any
) -> tuple[nn.Module, str, str, list[str], int]:
    """A Hugging Face model: ``(model, format, where, notes, num_tensors)``.

    Weights are read by this module's safe readers (safetensors, or ``torch.load(weights_only=True)`` for
    ``pytorch_model.bin``); transformers' ``from_pretrained`` only ever sees safetensors (``use_safetensors``),
    so that its checkpoint key conversions (older layouts of the same class) apply. A state_dict that fits the
    built model as it is loads directly.
    """
    folder = _arch.hf_folder(arch[3:], arch)
    cls, config = _arch.hf_class_and_config(folder, arch)
    notes: list[str] = []
    if file is None:
        files = hf_weight_files(folder)
        if not files:
            raise ModelLoadError(
                f"{str(folder)!r}: Expected weights beside config.json ({' or '.join(HF_WEIGHT_FILES[::2])}) "
                "(got none); for the architecture at random init use --example hf:DIR"
            )
        where = str(files[0]) if len(files) == 1 else f"{str(folder)} ({len(files)} shards)"
        if files[0].name.endswith(".safetensors"):
            model = _hf_from_safetensors(cls, config, folder, where)
            return model, "safetensors", where, notes, len(model.state_dict())
        state: dict[str, torch.Tensor] = {}
        for f in files:
            obj, fmt, _, _ = load_state_dict_file(f, trust=trust, map_location=map_location)
            if isinstance(obj, nn.Module):
                raise ModelLoadError(f"{str(f)!r}: Expected weights (got a pickled {type(obj).__name__} module)")
            state.update(obj)
    else:
        obj, fmt, notes, _ = load_state_dict_file(file, trust=trust, map_location=map_location)
        where = str(file)
        if isinstance(obj, nn.Module):
            notes.append(f"--arch {arch} ignored: the file holds the whole module")
            return obj, fmt, where, notes, len(obj.state_dict())
        state = obj
    model = build_arch(arch)
    try:
        notes.extend(fit_state_dict(model, state, where=where))
        return model, fmt, where, notes, len(state)
    except StateDictMismatchError:
        pass  # perhaps an older key layout of the same class: let transformers convert it
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="symgraph-hf-") as tmp:
        (Path(tmp) / "config.json").write_bytes((folder / "config.json").read_bytes())
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"))
        model = _hf_from_safetensors(cls, config, Path(tmp), where)
    notes.append("keys converted by transformers' from_pretrained (an older layout of the same class)")
    return model, fmt, where, notes, len(state)


def _hf_from_safetensors(cls: Any, config: Any, folder: Path, where: str) -> nn.Module:
    """``cls.from_pretrained`` on a folder of safetensors only, offline; mismatches as StateDictMismatchError."""
    try:
        with _arch.quiet_transformers():
            model, info = cls.from_pretrained(
                str(folder),
                config=config,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except Exception as exc:
        raise ModelLoadError(f"{where}: transformers could not load it: {_first_line(exc)}") from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0] if isinstance(mismatched[0], tuple) else (mismatched[0],)
        k, got, want = (tuple(first) + (None, None))[:3]
        shape_of = lambda t: tuple(t) if t is not None else "?"  # noqa: E731
        raise StateDictMismatchError(f"{k!r} of shape {shape_of(want)}", f"shape {shape_of(got)}", where)
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing:
        near = unexpected[:3]
        got = "no such key" + (f"; the file has unmatched keys {near}" if near else "")
        raise StateDictMismatchError(f"key {missing[0]!r}", got, where)
    if unexpected:
        raise StateDictMismatchError(
            f"only the keys of {type(model).__name__}", f"unexpected key {unexpected[0]!r}", where
        )
    return model


def load_model(
    path: str | Path | None, arch: str | None = None, trust: bool = False, map_location: Any = "cpu"
) -> tuple[nn.Module, LoadInfo]:
    """Load a model file safely and return an fx-traceable ``nn.Module`` in eval mode, and what was done.

    Parameters
    ----------
    path : str or Path or None
        A ``torch.save`` file (state_dict, checkpoint dict or pickled module), a TorchScript archive,
        a ``torch.export`` ``.pt2`` archive, or a safetensors file. The format is read from the content.
        ``"hf:DIR"`` or a folder with ``config.json`` is a Hugging Face model (weights from the folder);
        ``None`` with ``arch="hf:DIR"`` too.
    arch : str, optional
        The architecture, in any form of :mod:`symgraph.arch` (``"mlp:hidden=64"``,
        ``"torchvision:resnet18"``, ``"timm:resnet18"``, ``"hf:DIR"``, ``"sequential:act=relu"``,
        ``"mypkg.nets:Net"``); required for everything except a pickled module and a Hugging Face folder
        (weights alone do not say how they are wired).
    trust : bool
        Allow full unpickling (arbitrary code execution) for pickled modules. Never needed for weights.
    map_location : str or torch.device
        Where tensors are loaded (default ``"cpu"``).

    Returns
    -------
    (nn.Module, LoadInfo)

    Raises
    ------
    ModelLoadError
        One-line message: missing file, directory, damaged or unknown content, a pickled module without
        ``trust``, weights without ``arch``, or (:class:`StateDictMismatchError`) weights that do not fit.

    Example
    -------
    >>> import tempfile, os, torch
    >>> from symgraph.models import build_model
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> from safetensors.torch import save_file
    >>> save_file(build_model("mlp").state_dict(), p)
    >>> model, info = load_model(p, arch="mlp")
    >>> info.format, info.arch
    ('safetensors', 'mlp')
    """
    file, arch = _hf_target(path, arch)
    if arch is None and file is not None and Path(file).is_file() and detect_format(file) == "export":
        return load_exported_program(file, trust=trust, map_location=map_location)
    if arch is not None and arch.startswith("hf:"):
        model, fmt, where, notes, n = _load_hf(file, arch, trust, map_location)
        if map_location is not None:
            model.to(map_location)
        model.eval()
        info = LoadInfo(where, fmt, arch, type(model).__name__, n, None, tuple(notes))
        return model, info
    if file is None:
        raise ModelLoadError(f"Expected a model file, or arch='hf:DIR' for a Hugging Face folder (got {arch!r})")
    obj, fmt, notes, shape = load_state_dict_file(file, trust=trust, map_location=map_location)
    where = str(file)
    if isinstance(obj, nn.Module):
        if arch is not None:
            notes.append(f"--arch {arch} ignored: the file holds the whole module")
        model = obj
        arch_used = None
        n = len(model.state_dict())
    else:
        if arch is None:
            what = {
                "state_dict": "a state_dict (weights only)",
                "checkpoint": "a checkpoint with a state_dict (weights only)",
                "safetensors": "safetensors weights",
                "torchscript": "a TorchScript module, which torch.fx cannot trace (we rebuild it from its "
                "architecture and load its weights)",
                "export": "a torch.export program, whose ATen-level graph symgraph cannot encode (we rebuild "
                "it from its architecture and load its weights)",
            }[fmt]
            raise _need_arch(where, what, obj)
        model = build_arch(arch, state=obj)
        notes.extend(fit_state_dict(model, obj, where=where))
        arch_used = arch
        n = len(obj)
        if map_location is not None:
            model.to(map_location)
    model.eval()
    info = LoadInfo(
        path=where,
        format=fmt,
        arch=arch_used,
        model_type=type(model).__name__,
        num_tensors=n,
        example_input_shape=shape,
        notes=tuple(notes),
    )
    return model, info
