"""The ``quelea`` console script: the Rust command line, run in this interpreter."""

from __future__ import annotations

import sys


def main() -> int:
    from . import _engine

    return _engine.cli_main(["quelea", *sys.argv[1:]], sys.executable)


if __name__ == "__main__":
    sys.exit(main())
