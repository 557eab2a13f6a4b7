"""The collector's read side over HTTP: report, sessions and the dashboard page.

`read_routes(warehouse_getter, check_read)` returns Starlette routes that the collector app
mounts next to /v1/ingest; `check_read(request)` returns a 401 response (or None) when the
read token is missing or wrong.
"""

from __future__ import annotations

from appvitals.fleet.collector.web.routes import read_routes

__all__ = ["read_routes"]
