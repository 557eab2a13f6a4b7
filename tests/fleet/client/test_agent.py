"""The in-process Agent: session line, stages on samples, events, end, replay and consent."""

from __future__ import annotations

import json
import time

import pytest
from support.fault_collector import FaultCollector

from appvitals.fleet.client.agent import CRASH_END_SEQ, Agent, system_attrs
from appvitals.fleet.client.spool import Spool
from appvitals.fleet.wire.protocol import EndLine, EventLine, SampleLine, SessionLine


@pytest.fixture
def server():
    s = FaultCollector()
    yield s
    s.close()


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _session(server, sid):
    return [line for (s, _), line in sorted(server.lines.items(), key=lambda kv: kv[0][1]) if s == sid]


def test_a_run_reports_session_samples_with_stage_events_and_end(tmp_path, server):
    agent = Agent(server.url, app_version="7.0.0", home=tmp_path, interval=0.05, batch_seconds=0.2,
                  attrs={"channel": "beta"}, close_at_exit=False)
    agent.start()
    with agent.stage("indexing"):
        assert _wait(lambda: agent.recorder.next_seq > 4)
        agent.event("file_received", file_name_length=57)
    agent.set_stage("receiving", file_name_length=57)
    assert _wait(lambda: len(_session(server, agent.session_id)) > 6)
    agent.close()
    lines = _session(server, agent.session_id)
    assert [x.seq for x in lines] == list(range(len(lines)))
    first, last = lines[0], lines[-1]
    assert isinstance(first, SessionLine) and first.client_id == agent.client_id
    assert first.attrs["app_version"] == "7.0.0" and first.attrs["channel"] == "beta"
    assert first.attrs["os"] == system_attrs()["os"] and first.attrs["cpu_count"] >= 1
    assert isinstance(last, EndLine) and last.reason == "exit"
    samples = [x for x in lines if isinstance(x, SampleLine)]
    stages = {x.attrs.get("stage") for x in samples}
    assert "indexing" in stages
    assert all(x.cpu >= 0 for x in samples)
    ev = [x for x in lines if isinstance(x, EventLine)]
    assert ev[0].name == "file_received" and ev[0].attrs == {"file_name_length": 57}
    assert agent.closed


def test_client_id_is_kept_across_runs_and_session_id_is_not(tmp_path, server):
    a = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    a.close()
    b = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    b.close()
    assert a.client_id == b.client_id and a.session_id != b.session_id


def test_lines_spooled_while_the_collector_is_away_arrive_later(tmp_path, server):
    agent = Agent(server.url, home=tmp_path, background=False, close_at_exit=False, cpu_source=lambda: 5.0)
    agent.start()
    server.script = [(503, {"Retry-After": "0"})] * 3
    for _ in range(20):
        agent.sample()
    assert agent.uploader.send_once().status == "pushback"
    assert agent.current_interval() == 2 * agent.interval  # sampling slows down under pushback
    assert agent.flush(timeout=10)
    agent.close()
    assert len(_session(server, agent.session_id)) == 22


def test_a_spool_left_by_a_crashed_run_is_replayed_at_start(tmp_path, server):
    crashed = Agent(None, home=tmp_path, background=False, close_at_exit=False, cpu_source=lambda: 1.0).start()
    for _ in range(5):
        crashed.sample()
    crashed.spool.close()  # as if killed: no end line, nothing uploaded
    agent = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    assert agent.replayed_lines == 6 and agent.crashed_sessions == [crashed.session_id]
    agent.close()
    old = _session(server, crashed.session_id)
    assert [x.seq for x in old] == [0, 1, 2, 3, 4, 5, CRASH_END_SEQ]
    # the run that died without an `end` gets one, stamped with its last activity
    assert isinstance(old[-1], EndLine) and old[-1].reason == "crashed"
    assert old[-2].ts - 2000 <= old[-1].ts <= int(time.time() * 1000)
    assert len(_session(server, agent.session_id)) == 2
    # a clean close leaves no marker: the next run finds no crash
    again = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    assert again.crashed_sessions == []
    again.close()


def _crashed_backlog(home, n):
    crashed = Agent(None, home=home, background=False, close_at_exit=False, cpu_source=lambda: 1.0).start()
    for _ in range(n):
        crashed.sample()
    crashed.spool.close()
    return crashed


