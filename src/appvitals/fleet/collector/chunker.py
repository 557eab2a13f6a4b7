"""One request's lines on their way to the writer: `Chunker` turns raw lines into decoded
chunks (in-process, or as Arrow batches built by the decode workers) and queues them;
`RequestState` sums what their writes did, for the answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from appvitals.fleet.collector.decode import (
    MAX_ERRORS,
    DecodeWorkerLost,
    arrow_or_reject,
    decode_lines,
    decode_numbered,
)
from appvitals.fleet.collector.metrics import CollectorMetrics
from appvitals.fleet.collector.writer import Overloaded, Stored, Writer
from appvitals.fleet.wire.protocol import AnyLine

_request_numbers = itertools.count(1)


class RequestState:
    """What one request's chunks did, summed as their commits finish."""

    __slots__ = ("number", "accepted", "duplicates", "rejected", "errors", "pending", "failure", "metrics")

    def __init__(self, metrics: CollectorMetrics) -> None:
        self.number = next(_request_numbers)  # blocks of older requests are decoded first
        self.metrics = metrics
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []
        self.pending: set[asyncio.Future] = set()
        self.failure: BaseException | None = None

    def add_rejected(self, rejected: int, errors: list[dict[str, Any]]) -> None:
        """Count bad lines and keep their errors (MAX_ERRORS at most, the first lines' first)."""
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
        result: Stored = future.result()
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        if result.errors:  # lines the warehouse could not hold
            self.add_rejected(len(result.errors), result.errors)

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

    def counts(self) -> dict[str, Any]:
        """Counts so far (for any answer, also one that ends a request early)."""
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "errors": self.errors}


class Chunker:
    """Raw lines of one request -> decoded chunks of `chunk_lines` lines -> the write queue.

    In-process, lines are decoded as they arrive. With a decode pool, raw lines are gathered
    into blocks that worker processes turn into Arrow batches while the server keeps reading;
    at most `decode_slots` blocks are out at once per collector (bounded memory), and a
    request waits for a slot before reading more of its body."""

    def __init__(self, writer: Writer, state: RequestState, chunk_lines: int):
        self.writer = writer
        self.state = state
        self.chunk_lines = chunk_lines
        self.line_no = 0  # raw lines seen so far
        self.lines: list[AnyLine] = []
        self.numbers: list[int] = []  # the line number of each of self.lines
        self.blocks = writer.decode_pool is not None
        self.parts: list[bytes] = []  # raw lines gathered for the next block, each ending in a newline
        self.gathered = 0  # lines in parts
        self.first = 1
        self.tasks: list[asyncio.Task] = []

    async def add(self, raws: list[bytes], skipped: int = 0) -> None:
        """Take the next raw lines of the body (after `skipped` blank lines passed over)."""
        if skipped:
            await self.skip(skipped)
        if not raws:
            return
        if self.blocks:
            await self.add_block(b"\n".join(raws) + b"\n", len(raws))
            return
        errors: list[dict[str, Any]] = []
        rejected = decode_lines(raws, self.line_no + 1, self.lines, errors, self.numbers)
        self.state.add_rejected(rejected, errors)
        self.line_no += len(raws)
        while len(self.lines) >= self.chunk_lines:
            await self._submit_lines(self.chunk_lines)

    async def _submit_lines(self, count: int) -> None:
        part, self.lines = self.lines[:count], self.lines[count:]
        numbers, self.numbers = self.numbers[:count], self.numbers[count:]
        self.state.track(await self.writer.submit(part, numbers=numbers))

    async def skip(self, count: int) -> None:
        """Pass over `count` blank lines: they only move the line numbers on."""
        if self.parts:  # a block's lines are numbered from its first: send it before the gap
            await self._dispatch()
        self.line_no += count

    async def add_block(self, block: bytes, count: int, skipped: int = 0) -> None:
        """Take the next `count` raw lines of the body as one bytes object (decode workers only)."""
        if skipped:
            await self.skip(skipped)
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
            await self._submit_lines(len(self.lines))
        if self.parts:
            await self._dispatch()

    async def _dispatch(self) -> None:
        data, first = b"".join(self.parts)[:-1], self.first  # without the last newline
        self.parts, self.gathered = [], 0
        await self.writer.decode_slots.acquire()
        task = asyncio.ensure_future(self._decode(data, first))
        task.add_done_callback(_retrieve)
        self.tasks.append(task)

    async def _decode(self, data: bytes, first: int) -> None:
        from appvitals.fleet.wire.arrow import ArrowBatch

        writer = self.writer
        writer.decoding += 1
        try:
            try:
                assert writer.decode_pool is not None
                tables, size, repeats, rejected, errors = await writer.decode_pool.decode(data, first, self.state.number)
                batch = ArrowBatch.from_ipc((tables, size, repeats))
            except DecodeWorkerLost as exc:  # the client sends the request again
                raise Overloaded(str(exc))
            except Exception:  # a worker that failed on this block (a bug): decode it here instead
                lines, numbers, rejected, errors = decode_numbered(data.split(b"\n"), first)
                batch, left_out = arrow_or_reject(lines, numbers, errors)
                rejected += left_out
            finally:
                writer.decode_slots.release()
            self.state.add_rejected(rejected, errors)
            if len(batch):
                self.state.track(await writer.submit(batch, raw=data, first=first))
        finally:
            writer.decoding -= 1

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
