"""Wire lines -> per-table columns of the fixed schema, and in-batch duplicate detection.

Pure functions shared by every backend: a backend only has to move these lists into its
tables (Arrow for DuckDB, columnar native blocks for ClickHouse).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import msgspec

from appvitals.fleet.wire.protocol import AnyLine, EndLine, EventLine, SampleLine, SessionLine

# table -> column names, in schema order (see base.py)
SCHEMA: dict[str, tuple[str, ...]] = {
    "sessions": ("session_id", "client_id", "ts", "seq", "attr_keys", "attr_values"),
    "samples": ("session_id", "ts", "seq", "cpu", "attrs", "vals"),
    "events": ("session_id", "ts", "seq", "name", "attr_keys", "attr_values"),
    "ends": ("session_id", "ts", "seq", "reason"),
}
TABLES = tuple(SCHEMA)
NO_SEQ = -1
EMPTY_JSON = "{}"
# samples keep attrs (and extra values) as one JSON object text, keys sorted: the same attrs
# are the same string, which DuckDB dictionary-compresses and groups by cheaply (see base.py)
json_encode = msgspec.json.Encoder(order="sorted").encode
_json_decode = msgspec.json.Decoder().decode


def json_text(mapping: dict) -> str:
    """A dict as the JSON object text samples store, keys sorted; '{}' when empty."""
    return json_encode(mapping).decode() if mapping else EMPTY_JSON


def json_object(text: str | None) -> dict:
    """A stored JSON object text back as a dict ({} when empty, unreadable or not an object)."""
    try:
        value = _json_decode(text) if text else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def attr_text(value: str | int | float | bool) -> str:
    """An attr value as stored: strings as they are, numbers and booleans as their JSON text."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    return repr(float(value))


def _texts(values) -> list[str]:
    return [v if type(v) is str else attr_text(v) for v in values]


class Columns:
    """Column lists for the four tables, filled from lines."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list]] = {t: {c: [] for c in cols} for t, cols in SCHEMA.items()}

    def rows(self, table: str) -> int:
        """How many rows `table` has."""
        return len(self.tables[table]["session_id"])

    def add(self, lines: Sequence[AnyLine]) -> Columns:
        """Append lines (already validated, ts already an int) to their tables' columns."""
        sa = self.tables["samples"]
        s_sid, s_ts, s_seq, s_cpu = sa["session_id"], sa["ts"], sa["seq"], sa["cpu"]
        s_attrs, s_vals = sa["attrs"], sa["vals"]
        for line in lines:
            kind = type(line)
            seq = NO_SEQ if line.seq is None else line.seq
            if kind is SampleLine:
                s_sid.append(line.session_id)
                s_ts.append(line.ts)
                s_seq.append(seq)
                s_cpu.append(float(line.cpu))
                s_attrs.append(json_text(line.attrs))
                s_vals.append(json_text(line.values))
            elif kind is EventLine:
                t = self.tables["events"]
                t["session_id"].append(line.session_id)
                t["ts"].append(line.ts)
                t["seq"].append(seq)
                t["name"].append(line.name)
                t["attr_keys"].append(list(line.attrs))
                t["attr_values"].append(_texts(line.attrs.values()))
            elif kind is SessionLine:
                t = self.tables["sessions"]
                t["session_id"].append(line.session_id)
                t["client_id"].append(line.client_id)
                t["ts"].append(line.ts)
                t["seq"].append(seq)
                t["attr_keys"].append(list(line.attrs))
                t["attr_values"].append(_texts(line.attrs.values()))
            elif kind is EndLine:
                t = self.tables["ends"]
                t["session_id"].append(line.session_id)
                t["ts"].append(line.ts)
                t["seq"].append(seq)
                t["reason"].append(line.reason or "")
            else:  # pragma: no cover - the protocol has exactly four kinds
                raise TypeError(f"not a wire line: {kind.__name__}")
        return self


class KeyedBatch:
    """The lines of one write with their (session_id, seq) keys, in-batch duplicates found.

    `first` maps each key to the index of its first line; `duplicates` holds the indexes of
    lines whose key appeared earlier in the same batch. Lines without seq have no key.
    """

    __slots__ = ("lines", "first", "duplicates")

    def __init__(self, lines: Sequence[AnyLine]):
        self.lines = lines
        first: dict[tuple[str, int], int] = {}
        duplicates: list[int] = []
        for i, line in enumerate(lines):
            seq = line.seq
            if seq is None:
                continue
            key = (line.session_id, seq)
            if key in first:
                duplicates.append(i)
            else:
                first[key] = i
        self.first = first
        self.duplicates = duplicates

    def key_columns(self) -> tuple[list[str], list[int], list[int]]:
        """session_id, seq and ts columns of the distinct keys, in first-seen order."""
        lines = self.lines
        sids = [k[0] for k in self.first]
        seqs = [k[1] for k in self.first]
        tss = [lines[i].ts for i in self.first.values()]
        return sids, seqs, tss  # type: ignore[return-value]

    def mark_stored(self, stored_keys) -> None:
        """Add the lines whose key was already in the warehouse to the duplicates."""
        for key in stored_keys:
            index = self.first.get(key)
            if index is not None:
                self.duplicates.append(index)

    def fresh_lines(self) -> list[AnyLine]:
        """The lines to store: every line that is not a duplicate."""
        if not self.duplicates:
            return list(self.lines)
        skip = set(self.duplicates)
        return [line for i, line in enumerate(self.lines) if i not in skip]

    def duplicate_counts(self, sizes: Sequence[int]) -> list[int]:
        """Duplicates per sub-batch, for a batch that concatenates sub-batches of `sizes` lines."""
        counts = [0] * len(sizes)
        if not self.duplicates:
            return counts
        bounds = []
        total = 0
        for size in sizes:
            total += size
            bounds.append(total)
        for index in self.duplicates:
            counts[bisect.bisect_right(bounds, index)] += 1
        return counts
