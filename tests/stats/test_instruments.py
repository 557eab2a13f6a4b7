"""Instruments: values, labels, limits, thread safety, consistency, disabled registry."""

from __future__ import annotations

import sys
import threading
import warnings

import pytest

import appvitals
from appvitals import LabelError, Registry

THREADS = 8
PER_THREAD = 200_000


@pytest.fixture
def tight_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _hammer(fn, per_thread=PER_THREAD):
    barrier = threading.Barrier(THREADS)

    def work():
        barrier.wait()
        for _ in range(per_thread):
            fn()

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_counter_basics():
    reg = Registry()
    c = reg.counter("changes_received", "Changes received", labels=("peer", "model"))
    c.labels(peer="B", model="entry").inc()
    c.labels("B", "entry").inc(2.5)
    c.labels(peer=5, model="tag").inc()  # values are strings in the snapshot
    snap = reg.snapshot()
    assert snap.value("changes_received", peer="B", model="entry") == 3.5
    assert snap.value("changes_received", peer="5", model="tag") == 1
    assert snap.value("changes_received") == 4.5  # derived total
    with pytest.raises(ValueError):
        c.labels(peer="B", model="entry").inc(-1)


@pytest.mark.parametrize("call", [
    lambda c: c.labels(peer="B"),
    lambda c: c.labels(peer="B", model="x", extra="y"),
    lambda c: c.labels(peer="B", modle="x"),
    lambda c: c.labels("B"),
    lambda c: c.inc(),
])
def test_label_errors_are_clear(call):
    reg = Registry()
    c = reg.counter("x", labels=("peer", "model"))
    with pytest.raises(LabelError, match="peer"):
        call(c)


def test_keyword_label_names_still_work():
    reg = Registry()
    c = reg.counter("imports", labels=("from", "class"))
    c.labels(**{"from": "a", "class": "b"}).inc()
    assert reg.snapshot().value("imports", **{"from": "a", "class": "b"}) == 1


def test_reregistering_returns_same_metric_and_conflicts_raise():
    reg = Registry()
    assert reg.counter("a", labels=("x",)) is reg.counter("a", labels=("x",))
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("a")
    with pytest.raises(ValueError, match="invalid metric name"):
        reg.counter("bad name")
    with pytest.raises(ValueError, match="invalid label name"):
        reg.counter("ok", labels=("__reserved",))


def test_gauge_histogram_state_events():
    reg = Registry()
    g = reg.gauge("depth")
    g.set(3)
    g.inc()
    g.dec(2)
    h = reg.histogram("latency", unit="ms", labels=("model",))
    for v in range(1, 1001):
        h.labels(model="entry").observe(v)
    s = reg.state("sync_state", states=("Uninitialized", "Backfilling", "Ready"))
    s.set("Backfilling", reason="peer connected")
    s.set("Ready", reason="backfill complete")
    with pytest.raises(ValueError, match="unknown state"):
        s.set("Flying")
    e = reg.events("errors", capacity=3)
    for i in range(5):
        e.record(type="network" if i % 2 else "apply", message=f"m{i}", device="B")
    snap = reg.snapshot()
    assert snap.value("depth") == 2
    hs = snap.metric("latency").series[0]
    assert (hs.count, hs.sum, hs.min, hs.max) == (1000, 500500, 1, 1000)
    for q, got in ((0.5, hs.p50), (0.9, hs.p90), (0.99, hs.p99)):
        exact = q * 999 + 1
        assert abs(got - exact) / exact <= 0.011, (q, got)
    ss = snap.metric("sync_state").series[0]
    assert ss.current == "Ready"
    assert ss.transitions == {"Uninitialized->Backfilling": 1, "Backfilling->Ready": 1}
    assert [t.reason for t in ss.history] == ["peer connected", "backfill complete"]
    assert set(ss.time_in_state) == {"Uninitialized", "Backfilling", "Ready"}
    es = snap.metric("errors").series[0]
    assert es.total == 5 and es.by_type == {"apply": 3, "network": 2}
    assert [r["message"] for r in es.recent] == ["m2", "m3", "m4"]


def test_histogram_timer_uses_unit():
    reg = Registry()
    h = reg.histogram("op", unit="ms")
    with h.time():
        sum(range(1000))
    s = reg.snapshot().metric("op").series[0]
    assert s.count == 1 and 0 < s.sum < 5000


