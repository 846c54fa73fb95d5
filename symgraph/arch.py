"""Architectures by name: ``build_arch(spec, state=None) -> nn.Module``, for weights that come without their code.

A state_dict, a safetensors file or the weights of a TorchScript/``torch.export`` archive say nothing about
how their tensors are wired; the architecture is given by name and rebuilt here, at random init. The forms:

===================================  ==========================================================================
``NAME[:k=v,...]``                   a model of symgraph's registry (:func:`symgraph.models.list_models`)
``torchvision:NAME[:k=v,...]``       ``torchvision.models.get_model(NAME, weights=None, **kw)``
``timm:NAME[:k=v,...]``              ``timm.create_model(NAME, pretrained=False, **kw)``
``hf:DIR``                           Hugging Face ``transformers`` from ``DIR/config.json`` (the class its
                                     ``architectures`` entry names, else ``AutoModel``), offline, no remote code
``sequential[:act=relu,...]``        an ``nn.Sequential`` of Linear/Conv layers rebuilt from the state_dict's
                                     own keys (``0.weight``, ``2.weight``, ...) and shapes (options:
                                     ``act``, conv ``stride``/``padding``, input ``size``; one skipped
                                     index is the activation, two between a Conv and a Linear are the
                                     activation and a flatten; convolutions have ``groups=1``)
``package.module:Class[:k=v,...]``   the user's own class or factory, imported as ``python -m`` would (from
                                     the current directory first): **this runs the module's code**
===================================  ==========================================================================

Nothing is downloaded: torchvision gets ``weights=None`` (and ``weights_backbone=None``), timm
``pretrained=False`` and no hub names, transformers ``local_files_only=True``; options that would fetch
weights are refused. Values in ``k=v`` are parsed as in :func:`symgraph.models.parse_arch` (ints, floats,
booleans, ``None``, tuples ``3x3``/``64-64``, strings). Every failure is a one-line
:class:`~symgraph.errors.ModelLoadError`.

Example
-------
>>> import torch
>>> from symgraph.arch import build_arch, parse_arch_spec
>>> parse_arch_spec("torchvision:resnet18:num_classes=10")
ArchSpec(kind='torchvision', name='resnet18', kwargs={'num_classes': 10})
>>> state = {"0.weight": torch.zeros(8, 4), "0.bias": torch.zeros(8), "2.weight": torch.zeros(2, 8)}
>>> build_arch("sequential:act=tanh", state=state)
Sequential(
  (0): Linear(in_features=4, out_features=8, bias=True)
  (1): Tanh()
  (2): Linear(in_features=8, out_features=2, bias=False)
)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import ModelLoadError
from .models import build_model, list_models, parse_arch

__all__ = ["ArchSpec", "parse_arch_spec", "build_arch", "ARCH_FORMS", "SEQUENTIAL_ACTIVATIONS"]

#: One line per form, for ``--help`` and error messages.
ARCH_FORMS = (
    "NAME[:k=v,...] (registry)",
    "torchvision:NAME[:k=v,...]",
    "timm:NAME[:k=v,...]",
    "hf:DIR",
    "sequential:act=relu",
    "package.module:Class[:k=v,...]",
)

#: ``sequential:act=NAME``: the activation between the rebuilt layers.
SEQUENTIAL_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
}

_SPECIAL = ("torchvision", "timm", "hf", "sequential")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_ATTR_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture string: ``kind`` (registry, torchvision, timm, hf, sequential, user), ``name``
    (model name, folder, or ``module:Class``) and the keyword arguments."""

    kind: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _kwargs(text: str, spec: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return parse_arch(f"x:{text}")[1]
    except Exception as exc:
        raise ModelLoadError(
            f"--arch: Expected k=v,... options (got {text!r} in {spec!r}: {_first_line(exc)})"
        ) from None


def parse_arch_spec(spec: str) -> ArchSpec:
    """Parse one of the forms in this module's table.

    Example
    -------
    >>> parse_arch_spec("mlp:hidden=16-16")
    ArchSpec(kind='registry', name='mlp', kwargs={'hidden': (16, 16)})
    >>> parse_arch_spec("mypkg.nets:TinyNet:width=4")
    ArchSpec(kind='user', name='mypkg.nets:TinyNet', kwargs={'width': 4})
    >>> parse_arch_spec("hf:models/bert-tiny")
    ArchSpec(kind='hf', name='models/bert-tiny', kwargs={})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"--arch: Expected one of {', '.join(ARCH_FORMS)} (got {spec!r})")
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if head == "hf":
        if not rest:
            raise ModelLoadError(f"--arch: Expected hf:DIR, a folder with config.json (got {spec!r})")
        return ArchSpec("hf", rest)
    if head in ("torchvision", "timm"):
        if re.match(r"(hf[-_]hub|local-dir):", rest):
            raise ModelLoadError(
                f"--arch: Expected a {head} architecture name like resnet18 (got {rest!r}, a hub/file reference "
                "that would fetch a configuration or weights)"
            )
        name, _, opts = rest.partition(":")
        if not name:
            raise ModelLoadError(f"--arch: Expected {head}:NAME[:k=v,...] (got {spec!r})")
        return ArchSpec(head, name, _kwargs(opts, spec))
    if head == "sequential":
        return ArchSpec("sequential", "sequential", _kwargs(rest, spec))
    second, _, opts = rest.partition(":")
    is_user = rest and "=" not in second and _ATTR_RE.fullmatch(second) and _MODULE_RE.fullmatch(head)
    if is_user and head not in list_models():  # registry names win: "mlp:hidden" is a malformed option
        return ArchSpec("user", f"{head}:{second}", _kwargs(opts, spec))
    name, kwargs = head, _kwargs(rest, spec)
    return ArchSpec("registry", name, kwargs)


def build_arch(spec: str | ArchSpec, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the architecture ``spec`` at random init (``state`` is needed by ``sequential`` only).

    Raises :class:`~symgraph.errors.ModelLoadError` with one line for unknown names, options the builder
    refuses, missing packages, or (``sequential``) a state_dict that is not a plain Linear/Conv chain.

    Example
    -------
    >>> type(build_arch("mlp")).__name__
    'MLP'
    """
    s = spec if isinstance(spec, ArchSpec) else parse_arch_spec(spec)
    text = spec if isinstance(spec, str) else _format(s)
    builder = {
        "registry": _build_registry,
        "torchvision": _build_torchvision,
        "timm": _build_timm,
        "hf": _build_hf,
        "user": _build_user,
    }.get(s.kind)
    if s.kind == "sequential":
        return _build_sequential(s, state, text)
    model = builder(s, text)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {text!r}: Expected an nn.Module (got {type(model).__name__})")
    return model


def _format(s: ArchSpec) -> str:
    opts = ",".join(f"{k}={v}" for k, v in s.kwargs.items())
    head = s.name if s.kind in ("registry", "user") else f"{s.kind}:{s.name}"
    return head + (f":{opts}" if opts else "")


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _import_optional(package: str, spec: str):
    """A third-party package that only some architecture forms need (not a symgraph module)."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(
            f"--arch {spec!r} needs the '{package}' package, which is not importable here ({_first_line(exc)}); "
            f"install it (pip install {package})"
        ) from None


# ---------------------------------------------------------------------------------------------- registry
def _build_registry(s: ArchSpec, text: str) -> nn.Module:
    names = list_models()
    if s.name not in names:
        near = difflib.get_close_matches(s.name, names, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ModelLoadError(
            f"--arch: Expected a registry name ({', '.join(names)}) or one of the forms "
            f"{', '.join(ARCH_FORMS[1:])} (got {s.name!r}){hint}"
        )
    try:
        return build_model(s.name, **s.kwargs)
    except Exception as exc:
        raise ModelLoadError(f"--arch {text!r}: could not build the model: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- torchvision
_FETCHING_OPTIONS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress")


def _refuse_fetching(s: ArchSpec, text: str, allowed_none: tuple[str, ...]) -> None:
    for key in s.kwargs:
        if key in _FETCHING_OPTIONS + ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
            if key in allowed_none and s.kwargs[key] in (None, False):
                continue
            raise ModelLoadError(
                f"--arch {text!r}: option {key!r} would load pretrained weights; symgraph builds architectures at "
                "random init and never downloads (give the weights as the model file instead)"
            )


def _build_torchvision(s: ArchSpec, text: str) -> nn.Module:
    tv = _import_optional("torchvision", text)
    names = tv.models.list_models()
    if s.name not in names:
        near = difflib.get_close_matches(s.name, names, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ModelLoadError(f"--arch {text!r}: Expected a torchvision model name (got {s.name!r}){hint}")
    _refuse_fetching(s, text, allowed_none=("weights", "weights_backbone", "progress"))
    builder = tv.models.get_model_builder(s.name)
    kwargs = dict(s.kwargs)
    kwargs["weights"] = None
    params = inspect.signature(builder).parameters
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None  # detection/segmentation builders default to a pretrained backbone
    try:
        return builder(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"--arch {text!r}: torchvision could not build it: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- timm
def _build_timm(s: ArchSpec, text: str) -> nn.Module:
    if re.match(r"(hf[-_]hub|local-dir|timm/)", s.name) or "/" in s.name:
        raise ModelLoadError(
            f"--arch {text!r}: Expected a timm architecture name like resnet18 (got {s.name!r}, a hub/file "
            "reference that would fetch a configuration or weights)"
        )
    _refuse_fetching(s, text, allowed_none=("pretrained",))
    timm = _import_optional("timm", text)
    if not timm.is_model(s.name):
        near = difflib.get_close_matches(s.name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ModelLoadError(f"--arch {text!r}: Expected a timm model name (got {s.name!r}){hint}")
    kwargs = {k: v for k, v in s.kwargs.items() if k != "pretrained"}
    try:
        return timm.create_model(s.name, pretrained=False, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"--arch {text!r}: timm could not build it: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- hf
def hf_folder(name: str | Path, text: str | None = None) -> Path:
    """The folder of an ``hf:DIR`` spec, checked to hold a ``config.json``."""
    d = Path(name)
    where = text or f"hf:{name}"
    if not d.is_dir():
        raise ModelLoadError(f"--arch {where!r}: Expected a folder with config.json (got {str(d)!r}: no such folder)")
    if not (d / "config.json").is_file():
        raise ModelLoadError(f"--arch {where!r}: Expected a folder with config.json (got {str(d)!r} without one)")
    return d


def hf_class_and_config(folder: str | Path, text: str | None = None) -> tuple[Any, Any]:
    """``(class, config)`` of a Hugging Face folder: the transformers class its ``architectures`` entry names
    (else ``AutoModel``) and its configuration, read offline. Refuses configurations that need remote code."""
    d = hf_folder(folder, text)
    text = text or f"hf:{folder}"
    try:
        raw = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--arch {text!r}: config.json is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"--arch {text!r}: Expected a JSON object in config.json (got {type(raw).__name__})")
    if raw.get("auto_map"):
        raise ModelLoadError(
            f"--arch {text!r}: this configuration needs its own modelling code (config.json has 'auto_map'); "
            "symgraph never runs code from a model folder: import the class yourself with "
            "--arch package.module:Class"
        )
    transformers = _import_optional("transformers", text)
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"--arch {text!r}: transformers could not read config.json: {_first_line(exc)}") from None
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    cls = getattr(transformers, archs[0], None) if archs else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        cls = transformers.AutoModel
    return cls, config


class quiet_transformers:  # noqa: N801 - used like a function: `with quiet_transformers():`
    """Silence transformers' logging and progress bars inside the block (restored afterwards)."""

    def __enter__(self):
        import transformers

        self._logging = transformers.utils.logging
        self._level = self._logging.get_verbosity()
        self._bars = self._logging.is_progress_bar_enabled()
        self._logging.set_verbosity_error()
        self._logging.disable_progress_bar()
        return self

    def __exit__(self, *exc: object) -> None:
        self._logging.set_verbosity(self._level)
        if self._bars:
            self._logging.enable_progress_bar()


def _build_hf(s: ArchSpec, text: str) -> nn.Module:
    cls, config = hf_class_and_config(s.name, text)
    try:
        with quiet_transformers():
            return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except Exception as exc:
        raise ModelLoadError(
            f"--arch {text!r}: transformers could not build {cls.__name__}: {_first_line(exc)}"
        ) from None


# ---------------------------------------------------------------------------------------------- user class
def _build_user(s: ArchSpec, text: str) -> nn.Module:
    module_name, _, attr = s.name.partition(":")
    # like `python -m`: the current directory comes first on the import path
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ModelLoadError(
                f"--arch {text!r}: Expected an importable module {module_name!r} (got no module named {missing!r}; "
                f"searched the current directory {str(Path.cwd())!r} and sys.path)"
            ) from None
        raise ModelLoadError(f"--arch {text!r}: importing {module_name!r} failed: {_first_line(exc)}") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ModelLoadError(
            f"--arch {text!r}: importing {module_name!r} raised {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        if added:
            sys.path.remove("")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(
                f"--arch {text!r}: Expected module {module_name!r} to define {attr!r} (got no attribute {part!r})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"--arch {text!r}: Expected a class or factory (got {type(obj).__name__})")
    try:
        model = obj(**s.kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"--arch {text!r}: {attr}({', '.join(f'{k}={v!r}' for k, v in s.kwargs.items())}) raised "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    return model


# ---------------------------------------------------------------------------------------------- sequential
_SEQ_KEY = re.compile(r"(\d+)\.(weight|bias)")
_SEQ_OPTIONS = ("act", "stride", "padding", "size")


def looks_sequential(keys) -> bool:
    """Do these state_dict keys look like a plain ``nn.Sequential`` (``0.weight``, ``2.bias``, ...)?"""
    keys = list(keys)
    return bool(keys) and all(re.match(r"\d+\.", k) for k in keys)


def _build_sequential(s: ArchSpec, state: Mapping[str, torch.Tensor] | None, text: str) -> nn.Sequential:
    where = f"--arch {text!r}"
    unknown = [k for k in s.kwargs if k not in _SEQ_OPTIONS]
    if unknown:
        raise ModelLoadError(f"{where}: Expected options among {', '.join(_SEQ_OPTIONS)} (got {unknown[0]!r})")
    if state is None:
        raise ModelLoadError(
            f"{where}: rebuilds an nn.Sequential from a state_dict's keys and shapes; Expected a weights file "
            "(got none)"
        )
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _SEQ_KEY.fullmatch(k)
        if m is None:
            raise ModelLoadError(
                f"{where}: Expected only '<index>.weight' and '<index>.bias' keys of Linear/Conv layers (got {k!r}); "
                "a state_dict with other layers (norms, attention, nested modules) needs its architecture: "
                "--arch package.module:Class"
            )
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    act_name = s.kwargs.get("act")
    if act_name is not None and str(act_name).lower() not in SEQUENTIAL_ACTIVATIONS:
        raise ModelLoadError(f"{where}: Expected act among {', '.join(SEQUENTIAL_ACTIVATIONS)} (got {act_name!r})")
    act = SEQUENTIAL_ACTIVATIONS[str(act_name).lower()] if act_name is not None else None
    stride, padding = int(s.kwargs.get("stride", 1)), int(s.kwargs.get("padding", 0))
    modules: list[nn.Module] = []
    order = sorted(layers)
    prev_out = None
    prev_kind = None
    for pos, idx in enumerate(order):
        entry = layers[idx]
        if "weight" not in entry:
            raise ModelLoadError(f"{where}: Expected '{idx}.weight' beside '{idx}.bias' (got only the bias)")
        w, b = entry["weight"], entry.get("bias")
        if w.dim() == 2:
            kind = "linear"
        elif w.dim() in (3, 4, 5):
            kind = f"conv{w.dim() - 2}d"
        else:
            raise ModelLoadError(
                f"{where}: Expected Linear (2-D) or Conv (3-D to 5-D) weights (got '{idx}.weight' of shape "
                f"{tuple(w.shape)}, e.g. a norm layer); only Linear/Conv chains can be rebuilt from the file alone"
            )
        if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0]):
            raise ModelLoadError(f"{where}: Expected '{idx}.bias' of shape ({w.shape[0]},) (got {tuple(b.shape)})")
        gap = idx - (order[pos - 1] if pos else -1) - 1
        between = _between(where, prev_kind, kind, gap, act, idx, order[pos - 1] if pos else None)
        modules.extend(between)
        if prev_out is not None and prev_kind == "linear" and kind == "linear" and w.shape[1] != prev_out:
            raise ModelLoadError(
                f"{where}: Expected '{idx}.weight' to take {prev_out} inputs (got shape {tuple(w.shape)})"
            )
        if prev_out is not None and prev_kind != "linear" and kind == prev_kind and w.shape[1] != prev_out:
            raise ModelLoadError(
                f"{where}: Expected '{idx}.weight' to take {prev_out} input channels (got shape {tuple(w.shape)}; "
                "grouped convolutions cannot be rebuilt from the file alone)"
            )
        if kind == "linear":
            mod: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        else:
            conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[kind]
            mod = conv(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding, bias=b is not None)
        modules.append(mod)
        prev_out, prev_kind = w.shape[0], kind
    model = nn.Sequential(*modules)
    model.example_input_shape = _sequential_input(where, modules, s.kwargs.get("size"))
    return model


def _between(where, prev_kind, kind, gap, act, idx, prev_idx) -> list[nn.Module]:
    """The parameter-free modules between two layers, from how many indices the file skips."""
    if prev_kind is None:  # before the first layer: a leading nn.Flatten (images into an MLP) is all we accept
        if gap == 0:
            return []
        if gap == 1 and kind == "linear":
            return [nn.Flatten()]
        raise ModelLoadError(
            f"{where}: Expected the first layer at index 0 (or 1 after an nn.Flatten) (got index {idx})"
        )
    conv_to_linear = prev_kind != "linear" and kind == "linear"
    if prev_kind == "linear" and kind != "linear":
        raise ModelLoadError(
            f"{where}: Expected Linear layers after Conv layers, not before (got a Conv at index {idx} after a Linear)"
        )
    if prev_kind != "linear" and kind != "linear" and kind != prev_kind:
        raise ModelLoadError(f"{where}: Expected convolutions of one dimension (got {prev_kind} then {kind})")
    if gap == 0:
        if conv_to_linear:
            raise ModelLoadError(f"{where}: Expected a flatten between the Conv at {prev_idx} and the Linear at {idx}")
        return []
    need = 1 + (1 if conv_to_linear else 0)
    if conv_to_linear and gap == 1:
        return [nn.Flatten()]
    if gap == need:
        if act is None:
            raise ModelLoadError(
                f"{where}: the file skips index {prev_idx + 1} between layers {prev_idx} and {idx} (an activation, "
                f"which a state_dict does not record); give it: sequential:act=relu (one of "
                f"{', '.join(SEQUENTIAL_ACTIVATIONS)})"
            )
        return [act()] + ([nn.Flatten()] if conv_to_linear else [])
    raise ModelLoadError(
        f"{where}: Expected at most {need} parameter-free module(s) between layers {prev_idx} and {idx} (got {gap}: "
        "pooling, dropout or norm layers there are not recorded in a state_dict); give the architecture with "
        "--arch package.module:Class"
    )


def _sequential_input(where: str, modules: list[nn.Module], size: Any) -> tuple[int, ...]:
    first = next(m for m in modules if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d))
    if isinstance(first, nn.Linear):
        return (1, first.in_features)
    convs = [m for m in modules if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    dims = len(first.kernel_size)
    linear = next((m for m in modules if isinstance(m, nn.Linear)), None)
    if linear is None:
        side = int(size) if size is not None else 32
        return (1, first.in_channels) + (side,) * dims
    # conv -> flatten -> linear: the linear's inputs are channels x positions of the last conv's output
    channels = convs[-1].out_channels
    if linear.in_features % channels:
        raise ModelLoadError(
            f"{where}: Expected the first Linear's {linear.in_features} inputs to be a multiple of the last Conv's "
            f"{channels} channels"
        )
    positions = linear.in_features // channels
    side = round(positions ** (1.0 / dims))
    if side**dims != positions:
        raise ModelLoadError(
            f"{where}: Expected a square output of the last Conv ({positions} positions per channel is not a "
            f"{dims}-D cube); give --input-shape"
        )
    for conv in reversed(convs):  # invert the output-size formula (smallest input of that output size)
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        side = (side - 1) * s - 2 * p + d * (k - 1) + 1
    if side < 1 or (size is not None and int(size) != side):
        raise ModelLoadError(f"{where}: Expected an input size that gives the Linear its inputs (got {side})")
    return (1, first.in_channels) + (side,) * dims
