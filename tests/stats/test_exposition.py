"""Prometheus text 0.0.4 / OpenMetrics 1.0: promtool, the OpenMetrics parser, the bridge."""

from __future__ import annotations

import subprocess

import prometheus_client
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_families
from support.services import require_binary

import appvitals
from appvitals.stats.prometheus import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, exposition, register_into


def _registry() -> appvitals.Registry:
    reg = appvitals.Registry()
    c = reg.counter("changes_received", 'Changes "received"\nfrom peers \\ all', labels=("peer", "model"))
    c.labels(peer='B "quoted"\nline\\slash', model="entry").inc(3)
    reg.gauge("buffer_queue_depth", "Items waiting").set(7)
    h = reg.histogram("apply_latency_seconds", "Apply latency", unit="seconds", labels=("model",))
    for v in (0.01, 0.02, 0.5):
        h.labels(model="entry").observe(v)
    s = reg.state("sync_state", "Sync state", states=("Uninitialized", "Ready"))
    s.set("Ready", reason="done")
    reg.events("sync_errors", "Recent errors").record(type="network", message="timeout")
    return reg


def test_text_format_passes_promtool(tmp_path):
    promtool = require_binary("promtool")
    body, ctype = exposition(_registry())
    assert ctype == TEXT_CONTENT_TYPE
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr
    fams = {f.name: f for f in text_families(body.decode())}
    sample = fams["changes_received"].samples[0]
    assert sample.labels["peer"] == 'B "quoted"\nline\\slash' and sample.value == 3
    quantiles = {s.labels.get("quantile"): s.value for s in fams["apply_latency_seconds"].samples}
    assert abs(quantiles["0.5"] - 0.02) <= 0.02 * 0.011


def test_openmetrics_by_negotiation_parses():
    body, ctype = exposition(_registry(), accept="application/openmetrics-text; version=1.0.0")
    assert ctype == OPENMETRICS_CONTENT_TYPE and body.endswith(b"# EOF\n")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["changes_received"].type == "counter"
    assert fams["apply_latency_seconds"].type == "summary"
    assert fams["apply_latency_seconds"].unit == "seconds"
    assert fams["sync_errors"].samples[0].value == 1
    assert fams["changes_received"].documentation == 'Changes "received"\nfrom peers \\ all'
    current = [s for s in fams["sync_state"].samples if s.value == 1]
    assert current[0].labels == {"sync_state": "Ready"}


def test_bridge_into_prometheus_client():
    reg = _registry()
    prom = prometheus_client.CollectorRegistry()
    register_into(reg, prom)
    assert prom.get_sample_value("buffer_queue_depth") == 7
    assert prom.get_sample_value("changes_received_total", {"peer": 'B "quoted"\nline\\slash', "model": "entry"}) == 3
    text = prometheus_client.generate_latest(prom).decode()
    assert "apply_latency_seconds_count" in text
