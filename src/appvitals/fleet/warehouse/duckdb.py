"""DuckDB warehouse: the embedded default, one file.

Writes hand DuckDB Arrow tables (`_arrow.ArrowBatch`, built from the decoded lines here or
in the collector's decode worker processes), so there is no per-value Python work and no
JSON re-encode/re-parse (which cost ~2.5 us a line in DuckDB's JSON reader). One `execute()`
per write -- dedup lookup, inserts, COMMIT -- so the writer thread gives up and re-takes the
GIL as few times as possible. One transaction per write, so a commit is one WAL fsync.

Exactly-once without an index: a line sent again carries the same ts, so inside the write's
transaction one query looks the batch's (session_id, seq) keys up, restricted to the batch's
ts range; DuckDB's zone maps skip every row group outside it, so the cost follows the batch,
not the table. (An ART primary key was 3-5x slower per line and grew in memory with the
table.) Each table's (min ts, max ts) is kept in memory (read from the file at open, widened
after every commit, never narrowed: a superset of the truth), and a table whose range does
not meet the batch's is not looked at -- when no table qualifies, there is no lookup at all.
That assumes this object is the only writer of the file, which the collector guarantees (one
writer thread; DuckDB lets one process write a file). Duplicates in the same batch are found
in Python first. A line seen again -- same write, later write, or after a restart -- is not
stored twice.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appvitals.extras import require as _require_extra

_require_extra("collector")

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from appvitals.fleet.warehouse.base import InsertResult, Warehouse
from appvitals.fleet.warehouse.ingestlog import DamagedLog, IngestLog
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.protocol import AnyLine
from appvitals.fleet.wire.schema import NO_SEQ, SCHEMA

log = logging.getLogger("appvitals.collector")

_STR = pa.string()
# pyarrow converts a Python scalar argument by trying `import dateutil` (absent: tried again on
# every call, ~0.5 ms); Arrow scalars skip that
_NO_SEQ = pa.scalar(NO_SEQ, pa.int64())
_INSERT_SQL = {table: f"INSERT INTO {table} SELECT * FROM _incoming_{table}" for table in SCHEMA}
# the same, without the lines whose key the lookup found already stored
_INSERT_NEW_SQL = {
    table: f"INSERT INTO {table} SELECT * FROM _incoming_{table} AS i WHERE NOT EXISTS "
           f"(SELECT 1 FROM _stored AS s WHERE s.session_id = i.session_id AND s.seq = i.seq)"
    for table in SCHEMA
}


def _keys_sql(incoming: list[str], columns: str) -> str:
    return " UNION ALL ".join(f"SELECT {columns} FROM _incoming_{t} WHERE seq <> {NO_SEQ}" for t in incoming)


def _probe_sql(incoming: list[str], lookup: list[str], lo: int, hi: int, pending: bool = False) -> str:
    """SQL counting the stored rows in [lo, hi] that share (ts, seq) with an incoming keyed line
    (and the rows of `_pending_keys`, lines in the ingest log not yet in DuckDB, when `pending`).

    Integers only: DuckDB never decompresses a string column for it (fetching the session_ids of
    a row group's rows was most of a write's cost). 0 in the usual case, and then no lookup."""
    stored = [f"SELECT ts, seq FROM {t} WHERE ts BETWEEN {int(lo)} AND {int(hi)}" for t in lookup]
    if pending:
        stored.append("SELECT ts, seq FROM _pending_keys")
    return (f"SELECT count(*) FROM ({' UNION ALL '.join(stored)}) AS s SEMI JOIN ({_keys_sql(incoming, 'ts, seq')}) AS k "
            "ON s.ts = k.ts AND s.seq = k.seq")


def _found_sql(incoming: list[str], lookup: list[str], lo: int, hi: int, pending: bool = False) -> str:
    """SQL listing the (session_id, seq) of the incoming keys already stored (or pending)."""
    sources = [(table, f" WHERE s.ts BETWEEN {int(lo)} AND {int(hi)}") for table in lookup]
    if pending:
        sources.append(("_pending_keys", ""))
    found = " UNION ALL ".join(
        f"SELECT s.session_id, s.seq FROM {table} AS s SEMI JOIN _keys AS k "
        f"ON s.ts = k.ts AND s.seq = k.seq AND s.session_id = k.session_id{where}"
        for table, where in sources
    )
    return f"WITH _keys AS ({_keys_sql(incoming, 'session_id, seq, ts')}) {found}"


def _stored_sql(incoming: list[str], lookup: list[str], lo: int, hi: int) -> str:
    """SQL that fills the temp table _stored with the incoming keys already in the `lookup` tables."""
    # a temp table is never logged; emptying it is cheaper than creating it again
    return f"DELETE FROM _stored; INSERT INTO _stored {_found_sql(incoming, lookup, lo, hi)}"


def _execute(con: duckdb.DuckDBPyConnection, sql: str, tables: dict[str, pa.Table],
             pending_keys: pa.Table | None = None) -> duckdb.DuckDBPyConnection:
    """Run `sql`, which reads the write's Arrow tables as `_incoming_<table>` (and the ingest
    log's pending keys as `_pending_keys`).

    DuckDB's replacement scan finds them by those names among this frame's locals, so there is
    no register()/unregister() pair per table and write (about 0.9 ms each)."""
    _incoming_sessions = tables.get("sessions")  # noqa: F841 - read by name from the SQL
    _incoming_samples = tables.get("samples")  # noqa: F841
    _incoming_events = tables.get("events")  # noqa: F841
    _incoming_ends = tables.get("ends")  # noqa: F841
    _pending_keys = pending_keys  # noqa: F841
    return con.execute(sql)


_SQL_TYPES = {
    "session_id": "VARCHAR", "client_id": "VARCHAR", "name": "VARCHAR", "reason": "VARCHAR",
    "ts": "BIGINT", "seq": "BIGINT", "cpu": "DOUBLE",
    "attr_keys": "VARCHAR[]", "attr_values": "VARCHAR[]", "attrs": "VARCHAR", "vals": "VARCHAR",
}


# Samples rolled up per (session, attrs text, 10-minute bucket): the report reads these for the
# closed buckets of its window instead of every sample (see docs/warehouse.md, "Rollup").
ROLLUP_BUCKET_MS = 600_000
ROLLUP_GRACE_MS = 600_000  # a bucket is rolled up once it ended this long ago
_ROLLUP_DDL = [
    "CREATE TABLE IF NOT EXISTS sample_rollup (session_id VARCHAR, attrs VARCHAR, bucket BIGINT, n BIGINT, "
    "cpu_sum DOUBLE, cpu_max DOUBLE, ts_min BIGINT, ts_max BIGINT)",
    # buckets below the watermark that received samples after they were rolled up
    "CREATE TABLE IF NOT EXISTS rollup_dirty (bucket BIGINT)",
    "CREATE TABLE IF NOT EXISTS rollup_mark (watermark BIGINT)",
]


def _rollup_sql(lo_ms: int, hi_ms: int) -> str:
    """INSERT the rollup rows of the samples with ts in [lo_ms, hi_ms)."""
    b = ROLLUP_BUCKET_MS
    return (
        f"INSERT INTO sample_rollup SELECT session_id, coalesce(attrs, '{{}}'), ts // {b}, count(*), sum(cpu), "
        f"max(cpu), min(ts), max(ts) FROM samples WHERE ts >= {int(lo_ms)} AND ts < {int(hi_ms)} GROUP BY ALL"
    )


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection):
    """BEGIN ... COMMIT around the block; ROLLBACK (best effort) and re-raise when it fails."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def _ddl() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {_SQL_TYPES[c]}' for c in cols)})"
        for table, cols in SCHEMA.items()
    ]
    return statements


