"""DuckDB warehouse: the embedded default, one file.

`DuckDBWarehouse` is the table store; it composes three parts with one job each:

- `keys.StoredKeys`: which (session_id, seq) keys may be stored already (the duplicate
  check: per session, its highest seq and ts span; a lookup only for lines at or below it);
- `ingestwriter.IngestLogWriter` (the collector's files): writes acknowledged once in the
  ingest log, inserted into DuckDB by a background thread, replayed after a crash;
- `rollup.SampleRollup`: samples per 10-minute bucket for the report.

Writes hand DuckDB Arrow tables (`wire.arrow.ArrowBatch`, built from the decoded lines here
or in the collector's decode worker processes), so there is no per-value Python work and no
JSON re-encode/re-parse (which cost ~2.5 us a line in DuckDB's JSON reader). One `execute()`
per write -- dedup lookup, inserts, COMMIT -- so the writer thread gives up and re-takes the
GIL as few times as possible. One transaction per write, so a commit is one WAL fsync. This
object must be the only writer of its file, which the collector guarantees (one writer
thread; DuckDB lets one process write a file): the duplicate check's memory relies on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from appvitals.extras import require as _require_extra

_require_extra("collector")

import duckdb

from appvitals.fleet.warehouse.base import Batch, InsertResult, RollupState, Warehouse
from appvitals.fleet.warehouse.ingestlog import IngestLog
from appvitals.fleet.warehouse.ingestwriter import IngestLogFull, IngestLogWriter
from appvitals.fleet.warehouse.keys import StoredKeys, found_sql
from appvitals.fleet.warehouse.rollup import ROLLUP_BUCKET_MS, ROLLUP_GRACE_MS, SampleRollup, transaction
from appvitals.fleet.warehouse.writes import Write, run_sql
from appvitals.fleet.wire.schema import SCHEMA

__all__ = ["ROLLUP_BUCKET_MS", "ROLLUP_GRACE_MS", "DuckDBWarehouse", "IngestLogFull"]

log = logging.getLogger("appvitals.collector")

_INSERT_SQL = {table: f"INSERT INTO {table} SELECT * FROM _incoming_{table}" for table in SCHEMA}
# the same, without the lines whose key the lookup found already stored
_INSERT_NEW_SQL = {
    table: f"INSERT INTO {table} SELECT * FROM _incoming_{table} AS i WHERE NOT EXISTS "
           f"(SELECT 1 FROM _stored AS s WHERE s.session_id = i.session_id AND s.seq = i.seq)"
    for table in SCHEMA
}
_SQL_TYPES = {
    "session_id": "VARCHAR", "client_id": "VARCHAR", "name": "VARCHAR", "reason": "VARCHAR",
    "ts": "BIGINT", "seq": "BIGINT", "cpu": "DOUBLE",
    "attr_keys": "VARCHAR[]", "attr_values": "VARCHAR[]", "attrs": "VARCHAR", "vals": "VARCHAR",
}


def _ddl() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {_SQL_TYPES[c]}' for c in cols)})"
        for table, cols in SCHEMA.items()
    ]


class _Scratch:
    """One connection's reads (DuckDBWarehouse.scratch)."""

    dialect: ClassVar[str] = "duckdb"

    def __init__(self, cursor: duckdb.DuckDBPyConnection):
        self._cursor = cursor

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._cursor.execute(sql, params or {}).fetchall() if params else self._cursor.execute(sql).fetchall()

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._cursor.close()  # its temporary tables go with it


