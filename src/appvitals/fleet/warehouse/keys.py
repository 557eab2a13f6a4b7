"""Which (session_id, seq) keys a DuckDB warehouse may hold already: the duplicate check.

SPEC makes `(session_id, seq)` unique whatever the ts, and DuckDB has no index that finds a
key without scanning every row of the table (an ART primary key was 3-5x slower per line and
grew in memory with the table). So the warehouse keeps, per session, the lowest and highest
seq it has stored and the lowest and highest ts of that session's keyed lines. Clients number
a session's lines in increasing order, so a new line's seq lies above its session's highest
(or, for a backlog sent newest first, below its lowest): a write made of such lines needs no
lookup at all. Only a write with a session whose lines reach into its stored seq range (a
resend, lines that fill a gap, or lines below and above it at once) is looked up in DuckDB -- joined on (session_id, seq), restricted to the stored
ts span of the sessions concerned, which DuckDB's zone maps turn into a read of those row
groups only. The same key sent again with another ts is found like any other.

Memory: one entry per session of the file (a dict entry and 32 bytes of arrays), read at
open with one pass over the tables, and dropped by retention once a session's lines are gone
(its slot then goes to a new session).
"""

from __future__ import annotations

import threading
from array import array
from itertools import repeat

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from appvitals.fleet.wire.schema import NO_SEQ, SCHEMA

