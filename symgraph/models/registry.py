"""The model registry: ``@register_model("name")``, ``build_model``, ``parse_arch``, ``list_models``.

Every registered model records how it was built in ``model.arch = (name, kwargs)`` so that an architecture
can be written down as one string (``"cnn2d:hidden=32,conv_layers=2,norm=groupnorm"``), rebuilt from it, and
paired with a safetensors file of weights.

Example
-------
>>> from symgraph.models import build_model, parse_arch
>>> parse_arch("cnn2d:hidden=16,norm=groupnorm,dims=64-32,kernel=3x3,dropout=0.1,bias=false")
('cnn2d', {'hidden': 16, 'norm': 'groupnorm', 'dims': (64, 32), 'kernel': (3, 3), 'dropout': 0.1, 'bias': False})
>>> model = build_model("mlp", hidden=(8, 8))
>>> model.arch
('mlp', {'hidden': (8, 8)})
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import SymgraphError

__all__ = ["register_model", "build_model", "parse_arch", "list_models", "model_class", "format_arch"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class (or factory) decorator: ``build_model(name, **kw)`` builds it and sets ``model.arch``.

    Example
    -------
    >>> import torch.nn as nn
    >>> @register_model("doc_tiny")
    ... class Tiny(nn.Module):
    ...     example_input_shape = (1, 2)
    ...     def __init__(self, width: int = 3):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, width)
    ...     def forward(self, x):
    ...         return self.fc(x)
    >>> build_model("doc_tiny", width=5).arch
    ('doc_tiny', {'width': 5})
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
        raise SymgraphError(f"Expected a model name of letters, digits, '_', '-' or '.' (got {name!r})")

    def deco(factory):
        if name in _MODELS and _MODELS[name] is not factory:
            raise SymgraphError(f"Expected a new model name (got {name!r}, already registered)")
        _MODELS[name] = factory
        if isinstance(factory, type):
            init = factory.__init__

            @functools.wraps(init)
            def __init__(self, *args, **kwargs):
                init(self, *args, **kwargs)
                if not hasattr(self, "arch") or type(self) is factory:
                    self.arch = (name, dict(kwargs))

            factory.__init__ = __init__
        return factory

    return deco


def model_class(name: str) -> Callable[..., nn.Module]:
    """The registered class or factory of ``name``."""
    _load_builtin()
    try:
        return _MODELS[name]
    except KeyError:
        raise SymgraphError(f"Expected one of the registered models {sorted(_MODELS)} (got {name!r})") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``name`` may also be a full ``"name:k=v,..."`` string.

    Example
    -------
    >>> build_model("cnn2d:hidden=8,conv_layers=1").arch
    ('cnn2d', {'hidden': 8, 'conv_layers': 1})
    """
    if ":" in name:
        name, parsed = parse_arch(name)
        kwargs = {**parsed, **kwargs}
    factory = model_class(name)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise SymgraphError(f"Expected keyword arguments that {name!r} accepts (got {sorted(kwargs)}: {exc})") from None
    if not isinstance(factory, type) or not hasattr(model, "arch"):
        model.arch = (name, dict(kwargs))  # a factory function names its own architecture
    return model


def _parse_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for sep in ("x", "-"):
        parts = t.split(sep)
        if len(parts) > 1 and all(re.fullmatch(r"[0-9]+", p) for p in parts):
            return tuple(int(p) for p in parts)
    if re.fullmatch(r"[+-]?[0-9]+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return t


def parse_arch(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:k=v,k2=v2"`` -> ``(name, {k: v, ...})``; values: int, float, bool, None, str, tuples ``3x3``/``64-64``.

    Example
    -------
    >>> parse_arch("vit:dim=32,depth=2,heads=4")
    ('vit', {'dim': 32, 'depth': 2, 'heads': 4})
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise SymgraphError(f"Expected 'name:k=v,...' (got {spec!r})")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SymgraphError(f"Expected 'key=value' in the architecture string (got {item!r} in {spec!r})")
        kwargs[key.strip()] = _parse_value(value)
    return name, kwargs


def format_arch(name: str, kwargs: dict[str, Any]) -> str:
    """Inverse of :func:`parse_arch` for the value types it parses."""

    def fmt(v):
        if isinstance(v, tuple | list):
            return "-".join(str(int(x)) for x in v)
        return str(v).lower() if isinstance(v, bool) else str(v)

    return name + (":" + ",".join(f"{k}={fmt(v)}" for k, v in kwargs.items()) if kwargs else "")


def list_models() -> list[str]:
    """Names of all registered models, sorted.

    Example
    -------
    >>> {"mlp", "cnn2d", "cnn1d", "deepsets", "resnet", "vit", "transformer"} <= set(list_models())
    True
    """
    _load_builtin()
    return sorted(_MODELS)


def _load_builtin() -> None:
    from . import __name__ as pkg  # noqa: F401  (importing the package registers the built-in families)
