"""Which (session_id, seq) keys a DuckDB warehouse may hold already: the duplicate check.

SPEC makes `(session_id, seq)` unique whatever the ts, and DuckDB has no index that finds a
key without scanning every row of the table (an ART primary key was 3-5x slower per line and
grew in memory with the table). So the warehouse keeps, per session, the highest seq it has
stored and the ts span of that session's keyed lines. Clients number a session's lines in
increasing order, so a new line's seq is above its session's highest: such a write needs no
lookup at all. Only a line at or below its session's highest seq (a resend, or lines that
arrive out of order) is looked up in DuckDB -- joined on (session_id, seq), restricted to
the stored ts span of the sessions concerned, which DuckDB's zone maps turn into a read of
those row groups only. The same key sent again with another ts is found like any other.

Memory: one entry per session of the file (about 200 bytes), read at open with one pass
over the tables, and dropped by retention once all of a session's lines are gone.
"""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from appvitals.fleet.wire.schema import NO_SEQ, SCHEMA

_NO_SEQ = pa.scalar(NO_SEQ, pa.int64())
_AGGREGATES = [("seq", "min"), ("seq", "max"), ("ts", "min"), ("ts", "max")]


def keyed(arrow: pa.Table) -> pa.Table:
    """The rows that have a seq (lines without one have no key); the table itself when all do."""
    seq = arrow.column("seq")
    return arrow.filter(pc.not_equal(seq, _NO_SEQ)) if pc.min(seq).as_py() == NO_SEQ else arrow


def key_rows(tables: dict[str, pa.Table]) -> pa.Table | None:
    """The (ts, seq, session_id) of the keyed rows of some tables (zero-copy in the usual case)."""
    parts = [keys for keys in (keyed(a.select(["ts", "seq", "session_id"])) for a in tables.values()) if keys.num_rows]
    return None if not parts else parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def session_summary(tables: dict[str, pa.Table]) -> pa.Table | None:
    """Per session of the keyed rows: seq_min, seq_max, ts_min, ts_max (computed in C)."""
    keys = key_rows(tables)
    if keys is None:
        return None
    return keys.group_by("session_id", use_threads=False).aggregate(_AGGREGATES)


def found_sql(incoming: list[str], lo: int, hi: int, pending: bool = False) -> str:
    """SQL listing the (session_id, seq) of the incoming keyed lines (`_incoming_<table>`)
    already stored with a ts in [lo, hi] (and in `_pending_keys` when `pending`)."""
    keys = " UNION ALL ".join(f"SELECT session_id, seq FROM _incoming_{t} WHERE seq <> {NO_SEQ}" for t in incoming)
    sources = [(table, f" WHERE s.ts BETWEEN {int(lo)} AND {int(hi)}") for table in SCHEMA]
    if pending:
        sources.append(("_pending_keys", ""))
    found = " UNION ALL ".join(
        f"SELECT s.session_id, s.seq FROM {table} AS s SEMI JOIN _keys AS k "
        f"ON s.seq = k.seq AND s.session_id = k.session_id{where}"
        for table, where in sources
    )
    return f"WITH _keys AS ({keys}) {found}"


_LOAD_SQL = "SELECT session_id, max(seq), min(ts), max(ts) FROM ({}) GROUP BY session_id".format(
    " UNION ALL ".join(f"SELECT session_id, seq, ts FROM {t} WHERE seq <> {NO_SEQ}" for t in SCHEMA))


class StoredKeys:
    """Per session: (highest seq, lowest ts, highest ts) of its stored (or logged) keyed lines.

    A superset of the truth is safe (it only costs a lookup); the writer updates it for every
    write it stores, so it never misses a key."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every session's entry from the tables (once, at open)."""
        arrow = con.sql(_LOAD_SQL).to_arrow_table()
        columns = [arrow.column(i).to_pylist() for i in range(4)]
        with self._lock:
            self._sessions = {sid: (q, lo, hi) for sid, q, lo, hi in zip(*columns)}

    def search_span(self, summary: pa.Table | None, remember: bool = True) -> tuple[int, int] | None:
        """The ts span to look the write's keys up in, or None when no key of it can be stored
        yet (every session's lowest incoming seq is above its highest stored one). With
        `remember`, the write's sessions are then counted as stored (call it under the lock
        that orders writes: the entries must not miss a write that got past this check)."""
        if summary is None:
            return None
        sids = summary.column("session_id").to_pylist()
        seq_min = summary.column("seq_min").to_pylist()
        seq_max = summary.column("seq_max").to_pylist()
        ts_min = summary.column("ts_min").to_pylist()
        ts_max = summary.column("ts_max").to_pylist()
        lo = hi = None
        with self._lock:
            sessions = self._sessions
            for sid, q0, q1, t0, t1 in zip(sids, seq_min, seq_max, ts_min, ts_max):
                known = sessions.get(sid)
                if known is None:
                    if remember:
                        sessions[sid] = (q1, t0, t1)
                    continue
                top, k0, k1 = known
                if q0 <= top:  # maybe stored: look it up where this session's lines are
                    lo = k0 if lo is None else min(lo, k0)
                    hi = k1 if hi is None else max(hi, k1)
                if remember:
                    sessions[sid] = (max(top, q1), min(k0, t0), max(k1, t1))
        return None if lo is None else (lo, hi)

    def forget_before(self, cutoff_ms: int, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Drop the sessions whose every line is older than `cutoff_ms` (retention deleted
        them), except those in `keep` (lines of theirs are still on their way in)."""
        with self._lock:
            self._sessions = {sid: v for sid, v in self._sessions.items() if v[2] >= cutoff_ms or sid in keep}
