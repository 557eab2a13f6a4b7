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

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol import AnyLine
from ._arrow import ArrowBatch
from ._columns import NO_SEQ, SCHEMA
from .base import InsertResult, Warehouse

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


def _probe_sql(incoming: list[str], lookup: list[str], lo: int, hi: int) -> str:
    """SQL counting the stored rows in [lo, hi] that share (ts, seq) with an incoming keyed line.

    Integers only: DuckDB never decompresses a string column for it (fetching the session_ids of
    a row group's rows was most of a write's cost). 0 in the usual case, and then no lookup."""
    stored = " UNION ALL ".join(f"SELECT ts, seq FROM {t} WHERE ts BETWEEN {int(lo)} AND {int(hi)}" for t in lookup)
    return (f"SELECT count(*) FROM ({stored}) AS s SEMI JOIN ({_keys_sql(incoming, 'ts, seq')}) AS k "
            "ON s.ts = k.ts AND s.seq = k.seq")


def _stored_sql(incoming: list[str], lookup: list[str], lo: int, hi: int) -> str:
    """SQL that fills the temp table _stored with the incoming keys already in the `lookup` tables."""
    found = " UNION ALL ".join(
        f"SELECT s.session_id, s.seq FROM {table} AS s SEMI JOIN _keys AS k "
        f"ON s.ts = k.ts AND s.seq = k.seq AND s.session_id = k.session_id WHERE s.ts BETWEEN {int(lo)} AND {int(hi)}"
        for table in lookup
    )
    # a temp table is never logged; emptying it is cheaper than creating it again
    return (f"DELETE FROM _stored; INSERT INTO _stored WITH _keys AS ({_keys_sql(incoming, 'session_id, seq, ts')}) "
            f"{found}")


def _execute(con: duckdb.DuckDBPyConnection, sql: str, tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """Run `sql`, which reads the write's Arrow tables as `_incoming_<table>`.

    DuckDB's replacement scan finds them by those names among this frame's locals, so there is
    no register()/unregister() pair per table and write (about 0.9 ms each)."""
    _incoming_sessions = tables.get("sessions")  # noqa: F841 - read by name from the SQL
    _incoming_samples = tables.get("samples")  # noqa: F841
    _incoming_events = tables.get("events")  # noqa: F841
    _incoming_ends = tables.get("ends")  # noqa: F841
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


class DuckDBWarehouse(Warehouse):
    """The warehouse in one DuckDB file (or ":memory:")."""

    dialect = "duckdb"
    takes_arrow = True  # insert_many accepts ArrowBatch (the collector's decode workers build them)

    def __init__(self, path: str | Path, memory_limit: str = "256MB", threads: int | None = None):
        self.path = str(path)
        if self.path.startswith("duckdb://"):
            self.path = self.path[len("duckdb://"):]
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"memory_limit": memory_limit}
        if threads:
            config["threads"] = threads
        self._con = duckdb.connect(self.path, config=config)
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
        """Store several batches in one transaction (one fsync); one result per batch.

        A batch is a list of lines, or an `ArrowBatch` a decode worker already built from them."""
        prepared = [b if isinstance(b, ArrowBatch) else ArrowBatch.from_lines(b) for b in batches]
        if not any(b.tables for b in prepared):
            return [InsertResult(duplicates=b.duplicates) for b in prepared]
        # per table: the batches' Arrow tables, and which batch each piece came from
        pieces: dict[str, list[tuple[int, pa.Table]]] = {}
        for index, batch in enumerate(prepared):
            for table, arrow in batch.tables.items():
                pieces.setdefault(table, []).append((index, arrow))
        tables = {table: pa.concat_tables([a for _, a in parts]) if len(parts) > 1 else parts[0][1]
                  for table, parts in pieces.items()}
        dropped = [0] * len(prepared)
        if len(prepared) > 1:  # a line repeated across batches of one write: keep the first
            tables = self._drop_repeats(pieces, tables, dropped)
        tables = {t: a for t, a in tables.items() if a.num_rows}
        spans = {table: pc.min_max(arrow.column("ts")).as_py() for table, arrow in tables.items()}
        keyed = any(pc.max(a.column("seq")).as_py() != NO_SEQ for a in tables.values())  # seq >= 0 when keyed
        stored: list[tuple] = []
        with self._write_lock:
            con = self._con
            script = ["BEGIN TRANSACTION"]
            lookup: list[str] = []
            if keyed and spans:
                # A duplicate is the same line sent again, so it carries the same ts: only rows in the
                # batch's ts range can match, and DuckDB's zone maps skip every other row group; a
                # table whose rows all lie outside that range is not looked at.
                lo = min(span["min"] for span in spans.values())
                hi = max(span["max"] for span in spans.values())
                lookup = [t for t, r in self._ts_range.items() if r is not None and r[0] <= hi and lo <= r[1]]
            # the probe reads outside the write's transaction: this object is the file's only writer
            if lookup and _execute(con, _probe_sql(list(tables), lookup, lo, hi), tables).fetchall()[0][0]:
                script.append(_stored_sql(list(tables), lookup, lo, hi))
                insert = _INSERT_NEW_SQL
            else:
                lookup = []
                insert = _INSERT_SQL
            script.extend(insert[table] for table in tables)
            if "samples" in spans and spans["samples"]["min"] // ROLLUP_BUCKET_MS < self._watermark:
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
            for table, span in spans.items():
                known = self._ts_range[table]
                self._ts_range[table] = (span["min"], span["max"]) if known is None else (
                    min(known[0], span["min"]), max(known[1], span["max"]))
        if stored:  # rare: lines stored by an earlier write; find their batches
            found = set(stored)
            counted: set[tuple] = set()  # a key repeated in this write was dropped (and counted) above
            for index, _, key in _keys_in_batch_order(pieces):
                if key in found and key not in counted:
                    counted.add(key)
                    dropped[index] += 1
        return [InsertResult(accepted=b.size - b.duplicates - d, duplicates=b.duplicates + d)
                for b, d in zip(prepared, dropped)]

    @staticmethod
    def _drop_repeats(pieces: dict[str, list[tuple[int, pa.Table]]], tables: dict[str, pa.Table],
                      dropped: list[int]) -> dict[str, pa.Table]:
        """Leave out lines whose (session_id, seq) an earlier batch of the same write holds;
        counted into `dropped` per batch. Checked in C; Python only runs when there are repeats."""
        keys = []
        for arrow in tables.values():
            arrow = arrow.select(["session_id", "seq"])
            if pc.min(arrow.column("seq")).as_py() == NO_SEQ:  # lines without seq have no key
                arrow = arrow.filter(pc.not_equal(arrow.column("seq"), _NO_SEQ))
            keys.append(arrow)
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
        """Run one read-only SQL statement (DuckDB dialect, `$name` parameters) and return its rows."""
        cursor = self._con.cursor()
        try:
            return cursor.execute(sql, params or {}).fetchall() if params else cursor.execute(sql).fetchall()
        finally:
            cursor.close()

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
        with self._write_lock:
            with _transaction(self._con) as con:
                for table in SCHEMA:
                    con.execute(f"DELETE FROM {table} WHERE ts < ?", [cutoff])
                edge = cutoff // ROLLUP_BUCKET_MS
                con.execute(f"DELETE FROM sample_rollup WHERE bucket < {edge}")
                if edge < self._watermark:  # the bucket the cutoff cuts lost samples: redo it
                    con.execute(f"INSERT INTO rollup_dirty VALUES ({edge})")

    def close(self) -> None:
        """Checkpoint and close the file."""
        with self._write_lock:
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error:
                pass
            self._con.close()
