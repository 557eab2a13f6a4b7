"""One bad line costs no other line on the ClickHouse warehouse too (a real server)."""

from __future__ import annotations

import httpx
import msgspec
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 (fixture)
from support.collector import running_app

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.warehouse import open_warehouse

T0 = 1764000000000


def test_values_clickhouse_cannot_hold_are_rejected_by_line(clickhouse_url):  # noqa: F811
    url = fresh_database(clickhouse_url)
    lines = [msgspec.json.encode({"kind": "sample", "session_id": "ch", "ts": T0 + i, "seq": i, "cpu": 1.0})
             for i in range(6)]
    lines[2] = msgspec.json.encode({"kind": "sample", "session_id": "ch", "ts": T0, "seq": 2**64 + 5, "cpu": 1.0})
    lines[4] = msgspec.json.encode({"kind": "sample", "session_id": "ch", "ts": 2**66, "seq": 4, "cpu": 1.0})
    wh = open_warehouse(url)
    try:
        with running_app(create_app(wh)) as base:
            r = httpx.post(base + "/v1/ingest", content=b"\n".join(lines) + b"\n", timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == 4 and [e["line"] for e in r.json()["errors"]] == [3, 5]
            assert httpx.get(base + "/healthz").status_code == 200
        assert sorted(s for (s,) in wh.query("SELECT seq FROM samples")) == [0, 1, 3, 5]
    finally:
        wh.close()
