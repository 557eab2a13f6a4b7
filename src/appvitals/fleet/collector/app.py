"""The collector as an ASGI app: `create_app` builds every part once, fully, and wires them.

- `writer.Writer`: opens the warehouse, the bounded write queue, the writer thread, health
- `ingest.IngestRoute`: `POST /v1/ingest` (who may write, the body, the answer)
- `/metrics`, `/healthz` (here) and the read side (`web.routes`: report, sessions, dashboard)

Backpressure: when the queue is full a request waits for room before reading more of its
body (the socket is not read, TCP pushes back on the client); a request that waits longer
than `max_wait` seconds, or that arrives while the queue is full, is answered `503` with
`Retry-After`. Memory is bounded by `max_queue * chunk_lines` queued lines, one chunk per
open request, the line limit and `max_body_bytes` per compressed request; `serve` caps open
connections too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from appvitals.extras import require as _require_extra

_require_extra("collector")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appvitals.fleet.collector.body import MAX_OUTPUT, MAX_RATIO
from appvitals.fleet.collector.ingest import IngestRoute
from appvitals.fleet.collector.metrics import CollectorMetrics
from appvitals.fleet.collector.writer import Writer
from appvitals.fleet.warehouse import Warehouse
from appvitals.fleet.wire.protocol import MAX_LINE_BYTES
from appvitals.httpauth import Tokens, json_error, unauthorized
from appvitals.stats.prometheus import exposition
from appvitals.stats.registry import Registry


def create_app(
    warehouse: str | Warehouse,
    tokens: Iterable[str] = (),
    read_tokens: Iterable[str] = (),
    *,
    max_queue: int = 64,
    chunk_lines: int = 1000,
    group_lines: int = 20_000,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_body_bytes: int = MAX_OUTPUT,
    max_body_ratio: float = MAX_RATIO,
    max_wait: float = 5.0,
    retry_after: int = 2,
    flush_interval: float = 1.0,
    retention_days: int | None = None,
    registry: Registry | None = None,
    decode_workers: int = 0,
    ingest_log: bool = True,
    close_warehouse: bool | None = None,
    allow_origins: Iterable[str] = (),
) -> Starlette:
    """The collector as an ASGI app: ingest, /metrics, /healthz and the read side (report,
    sessions, dashboard). An empty token is refused (`httpauth.TokenError`)."""
    write_tokens, read_only = Tokens(tokens), Tokens(read_tokens)
    metrics = CollectorMetrics(registry)
    writer = Writer(
        warehouse, metrics, ingest_log=ingest_log, close_warehouse=close_warehouse,
        decode_workers=decode_workers, max_queue=max_queue, group_lines=group_lines,
        max_wait=max_wait, retry_after=retry_after, retention_days=retention_days,
    )
    ingest = IngestRoute(writer, write_tokens, chunk_lines=chunk_lines, max_line_bytes=max_line_bytes,
                         flush_interval=flush_interval, max_body_bytes=max_body_bytes, max_body_ratio=max_body_ratio,
                         allowed_origins=allow_origins)

    def warehouse_getter() -> Warehouse:
        """The warehouse the app writes to (opened at startup when given as a URL)."""
        return writer.warehouse  # type: ignore[return-value]

    def check_read(request: Request) -> Response | None:
        """None when the request may read; else the 401 response to send."""
        return None if read_only.allows(request) else unauthorized()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        """Open the warehouse and start the writer; drain and close at shutdown."""
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    async def metrics_route(request: Request) -> Response:
        """GET /metrics: the collector's own registry in Prometheus text format."""
        denied = check_read(request)
        if denied is not None:
            return denied
        if writer.running:
            metrics.queue_depth.set(writer.depth())
            metrics.queue_lines.set(writer.queued_lines)
            metrics.log_pending_lines.set(writer.warehouse.pending_lines())
        body, content_type = exposition(metrics.registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        """GET /healthz: 200 when the collector can accept data; 503 and why otherwise."""
        if not writer.running:
            return json_error(503, "the collector is starting or stopping", status="starting or stopping")
        depth = writer.depth()
        if writer.write_error is not None:  # until a write succeeds again
            return json_error(503, f"the warehouse cannot store data: {writer.write_error}",
                              {"Retry-After": str(retry_after)}, status="failing", queue_depth=depth)
        if writer.full():
            return json_error(503, "overloaded: the write queue is full", {"Retry-After": str(retry_after)},
                              status="overloaded", queue_depth=depth)
        return JSONResponse({"status": "ok", "queue_depth": depth, "dialect": writer.warehouse.dialect})  # type: ignore[union-attr]

    from appvitals.fleet.collector.web.routes import read_routes

    app = Starlette(
        routes=[
            Route("/v1/ingest", ingest.endpoint, methods=["POST"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            *read_routes(warehouse_getter, check_read),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.writer = writer
    app.state.warehouse_getter = warehouse_getter
    return app
