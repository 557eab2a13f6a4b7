"""Paired A/B of the drill-down report between two source trees, for a noisy machine.

Two worker processes, one per tree (each on its own copy of the DuckDB file, which a
warehouse opens for writing), run one report each in turn, alternating which goes first;
what counts is the median of the per-pair ratios B/A, of wall time and of the process's CPU
time (both threads), not absolute times. An A/A run (the same tree twice) shows the noise.

    python bench/pair_report.py OLD_TREE NEW_TREE FILE.duckdb [--pairs 16]

FILE is a warehouse such as the one bench/bench_report.py builds (its report window, the
default: the 12 hours from 2025-11-24 16:00 UTC); for another, give --now (epoch seconds)
and --since. --memory sets DuckDB's memory limit (the collector's is 256MB). Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import sys, time, datetime as dt
sys.path.insert(0, sys.argv[1] + "/src")
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
wh = DuckDBWarehouse(sys.argv[2], memory_limit=sys.argv[5])
now = dt.datetime.fromtimestamp(float(sys.argv[3]), dt.timezone.utc)
build_report(wh, since=sys.argv[4], threshold=30, now=now)  # warm
print("ready", flush=True)
for _ in sys.stdin:
    t, c = time.perf_counter(), time.process_time()
    build_report(wh, since=sys.argv[4], threshold=30, now=now)
    print(f"{time.perf_counter() - t:.4f} {time.process_time() - c:.4f}", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("file")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--now", type=float, default=1_764_000_000 + 12 * 3600, help="the report's end, epoch seconds")
    ap.add_argument("--since", default="12h")
    ap.add_argument("--memory", default="2GB", help="DuckDB's memory limit")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pair-report-") as tmp:
        workers = []
        for name, tree in (("a", args.old), ("b", args.new)):
            copy = Path(tmp) / f"{name}.duckdb"
            shutil.copyfile(args.file, copy)
            p = subprocess.Popen([sys.executable, "-c", WORKER, str(Path(tree).resolve()), str(copy), str(args.now),
                                  args.since, args.memory],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            workers.append(p)

        def run(p: subprocess.Popen) -> tuple[float, float]:
            p.stdin.write("go\n")
            p.stdin.flush()
            wall, cpu = p.stdout.readline().split()
            return float(wall), float(cpu)

        a, b = [], []
        for i in range(args.pairs):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            got = {k: run(workers[k]) for k in order}
            a.append(got[0])
            b.append(got[1])
        for p in workers:
            p.stdin.close()
            p.wait()
    for what, i in (("wall", 0), ("cpu", 1)):
        xa, xb = [t[i] for t in a], [t[i] for t in b]
        ratio = statistics.median(y / x for x, y in zip(xa, xb))
        print(f"{what}: old median {statistics.median(xa):.3f} s (min {min(xa):.3f}), new median "
              f"{statistics.median(xb):.3f} s (min {min(xb):.3f}), new/old median ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