class DuckDBWarehouse(Warehouse):
    """The warehouse in one DuckDB file (or ":memory:")."""

    dialect: ClassVar[str] = "duckdb"
    takes_arrow: ClassVar[bool] = True  # insert_many accepts ArrowBatch (the collector's decode workers build them)

    def __init__(self, path: str | Path, memory_limit: str = "256MB", threads: int | None = None,
                 ingest_log: bool = False, max_pending: int = 200_000, admit_wait: float = 5.0):
        """`ingest_log`: acknowledge writes from the ingest log (see `ingestwriter`) and insert them
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
        self._config, self._logged = config, logged
        self._con = self._connect(config, logged)
        self._invalid: BaseException | None = None  # set: a fatal error invalidated DuckDB (see _ensure_open)
        self.reopened = 0  # times DuckDB was reopened after a fatal error
        self._write_lock = threading.Lock()
        for statement in _ddl():
            self._con.execute(statement)
        self._migrate()
        self._rollup = SampleRollup(self._con, self._write_lock)
        self._con.execute("CREATE TEMP TABLE IF NOT EXISTS _stored (session_id VARCHAR, seq BIGINT)")
        self.keys = StoredKeys()
        self.keys.load(self._con)
        self._reads = 0  # query() calls running (DuckDB gets every core meanwhile)
        self._reads_lock = threading.Lock()  # guards _reads and _settings_con
        self._settings_con = self._con.cursor()
        self._closed = False
        self._log: IngestLogWriter | None = None
        if logged:
            self._log = IngestLogWriter(self, max_pending, admit_wait)

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
        with transaction(self._con) as con:
            con.execute("ALTER TABLE samples ADD COLUMN attrs VARCHAR")
            con.execute("ALTER TABLE samples ADD COLUMN vals VARCHAR")
            con.execute(
                "UPDATE samples SET "
                "attrs = CASE WHEN len(attr_keys) = 0 THEN '{}' ELSE to_json(map(attr_keys, attr_values))::VARCHAR END, "
                "vals = CASE WHEN len(value_keys) = 0 THEN '{}' ELSE to_json(map(value_keys, value_values))::VARCHAR END"
            )
            for old in ("attr_keys", "attr_values", "value_keys", "value_values"):
                con.execute(f"ALTER TABLE samples DROP COLUMN {old}")

    def insert_many(self, batches: Sequence[Batch]) -> list[InsertResult]:
        """Store several batches durably; one result per batch.

        A batch is a list of lines, or an `ArrowBatch` a decode worker already built from them.
        Without the ingest log: one transaction (one fsync). With it: the new lines are appended
        to the log (one fsync) and inserted into DuckDB by the log's thread soon after."""
        write = Write.prepare(batches)
        if write.tables and self._log is not None:
            self._log.admit(write)
        elif write.tables:
            self._insert(write)
        return write.results()

    def _insert(self, write: Write, known_new: bool = False) -> None:
        """Write in one transaction; keys already stored are left out (not looked up when
        `known_new`: the ingest log's thread inserts lines the log already checked)."""
        tables = write.tables
        stored: list[tuple] = []
        self._ensure_open()
        with self._write_lock:
            script = ["BEGIN TRANSACTION"]
            span = None if known_new else self.keys.search_span(write.keys)
            if span is not None:  # rare: a key at or below its session's highest seq
                script.append("DELETE FROM _stored; INSERT INTO _stored " + found_sql(list(tables), *span))
            insert = _INSERT_SQL if span is None else _INSERT_NEW_SQL
            script.extend(insert[table] for table in tables)
            late = None if write.samples_lo is None else self._rollup.late_sql(write.samples_lo)
            if late:  # late samples for buckets already rolled up: marked in the same transaction
                script.append(late)
            script.append("COMMIT")
            if span is not None:
                script.append("SELECT session_id, seq FROM _stored")
            # one execute(): each call gives up the GIL and waits to get it back
            try:
                cursor = run_sql(self._con, ";\n".join(script), tables)
                stored = cursor.fetchall() if span is not None else []
            except BaseException as exc:
                self.note_error(exc)
                with contextlib.suppress(duckdb.Error):
                    self._con.execute("ROLLBACK")
                raise
        if stored:  # rare: lines stored by an earlier write; find their batches
            write.count_found(set(stored))

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement (DuckDB dialect, `$name` parameters) and return its rows.

        With the ingest log, it first waits for the lines acknowledged so far to be in DuckDB."""
        if self._log is not None and self._log.busy() and not self._log.sync():
            log.warning("query: DuckDB is behind the ingest log (%s); the answer may miss recent lines",
                        self._log.drain_error)
        self._ensure_open()
        cursor = self._con.cursor()
        try:
            with self._reading():
                return cursor.execute(sql, params or {}).fetchall() if params else cursor.execute(sql).fetchall()
        except duckdb.Error as exc:
            self.note_error(exc)
            raise
        finally:
            cursor.close()

    @contextlib.contextmanager
    def scratch(self):
        """A reader on a connection of its own (see Warehouse.scratch): its temporary tables
        are private to it, and dropped when the block ends, failing or not. DuckDB gets every
        core meanwhile, as for `query`."""
        if self._log is not None and self._log.busy() and not self._log.sync():
            log.warning("query: DuckDB is behind the ingest log (%s); the answer may miss recent lines",
                        self._log.drain_error)
        self._ensure_open()
        reader = _Scratch(self._con.cursor())
        try:
            with self._reading():
                yield reader
        except duckdb.Error as exc:
            self.note_error(exc)
            raise
        finally:
            reader.close()

    # -- a fatal error --

    def note_error(self, exc: BaseException) -> None:
        """Remember a fatal error that invalidated DuckDB ("database has been invalidated ...
        must be restarted": a checkpoint that could not write on a full disk, say). The
        database is reopened before the next read or write (_ensure_open), so one failure
        costs the requests in flight, not every later one."""
        if isinstance(exc, duckdb.FatalException) or "database has been invalidated" in str(exc):
            if self._invalid is None:
                log.error("DuckDB failed fatally and is reopened before its next use: %s", str(exc).splitlines()[0])
            self._invalid = exc

    def _ensure_open(self) -> None:
        """Reopen DuckDB if a fatal error invalidated it. Whatever was committed is kept (DuckDB
        replays its WAL); lines the ingest log holds and DuckDB does not are inserted by the log's
        thread as usual. Raises (and tries again next time) when reopening fails too."""
        if self._invalid is None or self._closed:
            return
        with self._write_lock, self._reads_lock:
            if self._invalid is None:
                return
            old = self._con
            stale = [self._settings_con, old] + ([self._log.admit_con] if self._log is not None else [])
            for con in stale:
                with contextlib.suppress(Exception):
                    con.close()
            # every connection to the invalidated database is closed, so connecting opens it anew
            # (DuckDB hands out a database still open elsewhere: the probe then fails, and the
            # next use tries again)
            con = self._connect(self._config, self._logged)
            try:
                con.execute("SELECT count(*) FROM sessions").fetchall()
                con.execute("CREATE TEMP TABLE IF NOT EXISTS _stored (session_id VARCHAR, seq BIGINT)")
                if self._log is not None:
                    self._log.configure(con)
            except BaseException:
                with contextlib.suppress(Exception):
                    con.close()
                raise
            self._con = con
            self._rollup.use(con)
            self._settings_con = con.cursor()
            if self._reads and self._read_threads is not None:
                self._settings_con.execute(f"SET threads = {self._read_threads}")
            self._invalid = None
            self.reopened += 1
            log.warning("DuckDB reopened after a fatal error (%d time(s) so far)", self.reopened)

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

    # -- the capabilities the interface declares --

    def rollup_state(self) -> RollupState:
        """(bucket width in ms, watermark, dirty buckets): the buckets below the watermark are in
        `sample_rollup`, except the dirty ones (late samples since; redone at the next roll_up)."""
        dirty = [int(r[0]) for r in self.query("SELECT DISTINCT bucket FROM rollup_dirty ORDER BY 1")]
        return RollupState(ROLLUP_BUCKET_MS, self._rollup.watermark, dirty)

    def roll_up(self, now_ms: int | None = None, max_buckets: int = 6) -> int:
        """One bounded step of rolling up: redo up to `max_buckets` dirty buckets, and roll up
        the next closed buckets (ended ROLLUP_GRACE_MS before `now_ms`), at most `max_buckets`
        (an hour) of them, in one transaction. Returns how many buckets it rolled up or redid
        (a jump over buckets without samples counts 1); 0 when there is nothing to do. Bounded,
        so a writer thread that calls it never holds up writes for long: the collector calls it
        every minute, and again at once while it returns more than 0 (catching up on an old file)."""
        self._ensure_open()
        try:
            return self._rollup.roll_up(now_ms, max_buckets)
        except duckdb.Error as exc:
            self.note_error(exc)
            raise

    def catch_up(self, now_ms: int | None = None) -> int:
        """roll_up() until there is nothing left to do; the buckets dealt with."""
        total = 0
        while True:
            step = self.roll_up(now_ms)
            if not step:
                return total
            total += step

    def pending_lines(self) -> int:
        """Lines acknowledged (in the ingest log) but not yet in DuckDB."""
        return self._log.pending_lines() if self._log is not None else 0

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until every line acknowledged before this call is in DuckDB (reads then see
        it); False when that took longer than `timeout` (DuckDB failing: see drain_error)."""
        return True if self._log is None else self._log.sync(timeout)

    @property
    def drain_error(self) -> BaseException | None:
        """The ingest log's last failed background insert, until one succeeds (else None)."""
        return None if self._log is None else self._log.drain_error

    def apply_retention(self, days: int) -> None:
        """Delete rows (and their dedup keys) with ts older than `days` days."""
        cutoff = int((time.time() - days * 86400) * 1000)
        self.sync()  # lines already acknowledged are deleted too, not inserted after
        self._ensure_open()
        with self._write_lock:
            with transaction(self._con) as con:
                for table in SCHEMA:
                    con.execute(f"DELETE FROM {table} WHERE ts < ?", [cutoff])
                for statement in self._rollup.retention_sql(cutoff):
                    con.execute(statement)
            # sessions still in the ingest log keep their entries (their lines reach DuckDB later)
            self.keys.forget_before(cutoff, keep=self._log.pending_sessions() if self._log is not None else set())

    def close(self) -> None:
        """Insert what the ingest log holds, checkpoint and close the file (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        drained = True
        if self._log is not None:
            drained = self._log.close()
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
        if self._log is not None and checkpointed and drained:  # all in the file: the log is done
            self._log.delete_segments()