def _keys_in_batch_order(pieces: dict[str, list[tuple[int, pa.Table]]]):
    """(batch index, table, (session_id, seq)) of every row, in batch order, tables in a fixed
    order within a batch, rows in order within a table (Python objects: the rare paths only)."""
    for index, table, arrow in sorted(((index, table, arrow) for table, parts in pieces.items() for index, arrow in parts),
                                      key=lambda item: (item[0], item[1])):
        for key in zip(arrow.column("session_id").to_pylist(), arrow.column("seq").to_pylist()):
            yield index, table, key


_DRAIN_LINES = 100_000  # at most this many lines per background insert
_DRAIN_GATHER_LINES = 50_000  # ... which waits for this many, unless a reader waits
_DRAIN_GATHER_S = 0.3  # ... or this long
_DRAIN_GATHER_PAUSE_S = 0.05  # ... or until no write came for this long
_DRAIN_NICE = 5  # the background insert's niceness (Linux: per thread)
_CHECKPOINT_WAL_BYTES = 32 << 20  # the background insert checkpoints once DuckDB's WAL is this big
_IDLE_CHECKPOINT_S = 5.0  # ... or after this long without lines to insert


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(path + ".wal")
    except OSError:
        return 0


class IngestLogFull(Exception):
    """The background insert is too far behind the ingest log (or the warehouse is closing)."""


