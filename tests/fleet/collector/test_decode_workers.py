"""The collector's decode worker processes: same answers as in-process, and none outlive a killed collector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import psutil
from hypothesis import given, settings
from hypothesis import strategies as st
from support.services import free_port

from appvitals.fleet.collector.decode import decode_chunk, decode_lines
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.protocol import MAX_ATTRS, MAX_KEY, MAX_STRING, decode_block

SRC = Path(__file__).resolve().parents[3] / "src"


def test_decode_chunk_numbers_errors_and_drops_repeats():
    data = b"\n".join([
        b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10,"attrs":{"stage":"login"}}',
        b"not json",
        b"",
        b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10}',
        b'{"kind":"session","session_id":"s1","client_id":"c","ts":1,"seq":0}',
    ])
    packed, rejected, errors = decode_chunk(data, 41)
    assert rejected == 1 and [e["line"] for e in errors] == [42]
    batch = ArrowBatch.from_ipc(packed)
    assert (len(batch), batch.duplicates) == (3, 1)
    assert batch.tables["samples"].column("attrs").to_pylist() == ['{"stage":"login"}']
    assert batch.tables["sessions"].num_rows == 1


def _slow(data: bytes, first: int):
    """What the line-by-line path makes of a block: the reference for the one-call path."""
    lines, errors = [], []
    rejected = decode_lines(data.split(b"\n"), first, lines, errors)
    return ArrowBatch.from_lines(lines), rejected, errors


def _same(data: bytes) -> None:
    packed, rejected, errors = decode_chunk(data, 1)
    fast = ArrowBatch.from_ipc(packed)
    slow, slow_rejected, slow_errors = _slow(data, 1)
    assert (rejected, errors) == (slow_rejected, slow_errors)
    assert (fast.size, fast.duplicates) == (slow.size, slow.duplicates)
    assert {t: a.to_pylist() for t, a in fast.tables.items()} == {t: a.to_pylist() for t, a in slow.tables.items()}


_text = st.text(max_size=6) | st.sampled_from(["x" * MAX_KEY, "x" * (MAX_KEY + 1), "y" * (MAX_STRING + 1), 'q"\\u00e9'])
_value = _text | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.booleans() \
    | st.none() | st.lists(st.integers(), max_size=2)
_attrs = st.dictionaries(_text, _value, max_size=4) | st.just({f"k{i}": i for i in range(MAX_ATTRS + 1)}) | _value
_sample = st.fixed_dictionaries(
    {"kind": st.just("sample"), "session_id": st.sampled_from(["s1", "s2", ""]), "ts": st.integers(-1, 3) | st.just("2026-11-30T08:00:00Z"),
     "cpu": st.floats(-1, 100, allow_nan=False) | st.just("high")},
    optional={"seq": st.integers(-1, 3) | st.none(), "attrs": _attrs, "values": st.dictionaries(_text, st.floats(0, 9) | _text, max_size=2),
              "extra": _value},
)
_other = st.fixed_dictionaries({"kind": st.sampled_from(["session", "event", "end", "nope"]), "session_id": st.just("s1"),
                                "ts": st.integers(0, 3), "seq": st.integers(0, 3), "client_id": st.just("c"),
                                "name": st.just("n"), "attrs": _attrs})
_line = (_sample | _other).map(msgspec.json.encode) | st.sampled_from([b"", b"  ", b"{}", b"[1]", b"1,2", b'{"kind":"sample"},{}', b"not json"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, min_size=1, max_size=8))
def test_the_one_call_block_path_says_what_the_line_by_line_path_says(lines):
    # samples' attrs are checked once per distinct text after the block decode: any line that
    # breaks a rule must still be named, and good blocks must store exactly the same rows
    _same(b"\n".join(lines))


_good_attrs = st.dictionaries(st.sampled_from(["stage", "b", "a", "é"]), st.sampled_from(["x", 1, 2.5, True, 'q"']), max_size=3)
_good_sample = st.fixed_dictionaries(
    {"kind": st.just("sample"), "session_id": st.sampled_from(["s1", "s2"]), "ts": st.integers(0, 3), "cpu": st.floats(0, 100)},
    optional={"seq": st.integers(0, 3), "attrs": _good_attrs | st.sampled_from([{"k" * (MAX_KEY + 1): 1}, {"v": "y" * (MAX_STRING + 1)}]),
              "values": st.dictionaries(st.sampled_from(["rss", "io"]), st.floats(0, 9), max_size=2)},
).map(msgspec.json.encode)


@settings(max_examples=200, deadline=None)
@given(st.lists(_good_sample, min_size=1, max_size=8))
def test_mostly_good_blocks_store_the_same_rows_either_way(lines):
    _same(b"\n".join(lines))


def test_the_block_path_is_taken_for_good_blocks_and_keeps_line_counts_honest():
    good = [b'{"kind":"sample","session_id":"s%d","ts":5,"seq":1,"cpu":1,"attrs":{"b":1,"a":"x"}}' % i for i in range(3)]
    assert decode_block(b"\n".join(good), 3) is not None
    assert decode_block(b"\n".join(good[:2]) + b"," + good[2], 2) is None  # two values on one line
    assert decode_block(b"\n".join(good) + b"\n", 4) is None  # a trailing blank line
    packed, _, _ = decode_chunk(b"\n".join(good), 1)
    assert ArrowBatch.from_ipc(packed).tables["samples"].column("attrs").to_pylist() == ['{"a":"x","b":1}'] * 3


def test_workers_exit_when_the_collector_is_killed(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "appvitals", "serve", "--db", str(tmp_path / "f.duckdb"), "--port", str(port),
         "--decode-workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "collector did not start"
            time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/ingest", timeout=30, content=(
            b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10}\nbad\n'))
        assert answer.json()["accepted"] == 1 and answer.json()["errors"][0]["line"] == 2
        workers = [psutil.Process(pid) for pid in _decode_workers(psutil.Process(proc.pid))]
        assert len(workers) >= 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} decode workers outlived the collector"


def _decode_workers(root: psutil.Process | None = None) -> set[int]:
    """The pids of the decode workers under `root` (this process by default)."""
    found = set()
    for p in (root or psutil.Process()).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                found.add(p.pid)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def test_a_killed_worker_is_replaced_and_no_request_hangs(tmp_path):
    from support.collector import running_app

    from appvitals.fleet.collector.app import create_app
    from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

    before = _decode_workers()
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    lines = b"".join(b'{"kind":"sample","session_id":"s","ts":%d,"seq":%d,"cpu":1}\n' % (i, i) for i in range(3000))
    try:
        with running_app(create_app(wh, decode_workers=2)) as base:
            workers = _decode_workers() - before
            assert len(workers) == 2
            assert httpx.post(base + "/v1/ingest", content=lines, timeout=30).json()["accepted"] == 3000
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            psutil.wait_procs([psutil.Process(victim)], timeout=15)
            answers = []
            for _ in range(20):  # a block the dead worker held fails its request with a 503
                answer = httpx.post(base + "/v1/ingest", content=lines, timeout=30)
                answers.append(answer.status_code)
                if answer.status_code == 200:
                    assert answer.json()["duplicates"] == 3000
                    if len(_decode_workers() - before) == 2 and answers.count(200) >= 3:
                        break
                else:
                    assert answer.status_code == 503 and "decode worker" in answer.json()["error"]
                    time.sleep(0.2)
            now = _decode_workers() - before
            assert victim not in now and len(now) == 2, "the dead worker was not replaced"
            assert answers.count(200) >= 3
        assert wh.query("SELECT count(*) FROM samples")[0][0] == 3000
    finally:
        wh.close()
    for _ in range(150):
        if not _decode_workers() - before:
            break
        time.sleep(0.1)
    assert not _decode_workers() - before, "decode workers outlived their collector"
