"""`appvitals.serve(reg)`: a small HTTP server inside the app, in a background thread.

Routes (SPEC sections 2 and 4):
- `GET /metrics`      Prometheus text 0.0.4, or OpenMetrics 1.0 when the Accept header asks for it
- `GET /v1/snapshot`  the snapshot JSON; parameters `scope`, `since`, `until`, `where=key=value`
                      (repeatable), `metric=glob` (repeatable), `group` (repeatable)
- `GET /v1/events`    a live Server-Sent Events stream: `state` (a transition) and `record` (a new
                      event/error record) as soon as they are seen, `deltas` (counter increments,
                      gauge changes, new histogram samples) at a steady pace
Bad parameters answer 400 with `{"error": "..."}` (the error shape of `appvitals.httpauth`);
with a token, every route wants `Authorization: Bearer TOKEN` (401 otherwise).

The collector's rules: loopback by default; a public address only with a token (or
`insecure=True`); while bound to loopback, a request whose Host header names anything else
is refused (a web page that points its own name at 127.0.0.1, DNS rebinding, cannot read
the stats); a request's cost is bounded (at most `MAX_PATTERNS` metric/where/group
parameters, globs of at most `MAX_GLOB` characters and `MAX_STARS` wildcards).

The server is a Starlette app run by uvicorn in a daemon thread; the listening socket is bound
before `serve()` returns, so `port=0` picks a free port and a busy port fails at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from appvitals.extras import require as _require_extra

_require_extra('serve')

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from appvitals.httpauth import Tokens, host_header_ok, is_loopback, json_error, unauthorized
from appvitals.stats import query as _query
from appvitals.stats import snapshot as _snap
from appvitals.stats.prometheus import exposition
from appvitals.stats.registry import Registry

POLL_INTERVAL = 1.0  # the longest the live stream waits between looks (changes wake it at once)
DELTA_INTERVAL = 1.0  # how often it reports counter deltas
MAX_PATTERNS = 32  # metric=, where= and group= parameters of one request
MAX_GLOB = 200  # characters of one metric= glob
MAX_STARS = 4  # wildcards (* ? [) in one glob: fnmatch's cost grows with their number
_json = msgspec.json.Encoder()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _error(status: int, message: str) -> JSONResponse:
    return json_error(status, message)


def _bounded(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The query parameters, or QueryError when one request would cost too much."""
    if sum(1 for key, _ in params if key in ("metric", "where", "group")) > MAX_PATTERNS:
        raise _query.QueryError(f"at most {MAX_PATTERNS} metric/where/group parameters a request")
    for key, value in params:
        if key != "metric" and len(value) > 2 * MAX_GLOB:
            raise _query.QueryError(f"{key}: longer than {2 * MAX_GLOB} characters")
        if key == "metric":
            if len(value) > MAX_GLOB:
                raise _query.QueryError(f"metric: a glob of at most {MAX_GLOB} characters")
            if sum(value.count(c) for c in "*?[") > MAX_STARS:
                raise _query.QueryError(f"metric: at most {MAX_STARS} wildcards in a glob")
    return params


