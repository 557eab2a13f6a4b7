"""The collector's read side over HTTP: report, sessions and the dashboard page.

`routes(warehouse_getter, check_read)` returns Starlette routes that the collector app
mounts next to /v1/ingest; `check_read(request)` raises/returns a 401 response when the
read token is missing or wrong.
"""

from __future__ import annotations


def routes(warehouse_getter, check_read) -> list:
    """Starlette routes for /v1/report, /v1/sessions/{session_id} and / (filled in by the report work)."""
    return []
