"""DuckDB warehouse: the embedded default, one file.

Writes hand DuckDB Arrow tables built straight from the decoded line structs: each column
is pulled out with `operator.attrgetter` (a C loop) and converted by pyarrow in C; attrs
dicts become a MAP array whose keys/values buffers are reused as the two list columns, so
there is no per-value Python work and no JSON re-encode/re-parse (which cost ~2.5 us a line
in DuckDB's JSON reader). One `execute()` per write -- dedup lookup, inserts, COMMIT -- so
the writer thread gives up and re-takes the GIL as few times as possible. One transaction
per write, so a commit is one WAL fsync.

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

import bisect
import contextlib
import threading
import time
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol import AnyLine, EndLine, EventLine, SampleLine, SessionLine
from ._columns import EMPTY_JSON, NO_SEQ, SCHEMA, attr_text, json_encode
from .base import InsertResult, Warehouse

_STR = pa.string()
_I64 = pa.int64()
_F64 = pa.float64()
_STR_MAP = pa.map_(_STR, _STR)
_EMPTY_JSON = pa.scalar(EMPTY_JSON, _STR)
_KIND_TABLE = ((SessionLine, "sessions"), (SampleLine, "samples"), (EventLine, "events"), (EndLine, "ends"))
_SID, _TS, _SEQ = attrgetter("session_id"), attrgetter("ts"), attrgetter("seq")
_FIELD = {name: attrgetter(name) for name in ("client_id", "cpu", "name", "reason", "attrs", "values")}
_INSERT_SQL = {table: f"INSERT INTO {table} SELECT * FROM _incoming_{table}" for table in SCHEMA}
# the same, without the lines whose key the lookup found already stored
_INSERT_NEW_SQL = {
    table: f"INSERT INTO {table} SELECT * FROM _incoming_{table} AS i WHERE NOT EXISTS "
           f"(SELECT 1 FROM _stored AS s WHERE s.session_id = i.session_id AND s.seq = i.seq)"
    for table in SCHEMA
}


def _stored_sql(incoming: list[str], lookup: list[str], lo: int, hi: int) -> str:
    """SQL that fills the temp table _stored with the incoming keys already in the `lookup` tables."""
    keys = " UNION ALL ".join(
        f"SELECT (session_id, seq) FROM _incoming_{table} WHERE seq <> {NO_SEQ}" for table in incoming
    )
    found = " UNION ALL ".join(
        f"SELECT session_id, seq FROM {table} WHERE ts BETWEEN {int(lo)} AND {int(hi)} "
        f"AND (session_id, seq) IN (SELECT * FROM _keys)"
        for table in lookup
    )
    # a temp table is never logged; emptying it is cheaper than creating it again
    return f"DELETE FROM _stored; INSERT INTO _stored WITH _keys AS ({keys}) {found}"


_SQL_TYPES = {
    "session_id": "VARCHAR", "client_id": "VARCHAR", "name": "VARCHAR", "reason": "VARCHAR",
    "ts": "BIGINT", "seq": "BIGINT", "cpu": "DOUBLE",
    "attr_keys": "VARCHAR[]", "attr_values": "VARCHAR[]", "attrs": "VARCHAR", "vals": "VARCHAR",
}


def _ddl() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {_SQL_TYPES[c]}' for c in cols)})"
        for table, cols in SCHEMA.items()
    ]
    return statements


def _key_lists(arrow_map: pa.MapArray) -> tuple[pa.Array, pa.Array]:
    """A map column as its parallel (keys, values) list columns, sharing the map's buffers."""
    return (pa.ListArray.from_arrays(arrow_map.offsets, arrow_map.keys),
            pa.ListArray.from_arrays(arrow_map.offsets, arrow_map.items))


def _attr_lists(dicts: list[dict]) -> tuple[pa.Array, pa.Array]:
    """attrs dicts as (attr_keys, attr_values) list columns, values as stored text (see base.py)."""
    try:  # the usual case, all values strings: converted in C
        arrow_map = pa.array(dicts, _STR_MAP)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # numbers/booleans become their JSON text
        arrow_map = pa.array([{k: attr_text(v) for k, v in d.items()} for d in dicts], _STR_MAP)
    return _key_lists(arrow_map)


def _arrow_table(table: str, lines: list[AnyLine]) -> pa.Table:
    """The lines of one table as an Arrow table with the schema's columns, in order."""
    seqs = list(map(_SEQ, lines))
    if None in seqs:
        seqs = [NO_SEQ if q is None else q for q in seqs]
    columns: dict[str, Any] = {
        "session_id": pa.array(list(map(_SID, lines)), _STR),
        "ts": pa.array(list(map(_TS, lines)), _I64),
        "seq": pa.array(seqs, _I64),
    }
    if table == "sessions":
        columns["client_id"] = pa.array(list(map(_FIELD["client_id"], lines)), _STR)
    elif table == "samples":
        # attrs and values as sorted-key JSON texts, encoded in C (msgspec) and handed over as bytes
        columns["cpu"] = pa.array(list(map(_FIELD["cpu"], lines)), _F64)
        columns["attrs"] = pa.array(list(map(json_encode, map(_FIELD["attrs"], lines))), _STR)
        values = list(map(_FIELD["values"], lines))
        if any(values):
            columns["vals"] = pa.array(list(map(json_encode, values)), _STR)
        else:  # the usual case: no extra values
            columns["vals"] = pa.repeat(_EMPTY_JSON, len(lines))
    elif table == "events":
        columns["name"] = pa.array(list(map(_FIELD["name"], lines)), _STR)
    else:
        columns["reason"] = pa.array([r or "" for r in map(_FIELD["reason"], lines)], _STR)
    if table in ("sessions", "events"):
        columns["attr_keys"], columns["attr_values"] = _attr_lists(list(map(_FIELD["attrs"], lines)))
    return pa.table({name: columns[name] for name in SCHEMA[table]})


