"""`appvitals.serve`: /metrics (checked by a real Prometheus scraping it), /v1/snapshot with its
query parameters, /v1/events as a live SSE stream, tokens, ports, stopping."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families
from support.services import free_port, require_binary

import appvitals
from appvitals.stats import snapshot as snapshot_module
from appvitals.stats.prometheus import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE


def _registry() -> appvitals.Registry:
    reg = appvitals.Registry()
    c = reg.counter("changes_received", "Changes received", labels=("peer", "model"), group="operations")
    c.labels(peer="A", model="entry").inc(5)
    c.labels(peer="B", model="entry").inc(3)
    reg.gauge("buffer_queue_depth", "Items waiting", group="operations").set(2)
    reg.histogram("apply_latency", "Apply latency", unit="ms", group="performance").observe(12.5)
    reg.state("sync_state", "Sync state", states=("Uninitialized", "Backfilling", "Ready"), group="state")
    reg.events("sync_errors", "Sync errors", group="errors").record(type="network", message="timeout", device="B")
    return reg


@pytest.fixture
def served():
    reg = _registry()
    handle = appvitals.serve(reg, port=0, poll_interval=0.05, delta_interval=0.3)
    try:
        yield reg, handle
    finally:
        handle.stop()


def test_metrics_content_negotiation(served):
    reg, h = served
    r = httpx.get(h.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == TEXT_CONTENT_TYPE
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    values = {tuple(sorted(s.labels.items())): s.value for s in fams["changes_received"].samples}
    assert values[(("model", "entry"), ("peer", "B"))] == 3
    r = httpx.get(h.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"] == OPENMETRICS_CONTENT_TYPE and r.text.endswith("# EOF\n")
    assert "changes_received" in {f.name for f in om_families(r.text)}


def test_snapshot_json_and_filters(served):
    reg, h = served
    doc = httpx.get(h.url + "/v1/snapshot").json()
    assert doc["schema"] == 1 and doc["scope"] == "all"
    assert {m["name"] for m in doc["metrics"]} >= {"changes_received", "sync_state", "sync_errors"}
    r = httpx.get(h.url + "/v1/snapshot", params=[("where", "peer=B"), ("metric", "changes_*"), ("scope", "session")])
    doc = r.json()
    assert r.status_code == 200 and doc["scope"] == "session"
    assert [m["name"] for m in doc["metrics"]] == ["changes_received"]
    assert [s["labels"] for s in doc["metrics"][0]["series"]] == [{"peer": "B", "model": "entry"}]
    doc = httpx.get(h.url + "/v1/snapshot", params=[("group", "state"), ("group", "errors")]).json()
    assert sorted(m["name"] for m in doc["metrics"]) == ["sync_errors", "sync_state"]
    decoded = snapshot_module.decode(httpx.get(h.url + "/v1/snapshot").content)
    assert decoded.value("changes_received", peer="A", model="entry") == 5


@pytest.mark.parametrize("params,needle", [
    ([("scope", "yesterday")], "scope must be one of"),
    ([("since", "next tuesday-ish")], "since: cannot read time"),
    ([("where", "nope=1")], "unknown where key 'nope'; known keys: "),
    ([("where", "peer")], "expected key=value"),
    ([("bogus", "1")], "unknown parameter 'bogus'"),
    ([("since", "1h")], "attached to a store"),
    ([("since", "1h"), ("until", "2h")], "until must be later than since"),
])
def test_bad_parameters_give_400_with_one_line(served, params, needle):
    _, h = served
    r = httpx.get(h.url + "/v1/snapshot", params=params)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err and "\n" not in err


def test_token_is_required_when_set():
    reg = _registry()
    with appvitals.serve(reg, port=0, token="s3cret") as h:
        for path in ("/metrics", "/v1/snapshot", "/v1/events"):
            assert httpx.get(h.url + path).status_code == 401
            assert httpx.get(h.url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
        r = httpx.get(h.url + "/v1/snapshot", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["schema"] == 1


def _read_events(url: str, until, timeout: float = 10.0, params=None) -> list[tuple[str, dict]]:
    """SSE events from `url` until `until(events)` is true (or the timeout)."""
    events: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    name = None
    with httpx.stream("GET", url, params=params, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if until(events) or time.monotonic() > deadline:
                    break
    return events


def test_live_stream_sends_transitions_records_and_deltas(served):
    reg, h = served

    def act():
        time.sleep(0.4)
        reg.get("sync_state").set("Backfilling", reason="peer connected")
        reg.get("sync_errors").record(type="apply", message="missing parent", model="entry")
        reg.get("changes_received").labels(peer="B", model="tag").inc(7)
        reg.get("buffer_queue_depth").set(9)

    threading.Thread(target=act, daemon=True).start()

    def done(events):
        return any(n == "deltas" and any(c["delta"] == 7 for c in d["counters"]) for n, d in events)

    events = _read_events(h.url + "/v1/events", done)
    names = [n for n, _ in events]
    assert names[0] == "hello"
    state = next(d for n, d in events if n == "state")
    assert (state["metric"], state["from"], state["to"], state["reason"]) == (
        "sync_state", "Uninitialized", "Backfilling", "peer connected")
    record = next(d for n, d in events if n == "record")
    assert record["type"] == "apply" and record["model"] == "entry" and record["metric"] == "sync_errors"
    # transitions and records come as soon as they are seen, before the counter delta that followed them
    assert names.index("state") < [i for i, (n, d) in enumerate(events) if n == "deltas" and d["counters"]][0]
    deltas = [d for n, d in events if n == "deltas" and d["counters"]][0]
    assert {"metric": "changes_received", "labels": {"peer": "B", "model": "tag"}, "delta": 7.0, "value": 7.0} in deltas["counters"]
    assert any(g["metric"] == "buffer_queue_depth" and g["value"] == 9 for d in [deltas] for g in d["gauges"])


def test_live_stream_filters_and_rejects_windows(served):
    reg, h = served
    assert httpx.get(h.url + "/v1/events", params={"since": "1h"}).status_code == 400

    def act():
        time.sleep(0.3)
        c = reg.get("changes_received")
        c.labels(peer="A", model="entry").inc(100)
        c.labels(peer="B", model="entry").inc(1)

    threading.Thread(target=act, daemon=True).start()
    events = _read_events(h.url + "/v1/events", lambda ev: any(n == "deltas" and d["counters"] for n, d in ev),
                          params={"where": "peer=B"})
    counters = [c for n, d in events if n == "deltas" for c in d["counters"]]
    assert counters and all(c["labels"]["peer"] == "B" for c in counters)


def test_port_zero_busy_port_and_stop_releases_it():
    reg = appvitals.Registry()
    h = appvitals.serve(reg, port=0)
    assert h.port > 0 and h.url == f"http://127.0.0.1:{h.port}"
    with pytest.raises(OSError):
        appvitals.serve(reg, port=h.port)
    # a live stream does not keep the server from stopping
    with httpx.stream("GET", h.url + "/v1/events", timeout=5) as r:
        next(r.iter_lines())
        h.stop()
    assert not h.running
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", h.port))


def test_a_real_prometheus_scrapes_metrics(tmp_path):
    prometheus = require_binary("prometheus")
    reg = _registry()
    with appvitals.serve(reg, port=0) as h:
        prom_port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: app\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{h.port}']\n")
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        try:
            health, value, deadline = None, None, time.monotonic() + 60
            while time.monotonic() < deadline and (health != "up" or value != "3"):
                time.sleep(0.5)
                try:
                    targets = httpx.get(api + "/targets", timeout=2).json()["data"]["activeTargets"]
                    health = targets[0]["health"] if targets else None
                    result = httpx.get(api + "/query", params={"query": 'changes_received_total{peer="B"}'},
                                       timeout=2).json()["data"]["result"]
                    value = result[0]["value"][1] if result else None
                except (httpx.HTTPError, KeyError, IndexError):
                    continue
            assert health == "up", (tmp_path / "prometheus.log").read_text()[-2000:]
            assert value == "3"
            assert targets[0]["scrapeUrl"] == f"{h.url}/metrics"
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def test_windows_with_an_attached_store(tmp_path):
    reg = appvitals.Registry()
    c = reg.counter("hits", "Hits", labels=("user",))
    c.labels(user="1").inc(4)
    store = appvitals.Store(str(tmp_path / "s.db"))
    reg.attach(store, interval=60)
    try:
        with appvitals.serve(reg, port=0) as h:
            r = httpx.get(h.url + "/v1/snapshot", params={"since": "1 hour ago"})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["window"]["since"] and doc["metrics"][0]["series"][0]["value"] == 4
            r = httpx.get(h.url + "/v1/snapshot", params={"until": "2001-01-01T00:00:00Z"})
            assert r.status_code == 500 and "history" in r.json()["error"]  # one line, not a bare 500
    finally:
        reg.detach()


def test_transitions_are_pushed_not_polled():
    """With polling and deltas both set to a minute, a transition still arrives at once."""
    reg = appvitals.Registry()
    state = reg.state("sync_state", states=("Uninitialized", "Ready"))
    errors = reg.events("errors")
    with appvitals.serve(reg, port=0, poll_interval=60, delta_interval=60) as h:
        def act():
            time.sleep(0.5)
            state.set("Ready", reason="caught up")
            errors.record(type="network", message="reset")

        threading.Thread(target=act, daemon=True).start()
        events = _read_events(h.url + "/v1/events", lambda ev: {"state", "record"} <= {n for n, _ in ev}, timeout=30)
        names = {n for n, _ in events}
        assert {"state", "record"} <= names  # within 30 s, while the poll would take 60


# ---- the collector's rules for who may connect, and bounded cost ---------------------------


def test_public_bind_needs_a_token_and_empty_tokens_are_refused():
    reg = appvitals.Registry()
    with pytest.raises(ValueError, match="without a token"):
        appvitals.serve(reg, host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="empty token"):
        appvitals.serve(reg, port=0, token="")
    with appvitals.serve(reg, host="0.0.0.0", port=0, token="t") as h:
        url = f"http://127.0.0.1:{h.port}"
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer t"}).status_code == 200


def test_loopback_server_refuses_other_host_names():
    reg = appvitals.Registry()
    reg.counter("c", "c").inc()
    with appvitals.serve(reg, port=0) as h:
        assert httpx.get(h.url + "/metrics").status_code == 200
        assert httpx.get(h.url + "/metrics", headers={"Host": f"localhost:{h.port}"}).status_code == 200
        r = httpx.get(h.url + "/v1/snapshot", headers={"Host": f"attacker.example:{h.port}"})
        assert r.status_code == 421 and set(r.json()) == {"error"}


def test_a_costly_metric_glob_is_refused_at_once():
    reg = appvitals.Registry()
    for i in range(50):
        reg.counter(f"metric_{'a' * 100}_{i}", "c").inc()
    with appvitals.serve(reg, port=0) as h:
        r = httpx.get(h.url + "/v1/snapshot", params={"metric": "*a" * 3000 + "b"}, timeout=30)
        assert r.status_code == 400 and "glob" in r.json()["error"]
        r = httpx.get(h.url + "/v1/snapshot", params={"metric": "*a*a*a*a*a*b"})
        assert r.status_code == 400 and "wildcards" in r.json()["error"]
        r = httpx.get(h.url + "/v1/snapshot", params=[("metric", f"m{i}") for i in range(100)])
        assert r.status_code == 400
        assert httpx.get(h.url + "/v1/snapshot", params={"metric": "metric_*_1"}).status_code == 200
