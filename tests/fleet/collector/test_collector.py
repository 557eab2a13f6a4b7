"""The collector over real HTTP (uvicorn on 127.0.0.1) into a real DuckDB file: SPEC section 3."""

from __future__ import annotations

import gzip
import json
import threading
import time

import httpx
import msgspec
import pytest
import zstandard
from support.collector import running_app

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.collector.runner import check_bind
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.protocol import MAX_LINE_BYTES, decode_line

T0 = 1764000000000


def line(**fields) -> bytes:
    return msgspec.json.encode(fields)


def session(sid="s1", seq=0, **attrs) -> bytes:
    return line(kind="session", session_id=sid, client_id="c1", ts=T0, seq=seq, attrs=attrs or {"app_version": "7.0.0"})


def sample(sid="s1", seq=None, cpu=10.0, ts=T0, **attrs) -> bytes:
    fields = dict(kind="sample", session_id=sid, ts=ts, cpu=cpu, attrs=attrs)
    if seq is not None:
        fields["seq"] = seq
    return line(**fields)


def body(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def post(url, data, headers=None, **kw):
    return httpx.post(url + "/v1/ingest", content=data, headers={"Content-Type": "application/x-ndjson", **(headers or {})},
                      timeout=30, **kw)


def count(warehouse, table="samples") -> int:
    return warehouse.query(f"SELECT count(*) FROM {table}")[0][0]


def test_good_and_bad_lines_in_one_request(url, warehouse):
    data = body(
        session("s1"),
        sample("s1", 1, cpu=83.5, stage="login"),
        b'{"kind":"sample","session_id":"s1","ts":1764000001000,"seq":2,"cpu":"x"}',
        b"",  # blank lines are ignored
        b"not json",
        line(kind="event", session_id="s1", ts="2025-11-24T16:00:01.5Z", seq=3, name="file_received",
             attrs={"file_name_length": 57, "ok": True}, unknown_field=[1, 2]),
        line(kind="end", session_id="s1", ts=T0 + 5000, seq=4, reason="quit"),
        line(kind="teleport", session_id="s1", ts=T0),
    )
    r = post(url, data)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["accepted"] == 4 and got["rejected"] == 3 and got["duplicates"] == 0
    assert [e["line"] for e in got["errors"]] == [3, 5, 8]
    assert got["errors"][0]["error"].startswith("cpu:")
    assert "kind" in got["errors"][2]["error"]
    assert warehouse.query("SELECT session_id, client_id, attr_keys, attr_values FROM sessions") == [
        ("s1", "c1", ["app_version"], ["7.0.0"])
    ]
    assert warehouse.query("SELECT cpu, attrs FROM samples") == [(83.5, '{"stage":"login"}')]
    # RFC 3339 ts stored as epoch ms; numbers and booleans as JSON text
    assert warehouse.query("SELECT ts, name, attr_values FROM events") == [
        (1764000001500, "file_received", ["57", "true"])
    ]
    assert warehouse.query("SELECT seq, reason FROM ends") == [(4, "quit")]


def test_at_most_100_errors_listed_and_all_counted(url):
    r = post(url, body(*[b"{bad" for _ in range(150)], sample()))
    got = r.json()
    assert r.status_code == 200 and got["rejected"] == 150 and got["accepted"] == 1
    assert len(got["errors"]) == 100 and got["errors"][-1]["line"] == 100


def test_duplicates_counted_not_stored(url, warehouse):
    first = post(url, body(session("s1", 0), sample("s1", 1), sample("s1", 2))).json()
    again = post(url, body(sample("s1", 2), sample("s1", 3), sample("s1", 3), sample("s1"))).json()
    assert (first["accepted"], first["duplicates"]) == (3, 0)
    # seq 2 was stored before, the second seq 3 repeats the first; a line without seq is never a duplicate
    assert (again["accepted"], again["duplicates"]) == (2, 2)
    assert count(warehouse) == 4


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_and_streamed_bodies(url, warehouse, encoding):
    lines = [sample(f"s{i % 7}", i, cpu=float(i % 100)) for i in range(20_000)]
    raw = body(*lines)
    packed = gzip.compress(raw) if encoding == "gzip" else zstandard.ZstdCompressor().compress(raw)

    def chunks():  # chunked transfer, split at odd places
        for start in range(0, len(packed), 7919):
            yield packed[start:start + 7919]

    r = post(url, chunks(), headers={"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 20_000
    assert count(warehouse) == 20_000


def test_plain_body_split_mid_line(url, warehouse):
    raw = body(*[sample("s", i) for i in range(500)])
    r = post(url, (raw[i:i + 97] for i in range(0, len(raw), 97)))
    assert r.json()["accepted"] == 500 and count(warehouse) == 500


def test_unknown_encoding_is_415(url):
    assert post(url, b"x", headers={"Content-Encoding": "br"}).status_code == 415


def test_broken_gzip_is_400(url):
    assert post(url, b"definitely not gzip", headers={"Content-Encoding": "gzip"}).status_code == 400


def test_line_over_limit_is_413_and_earlier_lines_are_kept(url, warehouse):
    long_line = sample("s1", 99, note="x" * 10) .replace(b'"note":"xxxxxxxxxx"', b'"note":"' + b"y" * (MAX_LINE_BYTES + 10) + b'"')
    r = post(url, body(sample("s1", 1), sample("s1", 2), long_line, sample("s1", 3)))
    assert r.status_code == 413
    assert "line 3" in r.json()["error"]
    assert count(warehouse) == 2


def test_attr_limits_reject_the_line(url):
    too_many = sample("s1", 1, **{f"k{i}": i for i in range(65)})
    too_long = sample("s1", 2, stage="x" * 2000)
    long_sid = sample("s" * 200, 3)
    got = post(url, body(too_many, too_long, long_sid, sample("s1", 4))).json()
    assert got["accepted"] == 1 and got["rejected"] == 3
    assert "64" in got["errors"][0]["error"]


def test_slow_stream_commits_while_open(warehouse):
    """A body streamed for as long as the client likes: quiet spells commit what came so far."""
    app = create_app(warehouse, flush_interval=0.2)
    seen_during = []

    def trickle():
        for i in range(3):
            yield sample("slow", i)+ b"\n"
            time.sleep(0.6)
            seen_during.append(count(warehouse))

    with running_app(app) as base:
        r = post(base, trickle())
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert seen_during[0] >= 1 and seen_during[1] >= 2  # stored before the request ended


def test_tokens(warehouse):
    app = create_app(warehouse, tokens=["in-1", "in-2"], read_tokens=["rd"])
    with running_app(app) as base:
        assert post(base, body(sample())).status_code == 401
        assert post(base, body(sample()), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(base, body(sample()), headers={"Authorization": "Bearer rd"}).status_code == 401
        assert post(base, body(sample()), headers={"Authorization": "Bearer in-2"}).status_code == 200
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer in-1"}).status_code == 401
        assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer rd"}).status_code == 200
        assert httpx.get(base + "/healthz").status_code == 200


def test_bind_beyond_loopback_needs_tokens():
    check_bind("127.0.0.1", (), (), False)
    check_bind("::1", (), (), False)
    check_bind("0.0.0.0", ("a",), ("b",), False)
    check_bind("0.0.0.0", (), (), True)
    with pytest.raises(ValueError, match="--insecure"):
        check_bind("0.0.0.0", (), (), False)
    with pytest.raises(ValueError):
        check_bind("10.1.2.3", ("a",), (), False)


def test_metrics_and_healthz(url):
    post(url, body(sample("m", 1), sample("m", 1), b"{"))
    text = httpx.get(url + "/metrics").text
    assert 'vitals_collector_lines_total{result="accepted"} 1.0' in text
    assert 'vitals_collector_lines_total{result="duplicate"} 1.0' in text
    assert 'vitals_collector_lines_total{result="rejected"} 1.0' in text
    assert "vitals_collector_queue_depth" in text and "vitals_collector_write_batch_count" in text
    assert "vitals_collector_log_pending_lines" in text
    assert "vitals_collector_request_duration_count" in text
    health = httpx.get(url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


class GatedWarehouse(DuckDBWarehouse):
    """A real DuckDB warehouse whose writes wait for a gate: a writer that has fallen behind."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = threading.Event()

    def insert_many(self, batches):
        self.gate.wait(30)
        return super().insert_many(batches)


def test_backpressure_then_503_with_retry_after(tmp_path):
    wh = GatedWarehouse(tmp_path / "slow.duckdb")
    app = create_app(wh, max_queue=2, chunk_lines=10, max_wait=0.5, retry_after=3)
    try:
        with running_app(app) as base:
            try:
                # 100 lines = 10 chunks: one goes to the stuck writer, two fill the queue, the 4th waits, then gives up
                r = post(base, body(*[sample("bp", i) for i in range(100)]))
                assert r.status_code == 503 and r.headers["Retry-After"] == "3"
                assert httpx.get(base + "/healthz").status_code == 503
                fast = post(base, body(sample("bp2", 1)))  # queue full: refused at once, before reading
                assert fast.status_code == 503 and fast.headers["Retry-After"] == "3"
                text = httpx.get(base + "/metrics").text
                assert metric(text, "vitals_collector_backpressure_waits_total") >= 1  # it read more slowly first
                assert metric(text, "vitals_collector_overloaded_total") == 2
                assert metric(text, "vitals_collector_queue_depth") == 2
            finally:
                wh.gate.set()  # the writer catches up
            deadline = time.monotonic() + 10
            while httpx.get(base + "/healthz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            retry = post(base, body(*[sample("bp", i) for i in range(100)]))
            assert retry.status_code == 200
            # the chunks queued before the 503 were committed: on retry they are duplicates, nothing is lost
            got = retry.json()
            assert got["duplicates"] >= 20 and got["accepted"] + got["duplicates"] == 100
            assert count(wh) == 100
    finally:
        wh.gate.set()
        wh.close()


def metric(text: str, name: str) -> float:
    for row in text.splitlines():
        if row.startswith(name + " "):
            return float(row.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_concurrent_requests_all_land(url, warehouse):
    def send(k):
        r = post(url, body(*[sample(f"c{k}", i) for i in range(3000)]))
        assert r.status_code == 200 and r.json()["accepted"] == 3000

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(warehouse) == 12_000


def test_ingest_answer_shape(url):
    got = post(url, body(sample())).json()
    assert set(got) == {"accepted", "duplicates", "rejected", "errors"}
    assert json.loads(json.dumps(got)) == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}


def test_retention_runs_at_start(warehouse):
    now = int(time.time() * 1000)
    warehouse.insert([
        decode_line(sample("old", 1, ts=now - 40 * 86_400_000)),
        decode_line(sample("new", 1, ts=now)),
    ])
    with running_app(create_app(warehouse, retention_days=30)) as base:
        deadline = time.monotonic() + 10
        while count(warehouse) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(base + "/healthz").status_code == 200
    assert warehouse.query("SELECT session_id FROM samples") == [("new",)]
