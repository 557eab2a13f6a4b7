"""DuckDB warehouse: the embedded default, one file.

Writes go through Arrow tables (columnar; ~5x faster than binding nested Python lists) in
one transaction per write, so a commit is one WAL fsync. Exactly-once: an internal
`line_keys(session_id, seq, ts)` table with a primary key holds every stored key;
`INSERT OR IGNORE ... RETURNING` in the same transaction tells which keys are new, so a
line seen again -- in the same batch, a later batch, or after a restart -- is not stored twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..protocol import AnyLine
from ._columns import SCHEMA, Columns, KeyedBatch
from .base import InsertResult, Warehouse

_STR = pa.string()
_STRS = pa.list_(pa.string())
_I64 = pa.int64()
_F64 = pa.float64()
_ARROW_TYPES = {
    "session_id": _STR, "client_id": _STR, "name": _STR, "reason": _STR,
    "ts": _I64, "seq": _I64, "cpu": _F64,
    "attr_keys": _STRS, "attr_values": _STRS, "value_keys": _STRS, "value_values": pa.list_(_F64),
}
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
    statements.append(
        "CREATE TABLE IF NOT EXISTS line_keys (session_id VARCHAR, seq BIGINT, ts BIGINT, PRIMARY KEY (session_id, seq))"
    )
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
            con.execute("BEGIN TRANSACTION")
            try:
                if keyed.first:
                    self._claim_keys(con, keyed)
                columns = Columns().add(keyed.fresh_lines())
                for table, cols in columns.tables.items():
                    if not cols["session_id"]:
                        continue
                    arrow = pa.table({c: pa.array(cols[c], _ARROW_TYPES[c]) for c in SCHEMA[table]})
                    con.register("_incoming", arrow)
                    try:
                        con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
                    finally:
                        con.unregister("_incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        dups = keyed.duplicate_counts(sizes)
        return [InsertResult(accepted=size - d, duplicates=d) for size, d in zip(sizes, dups)]

    def _claim_keys(self, con, keyed: KeyedBatch) -> None:
        sids, seqs, tss = keyed.key_columns()
        keys = pa.table({"session_id": pa.array(sids, _STR), "seq": pa.array(seqs, _I64), "ts": pa.array(tss, _I64)})
        con.register("_keys", keys)
        try:
            claimed = con.execute(
                "INSERT OR IGNORE INTO line_keys SELECT session_id, seq, ts FROM _keys RETURNING session_id, seq"
            ).fetchall()
        finally:
            con.unregister("_keys")
        if len(claimed) == len(sids):
            return
        new = set(claimed)
        keyed.mark_stored(k for k in zip(sids, seqs) if k not in new)

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
                for table in (*SCHEMA, "line_keys"):
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
