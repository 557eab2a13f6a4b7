"""The DuckDB warehouse's write-behind: admit writes into the ingest log, insert them later.

`IngestLogWriter` owns the ingest log (ingestlog.py) of one DuckDB file: a write is checked
for duplicates, appended to the log (fsynced) and acknowledged; a background thread then
inserts the logged records into DuckDB many at a time, checkpoints DuckDB with fsync, and
deletes the log segments a synced checkpoint made redundant. At open it replays what a crash
left in the log. See docs/warehouse.md, "Ingest log".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from appvitals.fleet.warehouse.ingestlog import DamagedLog, IngestLog
from appvitals.fleet.warehouse.keys import StoredKeys, found_sql, key_rows
from appvitals.fleet.warehouse.writes import Write, run_sql, without
from appvitals.fleet.wire.arrow import ArrowBatch

log = logging.getLogger("appvitals.collector")

_DRAIN_LINES = 100_000  # at most this many lines per background insert
_DRAIN_GATHER_LINES = 50_000  # ... which waits for this many, unless a reader waits
_DRAIN_GATHER_S = 0.3  # ... or this long
_DRAIN_GATHER_PAUSE_S = 0.05  # ... or until no write came for this long
_DRAIN_NICE = 5  # the background insert's niceness (Linux: per thread)
_CHECKPOINT_WAL_BYTES = 32 << 20  # the background insert checkpoints once DuckDB's WAL is this big
_IDLE_CHECKPOINT_S = 5.0  # ... or after this long without lines to insert
_REPLAY_LINES = 200_000  # replayed per insert (bounded memory)


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(path + ".wal")
    except OSError:
        return 0


class TableStore(Protocol):
    """What the writer needs of the DuckDB warehouse it feeds."""

    path: str
    keys: StoredKeys
    _con: duckdb.DuckDBPyConnection
    _write_lock: threading.Lock

    def _insert(self, write: Write, known_new: bool = False) -> None: ...

    def note_error(self, exc: BaseException) -> None: ...

    def _ensure_open(self) -> None: ...


class IngestLogFull(Exception):
    """The background insert is too far behind the ingest log (or the warehouse is closing)."""


class _Pending:
    """A record in the ingest log, not yet committed to DuckDB."""

    __slots__ = ("tables", "segment", "lo", "hi", "rows")

    def __init__(self, tables: dict[str, pa.Table], segment: Path, lo: int, hi: int):
        self.tables = tables
        self.segment = segment
        self.lo, self.hi = lo, hi  # its ts range
        self.rows = sum(t.num_rows for t in tables.values())


class IngestLogWriter:
    """Admission into the ingest log and the background insert into DuckDB (module docstring)."""

    def __init__(self, store: TableStore, max_pending: int, admit_wait: float):
        self._store = store
        self._log = IngestLog(store.path + ".ingest")
        self._replay()
        self.configure(store._con)
        self._unsynced = False  # commits since the last synced checkpoint
        self._admit_lock = threading.Lock()  # one write is checked and logged at a time
        self._cond = threading.Condition()  # guards the fields below
        self._pending: list[_Pending] = []  # logged, not yet committed to DuckDB, oldest first
        self._pending_lines = 0
        self._admitted = 0  # records logged so far
        self._committed = 0  # of those, committed to DuckDB
        self._closing = False
        self._max_pending = max_pending
        self._admit_wait = admit_wait
        self._readers = 0  # sync() calls waiting: the background insert does not gather then
        self.drain_error: BaseException | None = None  # the last failed insert, until one succeeds
        self._drainer = threading.Thread(target=self._drain_loop, name="vitals-ingest-log", daemon=True)
        self._drainer.start()

    def configure(self, con) -> None:
        """Set up a connection to the DuckDB file (at open, and when it is reopened)."""
        # The log makes lines durable, so DuckDB's own commits need not be: no fsync per commit
        # (about 10 ms each here), and no automatic checkpoints (they would not be synced
        # either). The background insert checkpoints with fsync itself (_checkpoint), and a
        # segment of the log is deleted only once a synced checkpoint holds all its lines.
        con.execute("SET checkpoint_threshold = '1TB'")
        con.execute("SET fsync_mode = 'NONE'")
        self.admit_con = con.cursor()  # the duplicate lookups read beside the inserts

    # -- at open --

    def _replay(self) -> None:
        """Insert what a crash left in the log (records already in DuckDB count as duplicates),
        then delete it; a damaged segment is kept, renamed, with an error logged."""
        segments = self._log.segments()
        if not segments:
            return
        store = self._store
        batches: list[ArrowBatch] = []
        lines = 0
        damaged: list[Path] = []
        for segment in segments:
            try:
                for tables in IngestLog.read(segment):
                    rows = sum(t.num_rows for t in tables.values())
                    batches.append(ArrowBatch(tables, rows, 0))
                    lines += rows
                    if lines >= _REPLAY_LINES:
                        store._insert(Write.prepare(batches))
                        batches, lines = [], 0
            except DamagedLog as exc:
                log.error("%s: the records before it are replayed, the segment is kept as %s.damaged", exc, segment)
                damaged.append(segment)
        if batches:
            store._insert(Write.prepare(batches))
        for segment in segments:
            if segment in damaged:
                segment.rename(segment.with_name(segment.name + ".damaged"))
            else:
                segment.unlink()
        log.info("ingest log: replayed %d segment(s) into %s", len(segments), store.path)

    # -- admission --

    def admit(self, write: Write) -> None:
        """Check the write's keys against DuckDB and the pending records, log the new lines
        (fsynced), and hand them to the background insert."""
        # Wait for room before taking the admit lock: the background thread's checkpoint takes
        # that lock too, and a writer waiting in it for room would stop the very thread that
        # makes room (until admit_wait ran out: a 503, seen on the ingest bench).
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending_lines < self._max_pending or self._closing,
                                       self._admit_wait):
                raise IngestLogFull(f"DuckDB is {self._pending_lines} lines behind the ingest log"
                                    + (f" ({self.drain_error})" if self.drain_error else ""))
        with self._admit_lock:
            if self._closing:
                raise IngestLogFull("the warehouse is closing")
            span = self._store.keys.search_span(write.keys)
            if span is not None:  # rare: a key at or below its session's highest seq
                self._drop_stored(write, *span)
            if not write.tables:
                return
            ipc = [b.ipc for b in write.batches if b.tables]
            if not any(write.dropped) and all(part is not None for part in ipc):
                # the usual case: every line of the batches is new, and they came from the decode
                # workers as IPC bytes: logged as they are (serializing again cost ~1 ms a 10k lines)
                segment = self._log.append_ipc(ipc)  # type: ignore[arg-type]
            else:
                segment = self._log.append(write.tables)
            record = _Pending(write.tables, segment, write.lo, write.hi)
            with self._cond:
                self._pending.append(record)
                self._pending_lines += record.rows
                self._admitted += 1
                self._cond.notify_all()

    def _drop_stored(self, write: Write, lo: int, hi: int) -> None:
        """Leave out the write's lines whose key DuckDB (ts in [lo, hi]) or a pending record holds."""
        with self._cond:  # taken before DuckDB is read: a record committed meanwhile is still here
            pending = [k for k in (key_rows(p.tables) for p in self._pending) if k is not None]
        keys = pending[0] if len(pending) == 1 else pa.concat_tables(pending) if pending else None
        sql = found_sql(list(write.tables), lo, hi, keys is not None)
        found = set(run_sql(self.admit_con, sql, write.tables, keys).fetchall())
        if found:
            write.count_found(found)
            write.tables = without(write.tables, found)

    # -- the background insert --

    def _drain_loop(self) -> None:
        """Pending records into DuckDB, oldest first, many per commit."""
        if sys.platform.startswith("linux"):  # elsewhere the call would mean a process, not a thread
            # Lines wait here already acknowledged, so inserting them can yield the CPU to the
            # requests in flight: the decode workers and the event loop run first, this thread
            # takes the rest (the cores sit idle while a write is fsynced, for one).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _DRAIN_NICE)
        while True:
            with self._cond:
                quiet = not self._cond.wait_for(lambda: self._pending or self._closing, _IDLE_CHECKPOINT_S)
            if quiet:
                if self._unsynced:  # make what is in DuckDB durable, and drop the log
                    self._checkpoint_or_retry()
                continue
            with self._cond:
                # larger transactions cost DuckDB less a line (half the CPU at 50,000 lines than
                # at 5,000, on the ingest bench): gather while writes keep coming, unless a
                # reader waits; a pause between writes ends the gathering (the end of a burst)
                deadline = time.monotonic() + _DRAIN_GATHER_S
                while not (self._pending_lines >= _DRAIN_GATHER_LINES or self._closing or self._readers):
                    admitted = self._admitted
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait_for(
                            lambda: self._admitted != admitted or self._closing or self._readers,
                            min(left, _DRAIN_GATHER_PAUSE_S)):
                        break
                if not self._pending:
                    return  # closing, and everything is in DuckDB (close() checkpoints)
                take, lines = [], 0
                for record in self._pending:
                    if take and lines + record.rows > _DRAIN_LINES:
                        break
                    take.append(record)
                    lines += record.rows
            try:
                batches = [ArrowBatch(r.tables, r.rows, 0) for r in take]
                self._store._insert(Write.prepare(batches, check_repeats=False), known_new=True)
            except Exception as exc:  # disk full, ...: the lines stay in the log; try again
                log.error("ingest log: inserting %d lines into DuckDB failed, retrying in 1 s: %s", lines, exc)
                self.drain_error = exc
                with self._cond:
                    if self._closing:
                        return  # left in the log, replayed at the next open
                    self._cond.wait(1.0)
                continue
            self.drain_error = None
            self._unsynced = True
            with self._cond:
                del self._pending[:len(take)]
                self._pending_lines -= lines
                self._committed += len(take)
                self._cond.notify_all()
            if _wal_bytes(self._store.path) >= _CHECKPOINT_WAL_BYTES:
                self._checkpoint_or_retry()

    def _checkpoint_or_retry(self) -> None:
        try:
            self._checkpoint()
        except Exception as exc:  # the log keeps everything; the next commit or quiet spell tries again
            log.error("ingest log: checkpoint failed: %s", exc)
            self.drain_error = exc

    def _checkpoint(self) -> None:
        """Checkpoint DuckDB with fsync, then delete the log segments it made redundant."""
        self._store._ensure_open()
        with self._store._write_lock:
            con = self._store._con
            try:
                con.execute("SET fsync_mode = 'STANDARD'")
                try:
                    con.execute("CHECKPOINT")
                finally:
                    con.execute("SET fsync_mode = 'NONE'")
            except BaseException as exc:  # a failed checkpoint invalidates DuckDB: reopened next time
                self._store.note_error(exc)
                raise
            self._unsynced = False
        with self._cond:  # segments still holding a line not in that checkpoint stay
            live = {r.segment for r in self._pending}
        with self._admit_lock:  # no append (and no new segment) meanwhile
            if self._log.current() not in live:
                self._log.seal()  # all its lines are in the checkpoint: appends go to a new segment
            current = self._log.current()
            for segment in self._log.segments():
                if segment != current and segment not in live:
                    segment.unlink()

    # -- for readers, retention and close --

    def pending_lines(self) -> int:
        """Lines acknowledged (in the ingest log) but not yet in DuckDB."""
        return self._pending_lines

    def busy(self) -> bool:
        """Some acknowledged lines are not in DuckDB yet."""
        return bool(self._pending)

    def pending_sessions(self) -> set[str]:
        """The sessions of the lines logged but not yet in DuckDB."""
        with self._cond:
            tables = [t for p in self._pending for t in p.tables.values()]
        return {sid for t in tables for sid in t.column("session_id").unique().to_pylist()}

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until every line acknowledged before this call is in DuckDB."""
        with self._cond:
            target = self._admitted
            self._readers += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._committed >= target or not self._drainer.is_alive(),
                                           timeout) and self._committed >= target
            finally:
                self._readers -= 1

    def close(self) -> bool:
        """Stop admitting, insert what is pending, stop the thread; True when nothing is left pending."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._drainer.join()
        self._log.close()
        return not self._pending

    def delete_segments(self) -> None:
        """Delete every segment (everything is in a synced checkpoint of DuckDB)."""
        for segment in self._log.segments():
            segment.unlink()
