"""The README's main job on the built-in example model (the automorphism CLI takes over when present)."""

from __future__ import annotations

import sys

import torch.nn as nn


def example_model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def main(argv: list[str] | None = None) -> int:
    try:
        from .automorphisms.__main__ import main as cli_main
    except ImportError:
        cli_main = None
    if cli_main is not None:
        return cli_main(["--example", "mlp", "--verify", "8"] + list(argv or []))
    import symgraph

    g = symgraph.parameter_graph(example_model())
    print(g.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
