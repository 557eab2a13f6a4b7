"""Report benchmark: the drill-down report over 10 million samples from 100,000 sessions in DuckDB.

The data is generated directly in DuckDB SQL into the warehouse's fixed schema (not through
HTTP): 100,000 sessions (app_version, os, os_version, network, sync_mode, locale), 100
samples each (stage, and file_name_length while receiving/sending), and one file_received
event per receiving/sending block. Samples are stored in time order, sessions interleaved,
as a collector writes them (clustered by session the report runs ~20-30 % faster, which
would flatter it). Three causes are planted: 7.0.0 at login, receiving a file with a name
of 40+ characters, and a rare os_version cohort (10-insider, 1 % of sessions).

As a running collector does every minute, the closed 10-minute buckets are then rolled up
(`DuckDBWarehouse.roll_up`, timed and reported); the report reads them from the rollup.

Peers in the same run, on the same file: the floor -- one bare GROUP BY (session, attrs)
over the window, the cheapest grouping any per-phase report must do -- and the full report
(`build_report`, everything the dashboard shows). Target: the report in at most 1 s.

Prints one JSON object and writes it to bench/results/report.json. Not a test.

    python bench/bench_report.py                   # full size
    python bench/bench_report.py --sessions 10000  # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import duckdb  # noqa: E402
from _machine import machine  # noqa: E402

from appvitals.fleet.analysis.report import build_report  # noqa: E402
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse  # noqa: E402

T0 = 1_764_000_000_000
STEP_MS = 5_000


def _h(expr: str, mod: int) -> str:
    """A deterministic pseudo-random integer in [0, mod) from a string expression."""
    return f"(hash({expr}) % {mod})::BIGINT"


def generate(path: str, sessions: int, per_session: int) -> dict:
    """Fill a DuckDB warehouse file with the synthetic fleet; returns timing figures."""
    DuckDBWarehouse(path).close()  # the warehouse creates its fixed schema
    con = duckdb.connect(path)
    span_ms = 10 * 3600 * 1000  # sessions start over 10 hours
    figures = {}
    t = time.perf_counter()
    sid = "'s' || i::VARCHAR"
    con.execute(f"""
        INSERT INTO sessions (session_id, client_id, ts, seq, attr_keys, attr_values)
        SELECT {sid}, 'c' || (i % {max(1, sessions * 2 // 5)})::VARCHAR,
               {T0} + {_h("'t' || i::VARCHAR", span_ms)}, 0,
               ['app_version', 'os', 'os_version', 'network', 'sync_mode', 'locale'],
               [['6.3.2', '6.4.0', '6.4.0', '6.4.0', '6.5.0', '6.5.0', '7.0.0', '7.0.1'][1 + {_h("'v' || i::VARCHAR", 8)}],
                ['windows', 'windows', 'macos', 'linux'][1 + os_i],
                CASE WHEN rare THEN '10-insider' ELSE ['10', '11', '14.5', 'ubuntu-22.04'][1 + os_i] END,
                ['wifi', 'wifi', 'ethernet', 'vpn'][1 + {_h("'n' || i::VARCHAR", 4)}],
                ['on_demand', 'on_demand', 'continuous'][1 + {_h("'y' || i::VARCHAR", 3)}],
                ['en', 'en', 'de', 'pl', 'fr'][1 + {_h("'l' || i::VARCHAR", 5)}]]
        FROM (SELECT i, {_h("'o' || i::VARCHAR", 4)} AS os_i,
                     {_h("'o' || i::VARCHAR", 4)} = 0 AND {_h("'r' || i::VARCHAR", 25)} = 0 AS rare
              FROM range({sessions}) t(i))
    """)
    figures["sessions_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    con.execute(f"""
        INSERT INTO samples (session_id, ts, seq, cpu, attrs, vals)
        WITH base AS (
            SELECT n // {per_session} AS i, n % {per_session} AS k FROM range({sessions * per_session}) t(n)
        ), st AS (
            SELECT i, k,
                CASE WHEN k < 2 THEN 'startup' WHEN k < 6 THEN 'login'
                     ELSE ['idle', 'indexing', 'receiving', 'sending', 'idle'][
                        1 + ((k - 6) // 12 + {_h("'s' || i::VARCHAR", 5)}) % 5] END AS stage,
                5 + {_h("'f' || i::VARCHAR || '/' || ((k - 6) // 12)::VARCHAR", 66)} AS fnl,
                {_h("'v' || i::VARCHAR", 8)} = 6 AS v700,
                {_h("'o' || i::VARCHAR", 4)} = 0 AND {_h("'r' || i::VARCHAR", 25)} = 0 AS rare
            FROM base
        )
        SELECT {sid}, {T0} + {_h("'t' || i::VARCHAR", span_ms)} + k * {STEP_MS}, k + 1,
            greatest(0.0, (CASE stage WHEN 'idle' THEN 2 WHEN 'indexing' THEN 14 WHEN 'receiving' THEN 10
                                      WHEN 'sending' THEN 9 WHEN 'login' THEN 8 ELSE 12 END)
                + {_h("'c' || i::VARCHAR || '/' || k::VARCHAR", 1000)} / 100.0 - 5
                + CASE WHEN stage = 'login' AND v700 THEN 65 ELSE 0 END
                + CASE WHEN stage = 'receiving' AND fnl >= 40 THEN 55 ELSE 0 END
                + CASE WHEN rare THEN 45 ELSE 0 END),
            -- the JSON text the collector stores: keys sorted, numbers as numbers
            CASE WHEN stage IN ('receiving', 'sending')
                 THEN '{{"file_name_length":' || fnl::VARCHAR || ',"stage":"' || stage || '"}}'
                 ELSE '{{"stage":"' || stage || '"}}' END,
            '{{}}'
        FROM st
        ORDER BY 2  -- in time order, interleaved across sessions, as a collector writes them
    """)
    figures["samples_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    con.execute(f"""
        INSERT INTO events (session_id, ts, seq, name, attr_keys, attr_values)
        SELECT {sid}, {T0} + {_h("'t' || i::VARCHAR", span_ms)} + k * {STEP_MS} - 1, 100000 + k, 'file_received',
               ['file_name_length'], [(5 + {_h("'f' || i::VARCHAR || '/' || ((k - 6) // 12)::VARCHAR", 66)})::VARCHAR]
        FROM (SELECT n // {per_session} AS i, n % {per_session} AS k FROM range({sessions * per_session}) t(n))
        WHERE k >= 6 AND (k - 6) % 12 = 0
    """)
    figures["events_s"] = round(time.perf_counter() - t, 2)
    con.execute("CHECKPOINT")
    figures["samples"] = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    figures["events"] = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--samples-per-session", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "report.json"))
    ap.add_argument("--keep", metavar="PATH", help="keep the generated DuckDB file there (to profile the report)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        path = str(Path(tmp) / "fleet.duckdb")
        t = time.perf_counter()
        gen = generate(path, args.sessions, args.samples_per_session)
        gen["total_s"] = round(time.perf_counter() - t, 2)
        wh = DuckDBWarehouse(path, memory_limit="2GB")
        # what a running collector does every minute (its default memory limit, 256 MB), timed
        t = time.perf_counter()
        wh.close()
        collector_wh = DuckDBWarehouse(path)
        gen["rollup_buckets"] = collector_wh.catch_up()
        collector_wh.close()
        gen["rollup_s"] = round(time.perf_counter() - t, 2)
        wh = DuckDBWarehouse(path, memory_limit="2GB")
        gen["rollup_rows"] = wh.query("SELECT count(*) FROM sample_rollup")[0][0]
        now = dt.datetime.fromtimestamp(T0 / 1000 + 12 * 3600, dt.timezone.utc)
        window = f"ts >= {T0} AND ts < {T0 + 12 * 3600 * 1000}"
        floor = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            wh.query(
                "SELECT count(*), sum(n), sum(c) FROM (SELECT session_id, attrs, "
                f"count(*) AS n, sum(cpu) AS c FROM samples WHERE {window} GROUP BY session_id, attrs)"
            )
            floor.append(time.perf_counter() - t)
        runs = []
        report = None
        for _ in range(args.repeat + 1):  # the first run warms the file cache
            t = time.perf_counter()
            report = build_report(wh, since="12h", threshold=30, now=now)
            runs.append(time.perf_counter() - t)
        wh.close()
        if args.keep:
            shutil.copyfile(path, args.keep)
    runs = runs[1:]
    result = {
        "bench": "report",
        "machine": machine(),
        "data": {"sessions": args.sessions, "samples": gen["samples"], "events": gen["events"],
                 "generate_seconds": gen},
        "floor_group_by_session_attrs_s": {"median": round(statistics.median(floor), 3), "min": round(min(floor), 3)},
        "report_s": {"median": round(statistics.median(runs), 3), "min": round(min(runs), 3),
                     "max": round(max(runs), 3), "runs": [round(x, 3) for x in runs]},
        "report_over_floor": round(statistics.median(runs) / statistics.median(floor), 2),
        "target_s": 1.0,
        "meets_target": statistics.median(runs) <= 1.0,
        "report": {
            "sessions": report.sessions, "high_sessions": report.high_sessions, "candidates": report.candidates,
            "top_explanations": [
                {"attrs": e.attrs, "sessions": e.sessions, "high_share": e.high_share, "risk_ratio": e.risk_ratio}
                for e in report.explanations[:5]
            ],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
