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

import msgspec
import pyarrow as pa

from appvitals.fleet.wire.protocol import (
    EMPTY_RAW,
    AnyLine,
    EndLine,
    EventLine,
    RawSample,
    SampleLine,
    SessionLine,
    attrs_decoder,
    values_decoder,
)
from appvitals.fleet.wire.schema import EMPTY_JSON, NO_SEQ, SCHEMA, attr_text, json_encode

_STR = pa.string()
_I64 = pa.int64()
_F64 = pa.float64()
_STR_MAP = pa.map_(_STR, _STR)
_EMPTY_JSON = pa.scalar(EMPTY_JSON, _STR)
_TABLE_OF = {SessionLine: "sessions", SampleLine: "samples", RawSample: "samples", EventLine: "events", EndLine: "ends"}
_TABLES = ("sessions", "samples", "events", "ends")
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


class _Canonical:
    """Raw JSON attrs (or values) text -> the sorted-key text samples store, each distinct text
    checked once against the protocol's limits; msgspec.ValidationError/DecodeError when one
    breaks them. A bounded cache: fleets repeat a handful of texts."""

    def __init__(self, decoder: msgspec.json.Decoder, size: int = 8192):
        self.decoder = decoder
        self.size = size
        self.cache: dict[bytes, str] = {b"{}": EMPTY_JSON}

    def texts(self, raws: list) -> list[str]:
        keys = list(map(bytes, raws))
        try:  # C loops only, when every text was seen before
            return list(map(self.cache.__getitem__, keys))
        except KeyError:
            pass
        new = set(keys).difference(self.cache)
        if len(self.cache) + len(new) > self.size:
            self.cache = {b"{}": EMPTY_JSON}
        for key in new:
            try:
                value = self.decoder.decode(key)
            except RecursionError:  # refused like any text over a limit: the caller decodes line by line
                raise msgspec.ValidationError("nested too deep")
            self.cache[key] = json_encode(value).decode() if value else EMPTY_JSON
        return list(map(self.cache.__getitem__, keys))


_ATTRS = _Canonical(attrs_decoder)
_VALUES = _Canonical(values_decoder)


def _json_column(values: list, canonical: _Canonical) -> pa.Array:
    """Sample attrs or values (dicts, or raw texts from RawSample) as the stored JSON texts."""
    if values and type(values[0]) is msgspec.Raw:
        if values.count(EMPTY_RAW) == len(values):  # the usual case for values: none sent
            return pa.repeat(_EMPTY_JSON, len(values))
        return pa.array(canonical.texts(values), _STR)
    if not any(values):
        return pa.repeat(_EMPTY_JSON, len(values))
    # encoded in C (msgspec) and handed over as bytes
    return pa.array(list(map(json_encode, values)), _STR)


def _arrow_table(table: str, lines: Sequence[AnyLine], sids: list[str] | None = None,
                 seqs: list[int | None] | None = None) -> pa.Table:
    """The lines of one table as an Arrow table with the schema's columns, in order
    (`sids` and `seqs`: their session_id and seq columns, when the caller has them)."""
    if seqs is None:
        seqs = list(map(_SEQ, lines))
    if None in seqs:
        seqs = [NO_SEQ if q is None else q for q in seqs]
    columns: dict[str, Any] = {
        "session_id": pa.array(list(map(_SID, lines)) if sids is None else sids, _STR),
        "ts": pa.array(list(map(_TS, lines)), _I64),
        "seq": pa.array(seqs, _I64),
    }
    if table == "sessions":
        columns["client_id"] = pa.array(list(map(_FIELD["client_id"], lines)), _STR)
    elif table == "samples":
        # attrs and values as sorted-key JSON texts
        columns["cpu"] = pa.array(list(map(_FIELD["cpu"], lines)), _F64)
        columns["attrs"] = _json_column(list(map(_FIELD["attrs"], lines)), _ATTRS)
        columns["vals"] = _json_column(list(map(_FIELD["values"], lines)), _VALUES)
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

    __slots__ = ("tables", "size", "duplicates", "ipc")

    def __init__(self, tables: dict[str, pa.Table], size: int, duplicates: int,
                 ipc: dict[str, bytes] | None = None):
        self.tables = tables
        self.size = size  # lines in the batch, repeats included
        self.duplicates = duplicates  # repeats inside the batch, already left out
        self.ipc = ipc  # the tables as the IPC bytes they were read from (from_ipc), else None

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_lines(cls, lines: Sequence[AnyLine | RawSample]) -> ArrowBatch:
        """Lines -> per-table Arrow tables, in-batch repeats of (session_id, seq) left out.

        Raises msgspec.ValidationError when a RawSample's attrs or values break the protocol's
        limits (the block decoder leaves those to this step)."""
        if not lines:
            return cls({}, 0, 0)
        sids, seqs = list(map(_SID, lines)), list(map(_SEQ, lines))
        duplicates = _batch_duplicates(sids, seqs)
        if duplicates:
            raw = [line for line in lines if type(line) is RawSample]
            if raw:  # repeats are left out, but like any line they must pass the limits first
                _ATTRS.texts(list(map(_FIELD["attrs"], raw)))
                _VALUES.texts(list(map(_FIELD["values"], raw)))
            skip = set(duplicates)
            fresh = [line for i, line in enumerate(lines) if i not in skip]
        else:
            fresh = lines
        kinds = set(map(type, fresh))
        if len(kinds) == 1:  # the usual case: a batch of samples (its columns at hand, unless repeats left)
            table = _TABLE_OF[kinds.pop()]
            columns = (None, None) if duplicates else (sids, seqs)
            return cls({table: _arrow_table(table, fresh, *columns)}, len(lines), len(duplicates))
        groups: dict[str, list[AnyLine]] = {}
        table_of = _TABLE_OF
        for line in fresh:
            table = table_of[type(line)]
            group = groups.get(table)
            if group is None:
                group = groups[table] = []
            group.append(line)
        tables = {table: _arrow_table(table, groups[table]) for table in _TABLES if groups.get(table)}
        return cls(tables, len(lines), len(duplicates))

    def to_ipc(self) -> tuple[dict[str, bytes], int, int]:
        """A picklable form: each table as Arrow IPC stream bytes."""
        return tables_to_ipc(self.tables), self.size, self.duplicates

    @classmethod
    def from_ipc(cls, packed: tuple[dict[str, bytes], int, int]) -> ArrowBatch:
        """The batch back from `to_ipc` (zero-copy over the bytes)."""
        data, size, duplicates = packed
        return cls(tables_from_ipc(data), size, duplicates, data)


def tables_to_ipc(tables: dict[str, pa.Table]) -> dict[str, bytes]:
    """Each table as Arrow IPC stream bytes."""
    out = {}
    for name, arrow in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, arrow.schema) as writer:
            writer.write_table(arrow)
        out[name] = sink.getvalue().to_pybytes()
    return out


def tables_from_ipc(data: dict[str, bytes]) -> dict[str, pa.Table]:
    """The tables back from `tables_to_ipc` (zero-copy over the bytes)."""
    return {name: pa.ipc.open_stream(raw).read_all() for name, raw in data.items()}
