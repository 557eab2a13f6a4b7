"""Distinct counts: error bound, keyed hashes only, calendar periods, restarts and SIGKILL, merging,
threads, and every way out (snapshot JSON, Prometheus, the CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import appvitals
from appvitals import Registry, Store
from appvitals.stats import hll
from appvitals.stats import snapshot as S

CHILD = str(Path(__file__).with_name("app_child.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
KEY = b"appvitals-tests!"  # a fixed hash key: the same ids give the same registers in every run


def _reg() -> Registry:
    reg = Registry()
    reg.use_distinct_key(KEY)
    return reg


def vitals(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VITALS_STORE_KEY", "NO_COLOR")}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "appvitals.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _files(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


def test_error_within_two_percent_on_a_million_ids():
    # a sketch-level test (the hot path is benched, not tested): a million keyed hashes folded
    # into one sketch, read back with the estimator the snapshots use, at several sizes on the way
    key = hll.DistinctKey(b"k" * 16)
    registers = bytearray(hll.M)
    done = 0
    for target in (1_000, 20_000, 300_000, 1_000_000):
        hashes = [key.digest(i.to_bytes(8, "little")) for i in range(done, target)]
        hll.fold(registers, hashes)
        done = target
        error = abs(hll.estimate(registers) - target) / target
        assert error <= 0.02, (target, error)


def test_small_counts_and_repeats():
    reg = _reg()
    d = reg.distinct("active", "Active")
    assert d.get() == 0
    for _ in range(5):
        for i in range(100):
            d.add(f"q{i}")
    assert abs(d.get() - 100) <= 2  # 100 ids in 16,384 registers: a collision or two at most
    s = reg.snapshot().metric("active").series[0]
    assert s.day == s.week == s.month == s.all == d.get()


def test_str_and_bytes_ids_are_the_same_id():
    reg = _reg()
    d = reg.distinct("active")
    d.add("abc")
    d.add(b"abc")
    assert d.get() == 1


def test_only_a_keyed_hash_is_kept(tmp_path):
    db = tmp_path / "stats.db"
    secret = "queue-4f9c2a-SECRET"
    reg = _reg()
    d = reg.distinct("active_queues", labels=("server",))
    reg.attach(Store(db), interval=60)
    d.labels(server="smp1").add(secret)
    d.labels(server="smp1").add(secret.encode())
    reg.flush()
    reg.detach()
    data = _files(db)
    assert secret.encode() not in data
    # nor an unkeyed hash of it (the key is per store)
    assert hashlib.blake2b(secret.encode(), digest_size=8).digest() not in data
    assert Store.open_readonly(db).snapshot().metric("active_queues").series[0].all == 1


def test_encrypted_store_hides_the_sketches_and_the_key(tmp_path):
    pytest.importorskip("sqlcipher3")
    db = tmp_path / "stats.db"
    reg = _reg()
    reg.distinct("active_queues", labels=("server",)).labels(server="smp.secret.example").add("q")
    reg.attach(Store(db, key="k1"), interval=60)
    key = reg.distinct_key()
    reg.flush()
    reg.detach()
    data = _files(db)
    assert b"active_queues" not in data and b"smp.secret.example" not in data
    assert key.hex().encode() not in data and key not in data


def test_restarts_union_and_sigkill(tmp_path):
    db = tmp_path / "stats.db"
    # three runs, each killed with SIGKILL after its flush; ids overlap by half between runs
    for run in range(3):
        proc = subprocess.Popen([sys.executable, CHILD, "distinct", str(db), str(run * 5000), str(run * 5000 + 10000)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("flushed"), proc.stderr.read()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    store = Store.open_readonly(db)
    s = store.snapshot().metric("active_queues").series[0]
    store.close()
    for value in (s.day, s.week, s.month, s.all):
        assert abs(value - 20_000) / 20_000 <= 0.02, s
    # the counter beside it adds up every run (30,000 adds), the distinct count does not
    assert Store.open_readonly(db).snapshot().value("msgs", server="smp1") == 30_000
    # and a live registry attached to it keeps the union going
    reg = _reg()
    d = reg.distinct("active_queues", "Queues with activity", labels=("server",))
    reg.attach(Store(db), interval=60)
    for i in range(15_000, 25_000):
        d.labels(server="smp1").add(f"queue-{i}")
    snap = reg.snapshot()
    assert abs(snap.metric("active_queues").series[0].all - 25_000) / 25_000 <= 0.02
    assert abs(d.labels(server="smp1").get() - 25_000) / 25_000 <= 0.02
    reg.detach()


def test_merge_is_exact_across_processes_with_one_key():
    key = b"shared-key-16byt"
    regs = []
    for part in range(2):
        reg = _reg()
        reg.use_distinct_key(key)
        d = reg.distinct("active")
        for i in range(part * 3000, part * 3000 + 6000):
            d.add(f"id{i}")
        regs.append(reg)
    whole = _reg()
    whole.use_distinct_key(key)
    dw = whole.distinct("active")
    for i in range(9000):
        dw.add(f"id{i}")
    a, b, w = (r.snapshot().metric("active").series[0] for r in (*regs, whole))
    merged = S.merge_series("distinct", a, b)
    assert merged.hll.a == w.hll.a  # register for register: the union is exact
    assert merged.all == w.all
    # idempotent and order-free
    assert S.merge_series("distinct", merged, a).hll == merged.hll
    assert S.merge_series("distinct", b, a).hll.a == merged.hll.a


def test_calendar_periods_roll_and_close():
    key = hll.DistinctKey(b"k" * 16)

    def sketch(ids):
        regs = bytearray(hll.M)
        hll.fold(regs, [key.digest(f"id{i}") for i in ids])
        return bytes(regs)

    # Sunday 2026-12-06 is the last day of ISO week 49; Monday opens week 50; December goes on
    sunday = hll.DistinctData(day="2026-12-06", d=sketch(range(10)), w=sketch(range(30)), m=sketch(range(50)),
                              a=sketch(range(80)))
    monday = hll.roll(sunday, "2026-12-07")
    assert monday.closed == {"2026-12-06": 10, "2026-W49": 30}
    assert monday.d == b"" and monday.w == b"" and monday.m == sunday.m and monday.a == sunday.a
    assert hll.counts(sunday, None) == (10, 30, 50, 80)
    january = hll.roll(monday, "2027-01-01")
    assert january.closed["2026-12"] == 50 and january.m == b"" and january.a == sunday.a
    assert hll.period_count(january, "2026-W49", 0) == 30
    # a sketch from yesterday merged with today's: yesterday closes, today's registers stay
    today = hll.DistinctData(day="2026-12-07", d=sketch(range(100, 105)), w=sketch(range(100, 105)),
                             m=sketch(range(100, 105)), a=sketch(range(100, 105)))
    both = hll.merge(sunday, today)
    assert both.day == "2026-12-07" and both.closed["2026-12-06"] == 10
    assert hll.counts(both, None) == (5, 5, 55, 85)


def test_threads_lose_nothing():
    reg = _reg()
    d = reg.distinct("active")

    def work(t):
        for i in range(20_000):
            d.add(f"t{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert abs(d.get() - 160_000) / 160_000 <= 0.02


def test_forget_reset_and_disabled():
    reg = _reg()
    d = reg.distinct("active", labels=("user",))
    d.labels(user="1").add("a")
    d.labels(user="2").add("b")
    assert reg.forget(user="1") == 1
    assert [s.labels for s in reg.snapshot().metric("active").series] == [{"user": "2"}]
    reg.reset()
    assert reg.snapshot().metric("active").series[0].all == 0
    off = Registry(enabled=False).distinct("active")
    off.add("x")
    assert off.get() == 0.0


def test_json_prometheus_and_cli(tmp_path):
    db = tmp_path / "stats.db"
    reg = _reg()
    d = reg.distinct("active_queues", "Queues with activity", labels=("server",))
    reg.attach(Store(db), interval=60)
    for i in range(50):
        d.labels(server="smp1").add(f"q{i}")
    d.labels(server="smp2").add("q0")
    reg.flush()
    doc = json.loads(reg.snapshot().to_json())
    series = {s["labels"]["server"]: s for m in doc["metrics"] if m["name"] == "active_queues" for s in m["series"]}
    assert series["smp1"]["day"] == 50 and series["smp1"]["all"] == 50 and series["smp2"]["week"] == 1
    text = appvitals.exposition(reg).decode()
    assert 'active_queues{server="smp1",period="day"} 50.0' in text
    assert "# TYPE active_queues gauge" in text
    reg.detach()

    out = vitals("metrics", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    m = next(m for m in doc["metrics"] if m["name"] == "active_queues")
    assert {s["labels"]["server"]: s["month"] for s in m["series"]} == {"smp1": 50, "smp2": 1}
    assert all("hll" not in s for s in m["series"])  # the registers stay out of the JSON users read
    out = vitals("metrics", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "Queues with activity (distinct, estimated): today 50," in out.stdout  # q0 is on both servers
    assert "smp1: today 50, this week 50, this month 50, all 50" in out.stdout


def test_window_shows_the_counts_at_its_end(tmp_path):
    db = tmp_path / "stats.db"
    reg = _reg()
    d = reg.distinct("active")
    reg.attach(Store(db), interval=60)
    for i in range(10):
        d.add(f"q{i}")
    reg.flush()
    snap = reg.snapshot(since=0)
    assert snap.metric("active").series[0].day == 10
    reg.detach()


def test_series_encode_round_trip():
    reg = _reg()
    reg.distinct("active").add("x")
    snap = reg.snapshot()
    back = S.decode(S.encode(snap))
    assert back.metric("active").series[0].hll == snap.metric("active").series[0].hll
    assert msgspec.json.decode(snap.to_json())["metrics"][0]["kind"] == "distinct"


@given(st.lists(st.tuples(st.sampled_from(["2026-12-06", "2026-12-07", "2026-12-14", "2027-01-02"]),
                          st.lists(st.integers(0, 300), max_size=40)), min_size=1, max_size=4))
@settings(max_examples=25, deadline=None)
def test_merge_is_order_free_and_idempotent(parts):
    key = hll.DistinctKey(KEY)

    def data(day, ids):
        regs = bytearray(hll.M)
        hll.fold(regs, [key.digest(f"id{i}") for i in ids])
        regs = bytes(regs) if ids else b""
        return hll.DistinctData(day=day, d=regs, w=regs, m=regs, a=regs)

    sketches = [data(day, ids) for day, ids in parts]
    left = sketches[0]
    for s in sketches[1:]:
        left = hll.merge(left, s)
    right = sketches[-1]
    for s in reversed(sketches[:-1]):
        right = hll.merge(s, right)
    # the registers still held (all time; the latest day, week and month) union exactly in any order;
    # periods already closed keep only a count, and counts combine by the larger one
    assert (left.day, left.d, left.w, left.m, left.a) == (right.day, right.d, right.w, right.m, right.a)
    assert hll.merge(left, left) == left
    for s in sketches:
        assert hll.merge(left, s).a == left.a  # each part is already inside the union
    # all time is the union of every id, whatever the days
    everything = data("", sorted({i for _, ids in parts for i in ids}))
    assert left.a == everything.a


def test_text_backup_keeps_distinct_sketches_and_event_counts(tmp_path):
    import warnings

    reg = _reg()
    d = reg.distinct("active", labels=("server",))
    for i in range(500):
        d.labels(server="smp1").add(f"q{i}")
    e = reg.events("errors", capacity=2)
    for _ in range(5):
        e.record(type="network", user="1")
    e.record(type="auth", user="2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        text = reg.export_backup(str(tmp_path / "b.txt"))
    assert 'series.active{server="smp1"}.all=' in text
    other = _reg()
    other.distinct("active", labels=("server",))
    other.events("errors", capacity=2)
    other.import_backup(text)
    s = other.snapshot().metric("active").series[0]
    assert s.all == reg.snapshot().metric("active").series[0].all
    other.forget(user="1")  # the per-field counts came along: user 1's five records leave the totals
    ev = other.snapshot().metric("errors").series[0]
    assert ev.total == 1 and ev.by_type == {"auth": 1}
