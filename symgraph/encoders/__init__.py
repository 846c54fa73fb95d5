"""Built-in encoders, one file per layer family. Importing this package registers them all."""

from . import activation, conv, linear, pooling, residual, shape  # noqa: F401

__all__ = ["activation", "conv", "linear", "pooling", "residual", "shape"]
