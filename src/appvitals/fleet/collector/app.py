"""The fleet collector: `POST /v1/ingest` (SPEC section 3) into a Warehouse, with backpressure.

Pipeline, per request: body chunks -> incremental decompression -> line splitting ->
`decode_line` -> chunks of `chunk_lines` good lines -> a bounded asyncio queue -> one
writer (a single thread) that groups queued chunks into one warehouse write (one commit).
A request is answered only after every one of its chunks is committed, so a `200` means
its accepted lines are durable.

Backpressure: when the queue is full a request waits for room before reading more of
its body (the socket is not read, TCP pushes back on the client); a request that waits
longer than `max_wait` seconds, or that arrives while the queue is full, is answered
`503` with `Retry-After`. Memory is bounded by `max_queue * chunk_lines` queued lines,
one chunk per open request, and the line limit; `serve` caps open connections too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appvitals.extras import require as _require_extra

_require_extra('collector')

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appvitals.fleet.collector.body import (
    BadCompression,
    Decompressor,
    LineSplitter,
    LineTooLong,
    UnsupportedEncoding,
)
from appvitals.fleet.collector.decode import (
    MAX_ERRORS,
    DecodePool,
    DecodeWorkerLost,
    decode_lines,
    use_system_allocator,
)
from appvitals.fleet.collector.metrics import CollectorMetrics
from appvitals.fleet.warehouse import InsertResult, Warehouse, open_warehouse
from appvitals.fleet.wire.protocol import MAX_LINE_BYTES, AnyLine
from appvitals.stats.prometheus import exposition
from appvitals.stats.registry import Registry

log = logging.getLogger("appvitals.collector")

DEFAULT_PORT = 8420


class IngestResult(msgspec.Struct):
    """The body of a 200 answer to POST /v1/ingest."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = []


class Overloaded(Exception):
    """The writer fell behind: answer 503 with Retry-After."""


class _Job:
    __slots__ = ("lines", "future")

    def __init__(self, lines: list[AnyLine], future: asyncio.Future):
        self.lines = lines
        self.future = future


