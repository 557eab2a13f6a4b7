"""Warehouse backends for the collector: DuckDB (embedded default) and ClickHouse (scale-out).

`open_warehouse(url)` picks the backend from the URL; both implement `Warehouse` (base.py).
"""

from __future__ import annotations

from appvitals.fleet.warehouse.base import Batch, InsertResult, RollupState, Warehouse

__all__ = ["Batch", "InsertResult", "RollupState", "Warehouse", "open_warehouse"]


def open_warehouse(url: str, ingest_log: bool = False) -> Warehouse:
    """Open a warehouse from a URL: a DuckDB file path (or duckdb://path, or ':memory:'), or
    clickhouse://[user[:password]@]host[:port]/database.

    `ingest_log` (DuckDB files): acknowledge writes once in the collector's own fsynced log and
    insert them into DuckDB in the background (see warehouse/ingestlog.py)."""
    if url.startswith("clickhouse://"):
        from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse

        return ClickHouseWarehouse(url)
    from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

    return DuckDBWarehouse(url, ingest_log=ingest_log)
