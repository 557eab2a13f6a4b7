"""GET /v1/report, GET /v1/sessions/{id} and `vitals report`, against a real collector (uvicorn) on DuckDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from support.collector import SRC, running_app

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

MINUTES = 90


@pytest.fixture(scope="module")
def lines():
    start_ms = int((time.time() - MINUTES * 60) * 1000)
    return list(generate_lines(None, clients=80, minutes=MINUTES, seed=4, start_ms=start_ms))


@pytest.fixture(scope="module")
def collector(lines):
    wh = DuckDBWarehouse(":memory:")
    wh.insert(lines)
    with running_app(create_app(wh)) as url:
        yield url
    wh.close()


def vitals(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "appvitals", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_report_json_shape(collector):
    r = httpx.get(collector + "/v1/report", params={"since": "12h", "metric": "cpu", "threshold": 30}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert {"window", "sessions", "high_sessions", "explanations", "tree"} <= set(body)
    assert {"since", "until", "since_ms", "until_ms"} <= set(body["window"])
    assert body["sessions"] > 50 and 0 < body["high_sessions"] <= body["sessions"]
    ex = body["explanations"]
    assert len(ex) >= 3
    for e in ex:
        assert {"attrs", "sessions", "high_share", "risk_ratio"} <= set(e)
        assert 0 <= e["high_share"] <= 1 and e["sessions"] <= body["sessions"]
    ratios = [e["risk_ratio"] for e in ex]
    assert ratios == sorted(ratios, reverse=True), "explanations must come best first"
    named = [e["attrs"] for e in ex]
    # attrs are named as sent; numbers come back as buckets such as ">=40"
    assert {"app_version": "7.0.0", "stage": "login"} in named
    long_names = [a for a in named if "file_name_length" in a]
    assert long_names and long_names[0]["file_name_length"].startswith(">=")
    assert body["tree"]["sessions"] == body["sessions"] and body["tree"]["children"]
    assert body["timeline"]["series"] and body["heatmap"]["rows"] and body["worst_sessions"]


def test_report_window_and_min_support(collector):
    until = httpx.get(collector + "/v1/report", params={"since": "3h", "until": "2h"}, timeout=60).json()
    assert until["sessions"] == 0 and until["explanations"] == []  # the fleet started 90 minutes ago
    strict = httpx.get(collector + "/v1/report", params={"since": "12h", "min_support": 0.5}, timeout=60).json()
    loose = httpx.get(collector + "/v1/report", params={"since": "12h"}, timeout=60).json()
    assert len(strict["explanations"]) < len(loose["explanations"])
    assert all(e["high_sessions"] >= 0.5 * strict["high_sessions"] for e in strict["explanations"])


@pytest.mark.parametrize("params,needle", [
    ({"threshold": "lots"}, "threshold"),
    ({"since": "the other day"}, "cannot read"),
    ({"since": "1h", "until": "2h"}, "before"),
    ({"min_support": "-1"}, "min_support"),
    ({"metric": "cpu; DROP TABLE samples"}, "metric"),
])
def test_report_bad_parameters_are_400(collector, params, needle):
    r = httpx.get(collector + "/v1/report", params=params, timeout=30)
    assert r.status_code == 400
    assert needle in r.json()["error"]


def test_session_detail_in_time_order(collector, lines):
    sid = lines[0].session_id
    r = httpx.get(f"{collector}/v1/sessions/{sid}", timeout=30)
    assert r.status_code == 200
    s = r.json()
    assert s["session_id"] == sid and s["attrs"]["app_version"]
    mine = [ln for ln in lines if ln.session_id == sid]
    assert len(s["samples"]) == sum(1 for ln in mine if type(ln).__name__ == "SampleLine")
    assert len(s["events"]) == sum(1 for ln in mine if type(ln).__name__ == "EventLine")
    ts = [p["ts"] for p in s["samples"]]
    assert ts == sorted(ts) and all("stage" in p["attrs"] for p in s["samples"])
    assert [e["ts"] for e in s["events"]] == sorted(e["ts"] for e in s["events"])
    assert httpx.get(f"{collector}/v1/sessions/nope", timeout=30).status_code == 404


def test_read_token_guards_report_and_sessions(lines):
    wh = DuckDBWarehouse(":memory:")
    wh.insert(lines[:2000])
    try:
        with running_app(create_app(wh, tokens=["w"], read_tokens=["r"])) as url:
            assert httpx.get(url + "/v1/report", timeout=30).status_code == 401
            assert httpx.get(url + "/v1/report", headers={"Authorization": "Bearer w"}, timeout=30).status_code == 401
            assert httpx.get(url + "/v1/report", headers={"Authorization": "Bearer r"}, timeout=30).status_code == 200
            assert httpx.get(url + "/v1/sessions/x", timeout=30).status_code == 401
            # the page itself holds no data; its API calls carry the token (?token=...)
            assert httpx.get(url + "/", timeout=30).status_code == 200
            cli = vitals("report", "--url", url, "--token", "r", "--json")
            assert cli.returncode == 0, cli.stderr
            denied = vitals("report", "--url", url)
            assert denied.returncode == 1 and "401" in denied.stderr and "Traceback" not in denied.stderr
    finally:
        wh.close()


def test_cli_report_url_json_equals_http(collector):
    cli = vitals("report", "--url", collector, "--since", "12h", "--json")
    assert cli.returncode == 0, cli.stderr
    body = json.loads(cli.stdout)  # only JSON on stdout
    http = httpx.get(collector + "/v1/report", params={"since": "12h"}, timeout=60).json()
    assert [e["attrs"] for e in body["explanations"]] == [e["attrs"] for e in http["explanations"]]


def test_cli_report_text(collector):
    cli = vitals("report", "--url", collector, "--since", "12h", "--threshold", "30")
    assert cli.returncode == 0, cli.stderr
    out = cli.stdout
    assert "sessions in the last 12h" in out and "What makes it high" in out
    assert "app_version = 7.0.0" in out and "Dashboard:" in out


def test_cli_report_db_file(tmp_path, lines):
    path = tmp_path / "fleet.duckdb"
    wh = DuckDBWarehouse(str(path))
    wh.insert(lines)
    wh.close()
    cli = vitals("report", "--db", str(path), "--since", "12h", "--json", "--compare", "6.4.0,7.0.0")
    assert cli.returncode == 0, cli.stderr
    body = json.loads(cli.stdout)
    assert body["sessions"] > 50 and body["explanations"]
    assert body["compare"]["a"]["version"] == "6.4.0" and body["compare"]["b"]["version"] == "7.0.0"


@pytest.mark.parametrize("args,code,needle", [
    (["--threshold", "-1"], 2, "threshold"),
    (["--db", "a.duckdb", "--url", "http://x"], 2, "one of"),
    (["--compare", "7.0.0"], 2, "two versions"),
    (["--since", "whenever", "--db", "__DB__"], 2, "cannot read"),
    (["--db", "/nonexistent/fleet.duckdb"], 1, "no such warehouse file"),
    (["--url", "http://127.0.0.1:9"], 1, "cannot reach the collector"),
])
def test_cli_report_errors_are_one_line(tmp_path, args, code, needle):
    db = tmp_path / "empty.duckdb"
    DuckDBWarehouse(str(db)).close()
    cli = vitals("report", *[str(db) if a == "__DB__" else a for a in args])
    assert cli.returncode == code, (cli.stdout, cli.stderr)
    assert needle in cli.stderr and len(cli.stderr.strip().splitlines()) == 1 and not cli.stdout


@pytest.mark.parametrize("params", [
    {"threshold": "inf"}, {"threshold": "1e309"}, {"threshold": "nan"}, {"threshold": "-inf"},
    {"since": "99999999999d"}, {"since": "100000w"}, {"min_support": "inf"}, {"min_risk_ratio": "0.5"},
    {"max_order": "9"}, {"fdr": "2"}, {"where": "no_such_attr=1"}, {"where": "file_name_length>=inf"},
    {"where": "=x"},
])
def test_bad_report_parameters_are_400(collector, params):
    r = httpx.get(collector + "/v1/report", params=params, timeout=60)
    assert r.status_code == 400, (params, r.status_code, r.text[:300])
    assert r.json()["error"]


def test_numbers_near_the_largest_double_do_not_break_the_report():
    """A client sending 1.79e308 (and a sample's value summing past it) must not turn the
    report into a 500 for everyone."""
    from appvitals.fleet.wire.protocol import EventLine, SampleLine, SessionLine

    now_ms = int(time.time() * 1000)
    lines = []
    for s in range(40):
        sid = f"big{s}"
        lines.append(SessionLine(sid, now_ms - 600_000, 0, client_id=f"c{s}", attrs={"app_version": "1.0"}))
        lines.append(EventLine(sid, now_ms - 590_000, 1, name="e", attrs={"size": 1.79e308 if s % 2 else -1.79e308}))
        for i in range(6):
            lines.append(SampleLine(sid, now_ms - 500_000 + i * 1000, 2 + i, cpu=50.0 if s % 3 else 1.0,
                                    attrs={"stage": "work", "n": 1.79e308 if i % 2 else float(s * 1e306)}))
    wh = DuckDBWarehouse(":memory:")
    wh.insert(lines)
    with running_app(create_app(wh)) as url:
        r = httpx.get(url + "/v1/report", params={"since": "1h"}, timeout=60)
        assert r.status_code == 200, r.text[:500]
        assert r.json()["sessions"] == 40
    wh.close()


def test_report_drill_path(collector):
    whole = httpx.get(collector + "/v1/report", params={"since": "12h"}, timeout=60).json()
    r = httpx.get(collector + "/v1/report", params=[("since", "12h"), ("where", "app_version=7.0.0"),
                                                   ("where", "stage=login")], timeout=60)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["where"] == {"app_version": "7.0.0", "stage": "login"}
    steps = body["path"]
    assert [s["label"] for s in steps] == ["all sessions", "app_version = 7.0.0", "stage = login"]
    assert steps[0]["sessions"] == whole["sessions"] and steps[0]["high_sessions"] == whole["high_sessions"]
    assert steps[-1]["sessions"] == body["sessions"] <= steps[1]["sessions"] <= steps[0]["sessions"]
    assert body["high_share"] > 0.8  # 7.0.0 at login is the planted problem
    assert body["tree"]["label"] == "app_version = 7.0.0, stage = login"
    assert all(s["clients"] <= s["sessions"] for s in steps) and body["high_clients"] > 0


def test_cli_report_drill_path(collector):
    proc = vitals("report", "--url", collector, "--since", "12h", "--where", "app_version=7.0.0",
                  "--where", "stage=login", "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["where"] == {"app_version": "7.0.0", "stage": "login"} and len(body["path"]) == 3
    proc = vitals("report", "--url", collector, "--since", "12h", "--where", "app_version=7.0.0")
    assert proc.returncode == 0 and "all sessions" in proc.stdout and "app_version = 7.0.0" in proc.stdout
    bad = vitals("report", "--url", collector, "--threshold", "inf")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bad = vitals("report", "--url", collector, "--where", "nonsense")
    assert bad.returncode == 2 and "where" in bad.stderr, bad.stderr


def test_a_report_over_the_memory_limit_is_a_503_and_harms_nothing(tmp_path):
    """A wide fleet in a collector with little memory: the report may not fit, but it answers
    503 with what to ask instead (never a 500), and later reports and ingest still work."""
    import msgspec
    from support.fleets import wide_fleet_lines

    wh = DuckDBWarehouse(str(tmp_path / "small.duckdb"), memory_limit="24MB")
    wh.insert(wide_fleet_lines(3000, 4))
    try:
        with running_app(create_app(wh)) as url:
            r = httpx.get(url + "/v1/report", params={"since": "6h"}, timeout=120)
            assert r.status_code in (200, 503), r.text[:300]
            if r.status_code == 503:
                assert "max_order" in r.json()["error"]
            assert httpx.get(url + "/v1/report", params={"since": "1m"}, timeout=60).status_code == 200
            line = msgspec.json.encode({"kind": "session", "session_id": "after", "client_id": "c", "ts": 1, "seq": 0})
            assert httpx.post(url + "/v1/ingest", content=line + b"\n", timeout=60).json()["accepted"] == 1
    finally:
        wh.close()
