"""run_simulation drives the real Agent; what arrives equals the pure generator's lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.fault_collector import FaultCollector

from appvitals.fleet.sim.simulate import generate_lines, run_simulation
from appvitals.fleet.wire.protocol import encode_line

START = 1_764_000_000_000


@pytest.fixture
def server():
    s = FaultCollector()
    yield s
    s.close()


def test_the_agent_driven_fleet_sends_exactly_the_generated_lines(tmp_path, server):
    stats = run_simulation(server.url, clients=8, minutes=45, seed=3, start_ms=START, progress=False,
                           spool_dir=tmp_path, batch_bytes=16 * 1024)
    expected = sorted(encode_line(x) for x in generate_lines(None, 8, 45, 3, start_ms=START))
    got = sorted(encode_line(x) for x in server.lines.values())
    assert got == expected
    assert stats.lines == len(expected) == stats.accepted
    assert stats.duplicates == 0 and stats.rejected == 0
    assert stats.requests > 8  # batched, several posts per client


def test_pushback_and_errors_mid_run_still_deliver_every_line_once(tmp_path, server):
    server.script = [(503, {"Retry-After": "0"})] * 4 + [(500, {})] * 3 + [(429, {"Retry-After": "0"})] * 2
    stats = run_simulation(server.url, clients=4, minutes=30, seed=5, start_ms=START, progress=False,
                           spool_dir=tmp_path, batch_bytes=4096)
    assert server.script == []  # every scripted failure was met
    expected = sorted(encode_line(x) for x in generate_lines(None, 4, 30, 5, start_ms=START))
    assert sorted(encode_line(x) for x in server.lines.values()) == expected
    assert stats.accepted == len(expected) and server.duplicates == 0


def test_a_second_run_with_the_same_seed_is_all_duplicates(server):
    run_simulation(server.url, clients=3, minutes=20, seed=9, start_ms=START, progress=False)
    stats = run_simulation(server.url, clients=3, minutes=20, seed=9, start_ms=START, progress=False)
    assert stats.accepted == 0 and stats.duplicates == stats.lines > 0


def test_an_unreachable_collector_is_a_clear_error(tmp_path):
    from support.services import free_port

    with pytest.raises(RuntimeError, match="could not be delivered"):
        run_simulation(f"http://127.0.0.1:{free_port()}", clients=1, minutes=2, seed=1,
                       progress=False, spool_dir=tmp_path, drain_timeout=1.0)


def _vitals(*args):
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_json_and_errors(tmp_path, server):
    r = _vitals("simulate", "--url", server.url, "--clients", "2", "--minutes", "10", "--seed", "4", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["accepted"] == stats["lines"] > 0
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 1\n")
    r = _vitals("simulate", "--url", server.url, "--scenario", str(bad))
    assert r.returncode == 2 and "bad.toml" in r.stderr and "Traceback" not in r.stderr
    r = _vitals("simulate", "--url", server.url, "--clients", "0")
    assert r.returncode == 2
    r = _vitals("simulate", "--url", "ftp://x")
    assert r.returncode == 2 and "--url" in r.stderr


def test_against_the_real_collector_the_warehouse_holds_the_generated_fleet(tmp_path):
    from support.collector_process import CollectorProcess

    collector = CollectorProcess(str(tmp_path / "fleet.duckdb"))
    collector.start()
    try:
        stats = run_simulation(collector.url, clients=10, minutes=60, seed=11, start_ms=START, progress=False)
        again = run_simulation(collector.url, clients=10, minutes=60, seed=11, start_ms=START, progress=False)
    finally:
        collector.stop()
    expected: dict[str, list[int]] = {}
    for line in generate_lines(None, 10, 60, 11, start_ms=START):
        expected.setdefault(line.session_id, []).append(line.seq)
    assert collector.stored() == expected
    assert stats.accepted == stats.lines == sum(map(len, expected.values()))
    assert again.accepted == 0 and again.duplicates == again.lines
