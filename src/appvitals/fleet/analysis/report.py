"""The drill-down report: one data model for the CLI, HTTP, the dashboard and tests.

`build_report(warehouse, since="12h", threshold=30)` asks the warehouse for compact counts
(`facts`), ranks explanations (`explain`) and assembles the answer to "how bad is it, and
where is it?": the share of high sessions, the explanations best first, the drill-down tree,
the share over time per version, a version x stage heatmap, two versions side by side and
the worst sessions to open.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping, Sequence

import msgspec

from appvitals.fleet.analysis import explain as _explain
from appvitals.fleet.analysis import facts as _facts
from appvitals.fleet.analysis.explain import Explanation, Settings
from appvitals.fleet.analysis.facts import Combo, Counts, Window
from appvitals.fleet.warehouse.base import Warehouse
from appvitals.fleet.wire.schema import attr_text, json_object
from appvitals.timeparse import TimeParseError, parse_time

VERSION_KEYS = ("app_version", "version", "appVersion", "app.version")
STAGE_KEYS = ("stage", "phase", "state")
MAX_TIMELINE_SERIES = 8
MAX_HEATMAP_ROWS = 12
WORST_SESSIONS = 20
_NICE_BUCKETS_S = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)


class ReportError(ValueError):
    """Bad report parameters; the message is meant for the user."""


class ReportWindow(msgspec.Struct):
    """The time range the report covers."""

    since: str
    until: str
    since_ms: int
    until_ms: int


class TreeNode(msgspec.Struct):
    """One level of the drill-down: 'of those, 80% ran 6.04'."""

    label: str
    attrs: dict[str, str]
    sessions: int
    high_sessions: int
    high_share: float
    share_of_parent: float  # of the parent's high sessions, the share that are in this node
    risk_ratio: float | None = None
    children: list[TreeNode] = []


class TimelineSeries(msgspec.Struct):
    """Share of high sessions per time bucket for one version."""

    name: str
    sessions: list[int]
    high_share: list[float | None]


class Timeline(msgspec.Struct):
    """Share of high sessions over time, per version (bucket start times in epoch ms)."""

    key: str | None
    bucket_ms: int
    times: list[int]
    series: list[TimelineSeries]


class Heatmap(msgspec.Struct):
    """For each (version, stage) cell: sessions that ran it, and the share of them high during it."""

    row_key: str | None
    col_key: str | None
    rows: list[str]
    cols: list[str]
    high_share: list[list[float | None]]
    sessions: list[list[int]]


class StageCell(msgspec.Struct):
    """One stage of one version."""

    sessions: int
    high_sessions: int
    high_share: float


class VersionSide(msgspec.Struct):
    """One version's numbers."""

    version: str
    sessions: int
    high_sessions: int
    high_share: float
    mean: float | None
    by_stage: dict[str, StageCell] = {}


class Comparison(msgspec.Struct):
    """Two versions side by side (by default the worst one and the most used other one)."""

    key: str | None
    a: VersionSide | None = None
    b: VersionSide | None = None


class WorstSession(msgspec.Struct):
    """A session worth opening."""

    session_id: str
    samples: int
    mean: float
    max: float
    high_phases: list[str]
    attrs: dict[str, str]


class Report(msgspec.Struct):
    """The drill-down report (SPEC section 5)."""

    window: ReportWindow
    metric: str
    threshold: float
    sessions: int
    high_sessions: int
    high_share: float
    units: int
    high_units: int
    explanations: list[Explanation]
    tree: TreeNode
    timeline: Timeline
    heatmap: Heatmap
    compare: Comparison
    worst_sessions: list[WorstSession]
    keys: dict[str, list[str]]
    settings: Settings
    candidates: int = 0
    took_ms: float = 0.0


