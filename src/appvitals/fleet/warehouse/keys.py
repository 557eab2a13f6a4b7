"""Which (session_id, seq) keys a DuckDB warehouse may hold already: the duplicate check.

SPEC makes `(session_id, seq)` unique whatever the ts, and DuckDB has no index that finds a
key without scanning every row of the table (an ART primary key was 3-5x slower per line and
grew in memory with the table). So the warehouse keeps, per session, the lowest and highest
seq it has stored and the lowest and highest ts of that session's keyed lines. Clients number
a session's lines in increasing order, so a new line's seq lies above its session's highest
(or, for a backlog sent newest first, below its lowest): a write made of such lines needs no
lookup at all. Only a line inside its session's stored seq range (a resend, or lines that
fill a gap) is looked up in DuckDB -- joined on (session_id, seq), restricted to the stored
ts span of the sessions concerned, which DuckDB's zone maps turn into a read of those row
groups only. The same key sent again with another ts is found like any other.

Memory: one entry per session of the file (a dict entry and 32 bytes of arrays), read at
open with one pass over the tables, and dropped by retention once a session's lines are gone.
"""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from appvitals.fleet.wire.schema import NO_SEQ, SCHEMA

_NO_SEQ = pa.scalar(NO_SEQ, pa.int64())
_I64 = pa.int64()
# an empty range: no seq is >= _EMPTY_LOW and <= _EMPTY_HIGH
_EMPTY_LOW, _EMPTY_HIGH = pa.scalar(2**63 - 1, pa.int64()), pa.scalar(-(2**63), pa.int64())
_EMPTY = (_EMPTY_LOW, _EMPTY_HIGH, _EMPTY_LOW, _EMPTY_HIGH)  # bottom, top, lo, hi of a session with no line


def keyed(arrow: pa.Table) -> pa.Table:
    """The rows that have a seq (lines without one have no key); the table itself when all do."""
    seq = arrow.column("seq")
    return arrow.filter(pc.not_equal(seq, _NO_SEQ)) if pc.min(seq).as_py() == NO_SEQ else arrow


def key_rows(tables: dict[str, pa.Table]) -> pa.Table | None:
    """The (ts, seq, session_id) of the keyed rows of some tables (zero-copy in the usual case)."""
    parts = [keys for keys in (keyed(a.select(["ts", "seq", "session_id"])) for a in tables.values()) if keys.num_rows]
    return None if not parts else parts[0] if len(parts) == 1 else pa.concat_tables(parts)


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


_LOAD_SQL = "SELECT session_id, min(seq), max(seq), min(ts), max(ts) FROM ({}) GROUP BY session_id".format(
    " UNION ALL ".join(f"SELECT session_id, seq, ts FROM {t} WHERE seq <> {NO_SEQ}" for t in SCHEMA))


