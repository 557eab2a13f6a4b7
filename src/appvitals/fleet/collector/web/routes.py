"""HTTP routes of the read side: GET /v1/report, GET /v1/sessions/{session_id}, the dashboard and its files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from appvitals.extras import require as _require_extra

_require_extra('collector')

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from appvitals.fleet.analysis.report import ReportError, build_report, session_detail
from appvitals.fleet.collector.writer import storage_failure
from appvitals.httpauth import json_error

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
INDEX = HERE / "templates" / "index.html"
_encoder = msgspec.json.Encoder()
log = logging.getLogger("appvitals.collector")


def _float(request: Request, name: str, default: float | None) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ReportError(f"{name}: expected a number, got {raw[:40]!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ReportError(f"{name}: expected a finite number, got {raw[:40]!r}")
    return value


def _int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 3:
        raise ReportError(f"{name}: expected a small whole number, got {raw[:40]!r}")
    return int(raw)


def report_params(request: Request) -> dict:
    """Keyword arguments of build_report from the query string; raises ReportError on bad input."""
    q = request.query_params
    compare = [v for v in q.get("compare", "").split(",") if v] or None
    return {
        "since": q.get("since") or "12h",
        "until": q.get("until") or None,
        "metric": q.get("metric") or "cpu",
        "threshold": _float(request, "threshold", 30.0),
        "min_support": _float(request, "min_support", None),
        "min_risk_ratio": _float(request, "min_risk_ratio", None),
        "max_order": _int(request, "max_order"),
        "fdr": _float(request, "fdr", None),
        "where": q.getlist("where") or None,
        "compare": compare,
    }


def read_routes(warehouse_getter: Callable, check_read: Callable) -> list:
    """Starlette routes for /v1/report, /v1/sessions/{session_id}, / and /static."""

    async def report(request: Request) -> Response:
        denied = check_read(request)
        if denied is not None:
            return denied
        try:
            params = report_params(request)
            result = await asyncio.to_thread(build_report, warehouse_getter(), **params)
        except ReportError as exc:
            return json_error(400, str(exc))
        except Exception as exc:  # a warehouse failure: one JSON line, details in the log
            if "OutOfMemory" in type(exc).__name__:  # the collector's memory limit, not a bug: say what to do
                log.warning("report ran out of memory: %s", str(exc).splitlines()[0] if str(exc) else exc)
                return json_error(503, "the report needs more memory than the collector's limit: ask for a shorter "
                                   "window (since/until), max_order=2, or a drill path (where=)")
            if storage_failure(exc):  # the warehouse itself (DuckDB reopening after a fatal error, ...)
                log.error("report: the warehouse failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
                return json_error(503, f"the warehouse cannot be read right now, try again: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}", {"Retry-After": "5"})
            log.exception("report failed")
            return json_error(500, f"report failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return Response(_encoder.encode(result), media_type="application/json")

    async def session(request: Request) -> Response:
        denied = check_read(request)
        if denied is not None:
            return denied
        sid = request.path_params["session_id"]
        if not 1 <= len(sid) <= 128:
            return json_error(400, "session_id: must be 1-128 characters")
        detail = await asyncio.to_thread(session_detail, warehouse_getter(), sid)
        if detail is None:
            return json_error(404, f"no session {sid!r}")
        return Response(_encoder.encode(detail), media_type="application/json")

    async def index(request: Request) -> Response:
        # the page itself holds no data; its API calls carry the read token
        return FileResponse(INDEX, media_type="text/html; charset=utf-8")

    return [
        Route("/v1/report", report, methods=["GET"]),
        Route("/v1/sessions/{session_id:path}", session, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
