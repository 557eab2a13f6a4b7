"""The uploader: gzip NDJSON batches, commit only after 200, backoff, Retry-After, pressure."""

from __future__ import annotations

import json
import random

import pytest
from support.fault_collector import FaultCollector

from appvitals.fleet.client.spool import Spool
from appvitals.fleet.client.uploader import Uploader, ingest_url, parse_retry_after


def _line(i, sid="s1"):
    return json.dumps({"kind": "sample", "session_id": sid, "ts": 1764000000000 + i, "seq": i, "cpu": 1.5}).encode()


@pytest.fixture
def server():
    s = FaultCollector()
    yield s
    s.close()


def test_batches_are_gzip_ndjson_and_committed_after_200(tmp_path, server):
    with Spool(tmp_path) as spool:
        spool.append([_line(i) for i in range(500)])
        up = Uploader(server.url, spool, batch_bytes=8000)
        assert up.flush(timeout=10)
        assert spool.pending_bytes() == 0
        assert len(server.lines) == 500 and server.duplicates == 0
        assert all(r["Content-Encoding"] == "gzip" and r["Content-Type"] == "application/x-ndjson"
                   for r in server.requests)
        assert len(server.requests) > 3  # batched by size
        assert up.stats.accepted == 500 and up.stats.wire_bytes < up.stats.raw_bytes / 4
        up.close()


def test_nothing_is_committed_on_failure_and_a_retry_sends_it_again(tmp_path, server):
    with Spool(tmp_path) as spool:
        spool.append([_line(i) for i in range(10)])
        server.script = [(500, {})]
        up = Uploader(server.url, spool, rng=random.Random(1))
        out = up.send_once()
        assert out.status == "retry" and 0.25 <= out.delay <= 0.5
        assert spool.pending_lines() == 10
        assert up.send_once().status == "sent"
        assert len(server.lines) == 10 and spool.pending_bytes() == 0


def test_backoff_grows_exponentially_with_jitter_and_a_cap(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append([_line(0)])
        # nothing listens on this port: connection refused
        from support.services import free_port

        up = Uploader(f"http://127.0.0.1:{free_port()}", spool, backoff_base=1, backoff_max=8, rng=random.Random(3))
        delays = [up.send_once().delay for _ in range(7)]
        ceilings = [1, 2, 4, 8, 8, 8, 8]
        for d, c in zip(delays, ceilings, strict=True):
            assert c / 2 <= d <= c
        assert len(set(delays)) > 3  # jittered
        assert spool.pending_lines() == 1


def test_retry_after_is_honoured_and_pressure_rises_then_recovers(tmp_path, server):
    now = [0.0]
    with Spool(tmp_path) as spool:
        spool.append([_line(i) for i in range(3)])
        server.script = [(429, {"Retry-After": "7"}), (503, {"Retry-After": "2"})]
        up = Uploader(server.url, spool, recover_after=30, monotonic=lambda: now[0])
        out = up.send_once()
        assert out.status == "pushback" and 7 <= out.delay <= 8
        assert up.pressure == 2
        assert up.send_once().status == "pushback" and up.pressure == 4
        assert up.send_once().status == "sent"
        assert up.pressure == 4  # too soon to recover
        now[0] = 31
        spool.append([_line(3)])
        up.send_once()
        assert up.pressure == 2
        now[0] = 62
        spool.append([_line(4)])
        up.send_once()
        assert up.pressure == 1
        assert len(server.lines) == 5


def test_a_413_shrinks_the_batch_and_a_lone_oversized_line_is_skipped(tmp_path, server):
    with Spool(tmp_path) as spool:
        spool.append([_line(i) for i in range(40)])
        server.script = [(413, {})]
        up = Uploader(server.url, spool)
        assert up.send_once().status == "retry"
        assert up.flush(timeout=10)
        assert len(server.lines) == 40
        spool.append([_line(40)])
        server.script = [(413, {})]
        assert up.send_once().status == "sent" and up.stats.skipped == 1


def test_token_is_sent_as_bearer(tmp_path, server):
    with Spool(tmp_path) as spool:
        spool.append([_line(0)])
        Uploader(server.url, spool, token="sekrit").flush(timeout=5)
        assert server.requests[0]["Authorization"] == "Bearer sekrit"


def test_urls_and_retry_after_parsing():
    assert ingest_url("http://h:81") == ("http", "h", 81, "/v1/ingest")
    assert ingest_url("https://h/base/") == ("https", "h", 443, "/base/v1/ingest")
    assert ingest_url("127.0.0.1:9/v1/ingest") == ("http", "127.0.0.1", 9, "/v1/ingest")
    with pytest.raises(ValueError):
        ingest_url("ftp://x")
    assert parse_retry_after("5") == 5 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 9 <= parse_retry_after("Tue, 24 Nov 2026 07:00:10 GMT", now=1795503600.0) <= 10


def test_a_batch_the_collector_refuses_is_dropped_counted_and_logged(tmp_path, server, caplog):
    with Spool(tmp_path) as spool:
        spool.append([_line(i) for i in range(5)])
        server.script = [(400, {})]
        up = Uploader(server.url, spool, batch_bytes=200)  # two lines a batch
        with caplog.at_level("WARNING", logger="appvitals.agent"):
            assert up.flush(timeout=10)  # not retried forever
        assert up.stats.rejected == 2 and spool.pending_bytes() == 0
        assert len(server.lines) == 3 and len(server.requests) == 3
        assert "refused a batch of 2 line(s)" in caplog.text


def test_lines_the_real_collector_cannot_store_are_dropped_and_the_rest_stored(tmp_path, caplog):
    from support.collector import running_app

    from appvitals.fleet.collector.app import create_app

    bad = json.dumps({"kind": "sample", "session_id": "s1", "ts": 1764000000000, "seq": 2**64 - 1,
                      "cpu": 1.0}).encode()
    with running_app(create_app(":memory:")) as url, Spool(tmp_path) as spool:
        spool.append([_line(0), bad, _line(2)])
        up = Uploader(url, spool)
        with caplog.at_level("WARNING", logger="appvitals.agent"):
            assert up.flush(timeout=20)
        assert up.stats.accepted == 2 and up.stats.rejected == 1 and spool.pending_bytes() == 0
        assert "line 2 of the batch" in caplog.text
