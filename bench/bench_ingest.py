"""Ingest benchmark: the same fleet into `vitals serve` (DuckDB) and into what a user would
pick instead of a collector -- InfluxDB 1.6, ClickHouse, VictoriaMetrics -- in one run.

Workload (default 1,000,000 samples): client_id (10,000 distinct), session_id (50,000),
app_version (8), os (3), stage (6) and cpu; batches of 5,000 lines; 2 connections. Two
shapes: "easy" (each sample carries stage only) and "wide" (also a peer id of 5,000, a
queue of 100 and a file size in KiB: many distinct attr sets, as real apps send them).

- the collector gets SPEC section-3 lines: one `session` line per session (client_id,
  app_version, os) and one `sample` line per sample (session_id, seq, attrs, cpu). It
  answers from its fsynced ingest log and inserts into DuckDB in the background: its clock
  stops when the last line is in DuckDB (queryable), not at the last answer.
- InfluxDB 1.6 gets one point per sample, every attribute a tag and cpu a field; it fsyncs
  its WAL before answering.
- ClickHouse (Debian's server, started here) gets flat JSON rows, the session's attributes
  copied onto each sample, posted over HTTP into a MergeTree table with
  `INSERT ... FORMAT JSONEachRow`; it answers once the part is written, without fsync.
- VictoriaMetrics (/usr/bin/victoria-metrics, temp storage dir) gets the InfluxDB lines on
  /write; it answers before the rows reach disk, so its clock stops when a query sees them all.

Every server runs on 127.0.0.1 with a temp dir; CPU and peak RSS are the server's own (with
its child processes). Then a drill-down on each: the share of samples with cpu > 30 per
app_version and stage. Every ratio is collector / peer (samples/s above 1: the collector is
faster; CPU seconds and RSS below 1: it uses less).

Prints one JSON object and writes it to bench/results/ingest.json. Not a test.

    python bench/bench_ingest.py                      # full size, both shapes, every peer
    python bench/bench_ingest.py --samples 20000 --output /tmp/ingest.json   # a quick check
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
PEERS, QUEUES = 5_000, 100  # the "wide" shape's extra sample attrs
SHAPES = ("easy", "wide")
BATCH = 5_000
CONNECTIONS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(samples: int, shape: str = "easy", seed: int = 7) -> dict:
    """Per system, the bodies of one fleet workload, plus the sample and session counts.

    easy: each sample has one attr (stage). wide: as real apps send them, also a peer id
    (5,000 distinct), a queue (100) and a file size in KiB (any integer up to 100,000):
    many distinct attr sets, which no cache of attr texts holds."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) - 2 * 3_600_000
    sessions = min(SESSIONS, samples)
    session_client = [f"c{rng.randrange(CLIENTS)}" for _ in range(sessions)]
    session_version = [f"7.0.{rng.randrange(VERSIONS)}" for _ in range(sessions)]
    session_os = [("windows", "macos", "linux")[rng.randrange(OSES)] for _ in range(sessions)]
    stages = [f"stage{k}" for k in range(STAGES)]
    enc = msgspec.json.encode
    wide = shape == "wide"

    collector_lines: list[bytes] = [
        enc({"kind": "session", "session_id": f"s{i}", "client_id": session_client[i], "ts": now_ms, "seq": 0,
             "attrs": {"app_version": session_version[i], "os": session_os[i]}})
        for i in range(sessions)
    ]
    influx_lines: list[bytes] = []
    flat_rows: list[bytes] = []
    next_seq = [1] * sessions
    for n in range(samples):
        i = rng.randrange(sessions)
        seq = next_seq[i]
        next_seq[i] = seq + 1
        ts = now_ms + n  # unique: InfluxDB keeps one point per series and timestamp
        stage = stages[rng.randrange(STAGES)]
        cpu = round(rng.random() ** 2 * 100, 2)
        attrs: dict = {"stage": stage}
        tags, fields = f"stage={stage}", f"cpu={cpu}"
        if wide:
            peer, queue, size = f"p{rng.randrange(PEERS)}", f"q{rng.randrange(QUEUES)}", rng.randrange(100_000)
            attrs.update(peer=peer, queue=queue, file_size_kb=size)
            tags += f",peer={peer},queue={queue}"
            fields += f",file_size_kb={size}i"
        collector_lines.append(enc({"kind": "sample", "session_id": f"s{i}", "ts": ts, "seq": seq, "cpu": cpu,
                                    "attrs": attrs}))
        influx_lines.append(
            (f"samples,app_version={session_version[i]},client_id={session_client[i]},os={session_os[i]},"
             f"session_id=s{i},{tags} {fields} {ts}").encode()
        )
        # what a user posting straight into ClickHouse sends: one flat row per sample, the
        # session's attributes copied onto it (there is no join at ingest)
        flat_rows.append(enc({"ts": ts, "session_id": f"s{i}", "client_id": session_client[i],
                              "app_version": session_version[i], "os": session_os[i], "cpu": cpu, **attrs}))

    def batches(lines: list[bytes]) -> list[bytes]:
        return [b"\n".join(lines[k:k + BATCH]) + b"\n" for k in range(0, len(lines), BATCH)]

    return {"collector": batches(collector_lines), "influx": batches(influx_lines),
            "flat": batches(flat_rows), "samples": samples, "sessions": sessions}


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
    return _figures(elapsed, samples, bodies, retries, cpu, peak, query_seconds, groups)


