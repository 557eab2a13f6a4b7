"""The periodic stats log: one row per closed hour, day, ISO week or month (UTC).

A row is read from the store's cumulative history points (kept across restarts, so a period
that spans a restart adds its sessions up): for the period [start, end), `later` is the last
point at or before `end` and `earlier` the last one at or before `start`.

Columns (stable names, so that rows stay readable when metrics come and go):
- `period`, `start`, `end`;
- a counter series: `name{label=value,...}` (its value at the end) and `...:delta` (within
  the period; never negative);
- a gauge series: `name{...}` (its last value);
- a distinct series: `name{...}` (distinct ids within that day/week/month; left empty for
  hours, which keep no sketch of their own);
- a histogram series: `name{...}:count`, `:p50`, `:p99` (within the period).

`PeriodLog` appends such rows to a CSV file as periods close: a header line, then rows; when
new columns appear a new header line is appended that keeps the old columns in their places
and adds the new ones at the end. Earlier lines are never rewritten.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import threading
from collections.abc import Iterable
from typing import Any

from appvitals.stats import hll as _hll
from appvitals.stats import snapshot as _snap

EVERY = ("hour", "day", "week", "month")
FIXED = ("period", "start", "end")
_UTC = dt.timezone.utc


def period_start(ts: float, every: str) -> dt.datetime:
    """The start (UTC) of the period holding epoch seconds `ts`."""
    t = dt.datetime.fromtimestamp(ts, _UTC)
    if every == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if every == "day":
        return day
    if every == "week":
        return day - dt.timedelta(days=day.weekday())
    if every == "month":
        return day.replace(day=1)
    raise ValueError(f"every must be one of {', '.join(EVERY)}, not {every!r}")


def next_start(start: dt.datetime, every: str) -> dt.datetime:
    """The start of the period after the one starting at `start`."""
    if every == "hour":
        return start + dt.timedelta(hours=1)
    if every == "day":
        return start + dt.timedelta(days=1)
    if every == "week":
        return start + dt.timedelta(days=7)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def period_name(start: dt.datetime, every: str) -> str:
    """"2026-12-03T14" (hour), "2026-12-03" (day), "2026-W49" (week), "2026-12" (month)."""
    if every == "hour":
        return start.strftime("%Y-%m-%dT%H")
    if every == "day":
        return start.date().isoformat()
    if every == "week":
        return _hll.week_of(start.date().isoformat())
    return start.strftime("%Y-%m")


def column(name: str, labels: dict[str, str], suffix: str = "") -> str:
    """`name{a=1,b=2}:suffix` (labels in their order; no braces without labels)."""
    inner = ",".join(f"{k}={v}" for k, v in labels.items())
    return name + ("{" + inner + "}" if inner else "") + (":" + suffix if suffix else "")


def period_rows(store: Any, every: str = "day", since: Any = None, until: Any = None,
                now: float | None = None) -> list[dict[str, Any]]:
    """One dict per period that closed between `since` (default: when tracking started) and `until`
    (default: now), oldest first. See the module docstring for the columns."""
    if every not in EVERY:
        raise ValueError(f"every must be one of {', '.join(EVERY)}, not {every!r}")
    now = dt.datetime.now(_UTC).timestamp() if now is None else now
    if since is not None:
        since_ts = _epoch(since)
    else:  # from the start of tracking, or of the oldest history point (a backup imported, a clock set back)
        times = store.history_times()
        since_ts = min([store.tracking_since, *times[:1]])
    until_ts = min(_epoch(until), now) if until is not None else now
    start = period_start(since_ts, every)
    latest = store.snapshot(scope="all")
    distinct = {m.name: m for m in latest.metrics if m.kind == "distinct"}
    rows = []
    while True:
        end = next_start(start, every)
        if end.timestamp() > until_ts:
            break
        rows.append(_row(store, every, start, end, distinct, now))
        start = end
    return rows


def _row(store: Any, every: str, start: dt.datetime, end: dt.datetime, distinct: dict, now: float) -> dict[str, Any]:
    later = store.history_at(end.timestamp())
    earlier = store.history_at(start.timestamp())
    row: dict[str, Any] = {"period": period_name(start, every), "start": start.isoformat(), "end": end.isoformat()}
    if later is not None:
        before = {m.name: {_snap._key(s.labels): s for s in m.series} for m in earlier.metrics} if earlier else {}
        for m in sorted(later.metrics, key=lambda m: m.name):
            old = before.get(m.name, {})
            for s in sorted(m.series, key=lambda s: tuple(s.labels.values())):
                prev = old.get(_snap._key(s.labels))
                if m.kind == "counter":
                    row[column(m.name, s.labels)] = s.value or 0.0
                    row[column(m.name, s.labels, "delta")] = max(0.0, (s.value or 0.0) - ((prev.value or 0.0) if prev else 0.0))
                elif m.kind == "gauge":
                    row[column(m.name, s.labels)] = s.value
                elif m.kind == "histogram":
                    w = s if prev is None else _snap.subtract_series("histogram", s, prev, start)
                    row[column(m.name, s.labels, "count")] = w.count or 0
                    row[column(m.name, s.labels, "p50")] = w.p50
                    row[column(m.name, s.labels, "p99")] = w.p99
    if every != "hour":
        key = period_name(start, every)
        for name in sorted(distinct):
            for s in sorted(distinct[name].series, key=lambda s: tuple(s.labels.values())):
                row[column(name, s.labels)] = _hll.period_count(s.hll, key, now) if s.hll is not None else None
    return row


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.astimezone()).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    from appvitals.timeparse import parse_epoch

    return parse_epoch(str(value))


def to_csv(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as CSV text with one header line (columns in order of first appearance)."""
    rows = list(rows)
    cols = list(columns or FIXED)
    for r in rows:
        cols += [c for c in r if c not in cols]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class PeriodLog:
    """Appends a row to a CSV file for every period that closes (and, on start, for those that
    closed while the application was down). Lines already in the file are never rewritten."""

    def __init__(self, path: str, every: str = "day") -> None:
        if every not in EVERY:
            raise ValueError(f"log_every must be one of {', '.join(EVERY)}, not {every!r}")
        self.path = os.fspath(path)
        self.every = every
        self._lock = threading.Lock()
        self._columns, self._last = self._read_tail()
        self.next_due: float = 0.0

    def _read_tail(self) -> tuple[list[str], str | None]:
        """The latest header's columns and the last row's period, from the file as it is."""
        columns: list[str] = []
        last = None
        if not os.path.exists(self.path):
            return columns, last
        with open(self.path, newline="", encoding="utf-8") as fh:
            for rec in csv.reader(fh):
                if not rec:
                    continue
                if rec[0] == "period":
                    columns = rec
                else:
                    last = rec[0]
        return columns, last

    def catch_up(self, store: Any, now: float | None = None) -> int:
        """Append the rows of every period closed since the last one in the file; returns how many."""
        with self._lock:
            now = dt.datetime.now(_UTC).timestamp() if now is None else now
            since = None
            if self._last is not None:
                start = _parse_period(self._last, self.every)
                since = next_start(start, self.every) if start is not None else None
            rows = period_rows(store, self.every, since=since.timestamp() if since else None, now=now)
            if self._last is not None:
                rows = [r for r in rows if r["period"] > self._last]
            self.next_due = next_start(period_start(now, self.every), self.every).timestamp()
            if not rows:
                return 0
            new = [c for r in rows for c in r if c not in self._columns]
            columns = list(self._columns)
            for c in new:
                if c not in columns:
                    columns.append(c)
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            if columns != self._columns:
                w.writerow(columns)  # the old columns keep their places; new ones go at the end
            for r in rows:
                w.writerow([_cell(r.get(c)) for c in columns])
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8", newline="") as fh:
                fh.write(out.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            self._columns = columns
            self._last = rows[-1]["period"]
            return len(rows)


def _parse_period(name: str, every: str) -> dt.datetime | None:
    try:
        if every == "hour":
            return dt.datetime.strptime(name, "%Y-%m-%dT%H").replace(tzinfo=_UTC)
        if every == "day":
            return dt.datetime.strptime(name, "%Y-%m-%d").replace(tzinfo=_UTC)
        if every == "week":
            year, week = name.split("-W")
            return dt.datetime.fromisocalendar(int(year), int(week), 1).replace(tzinfo=_UTC)
        return dt.datetime.strptime(name, "%Y-%m").replace(tzinfo=_UTC)
    except ValueError:
        return None