class Collector:
    """The write side: a bounded queue of line chunks and one writer thread that commits them."""

    def __init__(
        self,
        warehouse: Warehouse,
        metrics: CollectorMetrics,
        max_queue: int = 64,
        group_lines: int = 20_000,
        max_wait: float = 5.0,
        retry_after: int = 2,
        retention_days: int | None = None,
        retention_interval: float = 3600.0,
        decode_pool: DecodePool | None = None,
        decode_slots: int = 4,
        linger: float = 0.015,
    ):
        self.warehouse = warehouse
        # raw chunks -> Arrow batches in worker processes (DuckDB only); None decodes in-process
        self.decode_pool = decode_pool
        self.decode_slots = asyncio.Semaphore(decode_slots)
        self.decoding = 0  # blocks in the decode workers, not yet queued for writing
        self.linger = linger
        self.metrics = metrics
        self.max_queue = max_queue
        self.group_lines = group_lines
        self.max_wait = max_wait
        self.retry_after = retry_after
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self.queue: asyncio.Queue[_Job | None] | None = None
        self.queued_lines = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vitals-writer")
        self._tasks: list[asyncio.Task] = []
        self.healthy = False

    async def start(self) -> None:
        """Start the writer (and the retention timer when asked)."""
        self.queue = asyncio.Queue(self.max_queue)
        self._tasks.append(asyncio.create_task(self._write_loop(), name="vitals-writer"))
        if self.retention_days:
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="vitals-retention"))
        # a backend without rollups returns 0 from roll_up(): the loop then wakes once a minute
        self._tasks.append(asyncio.create_task(self._rollup_loop(), name="vitals-rollup"))
        self.healthy = True

    async def stop(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self.healthy = False
        if self.queue is not None and self._tasks:
            await self.queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks[0]
        for task in self._tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._executor.shutdown(wait=True)

    def depth(self) -> int:
        """Chunks waiting in the queue."""
        return self.queue.qsize() if self.queue is not None else 0

    def full(self) -> bool:
        """True when no chunk fits in the queue right now."""
        return self.queue is None or self.queue.full()

    async def submit(self, lines: Sequence[AnyLine]) -> asyncio.Future:
        """Queue a chunk; its future resolves to an InsertResult once committed. Raises Overloaded."""
        assert self.queue is not None, "collector not started"
        future = asyncio.get_running_loop().create_future()
        job = _Job(lines, future)
        self.queued_lines += len(lines)  # before the put: the writer may take the job first
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.backpressure_waits.inc()
            try:
                await asyncio.wait_for(self.queue.put(job), self.max_wait)
            except TimeoutError:
                self.queued_lines -= len(lines)
                raise Overloaded(f"writer behind by {self.depth()} chunks")
            except asyncio.CancelledError:  # the request was answered meanwhile
                self.queued_lines -= len(lines)
                raise
        return future

    async def _write_loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        queue = self.queue
        stopping = False
        while not stopping:
            job = await queue.get()
            if job is None:
                break
            jobs = [job]
            total = len(job.lines)
            while total < self.group_lines:
                try:
                    more = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if not self.decoding:
                        break
                    # Group commit: blocks are in the decode workers and will be queued within
                    # milliseconds. Waiting for them (up to `linger` for each, up to group_lines
                    # in all) makes one write of several requests instead of several writes: a
                    # write costs DuckDB several ms whatever its size, and the requests are
                    # answered together. On the ingest bench (2 connections x 5,000 lines),
                    # 15 ms gathers both requests into one write: +10-15 % samples/s, -15 % CPU
                    # a line; 5 ms caught only one request per write.
                    try:
                        more = await asyncio.wait_for(queue.get(), self.linger)
                    except TimeoutError:
                        break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
                total += len(more.lines)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.warehouse.insert_many, [j.lines for j in jobs]
                )
            except Exception as exc:  # the warehouse failed: every waiting request answers 503
                log.error("warehouse write failed: %s", exc)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
            else:
                for j, result in zip(jobs, results):
                    if not j.future.done():
                        j.future.set_result(result)
                try:  # counting must never stop the writer
                    self.metrics.write_seconds.observe(time.perf_counter() - started)
                    self.metrics.batch_lines.observe(total)
                    for result in results:
                        self.metrics.lines(result.accepted, result.duplicates)
                except Exception as exc:  # pragma: no cover - a bug, logged rather than fatal
                    log.error("collector metrics failed: %s", exc)
            finally:
                self.queued_lines -= total

    async def _rollup_loop(self, every: float = 60.0) -> None:
        # closed 10-minute buckets of samples are rolled up for the report (DuckDB), in the
        # writer's thread so it never races a write
        loop = asyncio.get_running_loop()
        while True:
            more = 0
            try:  # one bounded step at a time, so queued writes go in between
                more = await loop.run_in_executor(self._executor, self.warehouse.roll_up)
            except Exception as exc:
                log.error("rollup failed: %s", exc)
            await asyncio.sleep(0.2 if more else every)

    async def _retention_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, self.warehouse.apply_retention, self.retention_days)
            except Exception as exc:
                log.error("retention failed: %s", exc)
            await asyncio.sleep(self.retention_interval)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def _token_ok(request: Request, tokens: Sequence[str]) -> bool:
    if not tokens:
        return True
    given = _bearer(request)
    if given is None:
        return False
    ok = False
    for token in tokens:  # no early exit: the time taken does not tell which token matched
        ok |= hmac.compare_digest(given.encode(), token.encode())
    return ok


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong token"}, 401, headers={"WWW-Authenticate": "Bearer"})


class _Ingest:
    """POST /v1/ingest."""

    def __init__(self, collector: Collector, tokens: Sequence[str], chunk_lines: int,
                 max_line_bytes: int, flush_interval: float):
        self.collector = collector
        self.tokens = tuple(tokens)
        self.chunk_lines = chunk_lines
        self.max_line_bytes = max_line_bytes
        self.flush_interval = flush_interval

    async def endpoint(self, request: Request) -> Response:
        """Answer one ingest request and count it."""
        started = time.perf_counter()
        response = await self._handle(request)
        self.collector.metrics.answered(response.status_code, time.perf_counter() - started)
        return response

    def _busy(self, why: str) -> JSONResponse:
        self.collector.metrics.overloaded.inc()
        return JSONResponse(
            {"error": f"overloaded: {why}; retry later"}, 503,
            headers={"Retry-After": str(self.collector.retry_after)},
        )

    async def _handle(self, request: Request) -> Response:
        collector = self.collector
        if not _token_ok(request, self.tokens):
            return _unauthorized()
        try:
            decompressor = Decompressor(request.headers.get("content-encoding"))
        except UnsupportedEncoding as exc:
            return JSONResponse({"error": str(exc)}, 415)
        if not collector.healthy:
            return self._busy("collector is shutting down")
        if collector.full():
            return self._busy("write queue full")

        splitter = LineSplitter(self.max_line_bytes)
        state = _RequestState(collector.metrics)
        chunk = _Chunker(collector, state, self.chunk_lines)
        try:
            async with contextlib.aclosing(_body_chunks(request, self.flush_interval)) as chunks:
                async for data in chunks:
                    if data is None:  # the client is quiet: commit what we have so far
                        await chunk.flush()
                        continue
                    for plain in decompressor.feed(data):
                        if chunk.blocks:  # the decode workers split the lines
                            await chunk.add_block(*splitter.feed_block(plain))
                        else:
                            await chunk.add(splitter.feed(plain))
                        if splitter.too_long:
                            break
                    if splitter.too_long:
                        break
            await chunk.add(splitter.finish())
            await chunk.flush()
            await chunk.decoded()
            await state.wait()
            splitter.check()
        except LineTooLong as exc:
            await chunk.settle(self.collector.max_wait)
            return JSONResponse({"error": f"line {chunk.line_no + 1}: {exc}", **state.partial()}, 413)
        except BadCompression as exc:
            await chunk.settle(self.collector.max_wait)
            return JSONResponse({"error": str(exc), **state.partial()}, 400)
        except Overloaded as exc:  # answer now: queued chunks still commit, a retry sees them as duplicates
            chunk.cancel()
            return self._busy(str(exc))
        except ClientDisconnect:
            chunk.cancel()
            return Response(status_code=400)
        if state.failure is not None:
            return self._busy(f"warehouse write failed: {state.failure}")
        body = IngestResult(state.accepted, state.duplicates, state.rejected, state.errors)
        return Response(msgspec.json.encode(body), 200, media_type="application/json")


