"""The on-disk spool: order, commit, crash safety (real SIGKILL), size bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from appvitals.fleet.client.spool import Position, Spool, SpoolBusy


def _lines(a, b):
    return [json.dumps({"n": i}).encode() for i in range(a, b)]


def _drain(spool, max_bytes=1 << 20):
    out = []
    while True:
        batch = spool.read(max_bytes=max_bytes)
        if not batch.lines:
            spool.commit(batch.end)
            return out
        out.extend(batch.lines)
        spool.commit(batch.end)


def test_lines_come_back_in_order_and_commit_removes_them(tmp_path):
    with Spool(tmp_path, segment_bytes=200) as spool:
        spool.append(_lines(0, 50))
        assert spool.pending_lines() == 50
        batch = spool.read(max_bytes=100)
        assert batch.lines == _lines(0, len(batch.lines)) and 0 < len(batch.lines) < 50
        # not committed: read again gives the same lines
        assert spool.read(max_bytes=100).lines == batch.lines
        spool.commit(batch.end)
        rest = _drain(spool, max_bytes=150)
        assert rest == _lines(len(batch.lines), 50)
        assert spool.pending_bytes() == 0
        assert len(list(tmp_path.glob("*.seg"))) <= 2  # sent segments are deleted


def test_uncommitted_lines_survive_a_reopen_and_committed_ones_do_not(tmp_path):
    spool = Spool(tmp_path, segment_bytes=300)
    spool.append(_lines(0, 40))
    batch = spool.read(max_bytes=200)
    spool.commit(batch.end)
    sent = len(batch.lines)
    spool.append(_lines(40, 60))
    spool.close()
    again = Spool(tmp_path, segment_bytes=300)
    assert again.backlog_lines == 60 - sent
    assert _drain(again) == _lines(sent, 60)
    again.close()


def test_a_torn_last_line_is_cut_and_nothing_else_is_lost(tmp_path):
    spool = Spool(tmp_path)
    spool.append(_lines(0, 10))
    spool.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b'{"n": 10, "half a li')
    again = Spool(tmp_path)
    assert again.torn_bytes == len(b'{"n": 10, "half a li')
    again.append(_lines(11, 12))
    assert _drain(again) == _lines(0, 10) + _lines(11, 12)
    again.close()


WRITER = """
import json, sys
from appvitals.fleet.client.spool import Spool
spool = Spool(sys.argv[1], segment_bytes=4096, fsync_every=0)
i = 0
while True:
    spool.append([json.dumps({"n": i, "pad": "x" * (i % 50)}).encode()])
    if i == 200:
        print("ready", flush=True)
    i += 1
"""


def test_sigkill_mid_append_keeps_a_gapless_prefix(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    with Spool(tmp_path, segment_bytes=4096) as spool:
        got = [json.loads(x)["n"] for x in _drain(spool)]
    assert len(got) > 200
    assert got == list(range(len(got)))


def test_past_the_bound_the_oldest_lines_are_dropped_and_counted(tmp_path):
    with Spool(tmp_path, max_bytes=4000, segment_bytes=500) as spool:
        spool.append(_lines(0, 10))
        spool.commit(spool.read(max_bytes=30).end)  # a few lines sent already
        for i in range(10, 2000):
            spool.append(_lines(i, i + 1))
        assert spool.total_bytes() <= 4000
        pending = spool.pending_lines()
        sent = 2000 - pending - spool.dropped_total
        got = [json.loads(x)["n"] for x in _drain(spool)]
        assert got == list(range(2000 - pending, 2000))  # the newest, in order
        assert 0 < sent < 10
        assert spool.dropped_unreported() == spool.dropped_total > 1000
        spool.mark_reported(spool.dropped_total)
    with Spool(tmp_path, max_bytes=4000, segment_bytes=500) as spool:
        assert spool.dropped_unreported() == 0 and spool.dropped_total > 1000


def test_discard_pending_counts_the_lines(tmp_path):
    with Spool(tmp_path, segment_bytes=100) as spool:
        spool.append(_lines(0, 30))
        assert spool.discard_pending() == 30
        assert spool.pending_lines() == 0 and spool.dropped_unreported() == 30
        spool.append(_lines(30, 31))
        assert _drain(spool) == _lines(30, 31)


def test_one_process_at_a_time(tmp_path):
    with Spool(tmp_path):
        with pytest.raises(SpoolBusy):
            Spool(tmp_path)
    Spool(tmp_path).close()


def test_state_is_written_atomically_and_a_stale_temp_file_is_harmless(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(_lines(0, 5))
        spool.commit(spool.read(max_bytes=20).end)
        committed = spool.committed
    (tmp_path / "state.json.tmp").write_bytes(b'{"segment": 99, "off')
    with Spool(tmp_path) as spool:
        assert spool.committed == committed
        assert isinstance(spool.committed, Position)
        assert [json.loads(x)["n"] for x in _drain(spool)] == list(range(5 - spool.backlog_lines, 5))


def test_a_damaged_state_file_replays_everything_rather_than_losing(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append(_lines(0, 5))
        spool.commit(spool.read(max_bytes=20).end)
    (tmp_path / "state.json").write_bytes(b"garbage")
    with Spool(tmp_path) as spool:
        assert _drain(spool) == _lines(0, 5)