def resolve_window(since: str | None = "12h", until: str | None = None, now: dt.datetime | None = None) -> ReportWindow:
    """Turn human `since`/`until` expressions into a window; raise ReportError on bad input."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        end = parse_time(until, now) if until else now
        start = parse_time(since, now) if since else end - dt.timedelta(hours=12)
    except TimeParseError as exc:
        raise ReportError(str(exc))
    if start >= end:
        raise ReportError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    return ReportWindow(
        since=start.isoformat().replace("+00:00", "Z"), until=end.isoformat().replace("+00:00", "Z"),
        since_ms=int(start.timestamp() * 1000), until_ms=int(end.timestamp() * 1000),
    )


def build_report(
    wh: Warehouse,
    since: str | None = "12h",
    until: str | None = None,
    metric: str = "cpu",
    threshold: float = 30.0,
    min_support: float | None = None,
    compare: Sequence[str] | None = None,
    settings: Settings | None = None,
    now: dt.datetime | None = None,
) -> Report:
    """Build the drill-down report over a warehouse for a time window."""
    t0 = time.perf_counter()
    if threshold is None or threshold != threshold or threshold < 0:
        raise ReportError("threshold must be a number >= 0")
    if not metric or not re.fullmatch(r"[\w.:-]{1,128}", metric):
        raise ReportError(f"metric: not a metric name: {metric!r}")
    settings = msgspec.structs.replace(settings or Settings())
    if min_support is not None:
        if min_support <= 0:
            raise ReportError("min_support must be > 0 (a share of high sessions below 1, a count from 1)")
        settings.min_support = float(min_support)
    rw = resolve_window(since, until, now)
    window = Window(rw.since_ms, rw.until_ms)

    bucket_ms = _bucket_ms(rw.until_ms - rw.since_ms)
    facts = _facts.fetch_facts(wh, window, metric, threshold, bucket_ms, VERSION_KEYS)
    keys, total = facts.keys, facts.total
    numeric = keys.numeric_edges()
    result = _explain.explain(facts.counts, total, settings, numeric)
    for e in {id(e): e for e in result.explanations + result.tree_nodes}.values():
        e.examples = [f.session_id for f in facts.worst if _explain.matches(e.attrs, f.items, f.phases, numeric)][:5]

    version_key = next((k for k in VERSION_KEYS if k in keys.session), None)
    stage_key = next((k for k in STAGE_KEYS if k in keys.sample), keys.sample[0] if keys.sample else None)
    report = Report(
        window=rw, metric=metric, threshold=float(threshold), sessions=total.sessions,
        high_sessions=total.high_sessions,
        high_share=round(total.high_sessions / total.sessions, 4) if total.sessions else 0.0,
        units=total.units, high_units=total.high_units, explanations=result.explanations,
        tree=build_tree(result.tree_nodes, total),
        timeline=_timeline(facts.timeline, rw, bucket_ms, version_key),
        heatmap=_heatmap(facts.counts, keys, version_key, stage_key),
        compare=_compare(facts.counts, keys, version_key, stage_key, compare),
        worst_sessions=[_worst(f) for f in facts.worst[:WORST_SESSIONS]],
        keys={
            "session": list(keys.session), "sample": list(keys.sample),
            "sample_numeric": [nk.key for nk in keys.sample_numeric],
            "event_numeric": [nk.key for nk in keys.event_numeric], "event_text": list(keys.event_text),
            "version": [version_key] if version_key else [], "stage": [stage_key] if stage_key else [],
        },
        settings=settings, candidates=result.candidates,
    )
    report.took_ms = round((time.perf_counter() - t0) * 1000, 1)
    return report


def build_tree(explanations: Sequence[Explanation], tot: Counts) -> TreeNode:
    """Nest explanations under the largest simpler explanation they extend: the drill-down tree."""
    root = TreeNode(
        label="all sessions", attrs={}, sessions=tot.sessions, high_sessions=tot.high_sessions,
        high_share=round(tot.high_sessions / tot.sessions, 4) if tot.sessions else 0.0, share_of_parent=1.0,
    )
    nodes: dict[tuple, TreeNode] = {}
    ordered = sorted(explanations, key=lambda e: (len(e.attrs), -e.risk_ratio))
    for e in ordered:
        key = tuple(sorted(e.attrs.items()))
        parent, parent_key = root, ()
        for other_key, node in nodes.items():
            if len(other_key) < len(key) and set(other_key) <= set(key):
                if len(other_key) > len(parent_key) or (
                    len(other_key) == len(parent_key) and (node.risk_ratio or 0) > (parent.risk_ratio or 0)
                ):
                    parent, parent_key = node, other_key
        added = [(k, v) for k, v in key if (k, v) not in parent_key]
        node = TreeNode(
            label=", ".join(f"{k} {_fmt_value(v)}" for k, v in added), attrs=dict(e.attrs), sessions=e.sessions,
            high_sessions=e.high_sessions, high_share=e.high_share,
            share_of_parent=round(e.high_sessions / parent.high_sessions, 4) if parent.high_sessions else 0.0,
            risk_ratio=e.risk_ratio,
        )
        nodes[key] = node
        parent.children.append(node)
    _sort_tree(root)
    return root


def _sort_tree(node: TreeNode) -> None:
    node.children.sort(key=lambda c: (-c.high_sessions, -(c.risk_ratio or 0)))
    for c in node.children:
        _sort_tree(c)


def _fmt_value(v: str) -> str:
    return v if v[:1] in "<>" else f"= {v}"


def _bucket_ms(span_ms: int) -> int:
    for b in _NICE_BUCKETS_S:
        if span_ms / (b * 1000) <= 60:
            return b * 1000
    return _NICE_BUCKETS_S[-1] * 1000


def version_sort_key(v: str) -> tuple:
    """Sort '6.10' after '6.9' and text after numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+_ ]", v))


