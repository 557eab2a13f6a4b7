"""The one data model of in-app stats: a point-in-time Snapshot (SPEC section 4).

Used by the registry, the store, HTTP, the CLI and the tests alike. Everything here is
pure: merging snapshots (past + session = all), windows (later minus earlier), and
filtering by labels or metric name.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from appvitals.stats import hll as _hll
from appvitals.stats import sketch as _sketch

SCHEMA = 1
Kind = Literal["counter", "gauge", "histogram", "state", "events", "distinct"]
Scope = Literal["session", "past", "all"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def to_datetime(ts: float) -> dt.datetime:
    """Unix epoch seconds as an aware UTC datetime."""
    return _EPOCH + dt.timedelta(seconds=ts)


def moment(ts: float | None) -> dt.datetime | None:
    """A timestamp gauge's value as a datetime: None when unset (0) or not a time (out of range)."""
    if not ts or ts != ts:
        return None
    try:
        return to_datetime(ts)
    except (OverflowError, ValueError):
        return None


def to_epoch(value: dt.datetime) -> float:
    """An aware datetime as Unix epoch seconds."""
    return (value - _EPOCH).total_seconds()


class Transition(msgspec.Struct, omit_defaults=True, gc=False):
    """One state change, as kept in a state series' history."""

    at: dt.datetime
    to: str
    from_: str | None = msgspec.field(default=None, name="from")
    reason: str | None = None


class Series(msgspec.Struct, omit_defaults=True, gc=False):
    """One labelled series; which fields are set depends on the metric kind."""

    labels: dict[str, str]
    # counter, gauge
    value: float | None = None
    # histogram
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    sketch: _sketch.SketchData | None = None
    # state
    current: str | None = None
    entered_at: dt.datetime | None = None
    time_in_state: dict[str, float] | None = None
    transitions: dict[str, int] | None = None
    history: list[Transition] | None = None
    # events
    total: int | None = None
    by_type: dict[str, int] | None = None
    recent: list[dict[str, Any]] | None = None
    # gauges: when the value was last set (decides which value a merge keeps)
    updated_at: dt.datetime | None = None
    # distinct: estimated distinct ids this UTC day, ISO week, month, and since tracking_since
    day: float | None = None
    week: float | None = None
    month: float | None = None
    all: float | None = None
    hll: _hll.DistinctData | None = None
    # events: {"user=5": {type: count}}, so that forgetting a user takes its records off total and by_type
    by_field: dict[str, dict[str, int]] | None = None
    # derived by `derive()` for the view: a unit="timestamp" gauge's moment, and the word its
    # metric's status metric gives this series' label value ("online")
    at: dt.datetime | None = None
    status: str | None = None


class View(msgspec.Struct, omit_defaults=True, frozen=True, gc=False):
    """How a metric wants to be shown, as the app declared it (`reg.counter(..., share_of=...)`)."""

    order: int = 0  # declaration order in the registry, from 1 (0: unknown, e.g. an older store)
    share_of: str = ""  # this metric's total as a share of that metric's total: "(99.8%)"
    per: str = ""  # that metric's total per one of this: "(avg 53.7 items/batch)"
    ratio_unit: str = ""  # the unit of the `per` ratio ("items/batch", "s")
    status: str = ""  # a gauge or state machine with the same label: its value beside each line
    status_text: dict[str, str] = {}  # status values as words ({"1": "online", "0": "offline"})
    display: dict[str, str] = {}  # label values as display names ({"A": "Device A (MacBook)"})
    local: str = ""  # the label value that is this device: shown as "This device", without status


class MetricSnapshot(msgspec.Struct):
    """One metric with all its series."""

    name: str
    kind: Kind
    help: str = ""
    unit: str = ""
    group: str = ""
    label_names: list[str] = []
    capacity: int | None = None  # events: ring size; state: history size
    series: list[Series] = []
    view: View | None = None  # how the app wants it shown (declaration order, ratios, status)
    ratio: float | None = None  # derived: the share (share_of) or the average (per), see `derive()`

    def total(self) -> float:
        """The metric's aggregate, derived from its series (never kept as a second count)."""
        if self.kind in ("counter", "gauge"):
            return sum(s.value or 0 for s in self.series)
        if self.kind == "histogram":
            return sum(s.count or 0 for s in self.series)
        if self.kind == "events":
            return sum(s.total or 0 for s in self.series)
        if self.kind == "distinct":
            data = _hll.DistinctData()
            for s in self.series:
                data = _hll.merge(data, s.hll or _hll.DistinctData())
            return _hll.count(data.a)
        return float(len(self.series))


