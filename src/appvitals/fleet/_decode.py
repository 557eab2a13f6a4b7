"""Line decoding shared by the collector's request handler and its decode worker processes.

`decode_lines` validates raw lines one by one (bad ones reported by line number, blank ones
ignored). `decode_chunk` is what a worker process runs: a block of raw lines in, the good
lines as per-table Arrow IPC bytes out, so the collector's own process -- which holds the
event loop and the one DuckDB writer -- does no per-line Python work for them. With two
cores, parsing then runs beside the HTTP server and the database instead of taking turns
with them for one interpreter lock.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .protocol import AnyLine, LineError, decode_block, decode_line, decode_many

MAX_ERRORS = 100


def decode_lines(raws: list[bytes], first_line: int, into: list[AnyLine],
                 errors: list[dict[str, Any]]) -> int:
    """Decode `raws` (line numbers from `first_line`) into `into`; bad lines go to `errors`
    (at most MAX_ERRORS kept). Returns how many lines were rejected."""
    good = decode_many(raws)
    if good is not None:  # the usual case: every line valid, decoded without a Python loop
        into.extend(good)
        return 0
    append = into.append
    rejected = 0
    line_no = first_line - 1
    for raw in raws:
        line_no += 1
        try:
            append(decode_line(raw))
        except LineError as exc:
            if not raw.strip():  # blank lines are allowed and ignored
                continue
            rejected += 1
            if len(errors) < MAX_ERRORS:
                errors.append({"line": line_no, "error": str(exc)})
    return rejected


def decode_chunk(data: bytes, first_line: int) -> tuple[Any, int, list[dict[str, Any]]]:
    """Worker side: newline-separated raw lines -> (ArrowBatch in IPC form, rejected, errors).

    The usual block -- every line good -- is decoded in one call, sample attrs checked once per
    distinct text; any bad line sends the whole block down the line-by-line path, which names it."""
    from .warehouse._arrow import ArrowBatch

    block = decode_block(data, data.count(b"\n") + 1) if data else None
    if block is not None:
        try:
            return ArrowBatch.from_lines(block).to_ipc(), 0, []
        except (msgspec.ValidationError, msgspec.DecodeError):  # sample attrs over a limit
            pass
    lines: list[AnyLine] = []
    errors: list[dict[str, Any]] = []
    rejected = decode_lines(data.split(b"\n"), first_line, lines, errors)
    return ArrowBatch.from_lines(lines).to_ipc(), rejected, errors


def _worker_init() -> None:
    # a decode worker: the pool is sized to the cores, so keep pyarrow to one thread, and let
    # the cyclic GC leave the short-lived line objects to reference counting (as the server does)
    import gc

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import pyarrow

        pyarrow.set_cpu_count(1)
        pyarrow.set_io_thread_count(1)
    except Exception:  # pragma: no cover - pyarrow is in the collector extra
        pass
    gc.set_threshold(50_000, 20, 100)
    _exit_with_parent()


def _exit_with_parent(poll: float = 0.5) -> None:
    # A collector killed with SIGKILL cannot tell its pool to stop, and an idle worker would
    # wait on its pipe forever: each worker watches its parent and leaves when it is gone.
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(0)

    threading.Thread(target=watch, name="vitals-parent-watch", daemon=True).start()


def start_pool(workers: int):
    """A pool of `workers` decode processes (spawned, so no thread or lock state is forked)."""
    import concurrent.futures
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
    )
