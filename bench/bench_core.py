"""Hot-path cost of appvitals next to prometheus_client and the OpenTelemetry SDK, in one process.

Prints JSON (ns/op, bytes/series and ratios against the targets of issue #2) and writes
bench/results/core.json. Not a test: figures depend on the machine; ratios are what matter.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import timeit
import tracemalloc

import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import appvitals

N = int(os.environ.get("BENCH_N", "300000"))
REPEAT = 5


def ns_per_op(stmt, setup_globals) -> float:
    best = min(timeit.repeat(stmt, globals=setup_globals, number=N, repeat=REPEAT))
    return best / N * 1e9


def memory_per_series(make_series, n: int = 20_000) -> float:
    users = [f"user-{i}" for i in range(n)]
    servers = [f"smp{i % 50}.example" for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = make_series(users, servers)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return (after - before) / n


class _Empty:
    def m(self, amount=1):
        pass


def main() -> dict:
    prom_reg = prometheus_client.CollectorRegistry()
    p_counter = prometheus_client.Counter("x", "x", ["server", "user"], registry=prom_reg)
    p_child = p_counter.labels(server="a", user="b")
    p_hist = prometheus_client.Histogram("h", "h", registry=prom_reg)

    reg = appvitals.Registry()
    a_counter = reg.counter("x", "x", labels=("server", "user"))
    a_child = a_counter.labels(server="a", user="b")
    a_hist = reg.histogram("h", "h")
    disabled = appvitals.Registry(enabled=False).counter("x", "x")
    empty = _Empty()

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("bench")
    o_counter = meter.create_counter("x")
    o_hist = meter.create_histogram("h")
    attrs = {"server": "a", "user": "b"}

    g = dict(globals(), **locals())
    r: dict[str, float] = {}
    r["appvitals_child_inc_ns"] = ns_per_op("a_child.inc()", g)
    r["prometheus_child_inc_ns"] = ns_per_op("p_child.inc()", g)
    r["appvitals_labels_inc_ns"] = ns_per_op("a_counter.labels(server='a', user='b').inc()", g)
    r["prometheus_labels_inc_ns"] = ns_per_op("p_counter.labels(server='a', user='b').inc()", g)
    r["otel_add_attrs_ns"] = ns_per_op("o_counter.add(1, attrs)", g)
    r["appvitals_observe_ns"] = ns_per_op("a_hist.observe(12.5)", g)
    r["prometheus_observe_ns"] = ns_per_op("p_hist.observe(12.5)", g)
    r["otel_record_ns"] = ns_per_op("o_hist.record(12.5)", g)
    r["appvitals_disabled_inc_ns"] = ns_per_op("disabled.inc()", g)
    r["empty_method_call_ns"] = ns_per_op("empty.m()", g)

    def a_series(users, servers):
        local = appvitals.Registry(max_series=10**6)
        c = local.counter("mem", "m", labels=("server", "user"))
        for u, s in zip(users, servers):
            c.labels(server=s, user=u).inc()
        return local

    def p_series(users, servers):
        local = prometheus_client.CollectorRegistry()
        c = prometheus_client.Counter("mem", "m", ["server", "user"], registry=local)
        for u, s in zip(users, servers):
            c.labels(server=s, user=u).inc()
        return local

    r["appvitals_bytes_per_series"] = memory_per_series(a_series)
    r["prometheus_bytes_per_series"] = memory_per_series(p_series)

    ratios = {
        "child_inc_vs_prometheus": r["appvitals_child_inc_ns"] / r["prometheus_child_inc_ns"],
        "labels_inc_vs_prometheus": r["appvitals_labels_inc_ns"] / r["prometheus_labels_inc_ns"],
        "observe_vs_prometheus": r["appvitals_observe_ns"] / r["prometheus_observe_ns"],
        "bytes_per_series_vs_prometheus": r["appvitals_bytes_per_series"] / r["prometheus_bytes_per_series"],
        "disabled_inc_vs_empty_call": r["appvitals_disabled_inc_ns"] / r["empty_method_call_ns"],
        "labels_inc_vs_otel_add": r["appvitals_labels_inc_ns"] / r["otel_add_attrs_ns"],
    }
    targets = {
        "child_inc_vs_prometheus": 0.25, "labels_inc_vs_prometheus": 0.25, "observe_vs_prometheus": 0.5,
        "bytes_per_series_vs_prometheus": 1 / 3, "disabled_inc_vs_empty_call": 1.5,
    }
    result = {
        "python": sys.version.split()[0], "machine": platform.machine(), "n": N,
        "figures": {k: round(v, 1) for k, v in r.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets_met": {k: ratios[k] <= t for k, t in targets.items()},
    }
    return result


if __name__ == "__main__":
    out = main()
    text = json.dumps(out, indent=2)
    print(text)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "core.json"), "w") as fh:
        fh.write(text + "\n")
