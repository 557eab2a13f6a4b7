"""The one small interface the collector and the report talk to.

Schema, identical in every backend (column types are the backend's nearest match):

    sessions(session_id, client_id, ts, seq, attr_keys, attr_values)
    samples (session_id, ts, seq, cpu, attrs, vals)
    events  (session_id, ts, seq, name, attr_keys, attr_values)
    ends    (session_id, ts, seq, reason)

- `ts` is integer Unix epoch milliseconds; `seq` is the line's seq or -1 when it had none.
- session and event attrs are two parallel arrays of strings (keys, values); numbers and
  booleans are kept as their JSON text ("57", "true"), so numeric attrs can be cast back at
  query time. Arrays work on every ClickHouse release (Map does not exist before 21.1).
- sample attrs and extra values are one JSON object text each (keys sorted, '{}' when
  empty): samples are most of the data, and one short string is cheaper to write and to
  group by than two arrays (docs/warehouse.md, "Why samples differ").
- Session attrs are never copied onto samples: they are joined at query time, so samples
  that arrive before their session line still count.
- `(session_id, seq)` is unique across all four tables: a line seen again is a duplicate.

A third backend is one new module implementing `Warehouse`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from appvitals.fleet.wire.protocol import AnyLine


class InsertResult(msgspec.Struct):
    """What one durable insert did."""

    accepted: int = 0
    duplicates: int = 0


class Warehouse(abc.ABC):
    """Where the collector stores wire lines and where reports read them."""

    dialect: Literal["duckdb", "clickhouse"]

    def insert(self, lines: Sequence[AnyLine]) -> InsertResult:
        """Store lines durably (committed/fsynced before return), skipping duplicates by (session_id, seq)."""
        return self.insert_many([lines])[0]

    @abc.abstractmethod
    def insert_many(self, batches: Sequence[Sequence[AnyLine]]) -> list[InsertResult]:
        """Store several batches in one durable write; one result per batch, in order."""

    @abc.abstractmethod
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement in this backend's dialect and return its rows."""

    @abc.abstractmethod
    def apply_retention(self, days: int) -> None:
        """Drop data older than `days` days."""

    def rollup_state(self) -> tuple[int, int, list[int]] | None:
        """(bucket width in ms, watermark, dirty buckets) of the sample rollup the report may read,
        or None when the backend keeps none (the report then reads samples)."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""


def open_warehouse(url: str, ingest_log: bool = False) -> Warehouse:
    """Open a warehouse from a URL: a DuckDB file path, or clickhouse://host:port/database.

    `ingest_log` (DuckDB files): acknowledge writes once in the collector's own fsynced log and
    insert them into DuckDB in the background (see warehouse/_ingestlog.py)."""
    if url.startswith("clickhouse://"):
        from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse

        return ClickHouseWarehouse(url)
    from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

    return DuckDBWarehouse(url, ingest_log=ingest_log)
