"""The collector's write side: a bounded queue of line chunks and one writer thread that
commits them to the warehouse in groups (one write, one commit, for several requests).

A group that fails is never all-or-nothing for the requests in it. When the store itself
failed (a full disk, a lost server: `StorageFailure`, told by the exception's class), every
request in the group is answered 503 and `/healthz` says the collector cannot store data
until a write succeeds again. Any other failure is taken to come from the data: each chunk
is written alone, and a chunk that still fails is cut in halves until the lines the
warehouse cannot hold are found; those are rejected by line number and every other line is
stored. When every line of a chunk fails on its own, the store is blamed after all (503,
nothing rejected), so a failure of an unknown kind never makes clients drop good lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from appvitals.fleet.collector.decode import DecodePool, decode_numbered
from appvitals.fleet.collector.metrics import CollectorMetrics
from appvitals.fleet.warehouse import InsertResult, Warehouse, open_warehouse
from appvitals.fleet.wire.protocol import AnyLine

log = logging.getLogger("appvitals.collector")

# DB-API (PEP 249) names of errors that come from the database or its connection, not from
# the data: DuckDB's IOException is an OperationalError, a lost ClickHouse connection raises
# a NetworkError
_STORE_ERRORS = {"OperationalError", "InternalError", "InterfaceError", "IOException", "FatalException",
                 "ConnectionException", "NetworkError", "SocketTimeoutError", "PermissionException"}


class Overloaded(Exception):
    """The writer fell behind: answer 503 with Retry-After."""


class StorageFailure(Exception):
    """The warehouse could not store anything (answer 503; /healthz says why)."""


def storage_failure(exc: BaseException) -> bool:
    """True when `exc` says the store failed rather than that some line cannot be stored."""
    if isinstance(exc, (OSError, MemoryError, StorageFailure)):
        return True
    return any(cls.__name__ in _STORE_ERRORS for cls in type(exc).__mro__)


class Stored:
    """What writing one chunk did: counts, and the lines the warehouse refused (by number)."""

    __slots__ = ("accepted", "duplicates", "errors")

    def __init__(self, accepted: int = 0, duplicates: int = 0, errors: list[dict[str, Any]] | None = None):
        self.accepted = accepted
        self.duplicates = duplicates
        self.errors = errors or []

    def add(self, result: InsertResult) -> None:
        self.accepted += result.accepted
        self.duplicates += result.duplicates


class Job:
    """One queued chunk: decoded lines with their line numbers, or an Arrow batch a decode
    worker built from a raw block (kept, so a write that fails can be taken apart)."""

    __slots__ = ("batch", "numbers", "raw", "first", "future")

    def __init__(self, batch: Any, future: asyncio.Future, numbers: Sequence[int] | None = None,
                 raw: bytes | None = None, first: int = 1):
        self.batch = batch
        self.numbers = numbers
        self.raw = raw
        self.first = first
        self.future = future

    def lines(self) -> tuple[list[AnyLine], list[int]]:
        """The chunk as decoded lines and their numbers (decoding the raw block again if need be)."""
        if self.raw is not None:
            lines, numbers, _, _ = decode_numbered(self.raw.split(b"\n"), self.first)
            return lines, numbers
        numbers = list(self.numbers) if self.numbers is not None else list(range(1, len(self.batch) + 1))
        return list(self.batch), numbers


class Writer:
    """Opens the warehouse, queues chunks, commits them from one thread, tells its health."""

    def __init__(
        self,
        warehouse: str | Warehouse,
        metrics: CollectorMetrics,
        *,
        ingest_log: bool = True,
        close_warehouse: bool | None = None,
        decode_workers: int = 0,
        max_queue: int = 64,
        group_lines: int = 20_000,
        max_wait: float = 5.0,
        retry_after: int = 2,
        retention_days: int | None = None,
        retention_interval: float = 3600.0,
        linger: float = 0.015,
    ):
        self._source = warehouse
        self.warehouse: Warehouse | None = None if isinstance(warehouse, str) else warehouse
        # closed at shutdown: one opened here, or one handed over (`vitals serve`: uvicorn ends the
        # process by re-raising SIGTERM once it has shut down, so the caller's own close never runs)
        self._closes = isinstance(warehouse, str) if close_warehouse is None else close_warehouse
        self._ingest_log = ingest_log
        self._decode_workers = decode_workers
        self.decode_pool: DecodePool | None = None  # raw blocks -> Arrow batches in worker processes
        self.decode_slots = asyncio.Semaphore(2 * decode_workers + 2)
        self.decoding = 0  # blocks in the decode workers, not yet queued for writing
        self.linger = linger
        self.metrics = metrics
        self.max_queue = max_queue
        self.group_lines = group_lines
        self.max_wait = max_wait
        self.retry_after = retry_after
        self.retention_days = retention_days
        self.retention_interval = retention_interval
        self.queue: asyncio.Queue[Job | None] | None = None
        self.queued_lines = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vitals-writer")
        self._tasks: list[asyncio.Task] = []
        self.running = False
        self.write_error: str | None = None  # the last write failed because of the store: why

    async def start(self) -> None:
        """Open the warehouse (when given as a URL), start the decode workers and the writer."""
        if self.warehouse is None:
            self.warehouse = await asyncio.to_thread(open_warehouse, self._source, self._ingest_log)  # type: ignore[arg-type]
        if self._decode_workers > 0 and self.warehouse.takes_arrow:
            self.decode_pool = DecodePool(self._decode_workers)
            await self.decode_pool.start()  # now (spawned processes import the package), not on the first request
        self.queue = asyncio.Queue(self.max_queue)
        self._tasks.append(asyncio.create_task(self._write_loop(), name="vitals-writer"))
        if self.retention_days:
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="vitals-retention"))
        # a backend without rollups returns 0 from roll_up(): the loop then wakes once a minute
        self._tasks.append(asyncio.create_task(self._rollup_loop(), name="vitals-rollup"))
        self.running = True

    async def stop(self) -> None:
        """Write what is queued, stop the writer thread and the workers, close the warehouse."""
        self.running = False
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
        if self.decode_pool is not None:
            await self.decode_pool.close()
        if self._closes and self.warehouse is not None:
            await asyncio.to_thread(self.warehouse.close)

    def depth(self) -> int:
        """Chunks waiting in the queue."""
        return self.queue.qsize() if self.queue is not None else 0

    def full(self) -> bool:
        """True when no chunk fits in the queue right now."""
        return self.queue is None or self.queue.full()

    async def submit(self, batch: Any, numbers: Sequence[int] | None = None, raw: bytes | None = None,
                     first: int = 1) -> asyncio.Future:
        """Queue a chunk; its future resolves to `Stored` once committed. Raises Overloaded."""
        assert self.queue is not None, "collector not started"
        future = asyncio.get_running_loop().create_future()
        job = Job(batch, future, numbers, raw, first)
        size = len(batch)
        self.queued_lines += size  # before the put: the writer may take the job first
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.backpressure_waits.inc()
            try:
                await asyncio.wait_for(self.queue.put(job), self.max_wait)
            except TimeoutError:
                self.queued_lines -= size
                raise Overloaded(f"writer behind by {self.depth()} chunks")
            except asyncio.CancelledError:  # the request was answered meanwhile
                self.queued_lines -= size
                raise
        return future

    async def _gather(self, job: Job) -> tuple[list[Job], int, bool]:
        assert self.queue is not None
        queue = self.queue
        jobs = [job]
        total = len(job.batch)
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
                return jobs, total, True
            jobs.append(more)
            total += len(more.batch)
        return jobs, total, False

    async def _write_loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            job = await self.queue.get()
            if job is None:
                break
            jobs, total, stopping = await self._gather(job)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._write_group, jobs)
            except Exception as exc:  # the store failed: every waiting request answers 503
                self.write_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                log.error("warehouse write failed: %s", self.write_error)
                failure = StorageFailure(self.write_error)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(failure)
            else:
                for j, result in zip(jobs, results):
                    if j.future.done():
                        continue
                    if isinstance(result, BaseException):
                        j.future.set_exception(result)
                    else:
                        j.future.set_result(result)
                try:  # counting must never stop the writer
                    self.metrics.write_seconds.observe(time.perf_counter() - started)
                    self.metrics.batch_lines.observe(total)
                    for result in results:
                        if isinstance(result, Stored):
                            self.metrics.lines(result.accepted, result.duplicates)
                except Exception as exc:  # pragma: no cover - a bug, logged rather than fatal
                    log.error("collector metrics failed: %s", exc)
            finally:
                self.queued_lines -= total

    # ---- in the writer thread ------------------------------------------------------------

    def _write_group(self, jobs: list[Job]) -> list[Stored | BaseException]:
        """Write a group in one go; when that fails because of some line, write each chunk
        alone and take apart those that still fail. Raises when the store itself failed."""
        assert self.warehouse is not None
        try:
            results = self.warehouse.insert_many([j.batch for j in jobs])
        except Exception as exc:
            if storage_failure(exc):
                raise
            log.warning("a write of %d chunks failed (%s): writing them one by one", len(jobs), exc)
            out: list[Stored | BaseException] = []
            for job in jobs:
                try:
                    out.append(self._write_apart(job))
                except Exception as failure:
                    if not storage_failure(failure):
                        raise
                    out.append(StorageFailure(f"{type(failure).__name__}: {failure}"))
            if all(isinstance(r, BaseException) for r in out):
                raise out[0]  # type: ignore[misc]
        else:
            out = [Stored(r.accepted, r.duplicates) for r in results]
        self.write_error = None
        return out

    def _write_apart(self, job: Job) -> Stored:
        assert self.warehouse is not None
        try:
            (result,) = self.warehouse.insert_many([job.batch])
            return Stored(result.accepted, result.duplicates)
        except Exception as exc:
            if storage_failure(exc):
                raise
            first_error = exc
        lines, numbers = job.lines()
        stored = Stored()
        self._bisect(lines, numbers, stored, first_error)
        if len(lines) > 1 and len(stored.errors) == len(lines):
            # every line failed on its own: more likely the store than the data; keep them all
            raise StorageFailure(f"{type(first_error).__name__}: {first_error}")
        return stored

    def _bisect(self, lines: list[AnyLine], numbers: list[int], stored: Stored, error: BaseException | None) -> None:
        # `error`: this very slice is known to fail (no need to try it again)
        assert self.warehouse is not None
        if not lines:
            return
        if error is None:
            try:
                (result,) = self.warehouse.insert_many([lines])
                stored.add(result)
                return
            except Exception as exc:
                if storage_failure(exc):
                    raise
                error = exc
        if len(lines) == 1:
            text = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            stored.errors.append({"line": numbers[0], "error": f"the warehouse cannot store this line ({text})"})
            return
        half = len(lines) // 2
        self._bisect(lines[:half], numbers[:half], stored, None)
        self._bisect(lines[half:], numbers[half:], stored, None)

    # ---- background upkeep ---------------------------------------------------------------

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
                await loop.run_in_executor(self._executor, self.warehouse.apply_retention, self.retention_days)  # type: ignore[union-attr]
            except Exception as exc:
                log.error("retention failed: %s", exc)
            await asyncio.sleep(self.retention_interval)
