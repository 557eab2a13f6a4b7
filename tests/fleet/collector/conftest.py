"""Fixtures of the collector tests: a DuckDB warehouse with and without the ingest log, and
a running collector over it, with lines parsed in the server process and in decode workers."""

from __future__ import annotations

import pytest
from support.collector import running_app

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture(params=[True, False], ids=["log", "nolog"])
def warehouse(tmp_path, request):
    # with the ingest log (what `vitals serve` opens) and without (--no-ingest-log)
    wh = DuckDBWarehouse(tmp_path / "fleet.duckdb", ingest_log=request.param)
    yield wh
    wh.close()


@pytest.fixture(params=[0, 2], ids=["inline", "workers"])
def url(warehouse, request):
    # every test against `url` runs twice: lines parsed in the server process, and in two
    # decode worker processes (what `vitals serve` does on a multi-core machine)
    with running_app(create_app(warehouse, decode_workers=request.param)) as base:
        yield base