def _keyed(arrow: pa.Table) -> pa.Table:
    """The rows that have a seq (lines without one have no key); the table itself when all do."""
    seq = arrow.column("seq")
    return arrow.filter(pc.not_equal(seq, _NO_SEQ)) if pc.min(seq).as_py() == NO_SEQ else arrow


def _keys_of(tables: dict[str, pa.Table]) -> pa.Table | None:
    """The (ts, seq, session_id) of the keyed rows of a write (zero-copy in the usual case)."""
    parts = [keys for keys in (_keyed(a.select(["ts", "seq", "session_id"])) for a in tables.values()) if keys.num_rows]
    return None if not parts else parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _without(tables: dict[str, pa.Table], found: set[tuple]) -> dict[str, pa.Table]:
    """The rows whose (session_id, seq) is not in `found` (Python: the rare path only)."""
    out = {}
    for name, arrow in tables.items():
        keys = zip(arrow.column("session_id").to_pylist(), arrow.column("seq").to_pylist())
        kept = arrow.filter(pa.array([key not in found for key in keys], pa.bool_()))
        if kept.num_rows:
            out[name] = kept
    return out


_WINDOW_LINES = 2_000_000  # (ts, seq) hashes kept in memory by the ingest log (16 MB)
_HASH_K = pa.scalar(1_000_003, pa.int64())


def _hashes(tables: dict[str, pa.Table]) -> pa.Array:
    """ts * 1000003 + seq (wrapping int64) of the keyed rows: equal keys have equal hashes."""
    parts = []
    for arrow in tables.values():
        keys = _keyed(arrow.select(["ts", "seq"]))
        parts.extend(pc.add(pc.multiply(keys.column("ts"), _HASH_K), keys.column("seq")).chunks)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.int64())


class _Seen:
    __slots__ = ("number", "lo", "hi", "hashes")

    def __init__(self, number: int, lo: int, hi: int, hashes: pa.Array):
        self.number, self.lo, self.hi, self.hashes = number, lo, hi, hashes


class _Pending:
    """A record in the ingest log, not yet committed to DuckDB."""

    __slots__ = ("tables", "segment", "lo", "hi", "rows")

    def __init__(self, tables: dict[str, pa.Table], segment: Path, lo: int, hi: int):
        self.tables = tables
        self.segment = segment
        self.lo, self.hi = lo, hi  # its ts range
        self.rows = sum(t.num_rows for t in tables.values())


class _Write:
    """One insert_many() on its way in: its batches, their rows per table (repeats inside the
    write left out), and how many lines of each batch were dropped as duplicates."""

    __slots__ = ("batches", "pieces", "tables", "dropped", "spans", "keyed", "lo", "hi")

    def __init__(self, batches: list[ArrowBatch]):
        self.batches = batches
        self.pieces: dict[str, list[tuple[int, pa.Table]]] = {}  # per table: (batch index, rows)
        self.tables: dict[str, pa.Table] = {}
        self.dropped = [0] * len(batches)
        self.spans: dict[str, dict[str, int]] = {}  # per table: min and max ts
        self.keyed = False  # some line has a seq
        self.lo = self.hi = 0  # ts range of the whole write

    def count_found(self, found: set[tuple]) -> None:
        """Count the keys found already stored against the batches that sent them first."""
        counted: set[tuple] = set()  # a key repeated in this write was dropped (and counted) already
        for index, _, key in _keys_in_batch_order(self.pieces):
            if key in found and key not in counted:
                counted.add(key)
                self.dropped[index] += 1

    def results(self) -> list[InsertResult]:
        return [InsertResult(accepted=b.size - b.duplicates - d, duplicates=b.duplicates + d)
                for b, d in zip(self.batches, self.dropped)]