def _batch_duplicates(sids: list[str], seqs: list[int | None]) -> list[int]:
    """Indexes of the lines that repeat the (session_id, seq) of an earlier line of the batch."""
    if None not in seqs and len(set(zip(sids, seqs))) == len(seqs):
        return []  # the usual case, checked in C
    seen: set[tuple[str, int]] = set()
    duplicates = []
    for i, key in enumerate(zip(sids, seqs)):
        if key[1] is None:
            continue
        if key in seen:
            duplicates.append(i)
        else:
            seen.add(key)
    return duplicates


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
        self._migrate()
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
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("ALTER TABLE samples ADD COLUMN attrs VARCHAR")
            con.execute("ALTER TABLE samples ADD COLUMN vals VARCHAR")
            con.execute(
                "UPDATE samples SET "
                "attrs = CASE WHEN len(attr_keys) = 0 THEN '{}' ELSE to_json(map(attr_keys, attr_values))::VARCHAR END, "
                "vals = CASE WHEN len(value_keys) = 0 THEN '{}' ELSE to_json(map(value_keys, value_values))::VARCHAR END"
            )
            for old in ("attr_keys", "attr_values", "value_keys", "value_values"):
                con.execute(f"ALTER TABLE samples DROP COLUMN {old}")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise

    def insert_many(self, batches: Sequence[Sequence[AnyLine]]) -> list[InsertResult]:
        """Store several batches in one transaction (one fsync); one result per batch."""
        sizes = [len(b) for b in batches]
        lines: list[AnyLine] = [line for batch in batches for line in batch]
        if not lines:
            return [InsertResult() for _ in batches]
        sids = list(map(_SID, lines))
        seqs = list(map(_SEQ, lines))
        duplicates = _batch_duplicates(sids, seqs)
        keyed = seqs.count(None) < len(seqs)
        if duplicates:
            skip = set(duplicates)
            fresh = [line for i, line in enumerate(lines) if i not in skip]
        else:
            fresh = lines
        groups: dict[type, list[AnyLine]] = {}
        for line in fresh:
            kind = type(line)
            group = groups.get(kind)
            if group is None:
                group = groups[kind] = []
            group.append(line)
        tables = [(table, _arrow_table(table, groups[kind])) for kind, table in _KIND_TABLE if groups.get(kind)]
        spans = {table: pc.min_max(arrow.column("ts")).as_py() for table, arrow in tables}
        with self._write_lock:
            con = self._con
            script = ["BEGIN TRANSACTION"]
            lookup: list[str] = []
            if keyed:
                # A duplicate is the same line sent again, so it carries the same ts: only rows in the
                # batch's ts range can match, and DuckDB's zone maps skip every other row group; a
                # table whose rows all lie outside that range is not looked at.
                lo = min(span["min"] for span in spans.values())
                hi = max(span["max"] for span in spans.values())
                lookup = [t for t, r in self._ts_range.items() if r is not None and r[0] <= hi and lo <= r[1]]
            if lookup:
                script.append(_stored_sql([table for table, _ in tables], lookup, lo, hi))
                insert = _INSERT_NEW_SQL
            else:
                insert = _INSERT_SQL
            script.extend(insert[table] for table, _ in tables)
            script.append("COMMIT")
            if lookup:
                script.append("SELECT session_id, seq FROM _stored")
            registered = []
            # one execute(): each call gives up the GIL and waits to get it back
            try:
                for table, arrow in tables:
                    con.register(f"_incoming_{table}", arrow)
                    registered.append(table)
                cursor = con.execute(";\n".join(script))
                stored = cursor.fetchall() if lookup else []
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            finally:
                for table in registered:
                    con.unregister(f"_incoming_{table}")
            for table, span in spans.items():
                known = self._ts_range[table]
                self._ts_range[table] = (span["min"], span["max"]) if known is None else (
                    min(known[0], span["min"]), max(known[1], span["max"]))
        if stored:
            # each stored key names one line of the batch: in-batch repeats were left out above
            found = set(stored)
            skip = set(duplicates)
            duplicates += [i for i, key in enumerate(zip(sids, seqs)) if key in found and i not in skip]
        counts = [0] * len(sizes)
        if duplicates:
            bounds = []
            total = 0
            for size in sizes:
                total += size
                bounds.append(total)
            for index in duplicates:
                counts[bisect.bisect_right(bounds, index)] += 1
        return [InsertResult(accepted=size - d, duplicates=d) for size, d in zip(sizes, counts)]

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
