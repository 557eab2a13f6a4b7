"""`vitals`: the command line. Each command is a thin wrapper over a library call.

This module imports nothing optional, so that a missing 'cli' extra is reported in one line.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vitals` console script."""
    from appvitals.extras import MissingExtra, require

    try:
        require("cli")
    except MissingExtra as exc:
        print(f"vitals: error: {exc}", file=sys.stderr)
        sys.exit(1)
    from appvitals.cli.app import main as _main

    _main(argv)
