"""Snapshot model: JSON shape, merge associativity (Hypothesis), windows, filters."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from appvitals import Registry
from appvitals.stats import snapshot as S
from appvitals.stats.sketch import SketchData

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


labels_st = st.sampled_from([{}, {"user": "1"}, {"user": "2"}])


@st.composite
def snapshots(draw, t: int):
    metrics = []
    if draw(st.booleans()):
        metrics.append(S.MetricSnapshot(name="c", kind="counter", label_names=["user"], series=[
            S.Series(labels={"user": u}, value=float(draw(st.integers(0, 1000)))) for u in draw(st.sets(st.sampled_from("123")))
        ]))
    if draw(st.booleans()):
        metrics.append(S.MetricSnapshot(name="g", kind="gauge", series=[
            S.Series(labels={}, value=float(draw(st.integers(-5, 5))), updated_at=_at(t))]))
    if draw(st.booleans()):
        pos = draw(st.dictionaries(st.integers(-50, 300), st.integers(1, 5), max_size=6))
        n = sum(pos.values())
        metrics.append(S.MetricSnapshot(name="h", kind="histogram", series=[
            S._hist_from({}, n, float(n), 0.5 if n else None, 100.0 if n else None, SketchData(pos=pos))]))
    if draw(st.booleans()):
        metrics.append(S.MetricSnapshot(name="s", kind="state", capacity=3, series=[S.Series(
            labels={}, current="B", entered_at=_at(t),
            time_in_state={"A": float(draw(st.integers(0, 9))), "B": 1.0},
            transitions={"A->B": draw(st.integers(0, 3))},
            history=[S.Transition(at=_at(t), from_="A", to="B")])]))
    if draw(st.booleans()):
        k = draw(st.integers(0, 4))
        metrics.append(S.MetricSnapshot(name="e", kind="events", capacity=3, series=[S.Series(
            labels={}, total=k, by_type={"net": k} if k else {},
            recent=[{"type": "net", "message": f"{t}-{i}", "at": _at(t * 10 + i).isoformat()} for i in range(k)])]))
    return S.Snapshot(taken_at=_at(t), tracking_since=_at(0), session_started_at=_at(t), metrics=metrics)


def _canon(snap: S.Snapshot) -> dict:
    return json.loads(snap.to_json())


@settings(max_examples=150, deadline=None)
@given(snapshots(1), snapshots(2), snapshots(3))
def test_merge_is_associative(a, b, c):
    left = S.merge(S.merge(a, b), c)
    right = S.merge(a, S.merge(b, c))
    assert _canon(left) == _canon(right)


@settings(max_examples=100, deadline=None)
@given(snapshots(1), snapshots(2))
def test_window_of_merge_gives_back_the_addition(a, b):
    """(a + b) - a == b for counters and histogram counts: windows and merges agree."""
    total = S.merge(a, b)
    w = S.window(total, a)
    for m in b.metrics:
        if m.kind == "counter":
            for s in m.series:
                assert w.value("c", **s.labels) == s.value
        if m.kind == "histogram":
            assert w.metric("h").series[0].count == m.series[0].count


def test_json_shape_matches_spec():
    reg = Registry()
    reg.counter("c", "help", labels=("peer",)).labels(peer="B").inc()
    reg.histogram("h").observe(1.0)
    reg.state("s", states=("A", "B")).set("B", reason="why")
    reg.events("e").record(type="network", message="timeout")
    doc = json.loads(reg.snapshot().to_json())
    assert doc["schema"] == 1 and doc["scope"] == "all"
    for key in ("taken_at", "tracking_since", "session_started_at", "metrics"):
        assert key in doc
    kinds = {m["name"]: m for m in doc["metrics"]}
    for m in doc["metrics"]:
        assert {"name", "kind", "help", "unit", "series"} <= set(m)
        for s in m["series"]:
            assert "labels" in s
    assert kinds["c"]["series"][0] == {"labels": {"peer": "B"}, "value": 1.0}
    assert {"count", "sum", "min", "max", "p50", "p90", "p99"} <= set(kinds["h"]["series"][0])
    assert {"current", "entered_at", "time_in_state", "transitions", "history"} <= set(kinds["s"]["series"][0])
    assert {"total", "by_type", "recent"} <= set(kinds["e"]["series"][0])
    assert S.decode(reg.snapshot().to_json()).metric("c").series[0].value == 1.0


def test_filters():
    reg = Registry()
    c = reg.counter("changes", labels=("peer", "model"), group="operations")
    c.labels(peer="A", model="entry").inc(2)
    c.labels(peer="B", model="tag").inc(3)
    reg.gauge("depth", group="operations").set(1)
    reg.events("errors").record(type="net", peer="B")
    snap = reg.snapshot()
    f = S.filter_snapshot(snap, where={"peer": "B"})
    assert f.value("changes") == 3 and f.metric("depth") is None
    assert len(f.metric("errors").series[0].recent) == 1
    assert [m.name for m in S.filter_snapshot(snap, metrics=["chan*"]).metrics] == ["changes"]
    assert [m.name for m in S.filter_snapshot(snap, groups=["operations"]).metrics] == ["changes", "depth"]
    assert "peer" in S.label_keys(snap) and "nope" not in S.label_keys(snap)