def _timeline(rows: Sequence[_facts.TimelineRow], rw: ReportWindow, bucket_ms: int, key: str | None) -> Timeline:
    n_buckets = max(1, -(-(rw.until_ms - rw.since_ms) // bucket_ms))
    per: dict[str, list[list[int]]] = {}
    total: dict[str, int] = {}
    for b, v, n, h in ((r.bucket, r.version, r.sessions, r.high_sessions) for r in rows):
        if not 0 <= b < n_buckets:
            continue
        cells = per.setdefault(v, [[0, 0] for _ in range(n_buckets)])
        cells[b][0] += n
        cells[b][1] += h
        total[v] = total.get(v, 0) + n
    names = sorted(total, key=lambda v: -total[v])
    keep, rest = names[:MAX_TIMELINE_SERIES], names[MAX_TIMELINE_SERIES:]
    if rest:
        other = [[0, 0] for _ in range(n_buckets)]
        for v in rest:
            for i, (n, h) in enumerate(per[v]):
                other[i][0] += n
                other[i][1] += h
        per["other"] = other
        keep.append("other")
    series = [
        TimelineSeries(
            name=v or "(none)", sessions=[n for n, _ in per[v]],
            high_share=[round(h / n, 4) if n else None for n, h in per[v]],
        )
        for v in sorted(keep, key=lambda v: (v == "other", version_sort_key(v)))
    ]
    used = [i for i in range(n_buckets) if any(per[v][i][0] for v in per)]
    first, last = (used[0], used[-1] + 1) if used else (0, 0)
    for s in series:  # trim the empty buckets before the first and after the last session
        s.sessions, s.high_share = s.sessions[first:last], s.high_share[first:last]
    times = [rw.since_ms + i * bucket_ms for i in range(first, last)]
    return Timeline(key=key, bucket_ms=bucket_ms, times=times, series=series)


def _get(counts: Mapping[Combo, Counts], **attrs: str) -> Counts | None:
    return counts.get(tuple(sorted(attrs.items())))


def _values_by_sessions(counts: Mapping[Combo, Counts], key: str, values: Sequence[str]) -> list[str]:
    found = [(v, _get(counts, **{key: v})) for v in values]
    return [v for v, c in sorted(found, key=lambda vc: -(vc[1].sessions if vc[1] else 0)) if c]


def _stage_values(counts: Mapping[Combo, Counts], stage_key: str | None) -> list[str]:
    if not stage_key:
        return []
    return sorted({combo[0][1] for combo in counts if len(combo) == 1 and combo[0][0] == stage_key})


def _heatmap(counts: Mapping[Combo, Counts], keys: _facts.Keys, version_key: str | None,
             stage_key: str | None) -> Heatmap:
    rows = _values_by_sessions(counts, version_key, keys.session[version_key])[:MAX_HEATMAP_ROWS] if version_key else []
    rows = sorted(rows, key=version_sort_key)
    cols = _stage_values(counts, stage_key)
    share: list[list[float | None]] = []
    units: list[list[int]] = []
    for r in rows:
        share.append([])
        units.append([])
        for c in cols:
            cell = _get(counts, **{version_key: r, stage_key: c})  # type: ignore[arg-type]
            share[-1].append(round(cell.high_sessions / cell.sessions, 4) if cell and cell.sessions else None)
            units[-1].append(cell.sessions if cell else 0)
    return Heatmap(row_key=version_key, col_key=stage_key, rows=rows, cols=cols, high_share=share, sessions=units)


def _side(counts: Mapping[Combo, Counts], version_key: str, version: str, stage_key: str | None,
          stages: Sequence[str]) -> VersionSide:
    c = _get(counts, **{version_key: version}) or _facts.Counts()
    by_stage = {}
    for st in stages:
        cell = _get(counts, **{version_key: version, stage_key: st})  # type: ignore[arg-type]
        if cell and cell.units:
            by_stage[st] = StageCell(cell.sessions, cell.high_sessions, round(cell.high_sessions / cell.sessions, 4))
    return VersionSide(
        version=version, sessions=c.sessions, high_sessions=c.high_sessions,
        high_share=round(c.high_sessions / c.sessions, 4) if c.sessions else 0.0,
        mean=round(c.metric_sum / c.samples, 2) if c.samples else None, by_stage=by_stage,
    )


def _compare(counts: Mapping[Combo, Counts], keys: _facts.Keys, version_key: str | None, stage_key: str | None,
             pick: Sequence[str] | None) -> Comparison:
    if not version_key:
        return Comparison(key=None)
    stats = {v: c for v in keys.session[version_key] if (c := _get(counts, **{version_key: v}))}
    if pick:
        chosen = list(pick)[:2]
    else:
        total = sum(c.sessions for c in stats.values())
        big = [v for v, c in stats.items() if c.sessions >= max(3, 0.01 * total)]
        if not big:
            return Comparison(key=version_key)
        worst = max(big, key=lambda v: (stats[v].high_sessions / stats[v].sessions, stats[v].sessions))
        others = [v for v in big if v != worst]
        chosen = [worst] + ([max(others, key=lambda v: stats[v].sessions)] if others else [])
    stages = _stage_values(counts, stage_key)
    sides = [_side(counts, version_key, v, stage_key, stages) for v in chosen]
    return Comparison(key=version_key, a=sides[0] if sides else None, b=sides[1] if len(sides) > 1 else None)


def _phase_label(items: Combo) -> str:
    """'receiving, file_name_length [35,55)' for a phase's items."""
    if not items:
        return "(all)"
    return ", ".join(v if k in STAGE_KEYS else f"{k} {v}" for k, v in items)


def _worst(f: _facts.SessionFacts) -> WorstSession:
    return WorstSession(
        session_id=f.session_id, samples=f.samples, mean=round(f.mean, 2), max=round(f.max, 2),
        high_phases=[_phase_label(items) for items, high in f.phases if high],
        attrs=dict(f.attrs),
    )


def to_json(report: Report) -> bytes:
    """The report as JSON bytes."""
    return msgspec.json.encode(report)


class SamplePoint(msgspec.Struct):
    """One CPU sample of a session."""

    ts: int
    cpu: float
    attrs: dict[str, str] = {}
    values: dict[str, float] = {}


class EventPoint(msgspec.Struct):
    """One event of a session."""

    ts: int
    name: str
    attrs: dict[str, str] = {}


class SessionDetail(msgspec.Struct):
    """One session, for `GET /v1/sessions/{session_id}`: attrs, samples and events in time order."""

    session_id: str
    client_id: str | None
    started_ms: int | None
    attrs: dict[str, str]
    samples: list[SamplePoint]
    events: list[EventPoint]
    ended_ms: int | None = None
    end_reason: str | None = None


def session_detail(wh: Warehouse, session_id: str) -> SessionDetail | None:
    """One session's attrs, samples and events in time order; None when the warehouse has nothing for it."""
    raw = _facts.fetch_session(wh, session_id)
    if not (raw["sessions"] or raw["samples"] or raw["events"] or raw["ends"]):
        return None
    attrs: dict[str, str] = {}
    client_id = started = None
    for cid, ts, keys, values in raw["sessions"]:
        client_id = client_id or cid
        started = ts if started is None else min(started, ts)
        attrs.update({k: str(v) for k, v in zip(keys, values, strict=False)})
    samples = [
        SamplePoint(int(ts), float(cpu), {k: attr_text(v) for k, v in json_object(attrs).items()},
                    {k: float(v) for k, v in json_object(vals).items() if _facts._as_number(v) is not None})
        for ts, cpu, attrs, vals in raw["samples"]
    ]
    events = [
        EventPoint(int(ts), str(name), {k: str(v) for k, v in zip(ak, av, strict=False)})
        for ts, name, ak, av in raw["events"]
    ]
    end = raw["ends"][-1] if raw["ends"] else None
    return SessionDetail(
        session_id=session_id, client_id=client_id, started_ms=started, attrs=attrs, samples=samples, events=events,
        ended_ms=int(end[0]) if end else None, end_reason=end[1] if end else None,
    )