class DuckDBWarehouse(Warehouse):
    """The warehouse in one DuckDB file (or ":memory:")."""

    dialect = "duckdb"
    takes_arrow = True  # insert_many accepts ArrowBatch (the collector's decode workers build them)

    def __init__(self, path: str | Path, memory_limit: str = "256MB", threads: int | None = None,
                 ingest_log: bool = False, max_pending: int = 200_000, admit_wait: float = 5.0):
        """`ingest_log`: acknowledge writes from the ingest log (see `_ingestlog`) and insert them
        into DuckDB from a background thread, at most `max_pending` lines behind (past that a
        write waits up to `admit_wait` s, then fails with IngestLogFull). The collector uses it;
        a file only."""
        self.path = str(path)
        if self.path.startswith("duckdb://"):
            self.path = self.path[len("duckdb://"):]
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        logged = ingest_log and self.path != ":memory:"  # a memory database has no log
        config: dict[str, Any] = {"memory_limit": memory_limit}
        self._read_threads: int | None = None  # set: DuckDB gets this many threads while reading
        if threads:
            config["threads"] = threads
        elif logged:
            # Ingesting, DuckDB runs on one thread: its inserts gain little from a second one,
            # which would contend with the collector's decode workers for the same cores (on
            # the ingest bench it cost 0.3-0.5 us of CPU a line). Reads get every core back
            # while they run (`_reading`).
            config["threads"] = 1
            self._read_threads = os.cpu_count() or 1
        self._con = self._connect(config, logged)
        self._write_lock = threading.Lock()
        for statement in _ddl() + _ROLLUP_DDL:
            self._con.execute(statement)
        self._migrate()
        marks = self._con.execute("SELECT max(watermark) FROM rollup_mark").fetchall()
        self._watermark = int(marks[0][0] or 0)  # buckets below it are in sample_rollup
        self._con.execute("CREATE TEMP TABLE IF NOT EXISTS _stored (session_id VARCHAR, seq BIGINT)")
        # per table, (min ts, max ts) of its rows or None when empty: a superset of the truth,
        # kept by the one writer, so the duplicate lookup can skip tables outside a batch's range
        self._ts_range: dict[str, tuple[int, int] | None] = {}
        for table in SCHEMA:
            ((lo, hi),) = self._con.execute(f"SELECT min(ts), max(ts) FROM {table}").fetchall()
            self._ts_range[table] = None if lo is None else (int(lo), int(hi))
        self._log: IngestLog | None = None
        self._closed = False
        if logged:
            self._open_log(max_pending, admit_wait)

    # -- the ingest log: writes acknowledged once logged, inserted by a background thread --

    def _open_log(self, max_pending: int, admit_wait: float) -> None:
        self._log = IngestLog(self.path + ".ingest")
        self._replay()
        # The log makes lines durable, so DuckDB's own commits need not be: no fsync per commit
        # (about 10 ms each here), and no automatic checkpoints (they would not be synced
        # either). The background insert checkpoints with fsync itself (_checkpoint), and a
        # segment of the log is deleted only once a synced checkpoint holds all its lines.
        self._con.execute("SET checkpoint_threshold = '1TB'")
        self._con.execute("SET fsync_mode = 'NONE'")
        self._unsynced = False  # commits since the last synced checkpoint
        self._admit_con = self._con.cursor()  # the duplicate lookups read beside the inserts
        self._admit_lock = threading.Lock()  # one write is checked and logged at a time
        self._cond = threading.Condition()  # guards the fields below
        self._pending: list[_Pending] = []  # logged, not yet committed to DuckDB, oldest first
        self._pending_lines = 0
        self._admitted = 0  # records logged so far
        self._committed = 0  # of those, committed to DuckDB
        self._closing = False
        self._max_pending = max_pending
        self._window: collections.deque[_Seen] = collections.deque()
        self._window_lines = 0
        stored = [r for r in self._ts_range.values() if r is not None]
        self._dark = (min(r[0] for r in stored), max(r[1] for r in stored)) if stored else None
        self._admit_wait = admit_wait
        self._readers = 0  # sync() calls waiting: the background insert does not gather then
        self._reads = 0  # query() calls running (DuckDB gets every core meanwhile)
        self._reads_lock = threading.Lock()  # guards _reads and _settings_con
        self._settings_con = self._con.cursor()
        self.drain_error: BaseException | None = None  # the last failed insert, until one succeeds
        self._drainer = threading.Thread(target=self._drain_loop, name="vitals-ingest-log", daemon=True)
        self._drainer.start()

    def _replay(self) -> None:
        """Insert what a crash left in the log (records already in DuckDB count as duplicates),
        then delete it; a damaged segment is kept, renamed, with an error logged."""
        assert self._log is not None
        segments = self._log.segments()
        if not segments:
            return
        batches: list[ArrowBatch] = []
        lines = 0
        damaged: list[Path] = []
        for segment in segments:
            try:
                for tables in IngestLog.read(segment):
                    rows = sum(t.num_rows for t in tables.values())
                    batches.append(ArrowBatch(tables, rows, 0))
                    lines += rows
                    if lines >= 200_000:  # bounded memory
                        self._insert(self._prepare(batches))
                        batches, lines = [], 0
            except DamagedLog as exc:
                log.error("%s: the records before it are replayed, the segment is kept as %s.damaged", exc, segment)
                damaged.append(segment)
        if batches:
            self._insert(self._prepare(batches))
        for segment in segments:
            if segment in damaged:
                segment.rename(segment.with_name(segment.name + ".damaged"))
            else:
                segment.unlink()
        log.info("ingest log: replayed %d segment(s) into %s", len(segments), self.path)

    def _admit(self, write: _Write) -> None:
        """Check the write's keys against DuckDB and the pending records, log the new lines
        (fsynced), and hand them to the background insert."""
        assert self._log is not None
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
            hashes = _hashes(write.tables) if write.keyed else None
            if hashes is not None and self._maybe_seen(write, hashes):
                with self._cond:  # taken before DuckDB is read: a record committed meanwhile is still here
                    near = [p.tables for p in self._pending if p.lo <= write.hi and write.lo <= p.hi]
                pending = [k for k in map(_keys_of, near) if k is not None]
                lookup = self._lookup(write)
                keys = pending[0] if len(pending) == 1 else pa.concat_tables(pending) if pending else None
                incoming, tables = list(write.tables), write.tables
                probe = _probe_sql(incoming, lookup, write.lo, write.hi, keys is not None)
                if (lookup or keys is not None) and _execute(self._admit_con, probe, tables, keys).fetchall()[0][0]:
                    found = set(_execute(self._admit_con, _found_sql(incoming, lookup, write.lo, write.hi,
                                                                     keys is not None), tables, keys).fetchall())
                    if found:
                        write.count_found(found)
                        write.tables = _without(tables, found)
                        hashes = _hashes(write.tables)
            if not write.tables:
                return
            self._widen_ts_range(write)
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
            if hashes is not None:
                self._remember(write, self._admitted, hashes)

    # Which lines might be stored already, without asking DuckDB: a probe of DuckDB's tables while
    # the background insert appends to them waits for it (tried: on the bench, admitting then
    # took as long as inserting). The window holds a 64-bit hash of (ts, seq) of every line
    # logged since this object opened, minus the oldest once it is big; `_dark` is the ts range
    # of the lines only DuckDB knows (those stored before the open, and those forgotten since).
    # A write whose ts range misses `_dark` and whose hashes miss the window holds no duplicate.

    def _maybe_seen(self, write: _Write, hashes: pa.Array) -> bool:
        """False when no stored or pending line can share a key with the write (see above)."""
        dark = self._dark
        if dark is not None and write.lo <= dark[1] and dark[0] <= write.hi:
            return True  # ask DuckDB
        near = [w.hashes for w in self._window if w.lo <= write.hi and write.lo <= w.hi]
        if not near:
            return False
        return bool(pc.any(pc.is_in(hashes, value_set=pa.concat_arrays(near))).as_py())

    def _remember(self, write: _Write, number: int, hashes: pa.Array) -> None:
        if len(hashes):
            self._window.append(_Seen(number, write.lo, write.hi, hashes))
            self._window_lines += len(hashes)
        # forget the oldest, once committed (DuckDB answers for them then)
        while self._window_lines > _WINDOW_LINES and self._window[0].number <= self._committed:
            old = self._window.popleft()
            self._window_lines -= len(old.hashes)
            dark = self._dark
            self._dark = (old.lo, old.hi) if dark is None else (min(dark[0], old.lo), max(dark[1], old.hi))

    def _drain_loop(self) -> None:
        """The background insert: pending records into DuckDB, oldest first, many per commit."""
        assert self._log is not None
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
                self._insert(self._prepare([ArrowBatch(r.tables, r.rows, 0) for r in take], check_repeats=False),
                             known_new=True)
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
            if _wal_bytes(self.path) >= _CHECKPOINT_WAL_BYTES:
                self._checkpoint_or_retry()

    def _checkpoint_or_retry(self) -> None:
        try:
            self._checkpoint()
        except Exception as exc:  # the log keeps everything; the next commit or quiet spell tries again
            log.error("ingest log: checkpoint failed: %s", exc)
            self.drain_error = exc

    def _checkpoint(self) -> None:
        """Checkpoint DuckDB with fsync, then delete the log segments it made redundant."""
        assert self._log is not None
        with self._write_lock:
            con = self._con
            con.execute("SET fsync_mode = 'STANDARD'")
            try:
                con.execute("CHECKPOINT")
            finally:
                con.execute("SET fsync_mode = 'NONE'")
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

    def pending_lines(self) -> int:
        """Lines acknowledged (in the ingest log) but not yet in DuckDB."""
        return self._pending_lines if self._log is not None else 0

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until every line acknowledged before this call is in DuckDB (reads then see
        it); False when that took longer than `timeout` (DuckDB failing: see drain_error)."""
        if self._log is None:
            return True
        with self._cond:
            target = self._admitted
            self._readers += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._committed >= target or not self._drainer.is_alive(),
                                           timeout) and self._committed >= target
            finally:
                self._readers -= 1

    def _connect(self, config: dict[str, Any], ingest_log: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(self.path, config=config)
        except duckdb.Error as exc:
            # With the ingest log, DuckDB does not fsync its own WAL (see _open_log): after an
            # operating-system crash that WAL may be cut or damaged, and DuckDB refuses to open.
            # The log holds every line committed since the last synced checkpoint, so the WAL is
            # set aside (kept, renamed) and the log replayed over the checkpointed file.
            wal = Path(self.path + ".wal")
            if not (ingest_log and "WAL" in str(exc) and wal.exists() and IngestLog(self.path + ".ingest").segments()):
                raise
            aside = wal.with_name(f"{wal.name}.damaged-{int(time.time())}")
            wal.rename(aside)
            log.error("DuckDB could not replay its WAL (%s); kept it as %s and replaying the ingest log instead",
                      exc, aside)
            return duckdb.connect(self.path, config=config)

    def _migrate(self) -> None:
        """Bring a file written by an older appvitals up to the current schema, in one transaction."""
        columns = {r[0] for r in self._con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'samples'").fetchall()}
        if "attr_keys" not in columns:
            return
        # before 0.2, samples kept attrs as parallel arrays like the other tables
        with _transaction(self._con) as con:
            con.execute("ALTER TABLE samples ADD COLUMN attrs VARCHAR")
            con.execute("ALTER TABLE samples ADD COLUMN vals VARCHAR")
            con.execute(
                "UPDATE samples SET "
                "attrs = CASE WHEN len(attr_keys) = 0 THEN '{}' ELSE to_json(map(attr_keys, attr_values))::VARCHAR END, "
                "vals = CASE WHEN len(value_keys) = 0 THEN '{}' ELSE to_json(map(value_keys, value_values))::VARCHAR END"
            )
            for old in ("attr_keys", "attr_values", "value_keys", "value_values"):
                con.execute(f"ALTER TABLE samples DROP COLUMN {old}")

    def insert_many(self, batches: Sequence[Sequence[AnyLine] | ArrowBatch]) -> list[InsertResult]:
        """Store several batches durably; one result per batch.

        A batch is a list of lines, or an `ArrowBatch` a decode worker already built from them.
        Without the ingest log: one transaction (one fsync). With it: the new lines are appended
        to the log (one fsync) and inserted into DuckDB by the log's thread soon after."""
        write = self._prepare(batches)
        if write.tables and self._log is not None:
            self._admit(write)
        elif write.tables:
            self._insert(write)
        return write.results()

    def _prepare(self, batches: Sequence[Sequence[AnyLine] | ArrowBatch], check_repeats: bool = True) -> _Write:
        prepared = [b if isinstance(b, ArrowBatch) else ArrowBatch.from_lines(b) for b in batches]
        write = _Write(prepared)
        if not any(b.tables for b in prepared):
            return write
        # per table: the batches' Arrow tables, and which batch each piece came from
        pieces = write.pieces
        for index, batch in enumerate(prepared):
            for table, arrow in batch.tables.items():
                pieces.setdefault(table, []).append((index, arrow))
        tables = {table: pa.concat_tables([a for _, a in parts]) if len(parts) > 1 else parts[0][1]
                  for table, parts in pieces.items()}
        if check_repeats and len(prepared) > 1:  # a line repeated across batches of one write: keep the first
            tables = self._drop_repeats(pieces, tables, write.dropped)
        write.tables = {t: a for t, a in tables.items() if a.num_rows}
        write.spans = {table: pc.min_max(arrow.column("ts")).as_py() for table, arrow in write.tables.items()}
        write.keyed = any(pc.max(a.column("seq")).as_py() != NO_SEQ for a in write.tables.values())  # seq >= 0 when keyed
        if write.spans:
            write.lo = min(span["min"] for span in write.spans.values())
            write.hi = max(span["max"] for span in write.spans.values())
        return write

    def _lookup(self, write: _Write) -> list[str]:
        """The tables that may hold one of the write's keys: a duplicate is the same line sent
        again, so it carries the same ts, and only tables whose ts range meets the write's can
        match (DuckDB's zone maps then skip every other row group)."""
        if not write.keyed or not write.spans:
            return []
        return [t for t, r in self._ts_range.items() if r is not None and r[0] <= write.hi and write.lo <= r[1]]

    def _widen_ts_range(self, write: _Write) -> None:
        for table, span in write.spans.items():
            known = self._ts_range[table]
            self._ts_range[table] = (span["min"], span["max"]) if known is None else (
                min(known[0], span["min"]), max(known[1], span["max"]))

    def _insert(self, write: _Write, known_new: bool = False) -> None:
        """Write in one transaction; keys already stored are left out (not looked up when
        `known_new`: the ingest log's thread inserts lines the log already checked)."""
        tables = write.tables
        stored: list[tuple] = []
        with self._write_lock:
            con = self._con
            script = ["BEGIN TRANSACTION"]
            lookup = [] if known_new else self._lookup(write)
            lo, hi = write.lo, write.hi
            # the probe reads outside the write's transaction: this object is the file's only writer
            if lookup and _execute(con, _probe_sql(list(tables), lookup, lo, hi), tables).fetchall()[0][0]:
                script.append(_stored_sql(list(tables), lookup, lo, hi))
                insert = _INSERT_NEW_SQL
            else:
                lookup = []
                insert = _INSERT_SQL
            script.extend(insert[table] for table in tables)
            if "samples" in write.spans and write.spans["samples"]["min"] // ROLLUP_BUCKET_MS < self._watermark:
                # late samples for buckets already rolled up: mark them, in the same transaction,
                # so the report reads them from samples until the next roll_up() redoes them
                script.append(
                    f"INSERT INTO rollup_dirty SELECT DISTINCT ts // {ROLLUP_BUCKET_MS} FROM _incoming_samples "
                    f"WHERE ts // {ROLLUP_BUCKET_MS} < {self._watermark}"
                )
            script.append("COMMIT")
            if lookup:
                script.append("SELECT session_id, seq FROM _stored")
            # one execute(): each call gives up the GIL and waits to get it back
            try:
                cursor = _execute(con, ";\n".join(script), tables)
                stored = cursor.fetchall() if lookup else []
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            if not known_new:
                self._widen_ts_range(write)
        if stored:  # rare: lines stored by an earlier write; find their batches
            write.count_found(set(stored))

    @staticmethod
    def _drop_repeats(pieces: dict[str, list[tuple[int, pa.Table]]], tables: dict[str, pa.Table],
                      dropped: list[int]) -> dict[str, pa.Table]:
        """Leave out lines whose (session_id, seq) an earlier batch of the same write holds;
        counted into `dropped` per batch. Checked in C; Python only runs when there are repeats."""
        keys = [_keyed(arrow.select(["session_id", "seq"])) for arrow in tables.values()]
        joined = pa.concat_tables(keys) if len(keys) > 1 else keys[0]
        if joined.group_by(["session_id", "seq"], use_threads=False).aggregate([]).num_rows == joined.num_rows:
            return tables  # the usual case
        seen: set[tuple[str, int]] = set()
        masks: dict[str, list[bool]] = {t: [] for t in pieces}
        for index, table, key in _keys_in_batch_order(pieces):
            if key[1] != NO_SEQ and key in seen:
                masks[table].append(False)
                dropped[index] += 1
            else:
                seen.add(key)
                masks[table].append(True)
        # the masks follow (batch, table) order, which is the concatenation order of each table
        return {t: tables[t].filter(pa.array(masks[t], pa.bool_())) for t in tables}

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement (DuckDB dialect, `$name` parameters) and return its rows.

        With the ingest log, it first waits for the lines acknowledged so far to be in DuckDB."""
        if self._log is not None and self._pending and not self.sync():
            log.warning("query: DuckDB is behind the ingest log (%s); the answer may miss recent lines",
                        self.drain_error)
        cursor = self._con.cursor()
        try:
            with self._reading():
                return cursor.execute(sql, params or {}).fetchall() if params else cursor.execute(sql).fetchall()
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _reading(self):
        """While a read runs, DuckDB uses every core (ingesting, it runs on one: see __init__)."""
        if self._read_threads is None:
            yield
            return
        with self._reads_lock:
            self._reads += 1
            if self._reads == 1:
                self._settings_con.execute(f"SET threads = {self._read_threads}")
        try:
            yield
        finally:
            with self._reads_lock:
                self._reads -= 1
                if self._reads == 0:
                    self._settings_con.execute("SET threads = 1")

    def rollup_state(self) -> tuple[int, int, list[int]]:
        """(bucket width in ms, watermark, dirty buckets): the buckets below the watermark are in
        `sample_rollup`, except the dirty ones (late samples since; redone at the next roll_up)."""
        dirty = [int(r[0]) for r in self.query("SELECT DISTINCT bucket FROM rollup_dirty ORDER BY 1")]
        return ROLLUP_BUCKET_MS, self._watermark, dirty

    def roll_up(self, now_ms: int | None = None, max_buckets: int = 6) -> int:
        """One bounded step of rolling up: redo up to `max_buckets` dirty buckets, and roll up
        the next closed buckets (ended ROLLUP_GRACE_MS before `now_ms`), at most `max_buckets`
        (an hour) of them, in one transaction. Returns how many buckets it rolled up or redid
        (a jump over buckets without samples counts 1); 0 when there is nothing to do. Bounded, so a writer thread that calls it never holds up
        writes for long: the collector calls it every minute, and again at once while it
        returns more than 0 (catching up on an old file)."""
        b = ROLLUP_BUCKET_MS
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        target = (now - ROLLUP_GRACE_MS) // b
        with self._write_lock:
            con = self._con
            dirty = [int(r[0]) for r in con.execute(
                f"SELECT DISTINCT bucket FROM rollup_dirty ORDER BY 1 LIMIT {int(max_buckets)}").fetchall()]
            start, end = self._watermark, self._watermark
            if target > self._watermark:
                # skip buckets without samples (an old file, a quiet night) in one step
                after = con.execute(f"SELECT min(ts) FROM samples WHERE ts >= {start * b}").fetchall()[0][0]
                if after is None and start == 0 and not dirty:
                    return 0  # nothing yet: keep the watermark at 0, so no sample arrives "late"
                start = target if after is None else min(target, max(start, int(after) // b))
                end = min(target, start + max_buckets)
                if start == end:  # no samples up to target: just move the watermark
                    end = target
            if not dirty and end == self._watermark:
                return 0
            with _transaction(con):
                for bucket in dirty:
                    con.execute(f"DELETE FROM sample_rollup WHERE bucket = {bucket}")
                    con.execute(_rollup_sql(bucket * b, (bucket + 1) * b))
                    con.execute(f"DELETE FROM rollup_dirty WHERE bucket = {bucket}")
                if end > self._watermark:
                    if end > start:
                        con.execute(_rollup_sql(start * b, end * b))
                    con.execute("DELETE FROM rollup_mark")
                    con.execute(f"INSERT INTO rollup_mark VALUES ({end})")
            # buckets rolled up (a jump over buckets without samples counts as one step)
            written = len(dirty) + (max(end - start, 1) if end > self._watermark else 0)
            self._watermark = max(self._watermark, end)
            return written

    def catch_up(self, now_ms: int | None = None) -> int:
        """roll_up() until there is nothing left to do; the buckets dealt with."""
        total = 0
        while True:
            step = self.roll_up(now_ms)
            if not step:
                return total
            total += step

    def apply_retention(self, days: int) -> None:
        """Delete rows (and their dedup keys) with ts older than `days` days."""
        cutoff = int((time.time() - days * 86400) * 1000)
        self.sync()  # lines already acknowledged are deleted too, not inserted after
        with self._write_lock:
            with _transaction(self._con) as con:
                for table in SCHEMA:
                    con.execute(f"DELETE FROM {table} WHERE ts < ?", [cutoff])
                edge = cutoff // ROLLUP_BUCKET_MS
                con.execute(f"DELETE FROM sample_rollup WHERE bucket < {edge}")
                if edge < self._watermark:  # the bucket the cutoff cuts lost samples: redo it
                    con.execute(f"INSERT INTO rollup_dirty VALUES ({edge})")

    def close(self) -> None:
        """Insert what the ingest log holds, checkpoint and close the file (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._log is not None:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._drainer.join()
            self._log.close()
            with contextlib.suppress(duckdb.Error):
                self._con.execute("SET fsync_mode = 'STANDARD'")  # the CHECKPOINT below is synced
        with self._write_lock:
            try:
                self._con.execute("CHECKPOINT")
                checkpointed = True
            except duckdb.Error as exc:
                checkpointed = False
                if self._log is not None:
                    log.error("ingest log: the last checkpoint failed (%s); the log is kept and replayed at the "
                              "next open", exc)
            self._con.close()
        if self._log is not None and checkpointed and not self._pending:  # all in the file: the log is done
            for segment in self._log.segments():
                segment.unlink()