class StoredKeys:
    """Per session: the lowest and highest seq of its stored (or logged) keyed lines, and their
    lowest and highest ts.

    A superset of the truth is safe (it only costs a lookup); the writer updates it for every
    write it stores, so it never misses a key. A session is a slot (found through one dict)
    in four Arrow int64 arrays, read and rewritten with Arrow kernels: there is no
    Python-level step per line, except for the sessions seen for the first time."""

    _COLUMNS = ("bottom", "top", "lo", "hi")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}  # session_id -> slot
        self._sids: list[str | None] = []  # slot -> session_id (None: forgotten)
        self._state: dict[str, pa.Array] = {name: pa.array([], _I64) for name in self._COLUMNS}
        self._slot_numbers = pa.array([], _I64)  # 0 .. capacity - 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every session's entry from the tables (once, at open)."""
        arrow = con.sql(_LOAD_SQL).to_arrow_table()
        with self._lock:
            self._sids = arrow.column(0).to_pylist()
            self._ids = {sid: slot for slot, sid in enumerate(self._sids)}
            self._state = {name: arrow.column(i + 1).combine_chunks().cast(_I64)
                           for i, name in enumerate(self._COLUMNS)}
            self._slot_numbers = pa.array(range(len(self._sids)), _I64)

    def _slots(self, sessions: pa.ChunkedArray | pa.Array) -> pa.Array:
        """The slot of each line's session (a new session gets one, with an empty range).

        The dict is asked once per distinct session of the write: a request usually carries
        the lines of one or two sessions."""
        if isinstance(sessions, pa.ChunkedArray):
            sessions = sessions.combine_chunks()
        encoded = pc.dictionary_encode(sessions)
        distinct = encoded.dictionary.to_pylist()
        slots = pa.array(list(map(self._ids.get, distinct)), _I64)  # null: a session not seen yet
        if slots.null_count:
            missing = pc.is_null(slots)
            fresh = pc.filter(encoded.dictionary, missing).to_pylist()
            start = len(self._sids)
            self._ids.update(zip(fresh, range(start, start + len(fresh))))
            self._sids.extend(fresh)
            capacity = len(self._slot_numbers)
            if len(self._sids) > capacity:  # grow by half at least: rebuilding costs O(capacity)
                more = max(len(self._sids) - capacity, capacity // 2, 1024)
                for name, empty in zip(self._COLUMNS, _EMPTY):
                    self._state[name] = pa.concat_arrays([self._state[name], pa.repeat(empty, more)])
                self._slot_numbers = pa.array(range(capacity + more), _I64)
            slots = pc.replace_with_mask(slots, missing, pa.array(range(start, start + len(fresh)), _I64))
        return pc.take(slots, encoded.indices)

    def search_span(self, keys: pa.Table | None, remember: bool = True) -> tuple[int, int] | None:
        """The ts span to look the write's keyed lines (`key_rows`) up in, or None when none can
        be stored yet: each line's seq lies outside its session's stored [lowest, highest].
        With `remember`, the lines are then counted as stored (call it under the lock that
        orders writes: the entries must not miss a write that got past this check)."""
        if keys is None or not keys.num_rows:
            return None
        seq, ts = keys.column("seq"), keys.column("ts")
        with self._lock:
            state = self._state
            slots = self._slots(keys.column("session_id"))
            maybe = pc.and_(pc.greater_equal(seq, pc.take(state["bottom"], slots)),
                            pc.less_equal(seq, pc.take(state["top"], slots)))
            span = None
            if pc.any(maybe).as_py():  # rare: a resend, or lines out of order inside a session's range
                near = pc.filter(slots, maybe)
                span = (pc.min(pc.take(state["lo"], near)).as_py(), pc.max(pc.take(state["hi"], near)).as_py())
            if remember:
                self._remember(slots, seq, ts)
        return span

    def _remember(self, slots: pa.Array, seq, ts) -> None:
        per_slot = pa.table({"slot": slots, "seq": seq, "ts": ts}).group_by("slot", use_threads=False).aggregate(
            [("seq", "min"), ("seq", "max"), ("ts", "min"), ("ts", "max")])
        per_slot = per_slot.take(pc.sort_indices(per_slot.column("slot")))  # replace_with_mask fills in slot order
        where = per_slot.column("slot").combine_chunks()
        mask = pc.is_in(self._slot_numbers, value_set=where)
        for name, column, pick in (("bottom", "seq_min", pc.min_element_wise), ("top", "seq_max", pc.max_element_wise),
                                   ("lo", "ts_min", pc.min_element_wise), ("hi", "ts_max", pc.max_element_wise)):
            current = self._state[name]
            merged = pick(pc.take(current, where), per_slot.column(column).combine_chunks())
            self._state[name] = pc.replace_with_mask(current, mask, merged)

    def forget_before(self, cutoff_ms: int, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Drop the sessions whose every line is older than `cutoff_ms` (retention deleted
        them), except those in `keep` (lines of theirs are still on their way in)."""
        with self._lock:
            old = pc.indices_nonzero(pc.less(self._state["hi"], pa.scalar(cutoff_ms, _I64))).to_pylist()
            gone = [slot for slot in old if slot < len(self._sids) and self._sids[slot] is not None
                    and self._sids[slot] not in keep]
            if not gone:
                return
            for slot in gone:
                del self._ids[self._sids[slot]]  # type: ignore[arg-type]
                self._sids[slot] = None
            mask = pc.is_in(self._slot_numbers, value_set=pa.array(gone, _I64))
            for name, empty in zip(self._COLUMNS, _EMPTY):
                self._state[name] = pc.replace_with_mask(self._state[name], mask, pa.repeat(empty, len(gone)))