class _Chunker:
    """Raw lines of one request -> decoded chunks of `chunk_lines` lines -> the write queue.

    In-process, lines are decoded as they arrive. With a decode pool, raw lines are gathered
    into blocks that worker processes turn into Arrow batches while the server keeps reading;
    at most `decode_slots` blocks are out at once per collector (bounded memory), and a
    request waits for a slot before reading more of its body."""

    def __init__(self, collector: Collector, state: _RequestState, chunk_lines: int):
        self.collector = collector
        self.state = state
        self.chunk_lines = chunk_lines
        self.line_no = 0  # raw lines seen so far
        self.lines: list[AnyLine] = []
        self.blocks = collector.decode_pool is not None
        self.parts: list[bytes] = []  # raw lines gathered for the next block, each ending in a newline
        self.gathered = 0  # lines in parts
        self.first = 1
        self.tasks: list[asyncio.Task] = []

    async def add(self, raws: list[bytes]) -> None:
        """Take the next raw lines of the body."""
        if not raws:
            return
        if self.blocks:
            await self.add_block(b"\n".join(raws) + b"\n", len(raws))
            return
        self.line_no = self.state.decode(raws, self.lines, self.line_no)
        while len(self.lines) >= self.chunk_lines:
            part, self.lines = self.lines[:self.chunk_lines], self.lines[self.chunk_lines:]
            self.state.track(await self.collector.submit(part))

    async def add_block(self, block: bytes, count: int) -> None:
        """Take the next `count` raw lines of the body as one bytes object (decode workers only)."""
        if not count:
            return
        if not self.parts:
            self.first = self.line_no + 1
        self.parts.append(block)
        self.gathered += count
        self.line_no += count
        if self.gathered >= self.chunk_lines:
            await self._dispatch()

    async def flush(self) -> None:
        """Send what is gathered so far on its way to the writer."""
        if self.lines:
            part, self.lines = self.lines, []
            self.state.track(await self.collector.submit(part))
        if self.parts:
            await self._dispatch()

    async def _dispatch(self) -> None:
        data, first = b"".join(self.parts)[:-1], self.first  # without the last newline
        self.parts, self.gathered = [], 0
        await self.collector.decode_slots.acquire()
        task = asyncio.ensure_future(self._decode(data, first))
        task.add_done_callback(_retrieve)
        self.tasks.append(task)

    async def _decode(self, data: bytes, first: int) -> None:
        from appvitals.fleet.wire.arrow import ArrowBatch

        collector = self.collector
        collector.decoding += 1
        try:
            try:
                assert collector.decode_pool is not None
                tables, size, repeats, rejected, errors = await collector.decode_pool.decode(data, first, self.state.number)
            except DecodeWorkerLost as exc:  # the client sends the request again
                raise Overloaded(str(exc))
            finally:
                collector.decode_slots.release()
            self.state.add_rejected(rejected, errors)
            batch = ArrowBatch.from_ipc((tables, size, repeats))
            if len(batch):
                self.state.track(await collector.submit(batch))
        finally:
            collector.decoding -= 1

    async def decoded(self) -> None:
        """Wait for every block sent to the workers to be queued for writing (raises Overloaded)."""
        if self.tasks:
            await asyncio.gather(*self.tasks)

    def cancel(self) -> None:
        """After a 503 or a lost client: blocks not yet queued for writing are dropped, so an
        answered request does not keep taking decode slots and queue room from the others."""
        for task in self.tasks:
            task.cancel()

    async def settle(self, timeout: float) -> None:
        """After an early answer: let blocks already sent reach the writer, then wait a little
        for their commits, so the counts reported are true."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=timeout)
        await self.state.settle(timeout)


def _retrieve(task: asyncio.Task) -> None:
    # a request that answered early (503, 413) no longer waits for its blocks: mark their errors seen
    if not task.cancelled():
        task.exception()


class _RequestState:
    """What one request's chunks did, summed as their commits finish."""

    count = 0
    __slots__ = ("number", "accepted", "duplicates", "rejected", "errors", "pending", "failure", "metrics")

    def __init__(self, metrics: CollectorMetrics) -> None:
        _RequestState.count += 1
        self.number = _RequestState.count  # blocks of older requests are decoded first
        self.metrics = metrics
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []
        self.pending: set[asyncio.Future] = set()
        self.failure: BaseException | None = None

    def decode(self, raws: list[bytes], into: list[AnyLine], line_no: int) -> int:
        """Decode raw lines into `into`, noting bad ones by line number; returns the last line number."""
        errors: list[dict[str, Any]] = []
        self.add_rejected(decode_lines(raws, line_no + 1, into, errors), errors)
        return line_no + len(raws)

    def add_rejected(self, rejected: int, errors: list[dict[str, Any]]) -> None:
        """Count bad lines and keep their errors (MAX_ERRORS at most)."""
        if rejected:
            self.rejected += rejected
            self.metrics.rejected.inc(rejected)
        if errors:  # blocks decoded by workers finish in any order: keep the first lines' errors
            self.errors = sorted(self.errors + errors, key=lambda e: e["line"])[:MAX_ERRORS]

    def track(self, future: asyncio.Future) -> None:
        """Count a queued chunk's result when its commit finishes."""
        self.pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self.pending.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failure = exc
            return
        result: InsertResult = future.result()
        self.accepted += result.accepted
        self.duplicates += result.duplicates

    async def wait(self) -> None:
        """Wait until every queued chunk of the request is committed (or failed)."""
        if self.pending:
            await asyncio.wait(list(self.pending))

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for queued chunks, ignoring failures."""
        # chunks already queued still commit; wait a little so the counts we report are true
        if self.pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self.pending), timeout=timeout)

    def partial(self) -> dict[str, int]:
        """Counts so far, for answers that end a request early."""
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


async def _body_chunks(request: Request, idle: float):
    """Body chunks; None after `idle` seconds without data, so slow streams still commit."""
    stream = request.stream().__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait((pending,), timeout=idle)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                data = task.result()
            except StopAsyncIteration:
                return
            if data:
                yield data
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    warehouse: str | Warehouse,
    tokens: Iterable[str] = (),
    read_tokens: Iterable[str] = (),
    *,
    max_queue: int = 64,
    chunk_lines: int = 1000,
    group_lines: int = 20_000,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_wait: float = 5.0,
    retry_after: int = 2,
    flush_interval: float = 1.0,
    retention_days: int | None = None,
    registry: Registry | None = None,
    decode_workers: int = 0,
    ingest_log: bool = True,
    close_warehouse: bool | None = None,
) -> Starlette:
    """The collector as an ASGI app: ingest, /metrics, /healthz and the read side (report, sessions, dashboard)."""
    tokens = tuple(t for t in tokens if t)
    read_tokens = tuple(t for t in read_tokens if t)
    owns_warehouse = isinstance(warehouse, str)
    # closed at shutdown: one opened here, or one handed over (`vitals serve`: uvicorn ends the
    # process by re-raising SIGTERM once it has shut down, so the caller's own close never runs)
    closes = owns_warehouse if close_warehouse is None else close_warehouse
    metrics = CollectorMetrics(registry)
    holder: dict[str, Any] = {"warehouse": warehouse if not owns_warehouse else None}
    collector_ref: dict[str, Collector] = {}

    def warehouse_getter() -> Warehouse:
        """The warehouse the app writes to (opened at startup when given as a URL)."""
        return holder["warehouse"]

    def check_read(request: Request) -> Response | None:
        """None when the request may read; else the 401 response to send."""
        return None if _token_ok(request, read_tokens) else _unauthorized()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        """Open the warehouse and start the writer; drain and close at shutdown."""
        if holder["warehouse"] is None:
            holder["warehouse"] = await asyncio.to_thread(open_warehouse, warehouse, ingest_log)  # type: ignore[arg-type]
        pool = None
        if decode_workers > 0 and holder["warehouse"].takes_arrow:
            pool = DecodePool(decode_workers)
            await pool.start()  # now (spawned processes import the package), not on the first request
        collector = Collector(
            holder["warehouse"], metrics, max_queue=max_queue, group_lines=group_lines,
            max_wait=max_wait, retry_after=retry_after, retention_days=retention_days,
            decode_pool=pool, decode_slots=2 * decode_workers + 2,
        )
        await collector.start()
        collector_ref["c"] = collector
        ingest.collector = collector
        try:
            yield
        finally:
            await collector.stop()
            if pool is not None:
                await pool.close()
            if closes:
                await asyncio.to_thread(holder["warehouse"].close)

    ingest = _Ingest(None, tokens, chunk_lines, max_line_bytes, flush_interval)  # type: ignore[arg-type]

    async def metrics_route(request: Request) -> Response:
        """GET /metrics: the collector's own registry in Prometheus text format."""
        denied = check_read(request)
        if denied is not None:
            return denied
        collector = collector_ref.get("c")
        if collector is not None:
            metrics.queue_depth.set(collector.depth())
            metrics.queue_lines.set(collector.queued_lines)
            metrics.log_pending_lines.set(collector.warehouse.pending_lines())
        body, content_type = exposition(metrics.registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        """GET /healthz: 200 when the collector can accept data."""
        collector = collector_ref.get("c")
        if collector is None or not collector.healthy:
            return JSONResponse({"status": "starting or stopping"}, 503)
        depth = collector.depth()
        if collector.full():
            return JSONResponse({"status": "overloaded", "queue_depth": depth}, 503,
                                headers={"Retry-After": str(retry_after)})
        return JSONResponse({"status": "ok", "queue_depth": depth, "dialect": collector.warehouse.dialect})

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
    app.state.collector = collector_ref
    app.state.warehouse_getter = warehouse_getter
    return app


def check_bind(host: str, tokens: Sequence[str], read_tokens: Sequence[str], insecure: bool) -> None:
    """Refuse to listen beyond loopback without ingest and read tokens, unless `insecure`."""
    if _is_loopback(host) or insecure:
        return
    if not tokens or not read_tokens:
        raise ValueError(
            f"refusing to listen on {host} without --token and --read-token "
            "(anyone could write or read); add tokens, or --insecure to allow it"
        )


def serve(
    warehouse: str | Warehouse,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tokens: Iterable[str] = (),
    read_tokens: Iterable[str] = (),
    insecure: bool = False,
    retention_days: int | None = None,
    limit_concurrency: int = 256,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    decode_workers: int | None = None,
    **options: Any,
) -> None:
    """Run the collector in the foreground until SIGINT/SIGTERM (uvicorn on host:port)."""
    use_system_allocator()  # first: before anything allocates Arrow memory
    import uvicorn

    tokens, read_tokens = tuple(tokens), tuple(read_tokens)
    check_bind(host, tokens, read_tokens, insecure)
    _check_port_free(host, port)
    if decode_workers is None:  # one decode process per core, up to 4 (DuckDB only; see _decode.py)
        decode_workers = min(4, os.cpu_count() or 1) if (os.cpu_count() or 1) > 1 else 0
    app = create_app(warehouse, tokens, read_tokens, retention_days=retention_days,
                     decode_workers=decode_workers, **options)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False,
        limit_concurrency=limit_concurrency, timeout_keep_alive=30, lifespan="on",
        timeout_graceful_shutdown=10,  # a client streaming forever must not block a restart
    )
    server = uvicorn.Server(config)
    _tune_gc()
    if on_ready is not None:
        shown = f"[{host}]" if ":" in host else host
        original_startup = server.startup

        async def startup(sockets=None):
            """uvicorn's startup, then tell the caller where we listen."""
            await original_startup(sockets)
            on_ready(f"http://{shown}:{port}")

        server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    except SystemExit:  # uvicorn exits the process when it cannot start
        server.started = False
    if not server.started:
        raise RuntimeError(f"could not start the collector on {host}:{port}")


def _tune_gc() -> None:
    # Ingest allocates millions of short-lived container objects (decoded lines, their attrs
    # dicts, key tuples) that refcounting frees; with the default gen0 threshold (700) the
    # cyclic GC ran hundreds of times a second and re-scanned the queued lines each time
    # (~1 us per line measured). Freeze what startup built and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _check_port_free(host: str, port: int) -> None:
    # uvicorn would log a traceback-like error and exit(3); say it in one line instead
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
