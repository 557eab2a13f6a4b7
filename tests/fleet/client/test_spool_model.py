"""The spool against a model, under random appends, reads, commits, reopens and torn writes.

Invariant: the lines that come out (committed reads) are exactly the appended lines, in
order, each once -- except lines dropped over the bound (counted in dropped_total, always
the oldest) and a torn line cut at reopen (never fully written, so never appended). A
`session` line is never dropped while lines of its session remain: it may come out later
than the lines after it, but every session with a delivered sample has its session line.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appvitals.fleet.client.spool import Spool

op = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 30), st.integers(0, 120)),
    st.tuples(st.just("session"), st.integers(0, 120), st.just(0)),
    st.tuples(st.just("send"), st.integers(1, 2000), st.booleans()),
    st.tuples(st.just("reopen"), st.booleans(), st.just(0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=40), bounded=st.booleans())
# a session line moved to the end and dropped later, after its samples had been delivered
@example(ops=[("session", 0, 0), ("append", 3, 0), ("append", 16, 115), ("session", 0, 0), ("session", 0, 0),
              ("send", 1, True), ("session", 0, 0)], bounded=True)
def test_spool_delivers_every_line_once_in_order(ops, bounded):
    max_bytes = 3000 if bounded else 50 * 1024 * 1024
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(d, max_bytes=max_bytes, segment_bytes=400)
        appended: list[int] = []
        delivered: list[int] = []
        sessions: dict[int, int] = {}  # the n of each session line -> its session
        session_of: dict[int, int] = {}  # the n of each sample -> its session
        n = 0
        current = -1
        for kind, a, b in ops:
            if kind == "session":
                current += 1
                spool.append([json.dumps({"kind": "session", "session_id": f"s{current}", "n": n,
                                          "pad": "x" * a}).encode()])
                sessions[n] = current
                appended.append(n)
                n += 1
            elif kind == "append":
                lines = []
                for _ in range(a):
                    lines.append(json.dumps({"kind": "sample", "session_id": f"s{current}", "n": n,
                                             "pad": "x" * b}).encode())
                    session_of[n] = current
                    appended.append(n)
                    n += 1
                spool.append(lines)
            elif kind == "send":
                batch = spool.read(max_bytes=a)
                if b:  # a 200: commit; otherwise the upload failed and nothing changes
                    delivered.extend(json.loads(x)["n"] for x in batch.lines)
                    spool.commit(batch.end)
            else:
                torn = a
                spool.close()
                if torn:
                    segs = sorted(Path(d).glob("*.seg"))
                    with open(segs[-1], "ab") as f:
                        f.write(b'{"n": -1, "torn')
                spool = Spool(d, max_bytes=max_bytes, segment_bytes=400)
        while True:
            batch = spool.read(max_bytes=10_000)
            if not batch.lines:
                break
            delivered.extend(json.loads(x)["n"] for x in batch.lines)
            spool.commit(batch.end)
        dropped = spool.dropped_total
        spool.close()
    # delivered is appended minus some dropped lines, in order (session lines aside), without repeats
    assert len(delivered) == len(set(delivered))
    others = [x for x in delivered if x not in sessions]
    assert others == sorted(others)
    assert set(delivered) <= set(appended)
    assert len(appended) - len(delivered) == dropped
    started = {sessions[x] for x in delivered if x in sessions}
    assert {session_of[x] for x in others if session_of[x] >= 0} <= started
    if not bounded:
        assert delivered == appended
