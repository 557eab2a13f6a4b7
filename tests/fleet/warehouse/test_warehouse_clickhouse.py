"""Scale-out, shown: two `vitals serve` processes write to one ClickHouse at the same time."""

from __future__ import annotations

import threading

import httpx
import msgspec
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 (fixture)
from support.collector import spawn_serve

from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse, parse_url, table_ddl

T0 = 1764000000000


def lines(session: str, start: int, n: int, kind: str = "sample") -> bytes:
    enc = msgspec.json.encode
    out = []
    for i in range(start, start + n):
        if kind == "session":
            out.append(enc({"kind": "session", "session_id": session, "client_id": "c", "ts": T0, "seq": i,
                            "attrs": {"app_version": "7.0.0"}}))
        else:
            out.append(enc({"kind": "sample", "session_id": session, "ts": T0 + i, "seq": i, "cpu": float(i % 90),
                            "attrs": {"stage": "login"}}))
    return b"\n".join(out) + b"\n"


def test_two_collectors_write_one_clickhouse(clickhouse_url, tmp_path):  # noqa: F811
    url = fresh_database(clickhouse_url, "scale")
    answers: list[dict] = []
    lock = threading.Lock()

    with spawn_serve("--clickhouse", url, tmp_path=tmp_path) as a, spawn_serve("--clickhouse", url, tmp_path=tmp_path) as b:
        def send(proc, session, start, n, kind="sample"):
            r = httpx.post(proc.url + "/v1/ingest", content=lines(session, start, n, kind), timeout=60)
            assert r.status_code == 200, r.text
            with lock:
                answers.append(r.json())

        # each collector gets its own sessions, all at once; plus samples of sessions whose session line went to the other
        jobs = []
        for k in range(6):
            proc = a if k % 2 == 0 else b
            other = b if proc is a else a
            jobs.append(threading.Thread(target=send, args=(proc, f"s{k}", 1, 2000)))
            jobs.append(threading.Thread(target=send, args=(other, f"s{k}", 0, 1, "session")))
        for t in jobs:
            t.start()
        for t in jobs:
            t.join()
        assert sum(x["accepted"] for x in answers) == 6 * 2001

        # a client retries through the other collector (load balancer moved it): all duplicates
        r = httpx.post(b.url + "/v1/ingest", content=lines("s0", 1, 2000), timeout=60).json()
        assert (r["accepted"], r["duplicates"]) == (0, 2000)

        # both collectors race with the same lines: each may store them before seeing the other's;
        # ReplacingMergeTree collapses the copies, FINAL reads are exact at once
        racers = [threading.Thread(target=send, args=(p, "race", 0, 3000)) for p in (a, b)]
        for t in racers:
            t.start()
        for t in racers:
            t.join()

    wh = ClickHouseWarehouse(url)
    try:
        assert wh.query("SELECT count() FROM samples FINAL WHERE session_id = 'race'") == [(3000,)]
        wh.optimize()
        assert wh.query("SELECT count() FROM samples WHERE session_id = 'race'") == [(3000,)]
        assert wh.query("SELECT count() FROM samples WHERE session_id != 'race'") == [(12_000,)]
        assert wh.query("SELECT count(DISTINCT session_id) FROM sessions") == [(6,)]
        # session attrs join at query time, whichever collector stored the session line
        joined = wh.query(
            "SELECT count() FROM samples AS s ANY INNER JOIN (SELECT session_id, attr_values FROM sessions) AS x "
            "USING (session_id) WHERE x.attr_values[1] = '7.0.0'"
        )
        assert joined == [(12_000,)]
    finally:
        wh.close()


def test_url_parsing_and_ddl():
    assert parse_url("clickhouse://u:p%40ss@db.local:9001/fleet") == {
        "host": "db.local", "port": 9001, "user": "u", "password": "p@ss", "database": "fleet",
    }
    assert parse_url("clickhouse://127.0.0.1")["database"] == "default"
    ddl = table_ddl("samples", "fleet")
    assert "ReplacingMergeTree" in ddl and "ORDER BY (session_id, seq, ts)" in ddl