def test_series_limit_goes_to_overflow_and_warns():
    reg = Registry(max_series=10)
    c = reg.counter("per_user", labels=("user",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(25):
            c.labels(user=str(i)).inc()
    snap = reg.snapshot()
    series = snap.metric("per_user").series
    assert len(series) == 11  # 10 real + overflow
    assert snap.value("per_user", user="__overflow__") == 15
    assert snap.value("per_user") == 25  # nothing lost from the total
    assert snap.value("appvitals_series_overflow", metric="per_user") == 15
    assert any("series limit" in str(w.message) for w in caught)


@pytest.mark.parametrize("kind", ["counter", "counter_labels", "counter_float", "gauge", "histogram", "state", "events"])
def test_no_lost_updates_under_contention(kind, tight_switching):
    reg = Registry()
    per_thread = PER_THREAD if kind.startswith("counter") else PER_THREAD // 4
    if kind == "counter":
        fn = reg.counter("c").inc
    elif kind == "counter_labels":
        c = reg.counter("c", labels=("server",))
        fn = lambda: c.labels(server="s1").inc()  # noqa: E731
    elif kind == "counter_float":
        c = reg.counter("c")
        fn = lambda: c.inc(2)  # noqa: E731
    elif kind == "gauge":
        fn = reg.gauge("c").inc
    elif kind == "histogram":
        h = reg.histogram("c")
        fn = lambda: h.observe(3.0)  # noqa: E731
    elif kind == "state":
        s = reg.state("c", states=("A", "B"))
        flip = {"A": "B", "B": "A"}
        fn = lambda: s.set(flip[s.current])  # noqa: E731
    else:
        e = reg.events("c", capacity=10)
        fn = lambda: e.record(type="t")  # noqa: E731
    _hammer(fn, per_thread)
    total = THREADS * per_thread
    series = reg.snapshot().metric("c").series[0]
    if kind == "counter_float":
        assert series.value == 2 * total
    elif kind in ("counter", "counter_labels", "gauge"):
        assert series.value == total
    elif kind == "histogram":
        assert series.count == total and series.sum == 3.0 * total
    elif kind == "state":
        # racing set() calls may collapse (A->B twice is one transition), but the books must balance:
        ab, ba = series.transitions.get("A->B", 0), series.transitions.get("B->A", 0)
        assert ab - ba == (1 if series.current == "B" else 0)
        assert len(series.history) == 20 and ab > 1000
        elapsed = (reg.snapshot().taken_at - series.history[0].at).total_seconds()
        assert sum(series.time_in_state.values()) == pytest.approx(
            (series.entered_at - reg.snapshot().session_started_at).total_seconds()
            + (reg.snapshot().taken_at - series.entered_at).total_seconds(), rel=1e-3, abs=0.05
        ) and elapsed >= 0
    else:
        assert series.total == total and series.by_type == {"t": total}


def test_snapshot_is_consistent_across_metrics(tight_switching):
    """received is incremented before delivered: no snapshot may show delivered > received."""
    reg = Registry()
    received = reg.counter("received", labels=("server",))
    delivered = reg.counter("delivered", labels=("server",))
    big = reg.counter("bytes")
    stop = threading.Event()

    def producer():
        r, d = received.labels(server="s"), delivered.labels(server="s")
        while not stop.is_set():
            r.inc()
            big.inc(10)
            d.inc()

    threads = [threading.Thread(target=producer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            snap = reg.snapshot()
            r, d = snap.value("received"), snap.value("delivered")
            assert d <= r, (d, r)
    finally:
        stop.set()
        for t in threads:
            t.join()
    final = reg.snapshot()
    assert final.value("received") == final.value("delivered")
    assert final.value("bytes") == 10 * final.value("received")


def test_disabled_registry_is_noop():
    reg = Registry(enabled=False)
    c = reg.counter("x", labels=("a",))
    c.labels(a="1").inc()
    reg.histogram("h").observe(1)
    reg.state("s", states=("A",)).set("A")
    reg.events("e").record(type="x")
    reg.gauge("g").set(1)
    assert reg.snapshot().metrics == []


def test_forget_removes_matching_series_only():
    reg = Registry()
    c = reg.counter("msgs", labels=("user", "server"))
    c.labels(user="5", server="smp1").inc(3)
    c.labels(user="6", server="smp1").inc(2)
    e = reg.events("errors")
    e.record(type="net", user="5")
    e.record(type="net", user="6")
    reg.gauge("unrelated").set(1)
    reg.forget(user="5")
    snap = reg.snapshot()
    assert [s.labels for s in snap.metric("msgs").series] == [{"user": "6", "server": "smp1"}]
    assert [r["user"] for r in snap.metric("errors").series[0].recent] == ["6"]
    assert b'"5"' not in snap.to_json()
    c.labels(user="5", server="smp1").inc()  # a new user with the same id starts from zero
    assert reg.snapshot().value("msgs", user="5", server="smp1") == 1


def test_reset_zeroes_in_place_so_held_children_keep_working():
    reg = Registry()
    c = reg.counter("msgs", labels=("user",))
    child = c.labels(user="1")
    child.inc(5)
    solo = reg.counter("solo")
    solo.inc()
    before = reg.tracking_since
    reg.reset()
    assert reg.snapshot().value("msgs") == 0 and reg.tracking_since >= before
    child.inc()
    solo.inc()
    snap = reg.snapshot()
    assert snap.value("msgs", user="1") == 1 and snap.value("solo") == 1


def test_public_api_surface():
    for name in ("Registry", "Store", "exposition", "serve", "Snapshot"):
        assert hasattr(appvitals, name)