_NO_SEQ = pa.scalar(NO_SEQ, pa.int64())
_I64 = pa.int64()
# an empty range: no seq is >= _EMPTY_LOW and <= _EMPTY_HIGH
_EMPTY_LOW, _EMPTY_HIGH = 2**63 - 1, -(2**63)
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
    write it stores, so it never misses a key. A session is a slot (found through one dict) in
    four `array.array` of int64, which Arrow reads without a copy. A write is checked per
    session, not per line: one hash aggregation (in C) gives each session's lowest and highest
    seq and ts in the write; a session needs no lookup when its lowest seq in the write lies
    above its stored highest, or its highest below its stored lowest. Only the entries that
    change are written back (its highest seq and ts, usually), so a write costs O(its lines +
    its sessions), whatever the number of sessions known. Slots of sessions dropped by
    retention are reused."""

    _COLUMNS = ("bottom", "top", "lo", "hi")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}  # session_id -> slot
        self._sids: list[str | None] = []  # slot -> session_id (None: free)
        self._free: list[int] = []  # slots of forgotten sessions, given to new ones first
        self._state: dict[str, array] = {name: array("q") for name in self._COLUMNS}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every session's entry from the tables (once, at open)."""
        arrow = con.sql(_LOAD_SQL).to_arrow_table()
        with self._lock:
            self._sids = arrow.column(0).to_pylist()
            self._ids = {sid: slot for slot, sid in enumerate(self._sids)}
            self._free = []
            self._state = {name: array("q", arrow.column(i + 1).cast(_I64).to_pylist())
                           for i, name in enumerate(self._COLUMNS)}

    def _view(self, name: str) -> pa.Array:
        """A column as an Arrow array over the same memory (drop it before the column grows)."""
        column = self._state[name]
        return pa.Array.from_buffers(_I64, len(column), [None, pa.py_buffer(column)])

    def _slots(self, sessions: list[str]) -> pa.Array:
        """The slot of each session (a new session gets one, with an empty range)."""
        ids = self._ids
        slots = list(map(ids.get, sessions))
        if None in slots:
            for i, sid in enumerate(sessions):
                if slots[i] is None:
                    slots[i] = ids[sid] = self._new_slot(sid)
        return pa.array(slots, _I64)

    def _new_slot(self, sid: str) -> int:
        if self._free:
            slot = self._free.pop()
            self._sids[slot] = sid
            return slot
        slot = len(self._sids)
        self._sids.append(sid)
        if slot == len(self._state["top"]):  # grow by half at least, into new arrays (a view
            more = max(slot // 2, 1024)  # may still read the old ones)
            for name, empty in zip(self._COLUMNS, _EMPTY):
                grown = array("q", self._state[name])
                grown.extend(repeat(empty, more))
                self._state[name] = grown
        return slot

    def search_span(self, keys: pa.Table | None, remember: bool = True) -> tuple[int, int] | None:
        """The ts span to look the write's keyed lines (`key_rows`) up in, or None when none can
        be stored yet: each session's seqs in the write lie above its stored highest, or below
        its stored lowest. With `remember`, the lines are then counted as stored (call it under
        the lock that orders writes: the entries must not miss a write that got past this check)."""
        if keys is None or not keys.num_rows:
            return None
        sessions = pc.min_max(keys.column("session_id")).as_py()
        if sessions["min"] == sessions["max"]:  # the usual request: one session's lines
            seq, ts = pc.min_max(keys.column("seq")).as_py(), pc.min_max(keys.column("ts")).as_py()
            return self._one(sessions["min"], seq["min"], seq["max"], ts["min"], ts["max"], remember)
        per = keys.group_by("session_id", use_threads=False).aggregate(
            [("seq", "min"), ("seq", "max"), ("ts", "min"), ("ts", "max")])
        seq_min, seq_max = per.column("seq_min").combine_chunks(), per.column("seq_max").combine_chunks()
        ts_min, ts_max = per.column("ts_min").combine_chunks(), per.column("ts_max").combine_chunks()
        with self._lock:
            slots = self._slots(per.column("session_id").to_pylist())
            bottom, top, lo, hi = (pc.take(self._view(name), slots) for name in self._COLUMNS)
            # a session straddling its stored range (lines below and above it) is looked up too
            maybe = pc.and_(pc.less_equal(seq_min, top), pc.greater_equal(seq_max, bottom))
            span = None
            if pc.any(maybe).as_py():  # rare: a resend, or lines out of order inside a session's range
                span = (pc.min(pc.filter(lo, maybe)).as_py(), pc.max(pc.filter(hi, maybe)).as_py())
            if remember:  # write back only the entries that move (usually top and hi)
                for name, current, new, beyond in (("bottom", bottom, seq_min, pc.less), ("top", top, seq_max, pc.greater),
                                                    ("lo", lo, ts_min, pc.less), ("hi", hi, ts_max, pc.greater)):
                    changed = beyond(new, current)
                    if changed.true_count:
                        column = self._state[name]
                        for slot, value in zip(pc.filter(slots, changed).to_pylist(), pc.filter(new, changed).to_pylist()):
                            column[slot] = value
        return span

    def _one(self, sid: str, seq_min: int, seq_max: int, ts_min: int, ts_max: int, remember: bool) -> tuple[int, int] | None:
        """search_span for a write of one session's lines (no Arrow call)."""
        with self._lock:
            slot = self._ids.get(sid)
            if slot is None:
                slot = self._ids[sid] = self._new_slot(sid)
            bottom, top, lo, hi = (self._state[name] for name in self._COLUMNS)
            span = (lo[slot], hi[slot]) if seq_min <= top[slot] and seq_max >= bottom[slot] else None
            if remember:
                bottom[slot], top[slot] = min(bottom[slot], seq_min), max(top[slot], seq_max)
                lo[slot], hi[slot] = min(lo[slot], ts_min), max(hi[slot], ts_max)
        return span

    def forget_before(self, cutoff_ms: int, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Drop the sessions whose every line is older than `cutoff_ms` (retention deleted
        them), except those in `keep` (lines of theirs are still on their way in); their
        slots go to new sessions."""
        with self._lock:
            old = pc.indices_nonzero(pc.less(self._view("hi"), pa.scalar(cutoff_ms, _I64))).to_pylist()
            gone = [slot for slot in old if slot < len(self._sids) and self._sids[slot] is not None
                    and self._sids[slot] not in keep]
            for slot in gone:
                del self._ids[self._sids[slot]]  # type: ignore[arg-type]
                self._sids[slot] = None
                for name, empty in zip(self._COLUMNS, _EMPTY):
                    self._state[name][slot] = empty
            self._free.extend(gone)
