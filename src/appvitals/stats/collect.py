"""The collected form: every series' raw value, read in one consistent sweep.

This module is the one owner of that form. The registry collects to build snapshots, the
persister collects to find what changed since its last flush; both go through `collect()`
and turn rows into snapshot series with `metric_snapshot()`. The instruments only expose
their cells through public, lock-held accessors (`Counter.cells_locked()`,
`Metric.raw_locked()`); nothing here reaches into their private members.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable
from typing import Any

from appvitals.stats import snapshot as _snap
from appvitals.stats.instruments import MUTATION_LOCK, Counter, Metric, count_of
from appvitals.stats.sketch import SketchData


class CounterCells:
    """One counter's cells at the sweep: canonical keys, the cells' reprs and their extras."""

    __slots__ = ("extras", "keys", "texts")

    def __init__(self, keys: list, texts: list[str], extras: list) -> None:
        self.keys, self.texts, self.extras = keys, texts, extras

    def values(self) -> list[tuple[tuple[str, ...], float]]:
        """(key, value) for every series."""
        keys, texts, extras = self.keys, self.texts, self.extras
        return [(keys[i], count_of(texts[i]) + extras[i]) for i in range(len(texts))]

    def value(self, i: int) -> float:
        """Series `i`'s value."""
        return count_of(self.texts[i]) + self.extras[i]


class Collected:
    """Every series' raw value at one instant (`now`).

    `entries` holds (metric, data): for a counter `data` is a CounterCells; for every other
    kind a list of (key, raw) where raw is what the instrument keeps (see instruments.py)."""

    __slots__ = ("entries", "now")

    def __init__(self, now: float, entries: list[tuple[Metric, Any]]) -> None:
        self.now, self.entries = now, entries


def collect(metrics: Iterable[Metric], clock) -> Collected:
    """Read every series of `metrics` atomically under the mutation lock."""
    metrics = list(metrics)
    counters = [m for m in metrics if isinstance(m, Counter)]
    entries: list[tuple[Metric, Any]] = []
    with MUTATION_LOCK:
        for m in metrics:
            m.revive_locked()
        cells = [c.cells_locked() for c in counters]
        gc_enabled = gc.isenabled()
        gc.disable()  # a collection could run Python finalizers, letting another thread in mid-sweep
        try:
            # one C-level call: no bytecode runs, so no thread switch: all counters at one instant
            texts = list(map(repr, itertools.chain.from_iterable(c for _, c in cells)))
        finally:
            if gc_enabled:
                gc.enable()
        now = clock()
        offset = 0
        for c, (keys, cell_list) in zip(counters, cells):
            n = len(cell_list)
            entries.append((c, CounterCells(keys, texts[offset:offset + n], Counter.extras_of(cell_list))))
            offset += n
        for m in metrics:
            if not isinstance(m, Counter):
                entries.append((m, m.raw_locked()))
    return Collected(now, entries)


def to_snapshot(collected: Collected, tracking_since: float, session_started_at: float) -> _snap.Snapshot:
    """A collected form as a session Snapshot."""
    out = []
    now = collected.now
    for m, data in collected.entries:
        if isinstance(data, CounterCells):
            data = data.values()
        out.append(metric_snapshot(m, data, now))
    out.sort(key=lambda m: m.name)
    return _snap.Snapshot(
        taken_at=_snap.to_datetime(now),
        tracking_since=_snap.to_datetime(tracking_since),
        session_started_at=_snap.to_datetime(session_started_at),
        scope="session",
        metrics=out,
    )


def metric_snapshot(m: Metric, rows: list, now: float) -> _snap.MetricSnapshot:
    """Rows of (key, raw) of one metric (counter rows: (key, value)) as a MetricSnapshot."""
    names = m.label_names
    series: list[_snap.Series] = []
    kind = m.kind
    capacity = None
    if kind == "counter":
        series = [_snap.Series(labels=dict(zip(names, key)), value=float(v)) for key, v in rows]
    elif kind == "gauge":
        to_dt = _snap.to_datetime
        series = [_snap.Series(labels=dict(zip(names, key)), value=float(v), updated_at=to_dt(at) if at else None)
                  for key, (v, at) in rows]
    elif kind == "histogram":
        for key, (count, total, lo, hi, zero, pos, neg) in rows:
            data = SketchData(pos=pos, neg=neg, zero=zero)
            labels = dict(zip(names, key))
            series.append(_snap._hist_from(labels, count, total, lo if count else None, hi if count else None, data))
    elif kind == "state":
        capacity = m.history_size  # type: ignore[attr-defined]
        for key, (current, entered, times, transitions, history) in rows:
            if current is not None:
                times[current] = times.get(current, 0.0) + max(0.0, now - entered)
            series.append(_snap.Series(
                labels=dict(zip(names, key)), current=current, entered_at=_snap.to_datetime(entered),
                time_in_state=times, transitions=transitions,
                history=[_snap.Transition(at=_snap.to_datetime(at), from_=frm, to=to, reason=reason)
                         for at, frm, to, reason in history],
            ))
    elif kind == "events":
        capacity = m.capacity  # type: ignore[attr-defined]
        for key, (total, by_type, recent, by_field) in rows:
            for r in recent:
                r["at"] = _snap.to_datetime(r["at"]).isoformat()
            series.append(_snap.Series(labels=dict(zip(names, key)), total=total, by_type=by_type, recent=recent,
                                       by_field=by_field or None))
    elif kind == "distinct":
        for key, (data, last) in rows:
            series.append(_snap.distinct_series(dict(zip(names, key)), data, now,
                                                _snap.to_datetime(last) if last else None))
    series.sort(key=lambda s: tuple(s.labels.values()))
    return _snap.MetricSnapshot(name=m.name, kind=kind, help=m.help, unit=m.unit, group=m.group,
                                label_names=list(names), capacity=capacity, series=series, view=m.view)
