"""Real services in tests.

`require(name, ok)`: a test whose real service (ClickHouse, Prometheus, Chromium...) is
missing skips, except under VITALS_REQUIRE_ALL=1 (set by .ci/run), where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRE_ALL = os.environ.get("VITALS_REQUIRE_ALL") == "1"


def require(what: str, ok: bool, why: str = "") -> None:
    """Skip (or, under VITALS_REQUIRE_ALL=1, fail) when a real service is missing."""
    if ok:
        return
    msg = f"{what} is not available{': ' + why if why else ''}"
    if REQUIRE_ALL:
        pytest.fail(msg + " (VITALS_REQUIRE_ALL=1)")
    pytest.skip(msg)


def require_binary(name: str) -> str:
    """Path of an executable, or skip/fail as `require` does."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(name, path is not None, "install the Debian package (see .ci/run)")
    return path  # type: ignore[return-value]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
