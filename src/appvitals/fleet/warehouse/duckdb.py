"""DuckDB warehouse: the embedded default, one file.

Writes hand DuckDB the validated lines re-encoded as compact JSON (msgspec, in C) in an
Arrow column, and DuckDB's JSON reader fills the columns in C++ off the GIL: ~4x faster
than building Python column lists, and the Python thread is free to read the next request.
One transaction per write, so a commit is one WAL fsync.

Exactly-once without an index: a line sent again carries the same ts, so inside the write's
transaction one query looks the batch's (session_id, seq) keys up in the four tables,
restricted to the batch's ts range; DuckDB's zone maps skip every row group outside it, so
the cost follows the batch, not the table. (An ART primary key was 3-5x slower per line and
grew in memory with the table.) Duplicates in the same batch are found in Python first. A
line seen again -- same write, later write, or after a restart -- is not stored twice.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from ..protocol import AnyLine, EndLine, EventLine, SampleLine, SessionLine
from ._columns import SCHEMA, KeyedBatch
from .base import InsertResult, Warehouse

_STR = pa.string()
_STRS = pa.list_(pa.string())
_I64 = pa.int64()
_ENCODER = msgspec.json.Encoder()
_TABLE_OF = {SessionLine: "sessions", SampleLine: "samples", EventLine: "events", EndLine: "ends"}
# lines are encoded with omit_defaults: a missing seq is -1, missing attrs/values are empty
_ATTRS = "json_transform(j->'attrs', '\"MAP(VARCHAR, VARCHAR)\"')"
_VALUES = "json_transform(j->'values', '\"MAP(VARCHAR, DOUBLE)\"')"
_EXTRACT = {
    "sessions": "j->>'session_id', j->>'client_id', (j->>'ts')::BIGINT, coalesce((j->>'seq')::BIGINT, -1), "
                "coalesce(map_keys(a), []), coalesce(map_values(a), [])",
    "samples": "j->>'session_id', (j->>'ts')::BIGINT, coalesce((j->>'seq')::BIGINT, -1), (j->>'cpu')::DOUBLE, "
               "coalesce(map_keys(a), []), coalesce(map_values(a), []), "
               "coalesce(map_keys(v), []), coalesce(map_values(v), [])::DOUBLE[]",
    "events": "j->>'session_id', (j->>'ts')::BIGINT, coalesce((j->>'seq')::BIGINT, -1), j->>'name', "
              "coalesce(map_keys(a), []), coalesce(map_values(a), [])",
    "ends": "j->>'session_id', (j->>'ts')::BIGINT, coalesce((j->>'seq')::BIGINT, -1), coalesce(j->>'reason', '')",
}


def _insert_sql(table: str) -> str:
    inner = "SELECT j"
    if "map_keys(a)" in _EXTRACT[table]:
        inner += f", {_ATTRS} AS a"
    if "map_keys(v)" in _EXTRACT[table]:
        inner += f", {_VALUES} AS v"
    return (f"INSERT INTO {table} SELECT {_EXTRACT[table]} "
            f"FROM ({inner} FROM (SELECT line::JSON AS j FROM _incoming_{table}))")


_INSERT_SQL = {table: _insert_sql(table) for table in SCHEMA}

_SQL_TYPES = {
    "session_id": "VARCHAR", "client_id": "VARCHAR", "name": "VARCHAR", "reason": "VARCHAR",
    "ts": "BIGINT", "seq": "BIGINT", "cpu": "DOUBLE",
    "attr_keys": "VARCHAR[]", "attr_values": "VARCHAR[]", "value_keys": "VARCHAR[]", "value_values": "DOUBLE[]",
}


def _ddl() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {_SQL_TYPES[c]}' for c in cols)})"
        for table, cols in SCHEMA.items()
    ]
    return statements


class DuckDBWarehouse(Warehouse):
    """The warehouse in one DuckDB file (or ":memory:")."""

    dialect = "duckdb"

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
        for statement in _ddl():
            self._con.execute(statement)

    def insert(self, lines: Sequence[AnyLine]) -> InsertResult:
        """Store lines durably (one committed transaction), skipping duplicates by (session_id, seq)."""
        return self.insert_many([lines])[0]

    def insert_many(self, batches: Sequence[Sequence[AnyLine]]) -> list[InsertResult]:
        """Store several batches in one transaction (one fsync); one result per batch."""
        sizes = [len(b) for b in batches]
        lines: list[AnyLine] = [line for batch in batches for line in batch]
        if not lines:
            return [InsertResult() for _ in batches]
        keyed = KeyedBatch(lines)
        with self._write_lock:
            con = self._con
            # the writer is the only one writing this file, so the lookup may run before the
            # transaction; each execute() gives up the GIL and waits to get it back, so the
            # whole write is two calls: the lookup, then BEGIN; INSERT...; COMMIT in one script
            if keyed.first:
                self._claim_keys(con, keyed)
            groups: dict[str, list[AnyLine]] = {}
            for line in keyed.fresh_lines():
                table = _TABLE_OF[type(line)]
                group = groups.get(table)
                if group is None:
                    group = groups[table] = []
                group.append(line)
            script = ["BEGIN TRANSACTION"]
            for table, group in groups.items():
                encoded = _ENCODER.encode_lines(group).split(b"\n")
                encoded.pop()  # after the last newline
                con.register(f"_incoming_{table}", pa.table({"line": pa.array(encoded, _STR)}))
                script.append(_INSERT_SQL[table])
            script.append("COMMIT")
            try:
                con.execute(";\n".join(script))
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            finally:
                for table in groups:
                    con.unregister(f"_incoming_{table}")
        dups = keyed.duplicate_counts(sizes)
        return [InsertResult(accepted=size - d, duplicates=d) for size, d in zip(sizes, dups)]

    def _claim_keys(self, con, keyed: KeyedBatch) -> None:
        # A duplicate is the same line sent again, so it carries the same ts: only rows in the
        # batch's ts range can match, and DuckDB's zone maps skip every other row group.
        sids, seqs, tss = keyed.key_columns()
        lo, hi = int(min(tss)), int(max(tss))
        keys = pa.table({"session_id": pa.array(sids, _STR), "seq": pa.array(seqs, _I64)})
        con.register("_keys", keys)
        try:
            stored = con.execute(" UNION ALL ".join(
                f"SELECT t.session_id, t.seq FROM {table} AS t JOIN _keys AS k "
                f"ON t.session_id = k.session_id AND t.seq = k.seq WHERE t.ts BETWEEN {lo} AND {hi}"
                for table in SCHEMA
            )).fetchall()
        finally:
            con.unregister("_keys")
        if stored:
            keyed.mark_stored(set(stored))

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement (DuckDB dialect, `$name` parameters) and return its rows."""
        cursor = self._con.cursor()
        try:
            return cursor.execute(sql, params or {}).fetchall() if params else cursor.execute(sql).fetchall()
        finally:
            cursor.close()

    def apply_retention(self, days: int) -> None:
        """Delete rows (and their dedup keys) with ts older than `days` days."""
        cutoff = int((time.time() - days * 86400) * 1000)
        with self._write_lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                for table in SCHEMA:
                    con.execute(f"DELETE FROM {table} WHERE ts < ?", [cutoff])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Checkpoint and close the file."""
        with self._write_lock:
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error:
                pass
            self._con.close()
