"""The collector's ingest log (warehouse/ingestlog.py, ingestwriter.py and DuckDBWarehouse(ingest_log=True)):
lines acknowledged once logged survive a killed process and a damaged DuckDB WAL, are never
stored twice, and the log-backed warehouse answers exactly as the plain one does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appvitals.fleet.warehouse import ingestwriter as writer_module
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse, IngestLogFull
from appvitals.fleet.warehouse.ingestlog import DamagedLog, IngestLog
from appvitals.fleet.wire.protocol import decode_line

SRC = Path(__file__).resolve().parents[3] / "src"
T0 = 1_764_000_000_000


def sample(session: str, seq: int, ts: int, cpu: float = 1.0):
    return decode_line(f'{{"kind":"sample","session_id":"{session}","ts":{ts},"seq":{seq},"cpu":{cpu},'
                       f'"attrs":{{"stage":"s{seq % 3}"}}}}')


def batch(n: int, start: int = 0, session: str = "a", ts0: int = T0):
    return [sample(session, seq, ts0 + seq) for seq in range(start, start + n)]


def rows(wh: DuckDBWarehouse) -> list[tuple]:
    return wh.query("SELECT session_id, seq, ts, cpu FROM samples ORDER BY session_id, seq")


# -- the log file itself --

def test_records_round_trip_and_a_cut_tail_is_dropped(tmp_path):
    log = IngestLog(tmp_path / "log")
    tables = [{"samples": pa.table({"ts": [1, 2], "seq": [3, 4]})}, {"events": pa.table({"name": ["x"]})}]
    for t in tables:
        log.append(t)
    segment = log.current()
    log.close()
    got = list(IngestLog.read(segment))
    assert [{k: v.to_pydict() for k, v in r.items()} for r in got] == [{k: v.to_pydict() for k, v in t.items()} for t in tables]
    data = segment.read_bytes()
    for cut in (len(data) - 1, len(data) - 30, len(data) - 5 - 60):  # inside the last record, or its header
        segment.write_bytes(data[:cut])
        assert len(list(IngestLog.read(segment))) == 1


def test_a_damaged_record_raises_after_the_good_ones(tmp_path):
    log = IngestLog(tmp_path / "log")
    for i in range(3):
        log.append({"samples": pa.table({"ts": [i]})})
    segment = log.current()
    log.close()
    data = bytearray(segment.read_bytes())
    second = len(data) // 3 + 20  # inside the second record's payload
    data[second] ^= 0xFF
    segment.write_bytes(bytes(data))
    reader = IngestLog.read(segment)
    assert next(reader)["samples"].to_pydict() == {"ts": [0]}
    with pytest.raises(DamagedLog):
        next(reader)


def test_ipc_parts_short_writes_and_records_of_the_older_form(tmp_path, monkeypatch):
    from appvitals.fleet.warehouse import ingestlog as _ingestlog
    from appvitals.fleet.wire.arrow import tables_to_ipc

    log = IngestLog(tmp_path / "log")
    a, b = pa.table({"ts": [1, 2], "seq": [3, 4]}), pa.table({"ts": [5], "seq": [6]})
    real_writev = _ingestlog.os.writev
    monkeypatch.setattr(_ingestlog.os, "writev", lambda fd, bufs: real_writev(fd, [bytes(bufs[0])[:7]]))
    log.append_ipc([tables_to_ipc({"samples": a}), tables_to_ipc({"samples": b, "events": pa.table({"name": ["x"]})})])
    monkeypatch.undo()
    segment = log.current()
    log.close()
    # a record of stop 11 (one map, not an array of them) is still read
    payload = _ingestlog._encode(tables_to_ipc({"samples": b}))
    with open(segment, "ab") as f:
        f.write(_ingestlog._HEADER.pack(_ingestlog._MAGIC, zlib.crc32(payload), len(payload)) + payload)
    first, second = IngestLog.read(segment)
    assert first["samples"].to_pydict() == {"ts": [1, 2, 5], "seq": [3, 4, 6]}  # the parts' rows, in order
    assert first["events"].to_pydict() == {"name": ["x"]}
    assert second["samples"].to_pydict() == {"ts": [5], "seq": [6]}


def _as_if_killed(wh: DuckDBWarehouse) -> None:
    """Stop the background insert without inserting or checkpointing: what a SIGKILL leaves."""
    writer = wh._log
    writer._closing = True
    with writer._cond:
        writer._cond.notify_all()
    writer._drainer.join()
    wh._con.close()


def test_worker_blocks_are_logged_as_they_came_and_replayed(tmp_path, monkeypatch):
    from appvitals.fleet.collector.decode import decode_chunk
    from appvitals.fleet.wire.arrow import ArrowBatch

    def block(lines):
        return ArrowBatch.from_ipc(decode_chunk(b"\n".join(x.encode() for x in lines), 1)[0])

    def text(session, seq, ts):
        return f'{{"kind":"sample","session_id":"{session}","ts":{ts},"seq":{seq},"cpu":{seq}}}'

    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    monkeypatch.setattr(wh, "_insert", lambda write, known_new=False: None if known_new else None)
    from appvitals.fleet.warehouse import ingestlog as _ingestlog

    serialized = []  # tables the log serialized itself (not the workers' bytes)
    real = _ingestlog.tables_to_ipc
    monkeypatch.setattr(_ingestlog, "tables_to_ipc", lambda tables: serialized.append(len(tables)) or real(tables))
    new = wh.insert_many([block([text("a", i, T0 + i) for i in range(5)]), block([text("b", i, T0 + i) for i in range(3)])])
    assert serialized == []  # all new: the blocks' bytes went to the log as they were
    # a line repeated across the write's blocks: the write's tables, without the repeat, are logged
    repeated = wh.insert_many([block([text("c", 0, T0)]), block([text("c", 0, T0), text("c", 1, T0 + 1)])])
    assert serialized == [1]
    assert [(r.accepted, r.duplicates) for r in new + repeated] == [(5, 0), (3, 0), (1, 0), (1, 1)]
    _as_if_killed(wh)  # nothing reached DuckDB: everything comes from the log
    reopened = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        assert [r[:2] for r in rows(reopened)] == [("a", i) for i in range(5)] + [("b", i) for i in range(3)] + [
            ("c", 0), ("c", 1)]
    finally:
        reopened.close()


# -- the warehouse with the log --

def test_lines_are_queryable_at_once_and_counted_once(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        first = wh.insert_many([batch(100), batch(50, start=80)])
        assert [(r.accepted, r.duplicates) for r in first] == [(100, 0), (30, 20)]
        assert len(rows(wh)) == 130  # query() waits for the background insert
        again = wh.insert(batch(130))
        assert (again.accepted, again.duplicates) == (0, 130)
        assert len(rows(wh)) == 130
    finally:
        wh.close()
    assert not list((tmp_path / "w.duckdb.ingest").glob("*.log"))  # closed cleanly: nothing left to replay


def test_lines_stored_before_the_open_and_pending_lines_are_duplicates_whatever_their_ts(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    plain = DuckDBWarehouse(path)
    plain.insert(batch(40))
    plain.close()
    wh = DuckDBWarehouse(path, ingest_log=True)
    release = _hold_background_insert(wh, monkeypatch)
    try:
        assert wh.insert(batch(40)).duplicates == 40  # known only to DuckDB
        assert wh.insert(batch(40, ts0=T0 + 86_400_000)).duplicates == 40  # another ts: the same keys
        assert wh.insert(batch(20, session="b")).accepted == 20  # pending in the log
        assert wh.insert(batch(20, session="b", ts0=T0 - 5_000)).duplicates == 20
        release.set()
        assert wh.sync()
        assert wh.insert(batch(60, session="b", ts0=T0 + 999)).accepted == 40
        assert len(rows(wh)) == 100
    finally:
        release.set()
        wh.close()


def _hold_background_insert(wh: DuckDBWarehouse, monkeypatch) -> threading.Event:
    """The background insert waits (lines stay pending) until the returned event is set."""
    release = threading.Event()
    original = wh._insert

    def stuck(write, known_new=False):
        if known_new:
            release.wait(60)
        return original(write, known_new)

    monkeypatch.setattr(wh, "_insert", stuck)
    return release


def test_a_write_waits_then_fails_when_duckdb_is_too_far_behind(tmp_path, monkeypatch):
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True, max_pending=100, admit_wait=0.3)
    release = _hold_background_insert(wh, monkeypatch)
    try:
        assert wh.insert(batch(150)).accepted == 150  # logged: acknowledged
        with pytest.raises(IngestLogFull, match="behind"):
            wh.insert(batch(10, start=150))
        release.set()
        assert wh.sync()
        assert len(rows(wh)) == 150
    finally:
        release.set()
        wh.close()


def test_a_write_waiting_for_room_does_not_hold_the_admit_lock(tmp_path, monkeypatch):
    # The background thread's checkpoint takes the admit lock (no append while it deletes
    # segments). A writer waiting there for room would stop the thread that makes the room.
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True, max_pending=100, admit_wait=60)
    release = _hold_background_insert(wh, monkeypatch)
    results = []
    writer = threading.Thread(target=lambda: results.append(wh.insert(batch(10, start=150))))
    try:
        assert wh.insert(batch(150)).accepted == 150
        writer.start()
        for _ in range(1000):  # until the writer waits for room
            if wh._log._cond._waiters:  # type: ignore[attr-defined]
                break
            time.sleep(0.01)
        assert wh._log._cond._waiters, "the writer never waited for room"  # type: ignore[attr-defined]
        assert wh._log._admit_lock.acquire(timeout=10), "a writer waiting for room holds the admit lock"
        wh._log._admit_lock.release()
        release.set()
        writer.join(30)
        assert [r.accepted for r in results] == [10]
        assert wh.sync()
        assert len(rows(wh)) == 160
    finally:
        release.set()
        writer.join(30)
        wh.close()


_CHILD = textwrap.dedent("""
    import os, sys, threading
    sys.path.insert(0, {src!r})
    from appvitals.fleet.wire.protocol import decode_line
    from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
    wh = DuckDBWarehouse({db!r}, ingest_log=True)
    mode = {mode!r}
    if mode == "before-insert":  # the background insert never runs: only the log has the lines
        original = wh._insert
        wh._insert = lambda write, known_new=False: threading.Event().wait() if known_new else original(write)
    lines = [decode_line('{{"kind":"sample","session_id":"k","ts":%d,"seq":%d,"cpu":%d}}' % ({t0} + i, i, i % 90))
             for i in range(3000)]
    for i in range(0, 3000, 500):
        wh.insert(lines[i:i + 500])
    if mode == "after-insert":
        assert wh.sync()
    print("acknowledged", flush=True)
    os._exit(0)  # no close(): as if killed
