"""The periodic stats log: period_rows, `vitals log`, and reg.attach(log=...) across restarts and SIGKILL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import appvitals
from appvitals import Registry, Store
from appvitals.stats.store import HistoryPolicy

HERE = Path(__file__).resolve().parent
APP_CHILD = str(HERE / "app_child.py")
SRC = str(HERE.parents[1] / "src")
DAY = 86400.0
T0 = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc).timestamp()  # a Monday


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VITALS_STORE_KEY"}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _session(db: Path, clock: Clock, steps: list[tuple[float, int, float]]) -> None:
    """One run of an app: at each (time, messages, queue depth) step, count and flush."""
    reg = Registry(clock=clock)
    msgs = reg.counter("msgs", "Messages", labels=("server",))
    depth = reg.gauge("queue_depth", "Queue depth")
    lat = reg.histogram("latency", "Latency", unit="ms")
    reg.attach(Store(db, history=HistoryPolicy(fine_every=1.0)), interval=60)
    for t, n, d in steps:
        clock.t = t
        msgs.labels(server="smp1").inc(n)
        depth.set(d)
        for i in range(n):
            lat.observe(10.0 + i)
        reg.flush()
    reg.detach()


def test_rows_add_sessions_up_across_restarts(tmp_path):
    db = tmp_path / "stats.db"
    clock = Clock(T0)
    # day 1: one session; day 2: two sessions (a restart at noon); day 3: one
    _session(db, clock, [(T0 + 3600, 5, 1.0), (T0 + 7200, 5, 2.0)])
    _session(db, clock, [(T0 + DAY + 3600, 3, 4.0)])
    _session(db, clock, [(T0 + DAY + 43200, 4, 5.0), (T0 + 2 * DAY + 60, 1, 7.0)])
    store = Store.open_readonly(db)
    rows = appvitals.period_rows(store, every="day", since=T0, now=T0 + 3 * DAY)
    assert [r["period"] for r in rows] == ["2026-11-30", "2026-12-01", "2026-12-02"]
    assert [r["msgs{server=smp1}:delta"] for r in rows] == [10, 7, 1]  # the restart day adds both sessions
    assert [r["msgs{server=smp1}"] for r in rows] == [10, 17, 18]
    assert [r["queue_depth"] for r in rows] == [2.0, 5.0, 7.0]
    assert [r["latency:count"] for r in rows] == [10, 7, 1]
    assert rows[0]["latency:p50"] is not None and rows[0]["start"] == "2026-11-30T00:00:00+00:00"
    week = appvitals.period_rows(store, every="week", since=T0, now=T0 + 7 * DAY)
    assert [(r["period"], r["msgs{server=smp1}:delta"]) for r in week] == [("2026-W49", 18)]
    # an open period is no row
    assert len(appvitals.period_rows(store, every="day", since=T0, now=T0 + 2 * DAY + 100)) == 2
    store.close()


def test_reset_never_gives_a_negative_delta(tmp_path):
    db = tmp_path / "stats.db"
    clock = Clock(T0 + 3600)
    reg = Registry(clock=clock)
    msgs = reg.counter("msgs")
    reg.attach(Store(db, history=HistoryPolicy(fine_every=1.0)), interval=60)
    msgs.inc(10)
    reg.flush()
    clock.t = T0 + DAY + 3600
    reg.reset()
    msgs.inc(2)
    reg.flush()
    reg.detach()
    with Store.open_readonly(db) as store:
        rows = appvitals.period_rows(store, every="day", since=T0, now=T0 + 2 * DAY)
    # reset() forgot the first day (its history too): that row is empty, the next counts from zero
    assert "msgs:delta" not in rows[0] and rows[1]["msgs:delta"] == 2 and rows[1]["msgs"] == 2


def test_distinct_counts_per_period():
    reg = Registry()
    reg.use_distinct_key(b"appvitals-tests!")  # fixed: the same registers every run
    d = reg.distinct("active_queues", labels=("server",))
    for i in range(30):
        d.labels(server="smp1").add(f"q{i}")
    from appvitals.stats import periods

    class Fake:  # period_rows only needs these from a store
        tracking_since = T0

        def history_times(self):
            return []

        def snapshot(self, scope="all"):
            return reg.snapshot()

        def history_at(self, ts):
            return None

    now = dt.datetime.now(dt.timezone.utc)
    tomorrow = (now + dt.timedelta(days=1)).timestamp()
    rows = periods.period_rows(Fake(), every="day", since=now.timestamp() - 10, now=tomorrow)
    assert rows[-1]["period"] == now.date().isoformat()
    assert rows[-1]["active_queues{server=smp1}"] == 30


def test_vitals_log_csv_and_json(tmp_path):
    db = tmp_path / "stats.db"
    clock = Clock(T0)
    _session(db, clock, [(T0 + 3600, 5, 1.0), (T0 + DAY + 3600, 2, 3.0)])
    out = subprocess.run([sys.executable, "-m", "appvitals.cli", "log", "--db", str(db), "--since", "2026-11-30",
                          "--until", "2026-12-02"], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["period"], r["msgs{server=smp1}:delta"]) for r in rows] == [("2026-11-30", "5"), ("2026-12-01", "2")]
    out = subprocess.run([sys.executable, "-m", "appvitals.cli", "log", "--db", str(db), "--since", "2026-11-30",
                          "--until", "2026-12-02", "--format", "json", "--every", "week"], capture_output=True,
                         text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []  # that week has not ended by --until
    bad = subprocess.run([sys.executable, "-m", "appvitals.cli", "log", "--db", str(db), "--every", "fortnight"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _run_child(db: Path, log: Path, mode: str, start: int, stop: int) -> None:
    proc = subprocess.Popen([sys.executable, APP_CHILD, mode, str(db), str(start), str(stop), str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().startswith("flushed"), proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_attach_log_catches_up_appends_and_survives_sigkill(tmp_path):
    db = tmp_path / "stats.db"
    log = tmp_path / "stats.csv"
    # an app that ran three days ago (its clock set back), killed with SIGKILL
    _run_child(db, log, "days-ago-3", 0, 100)
    first = log.read_text() if log.exists() else ""
    # started again today: the days that closed while it was down are appended on start
    _run_child(db, log, "days-ago-0", 100, 150)
    text = log.read_text()
    assert text.startswith(first)
    lines = list(csv.reader(io.StringIO(text)))
    header, rows = lines[0], [r for r in lines[1:] if r[0] != "period"]
    assert header[:3] == ["period", "start", "end"]
    periods_written = [r[0] for r in rows]
    assert len(periods_written) >= 3 and periods_written == sorted(set(periods_written))
    col = header.index("msgs{server=smp1}:delta")
    assert sum(float(r[col] or 0) for r in rows) == 100  # the earlier run's messages, in the closed days
    # a third start (SIGKILL again) appends nothing twice and rewrites nothing
    _run_child(db, log, "days-ago-0", 150, 160)
    assert log.read_text() == text


def test_new_columns_are_appended_never_shifted(tmp_path):
    from appvitals.stats.periods import PeriodLog

    db = tmp_path / "stats.db"
    clock = Clock(T0)
    _session(db, clock, [(T0 + 3600, 5, 1.0)])
    path = tmp_path / "stats.csv"
    with Store.open_readonly(db) as store:
        assert PeriodLog(str(path)).catch_up(store, now=T0 + DAY + 1) == 1
    first = path.read_text()
    # a new metric appears the next day
    reg = Registry(clock=clock)
    reg.counter("msgs", "Messages", labels=("server",))
    reg.counter("errors", "Errors").inc(2)
    clock.t = T0 + DAY + 3600
    reg.attach(Store(db, history=HistoryPolicy(fine_every=1.0)), interval=60)
    reg.flush()
    reg.detach()
    with Store.open_readonly(db) as store:
        assert PeriodLog(str(path)).catch_up(store, now=T0 + 2 * DAY + 1) == 1
    text = path.read_text()
    assert text.startswith(first)
    lines = list(csv.reader(io.StringIO(text)))
    old_header, new_header = lines[0], lines[2]
    assert new_header[: len(old_header)] == old_header and "errors:delta" in new_header[len(old_header):]
    assert lines[3][new_header.index("errors:delta")] == "2"