def test_a_big_backlog_asks_for_consent_and_a_no_drops_it_and_reports_the_count(tmp_path, server):
    crashed = _crashed_backlog(tmp_path, 50)
    asked = []

    def consent(nbytes, nlines):
        asked.append((nbytes, nlines))
        return False

    agent = Agent(server.url, home=tmp_path, background=False, close_at_exit=False,
                  replay_threshold=1000, replay_consent=consent).start()
    assert asked and asked[0][1] == 51 and asked[0][0] > 1000
    agent.flush(timeout=10)
    agent.close()
    assert [x.reason for x in _session(server, crashed.session_id)] == ["crashed"]  # only the crash end
    ev = [x for x in _session(server, agent.session_id) if isinstance(x, EventLine)]
    assert ev and ev[0].name == "spool_dropped" and ev[0].attrs["count"] == 51


def test_a_small_backlog_is_replayed_without_asking(tmp_path, server):
    crashed = _crashed_backlog(tmp_path, 3)
    agent = Agent(server.url, home=tmp_path, background=False, close_at_exit=False,
                  replay_consent=lambda *a: pytest.fail("asked")).start()
    agent.close()
    assert len(_session(server, crashed.session_id)) == 4 + 1


def test_lines_dropped_over_the_bound_are_reported_when_the_collector_is_back(tmp_path, server):
    agent = Agent(server.url, home=tmp_path, background=False, close_at_exit=False,
                  spool_max_bytes=20_000, cpu_source=lambda: 3.0).start()
    for _ in range(1000):  # about 120 kB: far over the bound while nothing is uploaded
        agent.sample()
    dropped = agent.spool.dropped_total
    assert dropped > 500
    assert agent.flush(timeout=10)
    agent.close()
    lines = _session(server, agent.session_id)
    ev = [x for x in lines if isinstance(x, EventLine) and x.name == "spool_dropped"]
    assert ev and ev[0].attrs["count"] == dropped
    assert len(lines) == 1001 - dropped + 2  # + the spool_dropped event and the end line
    # what arrived is the session line (kept: its samples remain, they need its attrs) and
    # the newest lines, in order, with no gaps
    seqs = sorted(x.seq for x in lines)
    assert isinstance(lines[0], SessionLine) and seqs[0] == 0
    assert seqs[1:] == list(range(dropped + 1, 1003))


def test_bad_use_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError):
        Agent(None, home=tmp_path, interval=0)
    agent = Agent(None, home=tmp_path, background=False, close_at_exit=False)
    with pytest.raises(RuntimeError, match="start"):
        agent.event("x")
    agent.start()
    with pytest.raises(ValueError):
        agent.event("")
    with pytest.raises(ValueError, match="limit"):
        agent.event("big", blob="x" * 70_000)
    with pytest.raises(ValueError, match="attrs"):
        agent.event("nested", where={"a": 1})
    with pytest.raises(ValueError, match="at most 64"):
        agent.event("wide", **{f"k{i}": i for i in range(65)})
    agent.event("fine", n=1)  # a refused call changes nothing: seq goes on without a gap
    agent.close(flush=False)
    with Spool(tmp_path / "spool") as spool:
        seqs = [json.loads(raw)["seq"] for raw in spool.read().lines]
    assert seqs == [0, 1, 2]  # session, fine, end
    with pytest.raises(RuntimeError, match="closed"):
        agent.sample(1.0)


def test_spool_lines_are_plain_protocol_json(tmp_path):
    agent = Agent(None, home=tmp_path, background=False, close_at_exit=False).start()
    agent.event("login", user_kind="guest")
    agent.spool.sync()
    seg = sorted((tmp_path / "spool").glob("*.seg"))[-1]
    rows = [json.loads(x) for x in seg.read_bytes().splitlines()]
    assert [r["kind"] for r in rows] == ["session", "event"]
    agent.close(flush=False)
    with Spool(tmp_path / "spool") as spool:
        assert spool.pending_lines() == 3


def test_instances_sharing_a_home_each_get_a_spool_and_leftovers_are_adopted(tmp_path, server):
    first = Agent(server.url, home=tmp_path, background=False, close_at_exit=False, cpu_source=lambda: 1.0).start()
    second = Agent(None, home=tmp_path, background=False, close_at_exit=False, cpu_source=lambda: 2.0).start()
    assert first.spool_dir != second.spool_dir
    for _ in range(5):
        second.sample()
    second.spool.close()  # the second instance dies: its slot is left with 6 lines and no end
    first.close()
    third = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    assert third.spool_dir == first.spool_dir
    assert third.crashed_sessions == [second.session_id]
    assert third.replayed_lines == 7  # 6 adopted + the crash end
    third.close()
    got = _session(server, second.session_id)
    assert [x.seq for x in got] == [0, 1, 2, 3, 4, 5, CRASH_END_SEQ]
    # the adopted slot is empty now: nothing is sent twice by a later run
    fourth = Agent(server.url, home=tmp_path, background=False, close_at_exit=False).start()
    assert fourth.replayed_lines == 0
    fourth.close()
    assert server.duplicates == 0
