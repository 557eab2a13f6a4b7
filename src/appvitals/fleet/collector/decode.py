"""Line decoding shared by the collector's request handler and its decode worker processes.

`decode_lines` validates raw lines one by one (bad ones reported by line number, blank ones
ignored). `decode_chunk` is what a worker process runs: a block of raw lines in, the good
lines as per-table Arrow IPC bytes out, so the collector's own process -- which holds the
event loop and the one DuckDB writer -- does no per-line Python work for them. With two
cores, parsing then runs beside the HTTP server and the database instead of taking turns
with them for one interpreter lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import os
import socket
import struct
from typing import Any

import msgspec

from appvitals.fleet.wire.protocol import AnyLine, LineError, decode_block, decode_line, decode_many

MAX_ERRORS = 100

log = logging.getLogger("appvitals.collector")


def decode_lines(raws: list[bytes], first_line: int, into: list[AnyLine],
                 errors: list[dict[str, Any]], numbers: list[int] | None = None) -> int:
    """Decode `raws` (line numbers from `first_line`) into `into`; bad lines go to `errors`
    (at most MAX_ERRORS kept), the number of each good line to `numbers` when given.
    Returns how many lines were rejected. Blank lines are skipped (they still count for
    line numbers) before any decoding is tried, so they cost next to nothing."""
    try:
        good = decode_many(raws)
    except Exception:  # e.g. RecursionError on very deep nesting: find the line below
        good = None
    if good is not None:  # the usual case: every line valid, decoded without a Python loop
        into.extend(good)
        if numbers is not None:
            numbers.extend(range(first_line, first_line + len(raws)))
        return 0
    append = into.append
    rejected = 0
    line_no = first_line - 1
    for raw in raws:
        line_no += 1
        if not raw or raw.isspace():  # blank lines are allowed and ignored
            continue
        try:
            append(decode_line(raw))
        except Exception as exc:  # LineError; RecursionError on deep nesting: this line only
            rejected += 1
            if len(errors) < MAX_ERRORS:
                message = str(exc) if isinstance(exc, LineError) else f"cannot decode this line ({type(exc).__name__})"
                errors.append({"line": line_no, "error": message})
            continue
        if numbers is not None:
            numbers.append(line_no)
    return rejected


def decode_numbered(raws: list[bytes], first_line: int) -> tuple[list[AnyLine], list[int], int, list[dict[str, Any]]]:
    """`decode_lines` returning (good lines, their numbers, rejected, errors)."""
    lines: list[AnyLine] = []
    numbers: list[int] = []
    errors: list[dict[str, Any]] = []
    rejected = decode_lines(raws, first_line, lines, errors, numbers)
    return lines, numbers, rejected, errors


def arrow_or_reject(lines: list[AnyLine], numbers: list[int], errors: list[dict[str, Any]]):
    """The lines as one ArrowBatch, and how many had to be left out: a line whose values the
    columns cannot hold (an integer beyond 64 bits) is rejected by number, not the block."""
    from appvitals.fleet.wire.arrow import ArrowBatch

    try:
        return ArrowBatch.from_lines(lines), 0
    except Exception:  # find the lines that cannot be built, one by one
        pass
    kept: list[AnyLine] = []
    rejected = 0
    for line, number in zip(lines, numbers):
        try:
            ArrowBatch.from_lines([line])
        except Exception as exc:
            rejected += 1
            if len(errors) < MAX_ERRORS:
                errors.append({"line": number, "error": f"a value is out of range ({type(exc).__name__}: {exc})"[:300]})
            continue
        kept.append(line)
    errors.sort(key=lambda e: e["line"])
    return ArrowBatch.from_lines(kept), rejected


def decode_chunk(data: bytes, first_line: int) -> tuple[Any, int, list[dict[str, Any]]]:
    """Worker side: newline-separated raw lines -> (ArrowBatch in IPC form, rejected, errors).

    The usual block -- every line good -- is decoded in one call, sample attrs checked once per
    distinct text; any bad line sends the whole block down the line-by-line path, which names it."""
    from appvitals.fleet.wire.arrow import ArrowBatch

    try:
        block = decode_block(data, data.count(b"\n") + 1) if data else None
    except Exception:  # e.g. RecursionError on very deep nesting: the line-by-line path names it
        block = None
    if block is not None:
        try:
            return ArrowBatch.from_lines(block).to_ipc(), 0, []
        except Exception:  # sample attrs over a limit, a value the columns cannot hold
            pass
    lines, numbers, rejected, errors = decode_numbered(data.split(b"\n"), first_line)
    batch, left_out = arrow_or_reject(lines, numbers, errors)
    return batch.to_ipc(), rejected + left_out, errors[:MAX_ERRORS]


class DecodeWorkerLost(RuntimeError):
    """A decode worker process died with blocks in hand (it is restarted; send them again)."""


_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header: payload length
_FIRST = struct.Struct("<q")  # a request: first line number, then the raw lines
_encode_reply = msgspec.msgpack.Encoder().encode
_Reply = tuple[dict[str, bytes], int, int, int, list[dict[str, Any]], str]  # tables, size, repeats, rejected, errors, failure
_decode_reply = msgspec.msgpack.Decoder(_Reply).decode


class DecodePool:
    """`workers` spawned decode processes, each behind its own socket pair, driven from the
    event loop: a block is written to a worker's socket and its reply read back by a reader
    task, with no thread in between.

    Why not `concurrent.futures.ProcessPoolExecutor`: each block there passes a manager thread
    and a feeder thread, and each of them waits for the interpreter lock the event loop holds
    while it reads request bodies (up to the 5 ms switch interval a hop). Traced on the ingest
    bench, a block waited 14 ms (median) between its dispatch and the start of its decode, which
    itself took 7 ms. Here the event loop writes the block to the socket itself.

    Each worker holds at most `depth` blocks (one decoding, one waiting in its socket, so it
    never idles between them); the others wait here, the blocks of older requests first (by
    `priority`), so one request's blocks finish together instead of every request's at the same
    late time. Replies come back in order per worker. A worker that dies fails the blocks it
    held (`DecodeWorkerLost`) and is started again. A worker leaves when its socket closes: at
    `close()`, or when the collector is killed (no thread watching the parent is needed)."""

    def __init__(self, workers: int, depth: int = 2):
        self.size = workers
        self._slots: list[_Worker | None] = [None] * workers
        self._closing = False
        self.depth = depth
        self._starting: set[_Worker] = set()  # started, not ready yet
        self._queue: list[tuple[int, int, bytes, int, asyncio.Future]] = []
        self._count = 0

    async def start(self) -> None:
        """Start every worker and wait until each has imported what it needs."""
        await asyncio.gather(*(self._start(i) for i in range(self.size)))

    async def _start(self, index: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)  # a socket pair
        process = ctx.Process(target=_worker_main, args=(child,), name=f"vitals-decode-{index}", daemon=True)
        await asyncio.to_thread(process.start)
        child.close()
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        # a reply of a few hundred KB is read without pausing the socket on the way
        reader, writer = await asyncio.open_connection(sock=sock, limit=8 << 20)
        worker = _Worker(process, reader, writer)
        self._starting.add(worker)
        try:
            await worker.read_reply()  # "ready"
        except BaseException:
            worker.close()
            raise
        finally:
            self._starting.discard(worker)
        if self._closing:
            worker.close()
            return
        worker.task = asyncio.create_task(self._read_replies(index, worker), name=f"vitals-decode-{index}")
        self._slots[index] = worker
        self._pump()

    async def _read_replies(self, index: int, worker: _Worker) -> None:
        try:
            while True:
                reply = await worker.read_reply()
                future = worker.waiting.popleft()
                self._pump()
                if future.done():
                    continue
                if reply[5]:
                    future.set_exception(RuntimeError(f"decode worker failed: {reply[5]}"))
                else:
                    future.set_result(reply[:5])
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        lost = DecodeWorkerLost(f"decode worker {index} (pid {worker.process.pid}) died")
        for future in worker.waiting:
            if not future.done():
                future.set_exception(lost)
        worker.waiting.clear()
        worker.close()
        if self._slots[index] is worker:
            self._slots[index] = None
            if not self._closing:
                log.error("%s; starting another", lost)
                await asyncio.to_thread(worker.process.join, 5)
                if not self._closing:
                    try:
                        await self._start(index)
                    except Exception as exc:  # blocks waiting for a worker must not wait forever
                        log.error("could not start decode worker %d: %s", index, exc)
                        if not any(self._slots):
                            for *_, future in self._queue:
                                if not future.done():
                                    future.set_exception(DecodeWorkerLost(f"no decode worker is running: {exc}"))
                            self._queue.clear()

    async def decode(self, data: bytes, first_line: int, priority: int = 0) -> tuple[dict[str, bytes], int, int, int, list[dict[str, Any]]]:  # noqa: E501
        """`decode_chunk` in a worker: (tables as IPC bytes, size, repeats, rejected, errors)."""
        workers = [w for w in self._slots if w is not None]
        if not workers:
            raise DecodeWorkerLost("no decode worker is running")
        future = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._queue, (priority, self._count, data, first_line, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        queue = self._queue
        while queue:
            workers = [w for w in self._slots if w is not None and len(w.waiting) < self.depth]
            if not workers:
                return
            worker = min(workers, key=lambda w: len(w.waiting))
            _, _, data, first_line, future = heapq.heappop(queue)
            if future.done():  # cancelled meanwhile
                continue
            worker.waiting.append(future)
            worker.writer.writelines((_HEADER.pack(len(data) + _FIRST.size), _FIRST.pack(first_line), data))

    async def close(self) -> None:
        """Stop every worker (each leaves once its socket closes) and wait for them."""
        self._closing = True
        workers = [w for w in self._slots if w is not None] + list(self._starting)
        for worker in workers:
            worker.close()
        for worker in workers:
            if worker.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker.task  # it may be starting a replacement: closing stops that
            await asyncio.to_thread(worker.process.join, 5)
            if worker.process.is_alive():
                worker.process.kill()


class _Worker:
    __slots__ = ("process", "reader", "writer", "waiting", "task")

    def __init__(self, process, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.process = process
        self.reader = reader
        self.writer = writer
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.task: asyncio.Task | None = None

    async def read_reply(self):
        (size,) = _HEADER.unpack(await self.reader.readexactly(_HEADER.size))
        return _decode_reply(await self.reader.readexactly(size))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _worker_main(conn) -> None:
    """A decode worker: blocks in, replies out, until the collector closes the socket."""
    _worker_init()
    try:
        conn.send_bytes(_encode_reply(({}, 0, 0, 0, [], "")))  # ready
    except OSError:
        return
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):  # the collector closed the socket, or is gone
            return
        (first_line,) = _FIRST.unpack_from(request)
        try:
            (tables, size, repeats), rejected, errors = decode_chunk(request[_FIRST.size:], first_line)
            reply = _encode_reply((tables, size, repeats, rejected, errors, ""))
        except Exception as exc:  # a bug, not bad input (decode_chunk reports that): fail this block only
            reply = _encode_reply(({}, 0, 0, 0, [], f"{type(exc).__name__}: {exc}"))
        try:
            conn.send_bytes(reply)
        except OSError:
            return


def _worker_init() -> None:
    # a decode worker: the pool is sized to the cores, so keep pyarrow to one thread, and let
    # the cyclic GC leave the short-lived line objects to reference counting (as the server does)
    import gc

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    use_system_allocator()  # before pyarrow loads
    try:
        import pyarrow

        pyarrow.set_cpu_count(1)
        pyarrow.set_io_thread_count(1)
    except Exception:  # pragma: no cover - pyarrow is in the collector extra
        pass
    gc.set_threshold(50_000, 20, 100)


def use_system_allocator() -> None:
    """Arrow buffers from malloc, not from pyarrow's default mimalloc pool, which keeps what it
    freed: on the flood test the collector and its two workers peaked 40-50 MiB lower (about
    375 MiB instead of 420), and the ingest bench ran no slower (three pairs, +10 %)."""
    # Arrow's C++ side (IPC reads, compute kernels) takes its pool from this variable, read
    # at its first allocation; processes spawned later (the decode workers) inherit it
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    except Exception:  # pragma: no cover - pyarrow is in the collector extra
        pass
