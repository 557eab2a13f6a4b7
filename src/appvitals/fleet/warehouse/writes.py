"""One DuckDB write on its way in: the batches of an insert_many() as per-table Arrow tables.

`Write.prepare` concatenates the batches' tables, leaves out a line whose (session_id, seq)
an earlier batch of the same write holds, and collects the keyed lines for the duplicate check (keys.py). After the check, `count_found` charges each key found already
stored to the batch that sent it first, and `results` gives one InsertResult per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from appvitals.fleet.warehouse.base import Batch, InsertResult
from appvitals.fleet.warehouse.keys import key_rows, keyed
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.schema import NO_SEQ


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, tables: dict[str, pa.Table],
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


def keys_in_batch_order(pieces: dict[str, list[tuple[int, pa.Table]]]):
    """(batch index, table, (session_id, seq)) of every row, in batch order, tables in a fixed
    order within a batch, rows in order within a table (Python objects: the rare paths only)."""
    for index, table, arrow in sorted(((index, table, arrow) for table, parts in pieces.items() for index, arrow in parts),
                                      key=lambda item: (item[0], item[1])):
        for key in zip(arrow.column("session_id").to_pylist(), arrow.column("seq").to_pylist()):
            yield index, table, key


def without(tables: dict[str, pa.Table], found: set[tuple]) -> dict[str, pa.Table]:
    """The rows whose (session_id, seq) is not in `found` (Python: the rare path only)."""
    out = {}
    for name, arrow in tables.items():
        keys = zip(arrow.column("session_id").to_pylist(), arrow.column("seq").to_pylist())
        kept = arrow.filter(pa.array([key not in found for key in keys], pa.bool_()))
        if kept.num_rows:
            out[name] = kept
    return out


class Write:
    """One insert_many() on its way in: its batches, their rows per table (repeats inside the
    write left out), and how many lines of each batch were dropped as duplicates."""

    __slots__ = ("batches", "pieces", "tables", "dropped", "samples_lo", "keys", "lo", "hi")

    def __init__(self, batches: list[ArrowBatch]):
        self.batches = batches
        self.pieces: dict[str, list[tuple[int, pa.Table]]] = {}  # per table: (batch index, rows)
        self.tables: dict[str, pa.Table] = {}
        self.dropped = [0] * len(batches)
        self.samples_lo: int | None = None  # the lowest ts of its samples
        self.keys: pa.Table | None = None  # (ts, seq, session_id) of its keyed lines
        self.lo = self.hi = 0  # ts range of the whole write

    @classmethod
    def prepare(cls, batches: Sequence[Batch], check_repeats: bool = True) -> Write:
        """The write of these batches (lines are turned into Arrow here)."""
        prepared = [b if isinstance(b, ArrowBatch) else ArrowBatch.from_lines(b) for b in batches]
        write = cls(prepared)
        if not any(b.tables for b in prepared):
            return write
        pieces = write.pieces
        for index, batch in enumerate(prepared):
            for table, arrow in batch.tables.items():
                pieces.setdefault(table, []).append((index, arrow))
        tables = {table: pa.concat_tables([a for _, a in parts]) if len(parts) > 1 else parts[0][1]
                  for table, parts in pieces.items()}
        if check_repeats and len(prepared) > 1:  # a line repeated across batches of one write: keep the first
            tables = _drop_repeats(pieces, tables, write.dropped)
        write.tables = {t: a for t, a in tables.items() if a.num_rows}
        spans = {table: pc.min_max(arrow.column("ts")).as_py() for table, arrow in write.tables.items()}
        if spans:
            write.lo = min(span["min"] for span in spans.values())
            write.hi = max(span["max"] for span in spans.values())
        if "samples" in spans:
            write.samples_lo = spans["samples"]["min"]
        if check_repeats:  # the background insert of logged lines needs no duplicate check
            write.keys = key_rows(write.tables)
        return write

    def count_found(self, found: set[tuple]) -> None:
        """Count the keys found already stored against the batches that sent them first."""
        counted: set[tuple] = set()  # a key repeated in this write was dropped (and counted) already
        for index, _, key in keys_in_batch_order(self.pieces):
            if key in found and key not in counted:
                counted.add(key)
                self.dropped[index] += 1

    def results(self) -> list[InsertResult]:
        """One InsertResult per batch, in order."""
        return [InsertResult(accepted=b.size - b.duplicates - d, duplicates=b.duplicates + d)
                for b, d in zip(self.batches, self.dropped)]


def _drop_repeats(pieces: dict[str, list[tuple[int, pa.Table]]], tables: dict[str, pa.Table],
                  dropped: list[int]) -> dict[str, pa.Table]:
    """Leave out lines whose (session_id, seq) an earlier batch of the same write holds;
    counted into `dropped` per batch. Checked in C; Python only runs when there are repeats."""
    keys = [keyed(arrow.select(["session_id", "seq"])) for arrow in tables.values()]
    joined = pa.concat_tables(keys) if len(keys) > 1 else keys[0]
    if joined.group_by(["session_id", "seq"], use_threads=False).aggregate([]).num_rows == joined.num_rows:
        return tables  # the usual case
    seen: set[tuple[str, int]] = set()
    masks: dict[str, list[bool]] = {t: [] for t in pieces}
    for index, table, key in keys_in_batch_order(pieces):
        if key[1] != NO_SEQ and key in seen:
            masks[table].append(False)
            dropped[index] += 1
        else:
            seen.add(key)
            masks[table].append(True)
    # the masks follow (batch, table) order, which is the concatenation order of each table
    return {t: tables[t].filter(pa.array(masks[t], pa.bool_())) for t in tables}
