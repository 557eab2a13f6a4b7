"""Hostile clients and bad input at a real collector (uvicorn on 127.0.0.1, real DuckDB):
one bad line costs no other line, bodies cost bounded work, slow headers are cut off,
/healthz tells a failing store, and only who may write writes."""

from __future__ import annotations

import gzip
import json
import resource
import socket
import threading
import time

import httpx
import msgspec
import pytest
from support.collector import running_app, spawn_serve

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.collector.runner import header_guard
from appvitals.httpauth import TokenError

T0 = 1764000000000
HUGE = 2**64 - 1  # decodes as an integer, fits no 64-bit column
DEEP = b"[" * 30_000 + b"]" * 30_000


def line(**fields) -> bytes:
    return msgspec.json.encode(fields)


def sample(sid: str, seq: int, **extra) -> bytes:
    return line(kind="sample", session_id=sid, ts=T0 + seq, seq=seq, cpu=5.0, **extra)


def post(url, data, headers=None, **kw):
    return httpx.post(url + "/v1/ingest", content=data,
                      headers={"Content-Type": "application/x-ndjson", **(headers or {})}, timeout=60, **kw)


def stored(wh, sid_prefix: str = "") -> set[tuple[str, int]]:
    rows = wh.query("SELECT session_id, seq FROM samples UNION ALL SELECT session_id, seq FROM sessions")
    return {(s, q) for s, q in rows if s.startswith(sid_prefix)}


# ---- one bad line never costs other lines ---------------------------------------------------


def test_values_the_store_cannot_hold_are_rejected_by_line(url, warehouse):
    data = b"\n".join([
        sample("v", 1),
        line(kind="sample", session_id="v", ts=T0, seq=HUGE, cpu=1.0),  # line 2
        sample("v", 3),
        b'{"kind":"sample","session_id":"v","ts":1764000000004,"seq":4,"cpu":1,"x":' + DEEP + b"}",  # line 4
        line(kind="sample", session_id="v", ts=10**30, seq=5, cpu=1.0),  # line 5
        sample("v", 6),
    ]) + b"\n"
    r = post(url, data)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["accepted"] == 3 and answer["rejected"] == 3
    assert [e["line"] for e in answer["errors"]] == [2, 4, 5]
    assert stored(warehouse, "v") == {("v", 1), ("v", 3), ("v", 6)}


def test_a_bad_line_does_not_spread_to_other_clients_in_the_same_write(warehouse):
    # in-process decoding: the bad value reaches the writer, whose group holds other requests too
    app = create_app(warehouse, decode_workers=0, chunk_lines=50)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        lines = [sample(f"c{n}", i) for i in range(200)]
        if n == 3:
            lines[120] = line(kind="sample", session_id="c3", ts=T0, seq=HUGE, cpu=1.0)
        r = post(base, b"\n".join(lines) + b"\n")
        with lock:
            answers.append(r)

    with running_app(app) as base:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(r.status_code for r in answers) == [200] * 8, [r.text for r in answers if r.status_code != 200]
    assert sum(r.json()["accepted"] for r in answers) == 8 * 200 - 1
    bad = [r.json() for r in answers if r.json()["rejected"]]
    assert bad == [{"accepted": 199, "duplicates": 0, "rejected": 1, "errors": [bad[0]["errors"][0]]}]
    assert bad[0]["errors"][0]["line"] == 121
    assert len(stored(warehouse, "c")) == 8 * 200 - 1


# ---- bounded work per request ---------------------------------------------------------------


