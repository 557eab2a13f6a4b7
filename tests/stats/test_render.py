"""The `vitals metrics` view on fixed data: golden text (tests/golden/) and the formatters.

Regenerate the golden files after an intended layout change with
`VITALS_UPDATE_GOLDEN=1 pytest tests/test_render.py` and review the diff.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import random
import re
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import appvitals
from appvitals.stats import instruments
from appvitals.stats import render as R
from appvitals.stats import snapshot as S
from appvitals.stats.query import Query, apply, build, read_store
from appvitals.stats.sketch import SketchData, bucket_index

GOLDEN = Path(__file__).parent / "golden"
UTC = dt.timezone.utc
T = dt.datetime(2025, 10, 23, 14, 0, 0, tzinfo=UTC)  # "now" of the fixed snapshot


def _ago(seconds: float) -> dt.datetime:
    return T - dt.timedelta(seconds=seconds)


def _hist(labels: dict, values: list[float]) -> S.Series:
    pos: dict[int, int] = {}
    for v in values:
        i = bucket_index(v)
        pos[i] = pos.get(i, 0) + 1
    return S._hist_from(labels, len(values), float(sum(values)), min(values), max(values), SketchData(pos=pos))


def sync_snapshot(scale: float = 1.0) -> S.Snapshot:
    """A sync engine's stats at a fixed time, shaped like seed 003's example."""
    def c(v: float) -> float:
        return float(round(v * scale))

    M = S.MetricSnapshot
    metrics = [
        M(name="sync_state", kind="state", help="Sync state", group="state", capacity=20, series=[S.Series(
            labels={}, current="Ready", entered_at=_ago(4980),
            time_in_state={"Ready": 4980.0, "CatchingUp": 2820.0, "Backfilling": 1440.0, "Uninitialized": 12.0},
            transitions={"Uninitialized->Backfilling": 1, "Backfilling->CatchingUp": 1, "CatchingUp->Ready": 1},
            history=[S.Transition(at=_ago(9252), from_="Uninitialized", to="Backfilling", reason="peer connected"),
                     S.Transition(at=_ago(7800), from_="Backfilling", to="CatchingUp", reason="backfill complete"),
                     S.Transition(at=_ago(4980), from_="CatchingUp", to="Ready", reason="caught up")])]),
        M(name="broadcasts_sent", kind="counter", help="Broadcasts sent", group="operations", label_names=["kind"],
          series=[S.Series(labels={"kind": "state"}, value=c(547)), S.Series(labels={"kind": "shared"}, value=c(687))]),
        M(name="changes_received", kind="counter", help="Changes received", group="operations",
          label_names=["peer", "model"], series=[
              S.Series(labels={"peer": "A", "model": "entry"}, value=c(2000)),
              S.Series(labels={"peer": "A", "model": "tag"}, value=c(63)),
              S.Series(labels={"peer": "B", "model": "entry"}, value=c(500)),
              S.Series(labels={"peer": "B", "model": "location"}, value=c(4))]),
        M(name="changes_rejected", kind="counter", help="Changes rejected", group="operations", series=[
            S.Series(labels={}, value=c(4))]),
        M(name="buffer_queue_depth", kind="gauge", help="Buffer queue depth", group="operations", series=[
            S.Series(labels={}, value=0.0, updated_at=_ago(3))]),
        M(name="entries_synced", kind="counter", help="Records synced", group="data", label_names=["model"], series=[
            S.Series(labels={"model": "entries"}, value=c(105000)),
            S.Series(labels={"model": "content_identities"}, value=c(345)),
            S.Series(labels={"model": "locations"}, value=c(12)),
            S.Series(labels={"model": "tags"}, value=c(75))]),
        M(name="bytes_transferred", kind="counter", help="Bandwidth", unit="bytes", group="data",
          label_names=["direction"], series=[
              S.Series(labels={"direction": "sent"}, value=c(45_200_000)),
              S.Series(labels={"direction": "received"}, value=c(127_800_000))]),
        M(name="peer_online", kind="gauge", help="Peer online", group="data", label_names=["peer"], series=[
            S.Series(labels={"peer": "A"}, value=1.0, updated_at=_ago(5)),
            S.Series(labels={"peer": "B"}, value=0.0, updated_at=_ago(5))]),
        M(name="apply_latency", kind="histogram", help="Apply latency", unit="ms", group="performance",
          label_names=["model"], series=[
              _hist({"model": "entry"}, [5, 8, 10, 12, 12, 15, 20, 89]),
              _hist({"model": "tag"}, [3, 4])]),
        M(name="backfill_request_latency", kind="histogram", help="Backfill request latency", unit="seconds",
          group="performance", series=[_hist({}, [0.12, 0.3, 0.342, 2.1])]),
        M(name="sync_errors", kind="events", help="Sync errors", group="errors", capacity=100, series=[S.Series(
            labels={}, total=int(c(3)), by_type={"network": int(c(2)), "apply": int(c(1))}, recent=[
                {"type": "network", "message": "connection reset by peer", "device": "B", "at": _ago(1265).isoformat()},
                {"type": "apply", "message": "missing parent entry", "entry_id": 12345, "at": _ago(1070).isoformat()},
                {"type": "network", "message": "timeout", "device": "B", "at": _ago(877).isoformat()}])]),
        M(name="retry_queue_depth", kind="gauge", help="", series=[S.Series(labels={}, value=0.0, updated_at=_ago(1))]),
    ]
    return S.Snapshot(taken_at=T, tracking_since=_ago(86400 + 9252), session_started_at=_ago(9252), scope="all",
                      metrics=metrics)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VITALS_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with VITALS_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; see the diff above"


def test_full_view_matches_golden():
    _golden("sync_all.txt", R.render_text(sync_snapshot(), title="Sync Metrics", tz=UTC))


def test_window_and_filter_view_matches_golden():
    snap = msgspec.structs.replace(sync_snapshot(), window={"since": _ago(3600), "until": T})
    snap = apply(snap, Query(where={"peer": "B"}))
    _golden("sync_peer_b_window.txt", R.render_text(snap, title="Sync Metrics", tz=UTC))


def test_compare_view_matches_golden():
    now = msgspec.structs.replace(sync_snapshot(), window={"since": _ago(86400), "until": T})
    before = msgspec.structs.replace(sync_snapshot(0.8), window={"since": _ago(2 * 86400), "until": _ago(86400)})
    text = R.render_text(now, title="Sync Metrics", previous=before, tz=UTC)
    assert "▲" in text
    _golden("sync_compare.txt", text)


def test_groups_order_and_default_section():
    snap = sync_snapshot()
    names = [name for name, _ in R.sections(snap)]
    assert names[0] == "state" and names[-1] == ""
    assert [n for n, _ in R.sections(snap, order=("errors",))][0] == "errors"
    text = R.render_text(apply(snap, Query(metrics=("retry_*",))), tz=UTC)
    assert "\nMetrics\n" in text and "Retry queue depth: 0" in text


def test_empty_and_color():
    empty = S.empty(T.timestamp())
    assert "No metrics match." in R.render_text(empty, tz=UTC)
    colored = R.render_text(sync_snapshot(), tz=UTC, color=True)
    assert "\x1b[" in colored
    assert "\x1b[" not in R.render_text(sync_snapshot(), tz=UTC)


@pytest.mark.parametrize("value,text", [(0.045, "45ms"), (8.4, "8.4s"), (2832, "47m 12s"), (4980, "1h 23m"),
                                        (9252, "2h 34m"), (93600, "1d 2h"), (0, "0s"), (0.0021, "2.1ms")])
def test_fmt_duration(value, text):
    assert R.fmt_duration(value) == text


@pytest.mark.parametrize("value,text", [(45_200_000, "45.2 MB"), (173_000_000, "173.0 MB"), (512, "512 B"),
                                        (1_500, "1.5 kB"), (2_000_000_000, "2.0 GB")])
def test_fmt_bytes(value, text):
    assert R.fmt_bytes(value) == text


@pytest.mark.parametrize("part,whole,text", [(58, 100, "58%"), (998, 1000, "99.8%"), (2, 1000, "0.2%"),
                                             (1, 10000, "0.01%"), (94, 1000, "9.4%"), (0, 5, "0%"), (1, 0, "-")])
def test_fmt_percent(part, whole, text):
    assert R.fmt_percent(part, whole) == text


def test_fmt_number_and_value():
    assert R.fmt_number(1234567) == "1,234,567"
    assert R.fmt_number(53.666) == "53.67"
    assert R.fmt_value(2100, "ms") == "2.1s"
    assert R.fmt_value(12, "widgets") == "12 widgets"


# ---------------------------------------------------------------- any snapshot renders

_names = st.sampled_from(["a", "b_total", "latency", "queue", "errors"])
_label_sets = st.lists(st.fixed_dictionaries({"peer": st.sampled_from(["A", "B", "é", "x y"])}), max_size=12)
_numbers = st.floats(min_value=0, max_value=1e15, allow_nan=False) | st.integers(0, 10**12).map(float)


@st.composite
def _metric(draw):
    kind = draw(st.sampled_from(["counter", "gauge", "histogram", "state", "events"]))
    unit = draw(st.sampled_from(["", "bytes", "ms", "seconds", "things"]))
    labels = draw(_label_sets)
    series = []
    for lab in {tuple(sorted(d.items())): d for d in labels}.values():
        if kind in ("counter", "gauge"):
            series.append(S.Series(labels=lab, value=draw(_numbers)))
        elif kind == "histogram":
            values = draw(st.lists(st.floats(min_value=0.001, max_value=1e6), max_size=5))
            series.append(_hist(lab, values) if values else S.Series(labels=lab, count=0, sum=0.0))
        elif kind == "state":
            times = draw(st.dictionaries(st.sampled_from(["Idle", "Busy"]), st.floats(0, 1e7), max_size=2))
            series.append(S.Series(labels=lab, current=draw(st.sampled_from([None, "Idle", "Busy"])),
                                   entered_at=_ago(draw(st.integers(0, 10**6))), time_in_state=times,
                                   transitions={"Idle->Busy": 1} if times else {},
                                   history=[S.Transition(at=_ago(5), from_=None, to="Busy")] if times else []))
    if kind == "events":
        n = draw(st.integers(0, 4))
        series = [S.Series(labels={}, total=n, by_type={"net": n} if n else {}, recent=[
            {"type": "net", "message": draw(st.text(max_size=20)), "at": _ago(i).isoformat()} for i in range(n)])]
    name = draw(_names) + "_" + kind
    others = st.sampled_from(["", "a_counter", "b_total_counter", "queue_gauge", "latency_histogram"])
    ratio = draw(st.sampled_from(["share_of", "per"]))
    view = S.View(order=draw(st.integers(0, 6)), **{ratio: draw(others.filter(lambda o: o != name))},
                  ratio_unit=draw(st.sampled_from(["", "items/batch", "s"])),
                  status=draw(st.sampled_from(["", "a_gauge", "queue_gauge", "a_state"])) if labels else "",
                  display=draw(st.dictionaries(st.sampled_from(["A", "B", "é"]), st.text(max_size=8), max_size=2)),
                  local=draw(st.sampled_from(["", "A", "x y"])))
    return S.MetricSnapshot(name=name, kind=kind, unit=draw(st.sampled_from([unit, "timestamp"])),
                            group=draw(st.sampled_from(["", "ops", "state"])),
                            label_names=["peer"] if kind != "events" and labels else [], series=series,
                            view=draw(st.sampled_from([None, view])))


@settings(max_examples=60, deadline=None)
@given(st.lists(_metric(), max_size=6, unique_by=lambda m: m.name), st.booleans())
def test_any_snapshot_renders(metrics, compare):
    snap = S.Snapshot(taken_at=T, tracking_since=_ago(100), session_started_at=_ago(50), metrics=metrics)
    text = R.render_text(snap, previous=snap if compare else None, tz=UTC)
    assert text.startswith("Metrics\n━")
    for m in metrics:
        assert R.title_of(m) in text


# ---------------------------------------------------------------- the example app's store, as Spacedrive lays it out

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TITLE = "Sync Metrics (Library: My Library)"
EXAMPLE_UPTIME = 9252.0  # 2h 34m 12s, as in Spacedrive's example
EXAMPLE_TICK = 6.0


def load_sync_example():
    """examples/sync_engine.py as a module (its SyncMetrics declarations and SyncEngine)."""
    spec = importlib.util.spec_from_file_location("sync_engine_example", ROOT / "examples" / "sync_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_sync_example(path: Path, monkeypatch) -> tuple[appvitals.Registry, FakeClock]:
    """The example's engine, run for 2h 34m 12s of fake time into a store at `path` (deterministic:
    a seeded RNG and a fake clock for the registry, the instruments and the store); ends at T."""
    example = load_sync_example()
    clock = FakeClock(T.timestamp() - EXAMPLE_UPTIME)
    monkeypatch.setattr(time, "time", clock)
    monkeypatch.setattr(instruments, "_now", clock)
    reg = appvitals.Registry(clock=clock)
    metrics = example.SyncMetrics(reg)
    reg.attach(appvitals.Store(path), interval=300)
    engine = example.SyncEngine(metrics, random.Random(3), phase_seconds=1440, clock=clock)
    steps = int(EXAMPLE_UPTIME / EXAMPLE_TICK)
    for i in range(steps):
        clock.t += EXAMPLE_TICK
        engine.step()
        if i % 100 == 99:  # a flush (and a history point, for windows) every 10 minutes
            reg.flush()
    clock.t = T.timestamp()
    reg.detach()  # the final flush, at T
    return reg, clock


@pytest.fixture
def example_store(tmp_path, monkeypatch):
    path = tmp_path / "sync.db"
    reg, clock = run_sync_example(path, monkeypatch)
    return path, reg


def _read(path: Path, **query) -> S.Snapshot:
    store = appvitals.Store.open_readonly(path)
    try:
        return read_store(store, build(**query))
    finally:
        store.close()


def test_example_store_renders_like_spacedrive(example_store):
    path, _ = example_store
    text = R.render_text(_read(path), title=EXAMPLE_TITLE, tz=UTC)
    _golden("sync_example.txt", text)
    lines = text.splitlines()
    assert lines[0] == EXAMPLE_TITLE  # the title exactly, the scope on the header line
    assert lines[2].startswith("All sessions · ")
    assert "    Uptime: 2h 34m 12s" in lines
    sections = [line for line in lines if line and not line.startswith((" ", "━")) and line != lines[0]]
    assert sections[1:] == ["State", "Operations", "Data", "Performance", "Errors"]  # as declared
    # ratios, "ago", display names, status and the local device
    assert re.search(r"^    Changes applied: [\d,]+ \(9\d(\.\d)?%\)$", text, re.M), text
    assert re.search(r"^    Batches: [\d,]+ \(avg [\d.]+ items/batch\)$", text, re.M)
    assert re.search(r"^  Retry successes: [\d,]+ \(\d+(\.\d)?%\)$", text, re.M)
    assert re.search(r"^  ├─ Device A \(MacBook\): [\d,]+ \(\d+%\) \(online\)$", text, re.M)
    assert re.search(r"^  └─ This device: [\d,]+ \(\d+%\)$", text, re.M)
    assert re.search(r"^  ├─ Device A \(MacBook\): (\d+s|just now)( ago)? \(online\)$", text, re.M)
    assert "HLC physical drift: " in text and "Active backfill sessions: " in text
    # blocks inside a section, as Spacedrive's "Broadcasts:" and "Receives:"
    operations = text[text.index("\nOperations\n"):text.index("\nData\n")]
    assert [line for line in operations.splitlines() if line.startswith("  ") and not line.startswith("   ")] == [
        "  Broadcasts:", "  Receives:", "  Backfill:"]



def test_ratios_are_computed_over_the_window(example_store):
    path, _ = example_store
    everything = _read(path)
    hour = _read(path, since=(T - dt.timedelta(hours=1)).isoformat())
    assert 0 < hour.value("changes_received") < everything.value("changes_received")
    for snap in (everything, hour):
        applied = snap.metric("changes_applied")
        assert applied.ratio == snap.value("changes_applied") / snap.value("changes_received")
        batches = snap.metric("broadcast_batches_sent")
        assert batches.ratio == snap.value("broadcasts_sent") / snap.value("broadcast_batches_sent")
    assert hour.metric("changes_applied").ratio != everything.metric("changes_applied").ratio
    text = R.render_text(hour, title=EXAMPLE_TITLE, tz=UTC)
    shown = f"Changes applied: {int(hour.value('changes_applied')):,} ({R.fmt_percent(hour.metric('changes_applied').ratio, 1)})"
    assert shown in text


# ---------------------------------------------------------------- times, declared views


@pytest.mark.parametrize("value,text", [(9252, "2h 34m 12s"), (0, "0s"), (45.7, "45s"), (3600, "1h"),
                                        (93784, "1d 2h 3m 4s"), (720, "12m")])
def test_fmt_uptime(value, text):
    assert R.fmt_uptime(value) == text


def test_fmt_ago():
    assert R.fmt_ago(T.timestamp() - 125, T) == "2m 5s ago"
    assert R.fmt_ago(T.timestamp() - 0.2, T) == "just now"
    assert R.fmt_ago(T.timestamp() + 3, T) == "in 3s"
    assert R.fmt_ago(0, T) == "never" and R.fmt_ago(None, T) == "never"


def _viewed(name, kind="counter", order=0, series=(), group="", labels=(), unit="", **view) -> S.MetricSnapshot:
    return S.MetricSnapshot(name=name, kind=kind, group=group, unit=unit, label_names=list(labels),
                            series=list(series), view=S.View(order=order, **view))


def test_timestamp_gauge_reads_ago_in_the_view_and_iso_in_json():
    last = _viewed("last_sync", "gauge", 1, [S.Series(labels={"peer": "A"}, value=T.timestamp() - 125),
                                             S.Series(labels={"peer": "B"}, value=0.0)],
                   labels=("peer",), unit="timestamp")
    seen = _viewed("last_seen", "gauge", 2, [S.Series(labels={}, value=T.timestamp() - 7200)], unit="timestamp")
    snap = S.Snapshot(taken_at=T, tracking_since=_ago(9000), session_started_at=_ago(9000), metrics=[last, seen])
    text = R.render_text(snap, tz=UTC)
    assert "  ├─ A: 2m 5s ago\n  └─ B: never\n" in text and "  Last seen: 2h ago\n" in text
    doc = msgspec.json.decode(apply(snap, Query()).to_json())
    series = doc["metrics"][0]["series"]
    assert series[0]["at"] == "2025-10-23T13:57:55Z" and "at" not in series[1]
    assert series[0]["value"] == T.timestamp() - 125  # the number stays for programs


def test_sections_and_lines_follow_declaration_order():
    snap = S.Snapshot(taken_at=T, tracking_since=_ago(60), session_started_at=_ago(60), metrics=[
        _viewed("a_errors", "events", 5, [S.Series(labels={}, total=0)], group="errors"),
        _viewed("b_sent", "counter", 2, [S.Series(labels={}, value=1.0)], group="ops"),
        _viewed("c_state", "state", 4, [S.Series(labels={}, current="Ready")], group="state"),
        _viewed("d_recv", "counter", 1, [S.Series(labels={}, value=2.0)], group="ops"),
        _viewed("e_free", "gauge", 3, [S.Series(labels={}, value=2.0)]),
    ])
    assert [(name, [m.name for m in ms]) for name, ms in R.sections(snap)] == [
        ("ops", ["d_recv", "b_sent"]), ("state", ["c_state"]), ("errors", ["a_errors"]), ("", ["e_free"])]
    # --group still picks the order
    assert [name for name, _ in R.sections(snap, order=("errors", "ops"))][:2] == ["errors", "ops"]


def test_ratios_status_display_and_this_device():
    received = _viewed("changes_received", order=1, series=[S.Series(labels={}, value=2567.0)])
    applied = _viewed("changes_applied", order=2, series=[S.Series(labels={}, value=2563.0)],
                      share_of="changes_received")
    batches = _viewed("broadcast_batches", order=3, series=[S.Series(labels={}, value=23.0)],
                      per="broadcasts_sent", ratio_unit="items/batch")
    sent = _viewed("broadcasts_sent", order=4, series=[S.Series(labels={}, value=1234.0)])
    sessions = _viewed("backfill_sessions", order=5, series=[S.Series(labels={}, value=0.0)], per="backfill_rounds")
    rounds = _viewed("backfill_rounds", order=6, series=[S.Series(labels={}, value=12.0)])
    devices = _viewed("records_by_device", order=7, labels=("peer",), status="peer_online", local="me",
                      display={"A": "Device A (MacBook)", "B": "Device B (Desktop)"}, series=[
                          S.Series(labels={"peer": "A"}, value=75000.0), S.Series(labels={"peer": "B"}, value=30000.0),
                          S.Series(labels={"peer": "me"}, value=432.0)])
    online = _viewed("peer_online", "gauge", 8, labels=("peer",), series=[
        S.Series(labels={"peer": "A"}, value=1.0), S.Series(labels={"peer": "B"}, value=0.0),
        S.Series(labels={"peer": "me"}, value=1.0)], status_text={"1": "online", "0": "offline"})
    snap = S.Snapshot(taken_at=T, tracking_since=_ago(60), session_started_at=_ago(60),
                      metrics=[received, applied, batches, sent, sessions, rounds, devices, online])
    text = R.render_text(snap, tz=UTC)
    assert "  Changes applied: 2,563 (99.8%)\n" in text
    assert "  Broadcast batches: 23 (avg 53.7 items/batch)\n" in text
    assert "  Backfill sessions: 0 (avg -)\n" in text  # nothing to divide by: said so, no error
    assert ("  ├─ Device A (MacBook): 75,000 (71%) (online)\n  ├─ Device B (Desktop): 30,000 (28%) (offline)\n"
            "  └─ This device: 432 (0.4%)\n") in text
    assert "  ├─ Device A (MacBook): online\n" not in text and "  ├─ A: online\n" in text  # a status gauge reads as words
    derived = apply(snap, Query())
    assert derived.metric("changes_applied").ratio == 2563 / 2567
    assert derived.metric("broadcast_batches").ratio == 1234 / 23
    assert [s.status for s in derived.metric("records_by_device").series] == ["online", "offline", None]
    # --metric keeps a ratio whose other metric it leaves out
    alone = apply(snap, Query(metrics=("changes_applied",)))
    assert alone.metric("changes_applied").ratio == 2563 / 2567
    assert "Changes applied: 2,563 (99.8%)" in R.render_text(alone, tz=UTC)


def test_view_options_are_checked_at_declaration():
    reg = appvitals.Registry()
    with pytest.raises(TypeError, match="unknown option 'shares_of'.*share_of"):
        reg.counter("a", shares_of="b")
    with pytest.raises(ValueError, match="share_of or per, not both"):
        reg.counter("b", share_of="x", per="y")
    with pytest.raises(ValueError, match="refer to itself"):
        reg.counter("c", share_of="c")
    with pytest.raises(ValueError, match="status= needs a labelled metric"):
        reg.counter("d", status="online")
    with pytest.raises(TypeError, match="metric 'e'"):
        reg.counter("e", ratio_unit=3)
    g = reg.gauge("online", labels=("peer",), status_text={1: "online", 0: "offline"}, display={7: "Seven"})
    assert g.view.status_text == {"1": "online", "0": "offline"} and g.view.display == {"7": "Seven"}
    assert [m.view.order for m in reg.metrics()] == [1]
    assert appvitals.Registry(enabled=False).counter("x", share_of="y") is not None  # a no-op, no checks needed


def test_blocks_inside_a_section():
    snap = S.Snapshot(taken_at=T, tracking_since=_ago(60), session_started_at=_ago(60), metrics=[
        _viewed("sent", order=1, series=[S.Series(labels={}, value=1.0)], group="ops/broadcasts"),
        _viewed("queue", "gauge", 2, [S.Series(labels={}, value=0.0)], group="ops"),
        _viewed("received", order=3, series=[S.Series(labels={}, value=2.0)], group="ops/receives"),
        _viewed("batches", order=4, series=[S.Series(labels={}, value=3.0)], group="ops/broadcasts"),
        _viewed("lag", "gauge", 5, [S.Series(labels={}, value=0.0)], group="perf"),
    ])
    assert [(name, [m.name for m in ms]) for name, ms in R.sections(snap)] == [
        ("ops", ["sent", "batches", "queue", "received"]), ("perf", ["lag"])]
    text = R.render_text(snap, tz=UTC)
    assert ("\nOps\n  Broadcasts:\n    Sent: 1\n    Batches: 3\n\n  Queue: 0\n\n  Receives:\n    Received: 2\n\nPerf\n"
            in text), text
    # --group picks a whole section with its blocks, or one block
    assert [m.name for m in apply(snap, Query(groups=("ops",))).metrics] == ["sent", "queue", "received", "batches"]
    assert [m.name for m in apply(snap, Query(groups=("ops/receives",))).metrics] == ["received"]
