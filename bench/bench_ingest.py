"""Ingest benchmark: the same fleet workload into `vitals serve` (DuckDB) and into InfluxDB 1.6, in one run.

Workload (default 1,000,000 samples): client_id (10,000 distinct), session_id (50,000),
app_version (8), os (3), stage (6) and cpu; batches of 5,000 lines; 2 connections.
The collector gets SPEC section-3 lines: one `session` line per session (client_id,
app_version, os) and one `sample` line per sample (session_id, seq, stage, cpu). InfluxDB
gets what seed 002 stored: one point per sample with every attribute as a tag and cpu as
the field. Bodies are encoded before the clock starts; both servers are started here on
127.0.0.1 with temp dirs, and both fsync their write-ahead log before answering. The
collector answers from its ingest log and inserts into DuckDB in the background: its clock
stops when the last line is in DuckDB (queryable), not at the last answer.

Then a drill-down query on both: the share of samples with cpu > 30 per app_version and stage.

Prints one JSON object and writes it to bench/results/ingest.json. Not a test.

    python bench/bench_ingest.py              # full size
    python bench/bench_ingest.py --samples 100000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import msgspec
import psutil
from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS = ROOT / "bench" / "results" / "ingest.json"

CLIENTS, SESSIONS, VERSIONS, OSES, STAGES = 10_000, 50_000, 8, 3, 6
BATCH = 5_000
CONNECTIONS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(samples: int, seed: int = 7):
    """(collector bodies, influx bodies, sample count, session-line count)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) - 2 * 3_600_000
    sessions = min(SESSIONS, samples)
    session_client = [f"c{rng.randrange(CLIENTS)}" for _ in range(sessions)]
    session_version = [f"7.0.{rng.randrange(VERSIONS)}" for _ in range(sessions)]
    session_os = [("windows", "macos", "linux")[rng.randrange(OSES)] for _ in range(sessions)]
    stages = [f"stage{k}" for k in range(STAGES)]
    enc = msgspec.json.encode

    collector_lines: list[bytes] = [
        enc({"kind": "session", "session_id": f"s{i}", "client_id": session_client[i], "ts": now_ms, "seq": 0,
             "attrs": {"app_version": session_version[i], "os": session_os[i]}})
        for i in range(sessions)
    ]
    influx_lines: list[bytes] = []
    next_seq = [1] * sessions
    for n in range(samples):
        i = rng.randrange(sessions)
        seq = next_seq[i]
        next_seq[i] = seq + 1
        ts = now_ms + n  # unique: InfluxDB keeps one point per series and timestamp
        stage = stages[rng.randrange(STAGES)]
        cpu = round(rng.random() ** 2 * 100, 2)
        collector_lines.append(enc({"kind": "sample", "session_id": f"s{i}", "ts": ts, "seq": seq, "cpu": cpu,
                                    "attrs": {"stage": stage}}))
        influx_lines.append(
            (f"samples,app_version={session_version[i]},client_id={session_client[i]},os={session_os[i]},"
             f"session_id=s{i},stage={stage} cpu={cpu} {ts}").encode()
        )

    def batches(lines: list[bytes]) -> list[bytes]:
        return [b"\n".join(lines[k:k + BATCH]) + b"\n" for k in range(0, len(lines), BATCH)]

    return batches(collector_lines), batches(influx_lines), samples, sessions