def test_a_small_gzip_body_of_blank_lines_is_413(url, warehouse):
    blank = gzip.compress(b"\n" * (20 << 20), 9)
    assert len(blank) < 40_000
    r = post(url, blank, {"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "fold" in r.json()["error"]
    assert post(url, sample("after", 1) + b"\n").json()["accepted"] == 1  # and the collector is fine


def test_blank_lines_are_skipped_before_any_decoding(monkeypatch):
    from appvitals.fleet.collector import decode

    calls = []
    real = decode.decode_line
    monkeypatch.setattr(decode, "decode_line", lambda raw: calls.append(raw) or real(raw))
    lines: list = []
    errors: list = []
    assert decode.decode_lines([b"", b"  ", b"\t\r", sample("b", 1), b"", b"bad"], 1, lines, errors) == 1
    assert len(lines) == 1 and errors == [{"line": 6, "error": errors[0]["error"]}]
    assert calls == [sample("b", 1), b"bad"]  # the blank ones never reached the decoder


def metric(base: str, name: str) -> float:
    total = 0.0
    for row in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if row.startswith(name):
            total += float(row.rsplit(" ", 1)[1])
    return total


def test_work_stops_when_the_client_hangs_up(warehouse):
    # 8 MiB of bad lines from 8 KB of gzip (ratio bound lifted): ~4 M lines of work
    junk = gzip.compress(b"x\n" * (4 << 20), 9)
    app = create_app(warehouse, decode_workers=0, max_body_ratio=1e9)
    with running_app(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(junk) + junk)
            time.sleep(0.3)
        deadline = time.monotonic() + 60
        while metric(base, 'vitals_collector_requests_total{status="400"}') < 1:
            assert time.monotonic() < deadline, "the request was never given up"
            assert metric(base, 'vitals_collector_requests_total{status="200"}') == 0, "worked to the end"
            time.sleep(0.1)
        assert metric(base, 'vitals_collector_lines_total{result="rejected"}') < 4 << 20


def test_a_gzip_body_cut_short_is_400_and_stores_nothing(url, warehouse):
    raw = b"\n".join(sample("cut", i) for i in range(3000)) + b"\n"
    packed = gzip.compress(raw)
    for cut in (packed[:len(packed) // 2], packed[:-8]):
        r = post(url, cut, {"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "cut short" in r.json()["error"]
        assert r.json()["accepted"] == 0
    assert stored(warehouse, "cut") == set()
    assert post(url, packed, {"Content-Encoding": "gzip"}).json()["accepted"] == 3000


def test_slow_headers_are_cut_off(warehouse):
    with running_app(create_app(warehouse), http=header_guard(0.5)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            started = time.monotonic()
            closed = False
            for byte in b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n":
                try:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
                except OSError:
                    closed = True
                    break
                if time.monotonic() - started > 5:
                    break
            if not closed:
                reply = sock.recv(1000)
                assert reply == b"" or reply.startswith(b"HTTP/1.1 408")
        # a request sent at a normal pace on a kept-alive connection is served
        with httpx.Client(base_url=base) as client:
            for _ in range(2):
                assert client.get("/healthz").status_code == 200


# ---- /healthz tells a failing store -----------------------------------------------------------


@pytest.mark.parametrize("log", ["--ingest-log", "--no-ingest-log"])
def test_healthz_says_when_writes_fail(tmp_path, log):
    # a real write failure: the collector may not grow any file past a few KB (RLIMIT_FSIZE)
    with spawn_serve("--db", str(tmp_path / "f.duckdb"), "--decode-workers", "0", log, tmp_path=tmp_path) as proc:
        assert post(proc.url, sample("ok", 0) + b"\n").json()["accepted"] == 1
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        big = b"\n".join(sample("full", i, attrs={"stage": "x" * 200}) for i in range(3000)) + b"\n"
        r = post(proc.url, big)
        assert r.status_code == 503 and r.headers["retry-after"]
        health = httpx.get(proc.url + "/healthz")
        assert health.status_code == 503 and "cannot store data" in health.json()["error"]
        assert "cannot store" in r.json()["error"] and r.json()["accepted"] == 0
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert httpx.get(proc.url + "/healthz").status_code == 503  # until a write succeeds
        assert post(proc.url, big).json()["accepted"] == 3000
        assert httpx.get(proc.url + "/healthz").status_code == 200


# ---- who may write ------------------------------------------------------------------------------


def test_empty_tokens_are_refused(warehouse):
    for bad in ([""], ["  "], ["ok", ""]):
        with pytest.raises(TokenError):
            create_app(warehouse, tokens=bad)
        with pytest.raises(TokenError):
            create_app(warehouse, read_tokens=bad)


def test_cross_site_browser_writes_are_refused(warehouse):
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
    with running_app(create_app(warehouse)) as base:
        r = post(base, sample("web", 1) + b"\n", evil)
        assert r.status_code == 403 and "allow its origin" in r.json()["error"]
        r = post(base, sample("web", 2) + b"\n", {"Origin": "https://evil.example"})  # no Sec-Fetch-Site
        assert r.status_code == 403
        r = post(base, sample("web", 3) + b"\n", {"Content-Type": "text/plain"})  # a simple type
        assert r.status_code == 415
        r = post(base, sample("web", 4) + b"\n", {"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
        assert post(base, sample("web", 5) + b"\n").status_code == 200  # a program: no Origin
        same = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        assert post(base, sample("web", 6) + b"\n", same).status_code == 200  # the dashboard's own page
    assert stored(warehouse, "web") == {("web", 5), ("web", 6)}
    with running_app(create_app(warehouse, allow_origins=["https://app.example"])) as base:
        ok = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
        assert post(base, sample("web", 7) + b"\n", ok).status_code == 200
        assert post(base, sample("web", 8) + b"\n", evil).status_code == 403


def test_serve_refuses_empty_tokens_on_a_public_address(tmp_path):
    from test_cli_serve import run_cli

    r = run_cli("serve", "--host", "0.0.0.0", "--db", ":memory:", "--token", "", "--read-token", "")
    assert r.returncode == 2 and "empty token" in r.stderr and "Traceback" not in r.stderr


def test_serve_reads_tokens_from_the_environment_and_files(tmp_path, monkeypatch):
    (tmp_path / "read.token").write_text("# the read token\nr-file\n")
    monkeypatch.setenv("VITALS_TOKEN", "t-env")
    with spawn_serve("--db", str(tmp_path / "t.duckdb"), "--read-token-file", str(tmp_path / "read.token"),
                     "--host", "0.0.0.0", tmp_path=tmp_path) as proc:
        data = sample("tok", 1) + b"\n"
        assert post(proc.url, data).status_code == 401
        assert post(proc.url, data, {"Authorization": "Bearer t-env"}).json()["accepted"] == 1
        assert httpx.get(proc.url + "/metrics").status_code == 401
        assert httpx.get(proc.url + "/metrics", headers={"Authorization": "Bearer r-file"}).status_code == 200
        assert "t-env" not in open(f"/proc/{proc.pid}/cmdline", "rb").read().decode(errors="replace")
        assert "collector listening on http://0.0.0.0:" in proc.log() and "(token required)" in proc.log()


def test_the_answer_to_a_refused_request_has_the_one_error_shape(warehouse):
    with running_app(create_app(warehouse, tokens=["t"])) as base:
        for r in (post(base, b"x\n"), post(base, b"x\n", {"Authorization": "Bearer t", "Content-Encoding": "br"})):
            assert set(json.loads(r.text)) == {"error"}


def test_line_numbers_count_the_blank_lines_passed_over(url, warehouse):
    data = sample("num", 1) + b"\n" + b"\n" * 100_000 + b"not json\n" + b" \n" * 50_000 + sample("num", 2) + b"\nbad\n"
    for headers in ({}, {"Content-Encoding": "gzip"}):
        body = gzip.compress(data) if headers else data
        answer = post(url, body, headers).json()
        assert [e["line"] for e in answer["errors"]] == [100_002, 150_004], answer
        assert answer["rejected"] == 2
    assert stored(warehouse, "num") == {("num", 1), ("num", 2)}
