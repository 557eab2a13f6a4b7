"""Optional parts of appvitals and the pip extras that install them.

`pip install appvitals` gives the in-app core (instruments, registry, snapshots, Prometheus
text, the plain SQLite store) with msgspec as its only dependency. Everything else sits
behind an extra; a missing one is named in the error, with the command that installs it.
"""

from __future__ import annotations

import importlib.util

#: extra -> (what it enables, the modules it brings)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "crypto": ("an encrypted (SQLCipher) store", ("sqlcipher3",)),
    "serve": ("the in-app HTTP server (appvitals.serve)", ("starlette", "uvicorn")),
    "cli": ("the `vitals` command line and terminal view", ("click", "rich")),
    "agent": ("the fleet agent and watchdog", ("psutil",)),
    "collector": ("the fleet collector and its DuckDB warehouse",
                  ("starlette", "uvicorn", "duckdb", "pyarrow", "zstandard", "httptools")),
    "clickhouse": ("the ClickHouse warehouse", ("clickhouse_driver",)),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, extra: str, missing: str):
        what = EXTRAS[extra][0]
        super().__init__(
            f"{what} needs the '{extra}' extra (module {missing!r} is not installed): "
            f"pip install 'appvitals[{extra}]'"
        )
        self.extra = extra
        self.missing = missing


def missing(extra: str) -> str | None:
    """The first module of `extra` that is not installed, or None."""
    for module in EXTRAS[extra][1]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def require(extra: str) -> None:
    """Raise MissingExtra when a module of `extra` is not installed."""
    module = missing(extra)
    if module is not None:
        raise MissingExtra(extra, module)
