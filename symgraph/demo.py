"""The README's main job: the automorphism CLI on the built-in example MLP, verified on 8 random automorphisms."""

from __future__ import annotations

import sys

from .automorphisms.__main__ import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["--example", "mlp", "--verify", "8"] + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
