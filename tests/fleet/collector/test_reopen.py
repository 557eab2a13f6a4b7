"""A fatal DuckDB error (a checkpoint that cannot write: the disk is full) invalidates the
database; the collector reopens it, so one failure costs the requests in flight, not every
later one. Real failures: the collector may not grow its files (RLIMIT_FSIZE, set from outside)."""

from __future__ import annotations

import os
import resource
import time

import httpx
from support.collector import spawn_serve

from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse


def _lines(prefix: str, sessions: int, start_ms: int) -> bytes:
    import msgspec

    out = []
    for s in range(sessions):
        sid = f"{prefix}{s}"
        out.append({"kind": "session", "session_id": sid, "client_id": f"c{s}", "ts": start_ms, "seq": 0,
                    "attrs": {"app_version": "6.04" if s % 2 else "6.03"}})
        out += [{"kind": "sample", "session_id": sid, "ts": start_ms + 1000 * i, "seq": i + 1,
                 "cpu": 80.0 if s % 2 else 5.0, "attrs": {"stage": "x" * 50 + str(i % 3)}} for i in range(20)]
    return b"\n".join(msgspec.json.encode(x) for x in out) + b"\n"


def _wait_for(proc, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        assert time.monotonic() < deadline, f"no {text!r} in the collector's log: {proc.log()}"
        time.sleep(0.2)


def _wait_for_metric(proc, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(proc.url + "/metrics").text
        if any(line.startswith(name + " ") and float(line.split()[-1]) == value for line in text.splitlines()):
            return
        assert time.monotonic() < deadline, f"{name} never {value}: {text}"
        time.sleep(0.1)


def test_a_fatal_error_is_survived_by_reopening_the_database(tmp_path):
    db = tmp_path / "f.duckdb"
    now = int(time.time() * 1000)
    with spawn_serve("--db", str(db), "--decode-workers", "0", "--ingest-log", tmp_path=tmp_path) as proc:
        r = httpx.post(proc.url + "/v1/ingest", content=_lines("a", 200, now - 600_000), timeout=30)
        assert r.json()["accepted"] == 200 * 21
        _wait_for_metric(proc, "vitals_collector_log_pending_lines", 0.0)  # committed to DuckDB (its WAL)
        # its checkpoint, after 5 s of quiet, must grow the file: it cannot, DuckDB fails fatally
        # and is invalidated
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (os.path.getsize(db) + 4096, resource.RLIM_INFINITY))
        _wait_for(proc, "checkpoint failed")
        # the next request reopens DuckDB (reading needs no room), and everything acknowledged is there
        r = httpx.get(proc.url + "/v1/report", params={"since": "1h"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["sessions"] == 200 and r.json()["high_sessions"] == 100
        assert "DuckDB reopened" in proc.log()
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        # and ingest goes on
        assert httpx.post(proc.url + "/v1/ingest", content=_lines("b", 50, now - 300_000),
                          timeout=30).json()["accepted"] == 50 * 21
        r = httpx.get(proc.url + "/v1/report", params={"since": "1h"}, timeout=60)
        assert r.json()["sessions"] == 250
    wh = DuckDBWarehouse(db)  # and the file holds it all after a clean stop
    assert wh.query("SELECT count(*) FROM samples")[0][0] == 250 * 20
    wh.close()
