"""The report on ClickHouse (Debian's 18.16 server) equals the report on DuckDB for the same lines."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 - pytest fixture

from appvitals.fleet.analysis.report import build_report, session_detail
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

START_MS = 1_764_000_000_000


@pytest.fixture(scope="module")
def both(clickhouse_url):  # noqa: F811
    from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse

    lines = list(generate_lines(None, clients=80, minutes=90, seed=2, start_ms=START_MS))
    duck = DuckDBWarehouse(":memory:")
    duck.insert(lines)
    # DuckDB reads the first hour from its rollup, the rest (and the 45m window's ragged
    # start) from samples; ClickHouse reads samples only: the reports must still agree
    assert duck.catch_up(now_ms=START_MS + 70 * 60_000) > 0
    ch = ClickHouseWarehouse(fresh_database(clickhouse_url, "report"))
    ch.insert(lines)
    yield duck, ch, lines
    duck.close()
    ch.close()


def _now(minutes: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(START_MS / 1000 + minutes * 60, dt.timezone.utc)


@pytest.mark.parametrize("since,threshold", [("2h", 30.0), ("45m", 50.0)])
def test_same_report_on_clickhouse_and_duckdb(both, since, threshold):
    duck, ch, _ = both
    a = msgspec.to_builtins(build_report(duck, since=since, threshold=threshold, now=_now(90)))
    b = msgspec.to_builtins(build_report(ch, since=since, threshold=threshold, now=_now(90)))
    a.pop("took_ms")
    b.pop("took_ms")
    assert a["sessions"] > 50 and a["explanations"], "the fleet should have something to explain"
    for key in a:
        assert a[key] == b[key], key


def test_session_detail_on_clickhouse(both):
    duck, ch, lines = both
    sid = lines[0].session_id
    assert msgspec.to_builtins(session_detail(ch, sid)) == msgspec.to_builtins(session_detail(duck, sid))
    assert session_detail(ch, "no-such-session") is None


def test_cli_report_on_clickhouse(both):
    import json
    import os
    import subprocess
    import sys

    from support.collector import SRC

    _, ch, _ = both
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    url = ch.url
    proc = subprocess.run(
        [sys.executable, "-m", "appvitals", "report", "--clickhouse", url, "--since", "2025-11-24T16:00:00Z",
         "--until", "2025-11-24T17:30:00Z", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["sessions"] > 50 and body["explanations"]


def test_racing_copies_count_once_before_any_merge(clickhouse_url):  # noqa: F811
    """Two collectors that store the same line at the same instant both insert it; until
    ClickHouse merges the parts, the report must still count it once (it reads with FINAL)."""
    from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse

    lines = list(generate_lines(None, clients=20, minutes=30, seed=5, start_ms=START_MS))
    duck = DuckDBWarehouse(":memory:")
    duck.insert(lines)
    ch = ClickHouseWarehouse(fresh_database(clickhouse_url, "race"))
    ch.insert(lines)
    ch._stored_keys = lambda client, keyed: set()  # the second collector's check saw nothing yet
    ch.insert(lines)  # the racing copies: a second part with the same keys
    raw = ch.query("SELECT count() FROM samples")[0][0]
    assert raw == 2 * sum(1 for x in lines if type(x).__name__ == "SampleLine")  # really stored twice
    a = msgspec.to_builtins(build_report(duck, since="45m", threshold=30.0, now=_now(30)))
    b = msgspec.to_builtins(build_report(ch, since="45m", threshold=30.0, now=_now(30)))
    a.pop("took_ms")
    b.pop("took_ms")
    for key in a:  # sample counts and means of the worst sessions included
        assert a[key] == b[key], key
    duck.close()
    ch.close()
