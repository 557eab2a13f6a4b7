"""Warehouse backends for the collector: DuckDB (embedded default) and ClickHouse (scale-out)."""

from appvitals.fleet.warehouse.base import InsertResult, Warehouse, open_warehouse

__all__ = ["InsertResult", "Warehouse", "open_warehouse"]