def send_all(host: str, port: int, path: str, bodies: list[bytes], headers: dict[str, str],
             ok=(200, 204)) -> tuple[float, int]:
    """POST every body over CONNECTIONS keep-alive connections; retries 503/429 after Retry-After."""
    queue = list(enumerate(bodies))
    lock = threading.Lock()
    errors: list[str] = []
    retries = [0]

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=300)
        while True:
            with lock:
                if not queue or errors:
                    break
                _, body = queue.pop()
            while True:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status in ok:
                    break
                if resp.status in (429, 503):
                    with lock:
                        retries[0] += 1
                    time.sleep(float(resp.getheader("Retry-After", "1")))
                    continue
                with lock:
                    errors.append(f"{resp.status}: {data[:200]!r}")
                break
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{path}: {errors[0]}")
    return elapsed, retries[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class PeakRSS:
    """Sample the RSS of a process and its children (the collector's decode workers) in the
    background; `.peak` in bytes."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        # the process tree is listed once a second, not at every sample: listing walks /proc,
        # and this thread shares the machine's two cores with the server it measures
        children: list[psutil.Process] = []
        listed = 0.0
        while not self._stop.is_set():
            if time.monotonic() - listed > 1.0:
                try:
                    children = self.proc.children(recursive=True)
                except psutil.Error:
                    return
                listed = time.monotonic()
            try:
                total = self.proc.memory_info().rss
            except psutil.Error:
                return
            for child in children:
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in (200, 204):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


DRILL_DOWN_DUCKDB = """
SELECT x.app_version, s.stage, avg(CASE WHEN s.cpu > 30 THEN 1.0 ELSE 0.0 END) AS high_share, count(*) AS n
FROM (SELECT session_id, cpu, json_extract_string(attrs, '$.stage') AS stage FROM samples) AS s
JOIN (SELECT session_id, any_value(attr_values[list_position(attr_keys, 'app_version')]) AS app_version
      FROM sessions GROUP BY session_id) AS x USING (session_id)
GROUP BY 1, 2 ORDER BY 1, 2
"""


def wait_inserted(port: int, timeout: float = 120) -> None:
    """Until the collector's ingest log has no line left to insert into DuckDB."""
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while time.monotonic() < deadline:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            pending = [line for line in text.splitlines() if line.startswith("vitals_collector_log_pending_lines ")]
            if not pending or float(pending[0].split()[1]) == 0:
                return
            time.sleep(0.005)
    finally:
        conn.close()
    raise RuntimeError("the collector did not insert its ingest log in time")


def bench_collector(bodies: list[bytes], tmp: Path, samples: int) -> dict:
    db = tmp / "fleet.duckdb"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp / "collector.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "appvitals", "serve", "--db", str(db), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        rss = PeakRSS(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        started = time.perf_counter()
        acknowledged, retries = send_all("127.0.0.1", port, "/v1/ingest", bodies,
                                         {"Content-Type": "application/x-ndjson"})
        # The clock stops when every line is in DuckDB, not at the last answer: the answers come
        # from the ingest log, and the background insert may still hold the last lines.
        wait_inserted(port)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = rss.stop()
    finally:
        stop(proc)
        log.close()
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        started = time.perf_counter()
        rows = con.execute(DRILL_DOWN_DUCKDB).fetchall()
        query_seconds = time.perf_counter() - started
    finally:
        con.close()
    if stored != samples:
        raise RuntimeError(f"collector stored {stored} samples, expected {samples}")
    lines = sum(b.count(b"\n") for b in bodies)
    return {
        "seconds": round(elapsed, 3),
        "last_answer_seconds": round(acknowledged, 3),
        "lines": lines,
        "lines_per_second": round(lines / elapsed),
        "samples_per_second": round(samples / elapsed),
        "megabytes_per_second": round(sum(map(len, bodies)) / elapsed / 1e6, 2),
        "retries_503": retries,
        "server_cpu_seconds": round(cpu, 2),
        "cores_busy": round(cpu / elapsed, 2),
        "cpu_us_per_line": round(cpu / lines * 1e6, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "drill_down_seconds": round(query_seconds, 4),
        "drill_down_groups": len(rows),
    }


INFLUX_CONFIG = """
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-body-size = 0
[logging]
  level = "warn"
"""


def influx_query(port: int, q: str, db: str = "bench") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/query?" + urllib.parse.urlencode({"db": db, "q": q}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if resp.status != 200 or any("error" in r for r in data.get("results", [])):
        raise RuntimeError(f"influx query failed: {data}")
    return data


def bench_influx(bodies: list[bytes], tmp: Path, samples: int) -> dict | None:
    influxd = shutil.which("influxd") or ("/usr/bin/influxd" if os.path.exists("/usr/bin/influxd") else None)
    if influxd is None:
        return None
    http_port, rpc_port = free_port(), free_port()
    (tmp / "influx").mkdir()
    cfg = tmp / "influx" / "influxdb.conf"
    cfg.write_text(INFLUX_CONFIG.format(dir=tmp / "influx", http_port=http_port, rpc_port=rpc_port))
    log = open(tmp / "influx.log", "wb")
    proc = subprocess.Popen([influxd, "run", "-config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/ping", proc=proc)
        influx_query(http_port, "CREATE DATABASE bench", db="")
        rss = PeakRSS(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        elapsed, retries = send_all("127.0.0.1", http_port, "/write?db=bench&precision=ms", bodies,
                                    {"Content-Type": "text/plain"})
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = rss.stop()
        got = influx_query(http_port, "SELECT count(cpu) FROM samples")
        stored = got["results"][0]["series"][0]["values"][0][1]
        started = time.perf_counter()
        high = influx_query(http_port, "SELECT count(cpu) FROM samples WHERE cpu > 30 GROUP BY app_version, stage")
        total = influx_query(http_port, "SELECT count(cpu) FROM samples GROUP BY app_version, stage")
        query_seconds = time.perf_counter() - started
        groups = len(total["results"][0].get("series", []))
        del high
    finally:
        stop(proc)
        log.close()
    if stored != samples:
        raise RuntimeError(f"influx stored {stored} samples, expected {samples}")
    return {
        "seconds": round(elapsed, 3),
        "lines": samples,
        "lines_per_second": round(samples / elapsed),
        "samples_per_second": round(samples / elapsed),
        "megabytes_per_second": round(sum(map(len, bodies)) / elapsed / 1e6, 2),
        "retries_503": retries,
        "server_cpu_seconds": round(cpu, 2),
        "cores_busy": round(cpu / elapsed, 2),
        "cpu_us_per_line": round(cpu / samples * 1e6, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "drill_down_seconds": round(query_seconds, 4),
        "drill_down_groups": groups,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run both sides and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples to send (default 1,000,000)")
    parser.add_argument("--skip-influx", action="store_true", help="only measure the collector")
    args = parser.parse_args(argv)

    print(f"encoding {args.samples:,} samples ...", file=sys.stderr)
    collector_bodies, influx_bodies, samples, sessions = workload(args.samples)
    tmp = Path(tempfile.mkdtemp(prefix="vitals-bench-"))
    try:
        print("collector (vitals serve, DuckDB) ...", file=sys.stderr)
        collector = bench_collector(collector_bodies, tmp, samples)
        influx = None
        if not args.skip_influx:
            print("InfluxDB 1.6 ...", file=sys.stderr)
            influx = bench_influx(influx_bodies, tmp, samples)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "ingest",
        "samples": samples,
        "sessions": sessions,
        "batch_lines": BATCH,
        "connections": CONNECTIONS,
        "cpus": os.cpu_count(),
        "machine": machine(),
        "collector": collector,
        "influxdb": influx,
        "samples_per_second_ratio": (
            round(collector["samples_per_second"] / influx["samples_per_second"], 2) if influx else None
        ),
        "drill_down_speedup": (
            round(influx["drill_down_seconds"] / collector["drill_down_seconds"], 1) if influx else None
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