def _figures(elapsed: float, samples: int, bodies: list[bytes], retries: int, cpu: float, peak: int,
             query_seconds: float, groups: int, **extra) -> dict:
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
        **extra,
    }


def _http(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status not in (200, 204):
        raise RuntimeError(f"{method} {path[:80]}: {resp.status} {data[:300]!r}")
    return data


def _clickhouse_table(wide: bool) -> str:
    extra = ", peer String, queue String, file_size_kb Int64" if wide else ""
    return ("CREATE TABLE bench.samples (ts Int64, session_id String, client_id String, app_version String, "
            f"os String, stage String, cpu Float64{extra}) ENGINE = MergeTree() "
            "PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts, 1000), 'UTC')) ORDER BY (session_id, ts)")


def bench_clickhouse(bodies: list[bytes], samples: int, wide: bool) -> dict | None:
    """Flat JSON rows posted straight into a MergeTree table over ClickHouse's HTTP interface."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.clickhouse import ClickHouseServer, find_binary

    command = find_binary()
    if command is None:
        return None
    with ClickHouseServer(command) as server:
        port = server.http_port
        _http(port, "POST", "/", b"CREATE DATABASE bench")
        _http(port, "POST", "/", _clickhouse_table(wide).encode())
        assert server.proc is not None
        rss = PeakRSS(server.proc.pid)
        cpu0 = cpu_seconds(server.proc.pid)
        insert = "/?" + urllib.parse.urlencode({"query": "INSERT INTO bench.samples FORMAT JSONEachRow"})
        elapsed, retries = send_all("127.0.0.1", port, insert, bodies, {"Content-Type": "application/x-ndjson"})
        cpu = cpu_seconds(server.proc.pid) - cpu0
        peak = rss.stop()
        stored = int(_http(port, "POST", "/", b"SELECT count() FROM bench.samples"))
        started = time.perf_counter()
        rows = _http(port, "POST", "/", b"SELECT app_version, stage, avg(cpu > 30), count() FROM bench.samples "
                                        b"GROUP BY app_version, stage ORDER BY app_version, stage").splitlines()
        query_seconds = time.perf_counter() - started
    if stored != samples:
        raise RuntimeError(f"ClickHouse stored {stored} samples, expected {samples}")
    # ClickHouse answers an insert once its part is written, without fsync (18.16 has no setting for it)
    return _figures(elapsed, samples, bodies, retries, cpu, peak, query_seconds, len(rows),
                    last_answer_seconds=round(elapsed, 3), fsync=False)


def bench_victoria(bodies: list[bytes], tmp: Path, samples: int, now_ms: int) -> dict | None:
    """InfluxDB line protocol posted to VictoriaMetrics' /write."""
    binary = shutil.which("victoria-metrics") or ("/usr/bin/victoria-metrics"
                                                  if os.path.exists("/usr/bin/victoria-metrics") else None)
    if binary is None:
        return None
    port = free_port()
    data = tmp / "victoria"
    log = open(tmp / "victoria.log", "wb")
    proc = subprocess.Popen([binary, f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}",
                             "-retentionPeriod=1y", "-search.latencyOffset=0s", "-loggerLevel=ERROR",
                             "-search.disableCache",
                             # the wide shape holds millions of series: a user would raise the default
                             # limit of 300,000 series per query, so the bench does too
                             "-search.maxUniqueTimeseries=100000000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        rss = PeakRSS(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        started = time.perf_counter()
        answered, retries = send_all("127.0.0.1", port, "/write?precision=ms", bodies, {"Content-Type": "text/plain"})
        # VictoriaMetrics buffers rows in memory and answers at once: its clock stops when a
        # query sees every sample (as the collector's stops when DuckDB has every line); its
        # documented /internal/force_flush makes the buffered rows searchable now
        _http(port, "GET", "/internal/force_flush")
        window = f"{int((time.time() * 1000 - now_ms) / 1000) + 3600}s"
        count_query = "/api/v1/query?" + urllib.parse.urlencode(
            {"query": f"sum(count_over_time(samples_cpu[{window}]))", "nocache": "1"})
        stored = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = json.loads(_http(port, "GET", count_query))["data"]["result"]
            stored = int(float(result[0]["value"][1])) if result else 0
            if stored >= samples:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = rss.stop()
        started = time.perf_counter()
        share = (f"sum by (app_version, stage) (count_gt_over_time(samples_cpu[{window}], 30)) / "
                 f"sum by (app_version, stage) (count_over_time(samples_cpu[{window}]))")
        groups = json.loads(_http(port, "GET", "/api/v1/query?" + urllib.parse.urlencode({"query": share})))
        query_seconds = time.perf_counter() - started
    finally:
        stop(proc)
        log.close()
    if stored != samples:
        raise RuntimeError(f"VictoriaMetrics shows {stored} samples, expected {samples}")
    # VictoriaMetrics answers before its rows reach disk (it flushes them about every second)
    return _figures(elapsed, samples, bodies, retries, cpu, peak, query_seconds, len(groups["data"]["result"]),
                    last_answer_seconds=round(answered, 3), fsync=False)


def ratios(collector: dict, peer: dict | None) -> dict | None:
    """collector / peer, for samples/s (above 1: the collector is faster), server CPU seconds and
    peak RSS (below 1: the collector uses less)."""
    if peer is None:
        return None
    answered = peer.get("last_answer_seconds", peer["seconds"])  # InfluxDB: its answers are its clock
    return {
        "samples_per_second": round(collector["samples_per_second"] / peer["samples_per_second"], 2),
        # the same, counting both to their last answer (not until queryable)
        "answered_samples_per_second": round(answered / collector["last_answer_seconds"], 2),
        "server_cpu_seconds": round(collector["server_cpu_seconds"] / max(peer["server_cpu_seconds"], 0.01), 2),
        "peak_rss_mib": round(collector["peak_rss_mib"] / max(peer["peak_rss_mib"], 0.1), 2),
        "drill_down_seconds": round(collector["drill_down_seconds"] / max(peer["drill_down_seconds"], 1e-4), 3),
    }


PEER_NAMES = {"influxdb": "InfluxDB 1.6", "clickhouse": "ClickHouse (flat rows, JSONEachRow)",
              "victoriametrics": "VictoriaMetrics (Influx line protocol)"}


def run_shape(shape: str, samples: int, skip: set[str]) -> dict:
    """The collector and each peer on one fleet workload."""
    print(f"[{shape}] encoding {samples:,} samples ...", file=sys.stderr)
    work = workload(samples, shape)
    now_ms = int(time.time() * 1000) - 2 * 3_600_000
    tmp = Path(tempfile.mkdtemp(prefix="vitals-bench-"))
    peers: dict[str, dict | None] = {}
    failed: dict[str, str] = {}
    try:
        print(f"[{shape}] collector (vitals serve, DuckDB) ...", file=sys.stderr)
        collector = bench_collector(work["collector"], tmp, samples)
        runs = {
            "influxdb": ("InfluxDB 1.6", lambda: bench_influx(work["influx"], tmp, samples)),
            "clickhouse": ("ClickHouse", lambda: bench_clickhouse(work["flat"], samples, shape == "wide")),
            "victoriametrics": ("VictoriaMetrics", lambda: bench_victoria(work["influx"], tmp, samples, now_ms)),
        }
        for name, (title, run) in runs.items():
            if name in skip:
                continue
            print(f"[{shape}] {title} ...", file=sys.stderr)
            try:
                peers[name] = run()
            except Exception as exc:  # one peer that fails must not lose the others' figures
                print(f"[{shape}] {title} failed: {exc}", file=sys.stderr)
                failed[name] = str(exc)[:500]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "samples": samples,
        "sessions": work["sessions"],
        "collector": collector,
        **peers,
        "failed": failed,
        "collector_vs": {name: ratios(collector, peer) for name, peer in peers.items()},
    }


def print_ratios(result: dict) -> None:
    """One line per shape and peer: every ratio, collector / peer."""
    for shape, run in result["shapes"].items():
        for name, r in run["collector_vs"].items():
            if r is None:
                print(f"[{shape}] {PEER_NAMES[name]}: not installed", file=sys.stderr)
                continue
            print(f"[{shape}] collector / {PEER_NAMES[name]}: samples/s x{r['samples_per_second']} "
                  f"(to the last answer x{r['answered_samples_per_second']}), "
                  f"server CPU x{r['server_cpu_seconds']}, peak RSS x{r['peak_rss_mib']}, "
                  f"drill-down time x{r['drill_down_seconds']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict:
    """Run the collector and its peers on each shape and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples to send (default 1,000,000)")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated workload shapes, of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated peers not to run: influxdb, clickhouse, victoriametrics")
    parser.add_argument("--skip-influx", action="store_true", help="same as --skip influxdb")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    if any(s not in SHAPES for s in shapes):
        parser.error(f"--shapes: choose among {', '.join(SHAPES)}")
    skip = {s for s in args.skip.split(",") if s} | ({"influxdb"} if args.skip_influx else set())

    runs = {shape: run_shape(shape, args.samples, skip) for shape in shapes}
    first = runs[shapes[0]]
    result = {
        "benchmark": "ingest",
        "samples": args.samples,
        "batch_lines": BATCH,
        "connections": CONNECTIONS,
        "cpus": os.cpu_count(),
        "machine": machine(),
        "shapes": runs,
        # the figures of the first shape at the top level, as before
        "collector": first["collector"],
        "influxdb": first.get("influxdb"),
        "samples_per_second_ratio": (first["collector_vs"].get("influxdb") or {}).get("samples_per_second"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print_ratios(result)
    return result


if __name__ == "__main__":
    main()