class Snapshot(msgspec.Struct):
    """A consistent point-in-time view of a registry (SPEC section 4)."""

    taken_at: dt.datetime
    tracking_since: dt.datetime
    session_started_at: dt.datetime
    scope: str = "all"
    metrics: list[MetricSnapshot] = []
    schema: int = SCHEMA
    window: dict[str, dt.datetime] | None = None

    def to_json(self) -> bytes:
        """The SPEC section 4 JSON."""
        return encode(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (dicts, lists, ISO strings)."""
        return msgspec.to_builtins(self)

    def metric(self, name: str) -> MetricSnapshot | None:
        """The metric of that name, or None."""
        for m in self.metrics:
            if m.name == name:
                return m
        return None

    def value(self, name: str, **labels: str) -> float:
        """Counter/gauge value of the series with these labels, summed over the labels not given
        (0 when none); without labels, the metric's total. A label the metric does not have raises
        ValueError."""
        m = self.metric(name)
        if m is None:
            return 0.0
        if not labels:
            return m.total()
        want = {k: str(v) for k, v in labels.items()}
        unknown = sorted(k for k in want if k not in m.label_names)
        if unknown:
            raise ValueError(f"metric {name!r} has labels {list(m.label_names)}, not {unknown}")
        # labels left out are summed over (msgs_sent by user, over every server)
        return float(sum(s.value or 0.0 for s in m.series if all(s.labels.get(k) == v for k, v in want.items())))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def encode(snap: Snapshot) -> bytes:
    """Snapshot -> JSON bytes."""
    return _encoder.encode(snap)


def decode(data: bytes | str) -> Snapshot:
    """JSON bytes -> Snapshot (unknown fields ignored)."""
    return _decoder.decode(data)


def empty(now: float, tracking_since: float | None = None, session_started_at: float | None = None, scope: str = "all") -> Snapshot:
    """A snapshot with no metrics."""
    return Snapshot(
        taken_at=to_datetime(now),
        tracking_since=to_datetime(tracking_since if tracking_since is not None else now),
        session_started_at=to_datetime(session_started_at if session_started_at is not None else now),
        scope=scope,
    )


# ---------------------------------------------------------------- merging


def _key(labels: Mapping[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def _later(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    """True when b is at least as recent as a."""
    if b is None:
        return a is None
    return a is None or b >= a


def merge_series(kind: str, a: Series, b: Series, capacity: int | None = None) -> Series:
    """Combine two series of the same labels: `b` is the later one. The result's `updated_at` is the
    later of the two."""
    out = _merge_series(kind, a, b, capacity)
    if kind not in ("gauge", "distinct") and out is not a and out is not b:
        out.updated_at = _max(a.updated_at, b.updated_at)
    return out


def _merge_series(kind: str, a: Series, b: Series, capacity: int | None = None) -> Series:
    if kind == "counter":
        return Series(labels=a.labels, value=(a.value or 0) + (b.value or 0))
    if kind == "gauge":
        return b if _later(a.updated_at, b.updated_at) else a
    if kind == "histogram":
        return _hist_from(a.labels, (a.count or 0) + (b.count or 0), (a.sum or 0) + (b.sum or 0),
                          _min(a.min, b.min), _max(a.max, b.max),
                          _sketch.merge(a.sketch or _sketch.SketchData(), b.sketch or _sketch.SketchData()))
    if kind == "state":
        newer, older = (b, a) if _later(a.entered_at, b.entered_at) else (a, b)
        history = sorted((a.history or []) + (b.history or []), key=lambda t: (t.at, t.to, t.from_ or ""))
        if capacity:
            history = history[-capacity:]
        return Series(
            labels=a.labels,
            current=newer.current,
            entered_at=newer.entered_at,
            time_in_state=_add_maps(a.time_in_state, b.time_in_state),
            transitions=_add_maps(a.transitions, b.transitions),
            history=history,
        )
    if kind == "events":
        recent = sorted((a.recent or []) + (b.recent or []), key=_record_order)
        if capacity:
            recent = recent[-capacity:]
        by_field = {k: _add_maps((a.by_field or {}).get(k), (b.by_field or {}).get(k))
                    for k in {*(a.by_field or {}), *(b.by_field or {})}}
        return Series(labels=a.labels, total=(a.total or 0) + (b.total or 0),
                      by_type=_add_maps(a.by_type, b.by_type), recent=recent, by_field=by_field or None)
    if kind == "distinct":
        data = _hll.merge(a.hll or _hll.DistinctData(), b.hll or _hll.DistinctData())
        return distinct_series(a.labels, data, None, _max(a.updated_at, b.updated_at))
    raise ValueError(f"unknown metric kind {kind!r}")


def distinct_series(labels: dict[str, str], data: _hll.DistinctData, now: float | None,
                    updated_at: dt.datetime | None = None) -> Series:
    """A distinct series with its day/week/month/all counts as of `now` (None: as of its own day)."""
    day, week, month, total = _hll.counts(data, now)
    return Series(labels=labels, day=day, week=week, month=month, all=total, hll=data, updated_at=updated_at)


def _record_order(record: dict[str, Any]) -> tuple:
    return (str(record.get("at", "")), msgspec.json.encode(record))


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def _add_maps(a: dict | None, b: dict | None) -> dict:
    out = dict(a or {})
    for k, v in (b or {}).items():
        out[k] = out.get(k, 0) + v
    return out


def _hist_from(labels, count, total, lo, hi, data: _sketch.SketchData) -> Series:
    if count <= 0:
        return Series(labels=labels, count=0, sum=0.0, sketch=data)
    return Series(
        labels=labels, count=count, sum=total, min=lo, max=hi,
        p50=_sketch.quantile(data, count, 0.5, lo, hi),
        p90=_sketch.quantile(data, count, 0.9, lo, hi),
        p99=_sketch.quantile(data, count, 0.99, lo, hi),
        sketch=data,
    )


def merge_metric(a: MetricSnapshot, b: MetricSnapshot) -> MetricSnapshot:
    """Combine two snapshots of one metric (b later); the later one's metadata wins."""
    by_key = {_key(s.labels): s for s in a.series}
    for s in b.series:
        k = _key(s.labels)
        by_key[k] = merge_series(b.kind, by_key[k], s, b.capacity) if k in by_key else s
    return msgspec.structs.replace(b, series=[by_key[k] for k in sorted(by_key)])


def merge(a: Snapshot, b: Snapshot, scope: str | None = None) -> Snapshot:
    """Combine two snapshots, `b` being the later: counters add, histograms merge, gauges take
    the latest value, states add times and counts, events keep the newest records. Associative."""
    metrics = {m.name: m for m in a.metrics}
    for m in b.metrics:
        metrics[m.name] = merge_metric(metrics[m.name], m) if m.name in metrics else m
    return Snapshot(
        taken_at=max(a.taken_at, b.taken_at),
        tracking_since=min(a.tracking_since, b.tracking_since),
        session_started_at=max(a.session_started_at, b.session_started_at),
        scope=scope or b.scope,
        metrics=[metrics[n] for n in sorted(metrics)],
    )


# ---------------------------------------------------------------- windows


def subtract_series(kind: str, later: Series, earlier: Series, since: dt.datetime) -> Series:
    """What happened to one series between two cumulative snapshots of it."""
    if kind == "counter":
        return Series(labels=later.labels, value=max(0.0, (later.value or 0) - (earlier.value or 0)))
    if kind == "gauge":
        return later
    if kind == "histogram":
        data = _sketch.subtract(later.sketch or _sketch.SketchData(), earlier.sketch or _sketch.SketchData())
        count = max(0, (later.count or 0) - (earlier.count or 0))
        lo = hi = None
        if count:
            values = [_sketch.bucket_value(i) for i in data.pos] + [-_sketch.bucket_value(i) for i in data.neg]
            if data.zero:
                values.append(0.0)
            lo, hi = min(values), max(values)
            # the exact extremes are known when they fell inside the window
            if later.min is not None and (earlier.min is None or later.min < earlier.min):
                lo = later.min
            if later.max is not None and (earlier.max is None or later.max > earlier.max):
                hi = later.max
        return _hist_from(later.labels, count, max(0.0, (later.sum or 0) - (earlier.sum or 0)), lo, hi, data)
    if kind == "state":
        times = {k: max(0.0, v - (earlier.time_in_state or {}).get(k, 0.0)) for k, v in (later.time_in_state or {}).items()}
        trans = {k: v - (earlier.transitions or {}).get(k, 0) for k, v in (later.transitions or {}).items()}
        return Series(
            labels=later.labels, current=later.current, entered_at=later.entered_at,
            time_in_state={k: v for k, v in times.items() if v > 0},
            transitions={k: v for k, v in trans.items() if v > 0},
            history=[t for t in (later.history or []) if t.at >= since],
        )
    if kind == "events":
        by_type = {k: v - (earlier.by_type or {}).get(k, 0) for k, v in (later.by_type or {}).items()}
        return Series(
            labels=later.labels, total=max(0, (later.total or 0) - (earlier.total or 0)),
            by_type={k: v for k, v in by_type.items() if v > 0},
            recent=[r for r in (later.recent or []) if _parse_at(r) > since],
        )
    if kind == "distinct":  # a distinct count cannot be subtracted: the counts as of the window's end
        return later
    raise ValueError(f"unknown metric kind {kind!r}")


def _parse_at(record: dict[str, Any]) -> dt.datetime:
    at = record.get("at")
    if isinstance(at, dt.datetime):
        return at
    try:
        return dt.datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH


def window(later: Snapshot, earlier: Snapshot | None) -> Snapshot:
    """The activity between two cumulative snapshots: counters and histograms subtract,
    gauges show the latest, states show time in state within the window, events the
    records inside it. With no earlier snapshot, everything in `later` is the window."""
    if earlier is None:
        out = msgspec.structs.replace(later)
        out.window = {"since": later.tracking_since, "until": later.taken_at}
        return out
    before = {m.name: {_key(s.labels): s for s in m.series} for m in earlier.metrics}
    metrics = []
    for m in later.metrics:
        old = before.get(m.name, {})
        series = []
        for s in m.series:
            prev = old.get(_key(s.labels))
            series.append(s if prev is None else subtract_series(m.kind, s, prev, earlier.taken_at))
        metrics.append(msgspec.structs.replace(m, series=series))
    return Snapshot(
        taken_at=later.taken_at, tracking_since=later.tracking_since, session_started_at=later.session_started_at,
        scope=later.scope, metrics=metrics, window={"since": earlier.taken_at, "until": later.taken_at},
    )


# ---------------------------------------------------------------- derived values

DEFAULT_STATUS_TEXT = {"0": "offline", "1": "online"}


def status_word(m: MetricSnapshot, s: Series, words: Mapping[str, str]) -> str | None:
    """A state's current state, or a gauge's value as a word (its text when `words` has none)."""
    if m.kind == "state":
        return s.current
    if m.kind == "gauge" and s.value is not None:
        key = str(int(s.value)) if float(s.value).is_integer() else str(s.value)
        return words.get(key, key)
    return None


def derive(snap: Snapshot) -> Snapshot:
    """Fill in what the view declarations imply: ratios (`share_of`, `per`), a timestamp gauge's
    moment (`at`) and each series' status word. Pure and idempotent: a ratio or status whose
    other metric is not in `snap` (filtered out) keeps the value it had."""
    by_name = {m.name: m for m in snap.metrics}
    out = []
    for m in snap.metrics:
        view = m.view
        changes: dict[str, Any] = {}
        if view is not None and (view.share_of or view.per):
            other = by_name.get(view.share_of or view.per)
            if other is not None and other.kind == m.kind == "histogram":
                pass  # ratios between counts of samples say little; not offered
            elif other is not None:
                mine, theirs = m.total(), other.total()
                if view.share_of:
                    changes["ratio"] = mine / theirs if theirs else None
                else:
                    changes["ratio"] = theirs / mine if mine else None
        series = m.series
        if m.unit == "timestamp" and m.kind == "gauge":
            series = [msgspec.structs.replace(s, at=moment(s.value)) for s in series]
        if view is not None and view.status and view.status in by_name and m.label_names:
            source = by_name[view.status]
            words = view.status_text or DEFAULT_STATUS_TEXT
            status_of: dict[tuple, str | None] = {}
            for s in source.series:
                status_of[_key(s.labels)] = status_word(source, s, words)
            series = [msgspec.structs.replace(s, status=None if view.local and view.local in s.labels.values()
                                              else _status_for(s.labels, source.label_names, status_of))
                      for s in series]
        if series is not m.series:
            changes["series"] = series
        out.append(msgspec.structs.replace(m, **changes) if changes else m)
    return msgspec.structs.replace(snap, metrics=out)


def _status_for(labels: Mapping[str, str], names: Iterable[str], status_of: Mapping[tuple, str | None]) -> str | None:
    """The status of the status metric's series whose labels this series shares."""
    return status_of.get(_key({n: labels[n] for n in names if n in labels}))


# ---------------------------------------------------------------- filters


def filter_snapshot(
    snap: Snapshot,
    where: Mapping[str, str] | None = None,
    metrics: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
) -> Snapshot:
    """Keep the series whose labels match `where` (metrics without such a label are dropped),
    the metrics whose names match any glob in `metrics`, and the metrics in `groups`."""
    patterns = list(metrics or [])
    group_set = set(groups or [])
    out = []
    for m in snap.metrics:
        if patterns and not any(fnmatch.fnmatchcase(m.name, p) for p in patterns):
            continue
        if group_set and m.group not in group_set and m.group.split("/", 1)[0] not in group_set:  # a section's blocks too
            continue
        if where:
            if m.kind == "events":
                recent = [r for r in (m.series[0].recent or []) if all(str(r.get(k)) == v for k, v in where.items())] if m.series else []
                if not recent and not all(k in m.label_names for k in where):
                    continue
                series = [msgspec.structs.replace(m.series[0], recent=recent)] if m.series else []
            else:
                if not all(k in m.label_names for k in where):
                    continue
                series = [s for s in m.series if all(s.labels.get(k) == str(v) for k, v in where.items())]
            out.append(msgspec.structs.replace(m, series=series))
        else:
            out.append(m)
    return msgspec.structs.replace(snap, metrics=out)


def label_keys(snap: Snapshot) -> set[str]:
    """Every label name used in a snapshot (and event record fields), for validating --where."""
    keys: set[str] = set()
    for m in snap.metrics:
        keys.update(m.label_names)
        if m.kind == "events":
            for s in m.series:
                for r in s.recent or []:
                    keys.update(k for k in r if k != "at")
    return keys


def drop_series(snap: Snapshot, match: Mapping[str, str], keep_totals: bool = False) -> Snapshot:
    """Remove every series whose labels include all of `match` (and event records that mention it,
    with their counts). With `keep_totals`, counters, histograms and distinct counts move into the
    series whose matched labels are "__forgotten__", and event totals stay."""
    want = {k: str(v) for k, v in match.items()}
    out = []
    for m in snap.metrics:
        if m.kind == "events":
            series = [forget_records(s, want, keep_totals) for s in m.series]
        else:
            series = [s for s in m.series if not all(s.labels.get(k) == v for k, v in want.items())]
            if keep_totals and m.kind in ("counter", "histogram", "distinct") and len(series) < len(m.series):
                by_key = {_key(s.labels): s for s in series}
                for s in m.series:
                    if all(s.labels.get(k) == v for k, v in want.items()):
                        labels = {k: (FORGOTTEN if k in want else v) for k, v in s.labels.items()}
                        moved = msgspec.structs.replace(s, labels=labels)
                        k = _key(labels)
                        by_key[k] = merge_series(m.kind, by_key[k], moved) if k in by_key else moved
                series = [by_key[k] for k in sorted(by_key)]
        out.append(msgspec.structs.replace(m, series=series))
    return msgspec.structs.replace(snap, metrics=out)


FORGOTTEN = "__forgotten__"


def forget_records(s: Series, want: Mapping[str, str], keep_totals: bool = False) -> Series:
    """An events series without the records matching `want`; their counts leave total and by_type
    too (exactly when one field is forgotten, from `by_field`), unless `keep_totals`."""
    def hit(r):
        return all(str(r.get(k)) == v for k, v in want.items())

    recent = [r for r in (s.recent or []) if not hit(r)]
    by_field = dict(s.by_field or {})
    tags = [f"{k}={v}" for k, v in want.items()]
    if len(tags) == 1 and tags[0] in by_field:
        gone = by_field.pop(tags[0])
    else:
        gone = {}
        for r in s.recent or []:
            if hit(r):
                t = str(r.get("type", "event"))
                gone[t] = gone.get(t, 0) + 1
    if keep_totals:
        return msgspec.structs.replace(s, recent=recent, by_field=by_field or None)
    by_type = {t: n - gone.get(t, 0) for t, n in (s.by_type or {}).items()}
    return msgspec.structs.replace(s, recent=recent, by_field=by_field or None,
                                   total=max(0, (s.total or 0) - sum(gone.values())),
                                   by_type={t: n for t, n in by_type.items() if n > 0})
