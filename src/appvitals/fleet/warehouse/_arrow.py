"""Decoded lines -> per-table Arrow tables (pyarrow only, no database).

Used by the DuckDB warehouse's writer and by the collector's decode worker processes, which
import this module without DuckDB. Columns are pulled from the decoded structs with
`operator.attrgetter` (a C loop) and converted by pyarrow in C; session and event attrs go
through an Arrow MAP whose key/value buffers become the two list columns; sample attrs are
msgspec-encoded JSON texts. No per-value Python work on the usual path.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import pyarrow as pa

from ..protocol import AnyLine, EndLine, EventLine, SampleLine, SessionLine
from ._columns import EMPTY_JSON, NO_SEQ, SCHEMA, attr_text, json_encode

_STR = pa.string()
_I64 = pa.int64()
_F64 = pa.float64()
_STR_MAP = pa.map_(_STR, _STR)
_EMPTY_JSON = pa.scalar(EMPTY_JSON, _STR)
_KIND_TABLE = ((SessionLine, "sessions"), (SampleLine, "samples"), (EventLine, "events"), (EndLine, "ends"))
_SID, _TS, _SEQ = attrgetter("session_id"), attrgetter("ts"), attrgetter("seq")
_FIELD = {name: attrgetter(name) for name in ("client_id", "cpu", "name", "reason", "attrs", "values")}


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


class ArrowBatch:
    """One batch of lines as per-table Arrow tables, repeats inside it already left out.

    Built from decoded lines with `from_lines` -- in the writer, or in a decode worker
    process, which ships it to the writer as Arrow IPC bytes (`to_ipc` / `from_ipc`): the
    writer then does no per-line Python work at all."""

    __slots__ = ("tables", "size", "duplicates")

    def __init__(self, tables: dict[str, pa.Table], size: int, duplicates: int):
        self.tables = tables
        self.size = size  # lines in the batch, repeats included
        self.duplicates = duplicates  # repeats inside the batch, already left out

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_lines(cls, lines: Sequence[AnyLine]) -> ArrowBatch:
        """Lines -> per-table Arrow tables, in-batch repeats of (session_id, seq) left out."""
        if not lines:
            return cls({}, 0, 0)
        duplicates = _batch_duplicates(list(map(_SID, lines)), list(map(_SEQ, lines)))
        if duplicates:
            skip = set(duplicates)
            fresh = [line for i, line in enumerate(lines) if i not in skip]
        else:
            fresh = lines
        kinds = set(map(type, fresh))
        groups: dict[type, Sequence[AnyLine]] = {}
        if len(kinds) == 1:  # the usual case: a batch of samples
            groups[kinds.pop()] = fresh
        else:
            for line in fresh:
                kind = type(line)
                group = groups.get(kind)
                if group is None:
                    group = groups[kind] = []
                group.append(line)  # type: ignore[attr-defined]
        tables = {table: _arrow_table(table, groups[kind]) for kind, table in _KIND_TABLE if groups.get(kind)}
        return cls(tables, len(lines), len(duplicates))

    def to_ipc(self) -> tuple[dict[str, bytes], int, int]:
        """A picklable form: each table as Arrow IPC stream bytes."""
        out = {}
        for table, arrow in self.tables.items():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, arrow.schema) as writer:
                writer.write_table(arrow)
            out[table] = sink.getvalue().to_pybytes()
        return out, self.size, self.duplicates

    @classmethod
    def from_ipc(cls, packed: tuple[dict[str, bytes], int, int]) -> ArrowBatch:
        """The batch back from `to_ipc` (zero-copy over the bytes)."""
        data, size, duplicates = packed
        tables = {table: pa.ipc.open_stream(raw).read_all() for table, raw in data.items()}
        return cls(tables, size, duplicates)