def create_app(registry: Registry, token: str | None = None, stopping: threading.Event | None = None,
               poll_interval: float = POLL_INTERVAL, delta_interval: float = DELTA_INTERVAL,
               loopback_hosts_only: bool = False) -> Starlette:
    """The Starlette app behind `serve()` (usable on its own, e.g. mounted in a bigger app).

    `loopback_hosts_only`: refuse requests whose Host header is not a loopback name or address
    (`serve()` turns it on when bound to loopback). An empty token is refused (TokenError)."""
    stopping = stopping or threading.Event()
    tokens = Tokens([token] if token is not None else [])

    def denied(request: Request) -> Response | None:
        if loopback_hosts_only and not host_header_ok(request):
            return json_error(421, "this server answers only requests addressed to localhost")
        if not tokens.allows(request):
            return unauthorized()
        return None

    async def metrics(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        body, content_type = await run_in_threadpool(exposition, registry, request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def snapshot(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        try:
            q = _query.from_params(_bounded(request.query_params.multi_items()))
            snap = await run_in_threadpool(_query.read_registry, registry, q)
        except (_query.QueryError, ValueError) as exc:
            return _error(400, _one_line(exc))
        except Exception as exc:  # e.g. the store has no history that old: say so, in one line
            return _error(500, _one_line(exc))
        return Response(snap.to_json(), media_type="application/json")

    async def events(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        try:
            q = _query.from_params(_bounded(request.query_params.multi_items()))
            if q.windowed:
                raise _query.QueryError("the live stream has no time window: drop since/until")
            first = _query.apply(await run_in_threadpool(registry.snapshot, "session"), q)
        except _query.QueryError as exc:
            return _error(400, str(exc))
        stream = _live(registry, q, first, stopping, poll_interval, delta_interval)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def index(request: Request) -> Response:
        if (bad := denied(request)) is not None:
            return bad
        return JSONResponse({"routes": ["/metrics", "/v1/snapshot", "/v1/events"]})

    return Starlette(routes=[
        Route("/", index),
        Route("/metrics", metrics),
        Route("/v1/snapshot", snapshot),
        Route("/v1/events", events),
    ])


# ---------------------------------------------------------------- the live stream


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


def _by_key(snap: _snap.Snapshot) -> dict[tuple, tuple[_snap.MetricSnapshot, _snap.Series]]:
    out = {}
    for m in snap.metrics:
        for s in m.series:
            out[(m.name, _snap._key(s.labels))] = (m, s)
    return out


def changes(before: _snap.Snapshot, after: _snap.Snapshot) -> list[tuple[str, dict]]:
    """Immediate changes between two snapshots: state transitions and new event records."""
    out: list[tuple[str, dict]] = []
    old = _by_key(before)
    for key, (m, s) in _by_key(after).items():
        prev = old.get(key, (None, None))[1]
        if m.kind == "state":
            n_before = sum((prev.transitions or {}).values()) if prev else 0
            n_new = sum((s.transitions or {}).values()) - n_before
            if n_new > 0 or (prev is not None and prev.current != s.current):
                for t in (s.history or [])[-max(n_new, 1):]:
                    out.append(("state", {"metric": m.name, "labels": s.labels, "from": t.from_, "to": t.to,
                                          "at": t.at, "reason": t.reason}))
        elif m.kind == "events":
            n_new = (s.total or 0) - ((prev.total or 0) if prev else 0)
            if n_new < 0:  # reset or forgotten: the ring restarted
                n_new = s.total or 0
            if n_new:
                for record in (s.recent or [])[-n_new:]:
                    out.append(("record", {"metric": m.name, "labels": s.labels, **record}))
    out.sort(key=lambda item: _snap._parse_at(item[1]))
    return out


def deltas(before: _snap.Snapshot, after: _snap.Snapshot, interval: float) -> dict:
    """What moved since the last tick: counter increments, gauge values, new histogram samples."""
    old = _by_key(before)
    counters, gauges, histograms = [], [], []
    for key, (m, s) in _by_key(after).items():
        prev = old.get(key, (None, None))[1]
        if m.kind == "counter":
            delta = (s.value or 0.0) - ((prev.value or 0.0) if prev else 0.0)
            if delta < 0:  # reset: count from zero
                delta = s.value or 0.0
            if delta:
                counters.append({"metric": m.name, "labels": s.labels, "delta": delta, "value": s.value})
        elif m.kind == "gauge":
            if prev is None or prev.value != s.value:
                gauges.append({"metric": m.name, "labels": s.labels, "value": s.value})
        elif m.kind == "histogram":
            n = (s.count or 0) - ((prev.count or 0) if prev else 0)
            if n > 0:
                histograms.append({"metric": m.name, "labels": s.labels, "count": n,
                                   "sum": (s.sum or 0.0) - ((prev.sum or 0.0) if prev else 0.0)})
    return {"at": after.taken_at, "interval": interval, "counters": counters, "gauges": gauges,
            "histograms": histograms}


async def _live(registry: Registry, q: _query.Query, first: _snap.Snapshot, stopping: threading.Event,
                poll_interval: float, delta_interval: float) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    yield _sse("hello", {"taken_at": first.taken_at, "session_started_at": first.session_started_at,
                         "tracking_since": first.tracking_since, "poll_interval": poll_interval,
                         "delta_interval": delta_interval})
    # transitions and records are pushed: the registry wakes this loop from the mutating thread
    # (debounced, at most one wake-up pending); `poll_interval` only bounds how long a wait lasts
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    pending = threading.Event()

    def fire() -> None:
        pending.clear()
        changed.set()

    def wake() -> None:
        if not pending.is_set():
            pending.set()
            loop.call_soon_threadsafe(fire)

    unsubscribe = registry.subscribe(wake)
    last = last_tick = first
    next_tick = time.monotonic() + delta_interval
    try:
        while not stopping.is_set():
            timeout = max(0.0, min(poll_interval, next_tick - time.monotonic()))
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                pass
            changed.clear()
            current = _query.apply(await run_in_threadpool(registry.snapshot, "session"),
                                   msgspec.structs.replace(q, where={}))
            if q.where:
                current = _snap.filter_snapshot(current, where=q.where)
            for event, data in changes(last, current):
                yield _sse(event, data)
            last = current
            if time.monotonic() >= next_tick:
                yield _sse("deltas", deltas(last_tick, current, delta_interval))
                last_tick = current
                next_tick += delta_interval
                if next_tick < time.monotonic():  # fell behind (a slow client): keep the pace, skip the backlog
                    next_tick = time.monotonic() + delta_interval
    finally:
        unsubscribe()


# ---------------------------------------------------------------- the background server


class ServerHandle:
    """A running `serve()`: `.url`, `.host`, `.port`, `.stop()`; also a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int,
                 stopping: threading.Event) -> None:
        self._server, self._thread, self._stopping = server, thread, stopping
        self.host, self.port = host, port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: live streams end, the port is released; waits up to `timeout` seconds."""
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread.is_alive()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<appvitals server {self.url}>"


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


def serve(registry: Registry, host: str = "127.0.0.1", port: int = 9464, token: str | None = None,
          poll_interval: float = POLL_INTERVAL, delta_interval: float = DELTA_INTERVAL,
          insecure: bool = False) -> ServerHandle:
    """Serve /metrics, /v1/snapshot and /v1/events in a daemon thread; returns a handle with `.stop()`.

    `port=0` picks a free port (see `handle.port`); a busy port raises OSError here. Listening
    beyond loopback needs a `token` (ValueError otherwise), unless `insecure=True`; an empty
    token is refused."""
    tokens = Tokens([token] if token is not None else [])  # TokenError (a ValueError) when empty
    loopback = is_loopback(host)
    if not loopback and not tokens and not insecure:
        raise ValueError(f"appvitals.serve: refusing to listen on {host} without a token (anyone could read "
                         "the stats); pass token=..., or insecure=True to allow it")
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    stopping = threading.Event()
    app = create_app(registry, token, stopping, poll_interval, delta_interval, loopback_hosts_only=loopback)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2, loop="asyncio")
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"appvitals-serve-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"appvitals: the HTTP server on {host}:{bound_port} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"appvitals: the HTTP server on {host}:{bound_port} did not start within 10 s")
        time.sleep(0.01)
    return ServerHandle(server, thread, host, bound_port, stopping)
