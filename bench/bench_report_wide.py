"""Wide-fleet report benchmark: many sessions, ten categorical attrs of 4-40 values, numeric events.

The narrow report bench (bench_report.py: six low-cardinality attrs, pre-rolled-up) hides
what width costs. Here every session carries ten attrs of 4, 6, 8, 10, 12, 16, 20, 24, 32
and 40 values, one numeric event attr (`payload_kb`) and samples with a stage; two causes are
planted (one attr value at one stage, one pair of attr values). In one run, on the same rows:

- ingest: the rows posted through `vitals serve` (DuckDB, the collector's own memory limit),
  timed until every line is in DuckDB;
- report: `GET /v1/report` on that running collector, timed end to end: the first answer
  right after the ingest (the collector still rolling the new samples up beside it), then,
  once the collector is idle, the median of --repeat;
- floor: DuckDB itself on the same file, one `GROUPING SETS` query over every attribute pair
  of the per-session rows (sessions and high sessions per pair of values): the least an
  order-2 explanation must read.

Targets (issue 15): report <= 0.4x the ingest time of the same rows at 300,000 sessions, and
1,000,000 sessions answered in <= 4 s on a 2-core machine, never a 500. Prints one JSON
object and writes it to bench/results/report_wide.json. Not a test.

    python bench/bench_report_wide.py --sessions 20000      # a quick check
    python bench/bench_report_wide.py --sessions 300000     # the target size
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SRC = ROOT / "src"

from bench_ingest import PeakRSS, free_port, send_all, stop, wait_http, wait_inserted  # noqa: E402

CARDINALITIES = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40)
STAGES = ("idle", "sync", "index", "upload")
BATCH = 5_000


def attr_names() -> list[str]:
    return [f"a{i}" for i in range(len(CARDINALITIES))]


def workload(sessions: int, samples_per_session: int, seed: int = 5) -> tuple[list[bytes], int]:
    """NDJSON bodies of the wide fleet, and the number of lines."""
    rng = random.Random(seed)
    enc = msgspec.json.encode
    now_ms = int(time.time() * 1000) - 3 * 3_600_000
    names = attr_names()
    lines: list[bytes] = []
    for s in range(sessions):
        sid = f"w{s}"
        t = now_ms + rng.randrange(0, 2 * 3_600_000)
        values = [f"v{rng.randrange(card)}" for card in CARDINALITIES]
        attrs = dict(zip(names, values, strict=True))
        lines.append(enc({"kind": "session", "session_id": sid, "client_id": f"c{s // 3}", "ts": t, "seq": 0,
                          "attrs": attrs}))
        payload = rng.randint(1, 5000)
        lines.append(enc({"kind": "event", "session_id": sid, "ts": t + 1, "seq": 1, "name": "upload",
                          "attrs": {"payload_kb": payload}}))
        busy = rng.random() < 0.05
        for i in range(samples_per_session):
            stage = STAGES[i % len(STAGES)]
            cpu = rng.uniform(0, 20) + (40 if busy else 0)
            if values[3] == "v3" and stage == "index":  # planted: one value at one stage
                cpu += 50
            if values[1] == "v2" and values[6] == "v7":  # planted: a pair harmless alone
                cpu += 45
            lines.append(enc({"kind": "sample", "session_id": sid, "ts": t + 10_000 * (i + 1), "seq": i + 2,
                              "cpu": round(cpu, 2), "attrs": {"stage": stage}}))
    bodies = [b"\n".join(lines[k:k + BATCH]) + b"\n" for k in range(0, len(lines), BATCH)]
    return bodies, len(lines)


def get_report(port: int, since: str = "6h") -> tuple[float, int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("GET", f"/v1/report?since={since}&threshold=30")
        resp = conn.getresponse()
        body = resp.read()
        return time.perf_counter() - started, resp.status, json.loads(body or b"{}")
    finally:
        conn.close()


def wait_idle(pid: int, limit: float = 120.0) -> float:
    """Wait until the process uses under 5 % of a core over a second; the seconds waited."""
    import psutil

    started = time.perf_counter()
    p = psutil.Process(pid)
    p.cpu_percent(None)
    while time.perf_counter() - started < limit:
        time.sleep(1.0)
        if p.cpu_percent(None) < 5.0:
            break
    return time.perf_counter() - started


def floor_grouping_sets(db: Path, threshold: float = 30.0, memory_limit: str = "256MB") -> tuple[float, int]:
    """One GROUPING SETS query over every pair of the ten attrs (per-session rows): seconds, groups."""
    import duckdb

    names = attr_names()
    cols = ", ".join(f"attr_values[list_indexof(attr_keys, '{n}')] AS {n}" for n in names)
    sets = ", ".join(f"({a}, {b})" for a, b in itertools.combinations(names, 2))
    sql = (
        f"WITH hi AS (SELECT session_id, max(CASE WHEN m > {threshold} THEN 1 ELSE 0 END) AS h FROM "
        "(SELECT session_id, attrs, avg(cpu) AS m FROM samples GROUP BY session_id, attrs) GROUP BY session_id), "
        f"s AS (SELECT session_id, {cols} FROM sessions) "
        f"SELECT {', '.join(names)}, count(*) AS n, sum(h) AS high FROM s JOIN hi USING (session_id) "
        f"GROUP BY GROUPING SETS ({sets})"
    )
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.execute(f"SET memory_limit = '{memory_limit}'")
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        return time.perf_counter() - started, len(rows)
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=300_000)
    ap.add_argument("--samples-per-session", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "report_wide.json"))
    ap.add_argument("--keep", metavar="PATH", help="keep the ingested DuckDB file there (to profile the report)")
    a = ap.parse_args()
    bodies, n_lines = workload(a.sessions, a.samples_per_session)
    with tempfile.TemporaryDirectory(prefix="bench-report-wide-") as tmp:
        db = Path(tmp) / "fleet.duckdb"
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(Path(tmp) / "collector.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "appvitals", "serve", "--db", str(db), "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
            started = time.perf_counter()
            send_all("127.0.0.1", port, "/v1/ingest", bodies, {"Content-Type": "application/x-ndjson"})
            wait_inserted(port)
            ingest_s = time.perf_counter() - started
            rss = PeakRSS(proc.pid)
            # the first report right after the ingest shares the cores with the collector rolling
            # the new samples up; the others wait until it is idle (its steady state)
            first_s, status, report = get_report(port)
            idle_s = wait_idle(proc.pid)
            runs, statuses = [], [status]
            for _ in range(a.repeat):
                seconds, status, _ = get_report(port)
                runs.append(seconds)
                statuses.append(status)
            peak = rss.stop()
        finally:
            stop(proc)
            log.close()
        floor_limit = "256MB"  # the collector's own limit, as the report had
        try:
            floor_s, floor_groups = floor_grouping_sets(db, memory_limit=floor_limit)
        except Exception as exc:  # DuckDB itself does not fit it: say so, and measure with more
            if "OutOfMemory" not in type(exc).__name__:
                raise
            floor_limit = "2GB"
            floor_s, floor_groups = floor_grouping_sets(db, memory_limit=floor_limit)
        if a.keep:
            shutil.copyfile(db, a.keep)
    report_s = statistics.median(runs) if runs else first_s
    result = {
        "bench": "report_wide",
        "data": {"sessions": a.sessions, "lines": n_lines, "attrs": len(CARDINALITIES),
                 "cardinalities": list(CARDINALITIES), "samples_per_session": a.samples_per_session},
        "ingest_s": round(ingest_s, 2),
        "report_first_s": round(first_s, 2),
        "idle_wait_s": round(idle_s, 1),
        "report_s": round(report_s, 2),
        "report_statuses": statuses,
        "collector_peak_rss_mib": round(peak / 2**20, 1),
        "floor_grouping_sets_s": round(floor_s, 2),
        "floor_groups": floor_groups,
        "floor_memory_limit": floor_limit,
        "report_over_ingest": round(report_s / ingest_s, 2),
        "report_over_floor": round(report_s / floor_s, 2) if floor_s else None,
        "targets": {"report_over_ingest_at_300k": 0.4, "report_s_at_1m": 4.0},
        "report": {
            "sessions": report.get("sessions"), "high_sessions": report.get("high_sessions"),
            "top": [e["attrs"] for e in report.get("explanations", [])[:4]],
            "error": report.get("error"),
        },
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
