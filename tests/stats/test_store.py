"""Store: restarts, scopes, encryption, wrong keys, locking, forget, reset, crashes, formats, windows."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import appvitals
from appvitals import Registry, Store
from appvitals.stats.store import HistoryPolicy, StoreError, StoreKeyError, StoreLockedError

CHILD = str(Path(__file__).resolve().parents[1] / "support" / "store_child.py")
FIXTURES = Path(__file__).with_name("fixtures")


def _files(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file() and not p.name.endswith(".lock"))


def _child(mode: str, db: Path, key: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILD, mode, str(db), key or ""], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, word: str) -> list[str]:
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited before {word!r}: {proc.stderr.read()}")
        lines.append(line.strip())
        if line.startswith(word):
            return lines


def _app(db: Path, key: str | None = None, **kw) -> tuple[Registry, appvitals.Counter]:
    reg = Registry(**kw)
    c = reg.counter("msgs", "Messages", labels=("user", "server"))
    reg.attach(Store(db, key=key), interval=60)
    return reg, c


@pytest.mark.parametrize("key", [None, "correct horse"])
def test_stats_survive_restarts_with_session_past_all(tmp_path, key):
    db = tmp_path / "stats.db"
    reg, c = _app(db, key)
    c.labels(user="1", server="smp1").inc(3)
    h = reg.histogram("lat", unit="ms")
    h.observe(10)
    reg.state("st", states=("A", "B")).set("B", reason="go")
    reg.events("errors").record(type="net", message="timeout")
    reg.detach()

    reg2, c2 = _app(db, key)
    h2 = reg2.histogram("lat", unit="ms")
    c2.labels(user="1", server="smp1").inc()
    h2.observe(20)
    assert reg2.snapshot(scope="session").value("msgs") == 1
    assert reg2.snapshot(scope="past").value("msgs") == 3
    snap = reg2.snapshot(scope="all")
    assert snap.value("msgs") == 4
    assert snap.metric("lat").series[0].count == 2 and snap.metric("lat").series[0].max == 20
    assert snap.metric("st").series[0].transitions == {"A->B": 1}
    assert snap.metric("errors").series[0].total == 1
    assert snap.tracking_since < snap.session_started_at
    reg2.detach()
    ro = Store.open_readonly(db, key=key)
    assert ro.snapshot().value("msgs") == 4 and ro.snapshot("session").value("msgs") == 1
    ro.close()


def test_encrypted_file_hides_names_and_labels(tmp_path):
    db = tmp_path / "secret.db"
    reg, c = _app(db, "k3y")
    c.labels(user="alice-user-id", server="smp.hidden-server.example").inc(5)
    reg.events("errors").record(type="net", message="timeout talking to smp.hidden-server.example")
    reg.flush()
    reg.detach()
    data = _files(db)
    assert len(data) > 4096
    for needle in (b"alice-user-id", b"hidden-server", b"msgs", b"errors", b"SQLite format"):
        assert needle not in data, needle
    # and the same stats in a plaintext store do show up: the search itself works
    plain = tmp_path / "plain.db"
    reg, c = _app(plain)
    c.labels(user="alice-user-id", server="smp.hidden-server.example").inc(5)
    reg.detach()
    assert b"alice-user-id" in _files(plain)


def test_wrong_or_missing_key_is_one_clear_error_and_leaves_file_untouched(tmp_path):
    db = tmp_path / "secret.db"
    reg, c = _app(db, "right")
    c.labels(user="1", server="s").inc()
    reg.detach()
    before = hashlib.sha256(_files(db)).hexdigest()
    with pytest.raises(StoreKeyError, match="wrong key"):
        Store(db, key="wrong")
    with pytest.raises(StoreKeyError, match="encrypted"):
        Store(db)
    with pytest.raises(StoreKeyError):
        Store.open_readonly(db, key="wrong")
    assert hashlib.sha256(_files(db)).hexdigest() == before
    with Store.open_readonly(db, key="right") as ok:
        assert ok.snapshot().value("msgs") == 1


def test_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VITALS_STORE_KEY", "from-env")
    db = tmp_path / "env.db"
    reg, c = _app(db)
    c.labels(user="1", server="s").inc()
    reg.detach()
    monkeypatch.delenv("VITALS_STORE_KEY")
    with pytest.raises(StoreKeyError):
        Store(db)
    assert Store.open_readonly(db, key="from-env").snapshot().value("msgs") == 1


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError):
        Store(junk)
    assert len(junk.read_bytes()) == 8192
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("create table t(x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not an appvitals store"):
        Store(foreign)
    with pytest.raises(StoreError, match="no stats store"):
        Store.open_readonly(tmp_path / "missing.db")


def test_second_process_attaching_gets_clear_error(tmp_path):
    db = tmp_path / "locked.db"
    proc = _child("hold", db)
    try:
        _wait_for(proc, "ready")
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
            Store(db)
        with Store.open_readonly(db) as ro:  # readers are welcome
            ro.snapshot()
    finally:
        proc.kill()
        proc.wait()
    Store(db).close()  # the lock died with the process


def test_forget_is_durable_even_if_killed_right_after(tmp_path):
    db = tmp_path / "forget.db"
    proc = _child("forget", db)
    try:
        _wait_for(proc, "forgot")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    data = _files(db)
    assert b"user-5-secret" not in data and b"smp.five.example" not in data
    assert b"user-6" in data  # the neighbour is still there
    with Store.open_readonly(db) as ro:
        snap = ro.snapshot()
        assert snap.value("per_user", user="user-6", server="smp.six.example") == 2
        assert snap.value("per_user") == 2


def test_forget_removes_from_past_history_and_memory(tmp_path):
    db = tmp_path / "f.db"
    reg, c = _app(db)
    c.labels(user="5", server="s").inc(4)
    c.labels(user="6", server="s").inc(1)
    reg.detach()
    reg, c = _app(db)
    c.labels(user="5", server="s").inc()
    reg.flush()
    reg.forget(user="5")
    assert reg.snapshot().value("msgs") == 1
    assert reg.snapshot(scope="past").value("msgs") == 1
    reg.flush()
    reg.detach()
    assert b'"5"' not in _files(db)


def test_reset_forgets_everything_and_restarts_tracking(tmp_path):
    db = tmp_path / "r.db"
    reg, c = _app(db)
    c.labels(user="5", server="s").inc(4)
    reg.detach()
    reg, c = _app(db)
    old_since = reg.snapshot().tracking_since
    reg.reset()
    c.labels(user="7", server="s").inc()
    snap = reg.snapshot()
    assert snap.value("msgs") == 1 and snap.tracking_since > old_since
    reg.detach()
    with Store.open_readonly(db) as ro:
        assert ro.snapshot().value("msgs") == 1


def test_sigterm_flushes_and_keeps_the_apps_handler(tmp_path):
    db = tmp_path / "term.db"
    proc = _child("sigterm", db)
    _wait_for(proc, "incremented")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert (tmp_path / "term.db.app-handler-ran").read_text() == "yes"
    with Store.open_readonly(db) as ro:
        assert ro.snapshot().value("received", server="a") == 42


def test_sigkill_at_random_moments_never_corrupts(tmp_path):
    """100 kills at random instants: the store always opens, equals a completed flush, and
    never goes backwards from what the child reported as flushed."""
    db = tmp_path / "crash.db"
    rng = random.Random(1234)
    # how long this machine takes to start a child up to its flush loop: the kill window is sized
    # from it, so kills land both during start-up (restore and fold) and inside the loop
    t0 = time.monotonic()
    probe = _child("hold", db)
    _wait_for(probe, "ready")
    startup = time.monotonic() - t0
    probe.kill()
    probe.wait()
    acknowledged = 0
    kills_in_loop = 0
    for _ in range(100):
        proc = _child("loop", db)
        time.sleep(rng.uniform(0.0, 1.5 * startup + 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.splitlines()
        kills_in_loop += "ready" in lines
        flushed = [int(x.split()[1]) for x in lines if x.startswith("flushed")]
        with Store.open_readonly(db) as ro:
            snap = ro.snapshot()
        total_r, total_d = snap.value("received"), snap.value("delivered")
        assert total_r == total_d  # a flush is all or nothing
        assert total_r % 20 == 0
        rounds = total_r / 20
        session_rounds = max(flushed, default=0)
        # everything acknowledged is there, at most one unacknowledged round more
        assert acknowledged + session_rounds <= rounds <= acknowledged + session_rounds + 1
        acknowledged = rounds
    assert acknowledged > 0 and 0 < kills_in_loop < 100


def test_flush_is_incremental(tmp_path):
    reg, c = _app(tmp_path / "inc.db")
    for i in range(500):
        c.labels(user=str(i), server="s").inc()
    assert reg._persister.flush() == 500
    c.labels(user="3", server="s").inc()
    c.labels(user="4", server="s").inc(2.5)
    assert reg._persister.flush() == 2
    assert reg._persister.flush() == 0
    reg.detach()


def test_windows_across_restarts(tmp_path):
    db = tmp_path / "w.db"
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    every_flush = HistoryPolicy(fine_every=0.0)
    reg = Registry(clock=clock)
    c = reg.counter("msgs", labels=("user",))
    h = reg.histogram("lat")
    reg.attach(Store(db, history=every_flush), interval=60)
    c.labels(user="1").inc(10)
    h.observe(1.0)
    reg.flush()  # t=1,000,000: 10
    now[0] += 3600
    c.labels(user="1").inc(5)
    h.observe(100.0)
    reg.flush()  # t+1h: 15
    reg.detach()
    now[0] += 3600
    reg = Registry(clock=clock)  # restart
    c = reg.counter("msgs", labels=("user",))
    reg.histogram("lat")
    reg.attach(Store(db, history=every_flush), interval=60)
    c.labels(user="1").inc(7)
    reg.flush()  # t+2h: 22 in all
    w = reg.snapshot(since=1_000_000.0 + 1800)
    assert w.value("msgs") == 12  # 5 before the restart + 7 after
    lat = w.metric("lat").series[0]
    assert lat.count == 1 and lat.max == 100.0
    w2 = reg.snapshot(since=1_000_000.0 + 1800, until=1_000_000.0 + 3700)
    assert w2.value("msgs") == 5
    assert reg.snapshot().value("msgs") == 22
    reg.detach()


def test_history_thinning_keeps_fine_and_coarse_tiers(tmp_path):
    now = [0.0]
    policy = HistoryPolicy(fine_every=60, fine_keep=3600, coarse_every=3600, coarse_keep=5 * 3600)
    reg = Registry(clock=lambda: now[0])
    c = reg.counter("x")
    reg.attach(Store(tmp_path / "h.db", history=policy), interval=60)
    for minute in range(10 * 60):
        now[0] = minute * 60.0
        c.inc()
        reg.flush()
    times = reg._store.history_times()
    reg.detach()
    fine = [t for t in times if t >= now[0] - 3600]
    coarse = [t for t in times if t < now[0] - 3600]
    assert len(fine) == 61
    assert len(coarse) == 4 and all(t % 3600 == 0 for t in coarse)


def test_text_backup_is_order_independent_and_keeps_unknown_keys(tmp_path):
    reg = Registry()
    reg.counter("msgs", labels=("user",)).labels(user='we"ird\n=}{').inc(7)
    reg.histogram("lat").observe(3)
    reg.state("st", states=("A", "B")).set("B")
    text = reg.export_backup(str(tmp_path / "b.txt"))
    lines = text.splitlines()
    random.Random(7).shuffle(lines)
    lines.append("future.field=42")
    lines = [x for x in lines if ".sum=" not in x]  # a missing key counts as zero
    other = Registry()
    other.import_backup("\n".join(lines))
    snap = other.snapshot()
    assert snap.value("msgs", user='we"ird\n=}{') == 7
    assert snap.metric("lat").series[0].count == 1 and snap.metric("lat").series[0].sum == 0
    assert "future.field=42" in other.export_backup()
    from appvitals.stats.backup import BackupError, load

    with pytest.raises(BackupError, match="line 2"):
        load("format=1\nseries.bad{user=\"x}.value=1\n")


def test_format_fixtures_read_forward_and_backward(tmp_path):
    """store_v1.db was written by format 1; store_future.db by a pretend newer version with an
    extra column, an unknown metric kind and unknown fields: both are read, neither is destroyed."""
    for name, expect in (("store_v1.db", 12.0), ("store_future.db", 12.0)):
        db = tmp_path / name
        shutil.copy(FIXTURES / name, db)
        reg = Registry()
        c = reg.counter("msgs", labels=("user", "server"))
        reg.attach(Store(db), interval=60)
        assert reg.snapshot().value("msgs") == expect, name
        assert reg.snapshot().metric("lat").series[0].count == 3
        c.labels(user="1", server="smp1").inc()
        reg.detach()
        with Store.open_readonly(db) as ro:
            assert ro.snapshot().value("msgs") == expect + 1
        if name == "store_future.db":
            con = sqlite3.connect(db)
            assert con.execute("select count(*) from series where metric = 'quantum'").fetchone()[0] == 1
            assert con.execute("select count(*) from series where extra = 'kept'").fetchone()[0] >= 1
            assert con.execute("select value from meta where key = 'format'").fetchone()[0] == "2"
            con.close()


def test_sigterm_while_main_thread_holds_the_instrument_lock(tmp_path):
    db = tmp_path / "busy.db"
    for _ in range(5):
        proc = _child("sigterm_busy", db)
        _wait_for(proc, "busy")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # the app's own handler (sys.exit(0)) ran: no hang
    with Store.open_readonly(db) as ro:
        snap = ro.snapshot()
    assert snap.value("received", server="a") > 0
    # each run's last flush is one instant: at most one observe() ahead of its inc(2)
    assert 0 <= 2 * snap.metric("lat").series[0].count - snap.value("received", server="a") <= 2 * 5


def test_a_full_disk_fails_the_flush_loudly_and_loses_nothing(tmp_path):
    """SQLITE_FULL (the disk-full error, forced with max_page_count) fails that flush as a whole;
    memory keeps everything and the next flush, with room again, writes it all."""
    db = tmp_path / "full.db"
    reg, c = _app(db)
    c.labels(user="1", server="s").inc()
    reg.flush()
    conn = reg._store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(5000):
        c.labels(user=f"u{i}", server="s").inc()
    with pytest.raises(sqlite3.OperationalError, match="full"):
        reg.flush()
    with Store.open_readonly(db) as ro:
        assert ro.snapshot().value("msgs") == 1  # the last completed flush, intact
    conn.execute("PRAGMA max_page_count = 1073741823")
    reg.flush()
    reg.detach()
    with Store.open_readonly(db) as ro:
        assert ro.snapshot().value("msgs") == 5001