""")


@pytest.mark.parametrize("mode", ["before-insert", "after-insert", "after-insert, DuckDB WAL damaged"])
def test_acknowledged_lines_survive_a_killed_process(tmp_path, mode):
    db = str(tmp_path / "w.duckdb")
    code = _CHILD.format(src=str(SRC), db=db, mode=mode.split(",")[0], t0=T0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "acknowledged" in out.stdout, out.stderr
    assert list(Path(db + ".ingest").glob("*.log")), "the log must still hold the lines"
    wal = Path(db + ".wal")
    if "damaged" in mode:  # as after an operating-system crash: DuckDB did not fsync its WAL
        assert wal.exists() and wal.stat().st_size > 1000
        data = bytearray(wal.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
        wal.write_bytes(bytes(data))
    wh = DuckDBWarehouse(db, ingest_log=True)
    try:
        got = wh.query("SELECT count(*), count(DISTINCT seq), sum(cpu) FROM samples")
        assert got == [(3000, 3000, sum(i % 90 for i in range(3000)))]
        again = wh.insert([sample("k", i, T0 + i) for i in range(0, 3000, 7)])
        assert again.accepted == 0
    finally:
        wh.close()
    if "damaged" in mode:
        assert list(tmp_path.glob("w.duckdb.wal.damaged-*")), "the damaged WAL is kept, not deleted"
    assert not list(Path(db + ".ingest").glob("*.log"))


# -- the same answers as without the log --

_line = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 30), st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.lists(st.lists(_line, max_size=12), min_size=1, max_size=3), min_size=1, max_size=6),
       reopen_after=st.integers(0, 6))
def test_the_log_answers_exactly_as_the_plain_warehouse(tmp_path_factory, writes, reopen_after):
    """Random writes (each several batches; lines repeated within a batch, a write and across
    writes; some without seq; ts out of order), with a restart somewhere: same results, same rows."""
    base = tmp_path_factory.mktemp("prop")

    def as_lines(spec):
        out = []
        for session, seq, keyed in spec:
            ts = T0 + (seq * 7919) % 1000  # out of order, shared by sessions
            text = f'"seq":{seq},' if keyed else ""
            out.append(decode_line(f'{{"kind":"sample","session_id":"{session}","ts":{ts},{text}"cpu":{seq}}}'))
        return out

    answers = {}
    for with_log in (False, True):
        path = base / f"{with_log}.duckdb"
        wh = DuckDBWarehouse(path, ingest_log=with_log)
        results = []
        for k, write in enumerate(writes):
            if k == reopen_after:
                wh.close()
                wh = DuckDBWarehouse(path, ingest_log=with_log)
            results.append([(r.accepted, r.duplicates) for r in wh.insert_many([as_lines(b) for b in write])])
        answers[with_log] = (results, wh.query("SELECT session_id, seq, ts, cpu FROM samples ORDER BY ALL"))
        wh.close()
    assert answers[True] == answers[False]


def test_a_quiet_spell_checkpoints_and_empties_the_log(tmp_path):
    """sync() with nothing pending returns at once; the idle checkpoint empties the log."""
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        assert wh.sync(timeout=0.01)
        wh.insert(batch(10))
        assert wh.sync()
        deadline = time.monotonic() + writer_module._IDLE_CHECKPOINT_S + 10
        while list((tmp_path / "w.duckdb.ingest").glob("*.log")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not wh._log._unsynced
        assert not list((tmp_path / "w.duckdb.ingest").glob("*.log"))  # all in a synced checkpoint
        assert wh.insert(batch(5, start=10)).accepted == 5  # a new segment
        assert len(rows(wh)) == 15
    finally:
        wh.close()


def test_a_full_disk_fails_the_write_and_loses_nothing_acknowledged(tmp_path, monkeypatch):
    import errno

    from appvitals.fleet.warehouse import ingestlog as _ingestlog

    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        assert wh.insert(batch(10)).accepted == 10
        real_writev = _ingestlog.os.writev

        def full(fd, buffers):  # half a record reaches the file, then the disk is full
            data = b"".join(map(bytes, buffers))
            _ingestlog.os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_ingestlog.os, "writev", full)
        with pytest.raises(OSError, match="No space"):
            wh.insert(batch(10, start=10))
        monkeypatch.setattr(_ingestlog.os, "writev", real_writev)
        assert wh.insert(batch(5, start=20)).accepted == 5
    finally:
        _as_if_killed(wh)  # leave everything to the replay
    reopened = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        assert [r[1] for r in rows(reopened)] == list(range(10)) + list(range(20, 25))
        assert reopened.insert(batch(10, start=10)).accepted == 10  # the failed lines were never stored
        assert not list((tmp_path / "w.duckdb.ingest").glob("*.damaged"))  # a cut tail is not damage
    finally:
        reopened.close()


def test_duckdb_runs_on_one_thread_while_ingesting_and_on_every_core_for_a_read(tmp_path):
    import os

    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        assert wh.insert(batch(10)).accepted == 10
        assert wh.query("SELECT current_setting('threads')") == [(os.cpu_count() or 1,)]
        assert wh._settings_con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
        if sys.platform.startswith("linux"):  # and the background insert yields to the requests
            stat = Path(f"/proc/self/task/{wh._log._drainer.native_id}/stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[16]) == writer_module._DRAIN_NICE
    finally:
        wh.close()
    memory = DuckDBWarehouse(":memory:", ingest_log=True)  # no log for a memory database: as before
    try:
        assert memory.insert(batch(3)).accepted == 3
        assert memory.query("SELECT count(*) FROM samples") == [(3,)]
    finally:
        memory.close()


# -- the stored-keys check (keys.py) --

def test_a_write_of_many_sessions_straddling_their_stored_ranges_finds_each_duplicate(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", ingest_log=True)
    try:
        wh.insert_many([batch(10, start=10, session="a"), batch(10, start=10, session="b")])
        # a: below, inside (a resend, another ts) and above its stored range; b: inside and above
        mixed = [sample("a", 5, T0), sample("a", 15, T0 + 9_000), sample("a", 25, T0 + 25),
                 sample("b", 19, T0 - 9_000), sample("b", 30, T0 + 30), sample("c", 1, T0 + 1)]
        assert (wh.insert(mixed).accepted, wh.insert(mixed).duplicates) == (4, 6)
        # one session's lines straddling its range: the single-session path
        one = [sample("a", 0, T0), sample("a", 12, T0 + 5), sample("a", 40, T0 + 40)]
        assert (wh.insert(one).accepted, wh.insert(one).duplicates) == (2, 3)
        assert len(rows(wh)) == 26
    finally:
        wh.close()


def test_retention_gives_the_slots_of_dropped_sessions_to_new_ones(tmp_path):
    now = int(time.time() * 1000)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    try:
        wh.insert(batch(5, session="kept", ts0=now))
        for round_ in range(3):  # sessions come and go: the entries must not pile up
            wh.insert_many([batch(2, session=f"r{round_}-{i}", ts0=now - 10 * 86_400_000) for i in range(300)])
            assert len(wh.keys) == 301
            wh.apply_retention(3)
            assert len(wh.keys) == 1
        assert len(wh.keys._sids) <= 301
        assert wh.insert(batch(5, session="kept", ts0=now + 1)).duplicates == 5  # still known
        assert wh.insert(batch(2, session="r0-0", ts0=now)).accepted == 2  # its lines are gone
    finally:
        wh.close()
