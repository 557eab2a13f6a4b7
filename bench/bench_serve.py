"""Serving benchmark: `appvitals.serve` against prometheus_client's own HTTP server, in one run.

Workload: the same metrics in both libraries: a counter with `--series` labelled series
(peer x model), a gauge per peer and a histogram per model. Each server runs in the same
process, on 127.0.0.1, in a background thread (as an app would run it); the client scrapes
`/metrics` sequentially over one keep-alive connection `--scrapes` times. For appvitals also
`/v1/snapshot` (the JSON `vitals metrics --url` reads) and the pure `render_text` of the view.

Prints one JSON object and writes it to bench/results/serve.json. Not a test.

    python bench/bench_serve.py
    python bench/bench_serve.py --series 20000 --scrapes 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import prometheus_client  # noqa: E402

import appvitals  # noqa: E402
from appvitals.stats import render  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serve.json"
MODELS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_appvitals(series: int) -> appvitals.Registry:
    reg = appvitals.Registry(max_series=series + 10)
    c = reg.counter("changes_received", "Changes received", labels=("peer", "model"), group="operations")
    g = reg.gauge("peer_lag", "Lag", labels=("peer",), unit="ms", group="performance")
    h = reg.histogram("apply_latency", "Apply latency", unit="ms", labels=("model",), group="performance")
    peers = max(1, series // MODELS)
    for p in range(peers):
        for m in range(MODELS):
            c.labels(peer=f"p{p}", model=f"m{m}").inc(p + m + 1)
        g.labels(peer=f"p{p}").set(p)
    for m in range(MODELS):
        for v in range(100):
            h.labels(model=f"m{m}").observe(1 + v)
    return reg


def fill_prometheus(series: int) -> prometheus_client.CollectorRegistry:
    reg = prometheus_client.CollectorRegistry()
    c = prometheus_client.Counter("changes_received", "Changes received", ("peer", "model"), registry=reg)
    g = prometheus_client.Gauge("peer_lag", "Lag", ("peer",), registry=reg)
    h = prometheus_client.Summary("apply_latency", "Apply latency", ("model",), registry=reg)
    peers = max(1, series // MODELS)
    for p in range(peers):
        for m in range(MODELS):
            c.labels(peer=f"p{p}", model=f"m{m}").inc(p + m + 1)
        g.labels(peer=f"p{p}").set(p)
    for m in range(MODELS):
        for v in range(100):
            h.labels(model=f"m{m}").observe(1 + v)
    return reg


def scrape(port: int, path: str, n: int, headers: dict | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t)
        assert r.status == 200, (path, r.status)
        size = len(body)
    conn.close()
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1000, 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 3),
            "bytes": size, "scrapes": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()

    out: dict = {"series": args.series, "scrapes": args.scrapes}
    reg = fill_appvitals(args.series)
    with appvitals.serve(reg, port=0) as h:
        out["appvitals_metrics_text"] = scrape(h.port, "/metrics", args.scrapes)
        out["appvitals_metrics_openmetrics"] = scrape(
            h.port, "/metrics", args.scrapes, {"accept": "application/openmetrics-text; version=1.0.0"})
        out["appvitals_snapshot_json"] = scrape(h.port, "/v1/snapshot", args.scrapes)
    snap = reg.snapshot()
    t = time.perf_counter()
    for _ in range(20):
        text = render.render_text(snap)
    out["appvitals_render_text_ms"] = round((time.perf_counter() - t) / 20 * 1000, 3)
    out["appvitals_render_lines"] = text.count("\n")

    if hasattr(prometheus_client, "disable_created_metrics"):  # same samples on both sides: no *_created lines
        prometheus_client.disable_created_metrics()
    preg = fill_prometheus(args.series)
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1", registry=preg)
    try:
        out["prometheus_client_metrics_text"] = scrape(port, "/metrics", args.scrapes)
    finally:
        server.shutdown()
        thread.join(5)
    out["ratio_median_appvitals_over_prometheus_client"] = round(
        out["appvitals_metrics_text"]["median_ms"] / out["prometheus_client_metrics_text"]["median_ms"], 2)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
