"""The drill-down report: one data model for the CLI, HTTP, the dashboard and tests.

`build_report(warehouse, since="12h", threshold=30)` asks the warehouse for compact counts
(`facts`), ranks explanations (`explain`) and assembles the answer to "how bad is it, and
where is it?": the share of high sessions, the explanations best first, the drill-down tree,
the share over time per version, a version x stage heatmap, two versions side by side and
the worst sessions to open.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Mapping, Sequence

import msgspec

from appvitals.fleet.analysis import exact as _exact
from appvitals.fleet.analysis import explain as _explain
from appvitals.fleet.analysis import facts as _facts
from appvitals.fleet.analysis import search as _search
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
MAX_WINDOW_DAYS = 3660  # a report reads at most ten years: bounds the work one read can ask for
MAX_THRESHOLD = 1e15
MAX_WHERE = 8
_WHERE = re.compile(r"^\s*([^=<>]{1,128}?)\s*(>=|<|=)\s*(.{1,256}?)\s*$", re.S)


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
    clients: int = 0  # distinct clients of its sessions
    high_clients: int = 0  # distinct clients with a high session in it: the clients affected
    children: list[TreeNode] = []


class PathStep(msgspec.Struct):
    """One step of the drill path, from all sessions down to the group the report is about."""

    label: str
    attrs: dict[str, str]
    sessions: int
    high_sessions: int
    high_share: float
    clients: int
    high_clients: int


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
    clients: int
    high_clients: int
    where: dict[str, str]  # the drill path: the report is about the sessions (and phases) matching it
    path: list[PathStep]  # all sessions -> each step of `where`, with exact counts
    explanations: list[Explanation]
    tree: TreeNode
    timeline: Timeline
    heatmap: Heatmap
    compare: Comparison
    worst_sessions: list[WorstSession]
    keys: dict[str, list[str]]
    settings: Settings
    candidates: int = 0
    notes: list[str] = []  # what the report left out, and why
    took_ms: float = 0.0


def resolve_window(since: str | None = "12h", until: str | None = None, now: dt.datetime | None = None) -> ReportWindow:
    """Turn human `since`/`until` expressions into a window; raise ReportError on bad input."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        end = parse_time(until, now) if until else now
        start = parse_time(since, now) if since else end - dt.timedelta(hours=12)
    except TimeParseError as exc:
        raise ReportError(str(exc))
    except (OverflowError, ValueError) as exc:  # '99999999999d' lies before year 1
        raise ReportError(f"since/until: out of range ({exc})")
    if start >= end:
        raise ReportError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if end - start > dt.timedelta(days=MAX_WINDOW_DAYS):
        raise ReportError(f"the window is too long: a report reads at most {MAX_WINDOW_DAYS} days")
    return ReportWindow(
        since=start.isoformat().replace("+00:00", "Z"), until=end.isoformat().replace("+00:00", "Z"),
        since_ms=int(start.timestamp() * 1000), until_ms=int(end.timestamp() * 1000),
    )


def parse_where(items: Sequence[str] | Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Drill path items ('app_version=6.04', 'file_name_length>=42', 'stage=indexing') as
    (attr, requirement) pairs: '6.04', '>=42', '<42'. Raises ReportError on bad input."""
    if not items:
        return ()
    raw = [f"{k}={v}" for k, v in items.items()] if isinstance(items, Mapping) else list(items)
    if len(raw) > MAX_WHERE:
        raise ReportError(f"where: at most {MAX_WHERE} items")
    out: dict[str, str] = {}
    for text in raw:
        m = _WHERE.match(str(text))
        if not m:
            raise ReportError(f"where: expected key=value, key>=number or key<number, got {str(text)[:60]!r}")
        key, op, value = m.groups()
        if key in out:
            raise ReportError(f"where: {key!r} given twice")
        if op == "=" and value[:2] == ">=":  # 'key=>=42' as the JSON spells a threshold
            op, value = ">=", value[2:]
        elif op == "=" and value[:1] == "<":
            op, value = "<", value[1:]
        if op != "=":
            try:
                x = float(value)
            except ValueError:
                raise ReportError(f"where: {key}{op} wants a number, got {value[:40]!r}")
            if not math.isfinite(x) or abs(x) > MAX_THRESHOLD:
                raise ReportError(f"where: {key}{op}{value[:40]} is not a finite number")
            value = op + _facts.fmt_number(x)
        out[key] = value
    return tuple(sorted(out.items()))


def _counts_of(c: _exact.ExactCounts) -> Counts:
    return Counts(c.sessions, c.high_sessions, c.units, c.high_units)


def _share(h: int, n: int) -> float:
    return round(h / n, 4) if n else 0.0


def _apply_exact(e: Explanation, group: Combo, c: _exact.ExactCounts, total: _exact.ExactCounts) -> None:
    """Replace an explanation's numbers (search estimates) by the exact counts of its group."""
    e.attrs = dict(group)
    e.sessions, e.high_sessions = c.sessions, c.high_sessions
    e.units, e.high_units = c.units, c.high_units
    e.clients, e.high_clients = c.clients, c.high_clients
    e.high_share = _share(c.high_sessions, c.sessions)
    e.coverage = _share(c.high_sessions, total.high_sessions)
    e.risk_ratio = round(_exact.risk_ratio_of(c, total), 3)
    rest_u, rest_h = total.units - c.units, total.high_units - c.high_units
    f_in = min(1.0, c.sessions / c.units) if c.units else 1.0
    f_out = min(1.0, total.sessions / total.units) if total.units else 1.0
    p = _explain.chi2_p(c.high_units * f_in, (c.units - c.high_units) * f_in,
                        max(0, rest_h) * f_out, max(0, rest_u - rest_h) * f_out)
    e.p_value = float(f"{p:.3g}")


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
    where: Sequence[str] | Mapping[str, str] | None = None,
    min_risk_ratio: float | None = None,
    max_order: int | None = None,
    fdr: float | None = None,
) -> Report:
    """Build the drill-down report over a warehouse for a time window.

    `where`: the drill path ('app_version=6.04', 'stage=indexing', 'file_name_length>=42'):
    the report is then about the sessions and phases matching every item, and its tree reads
    "of those". Every count shown is exact (exact.py); the search only picks what to show."""
    t0 = time.perf_counter()
    if threshold is None or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0 <= threshold <= MAX_THRESHOLD:
        raise ReportError(f"threshold must be a finite number from 0 to {MAX_THRESHOLD:g}")
    if not metric or not re.fullmatch(r"[\w.:-]{1,128}", metric):
        raise ReportError(f"metric: not a metric name: {metric!r}")
    settings = msgspec.structs.replace(settings or Settings())
    if min_support is not None:
        if not math.isfinite(min_support) or min_support <= 0:
            raise ReportError("min_support must be > 0 (a share of high sessions below 1, a count from 1)")
        settings.min_support = float(min_support)
    if min_risk_ratio is not None:
        if not math.isfinite(min_risk_ratio) or min_risk_ratio < 1:
            raise ReportError("min_risk_ratio must be a number >= 1")
        settings.min_risk_ratio = float(min_risk_ratio)
    if max_order is not None:
        if int(max_order) != max_order or not 1 <= max_order <= _facts.MAX_ITEMS:
            raise ReportError(f"max_order must be 1 to {_facts.MAX_ITEMS}")
        settings.max_order = int(max_order)
    if fdr is not None:
        if not math.isfinite(fdr) or not 0 < fdr < 1:
            raise ReportError("fdr must be between 0 and 1 (the false discovery rate, e.g. 0.01)")
        settings.fdr = float(fdr)
    path = parse_where(where)
    rw = resolve_window(since, until, now)
    window = Window(rw.since_ms, rw.until_ms)

    bucket_ms = _bucket_ms(rw.until_ms - rw.since_ms)
    rollup = wh.rollup_state()
    keys = _facts.discover_keys(wh, window, metric, rollup)
    known = _exact.levels(keys)
    for k, _ in path:
        if k not in known:
            raise ReportError(f"where: no attribute {k!r} in this window (known: {', '.join(sorted(known)) or 'none'})")
    keys.max_order = _facts.search_order(keys, settings.max_order)
    notes = []
    if keys.max_order < settings.max_order:
        notes.append(f"combinations of more than {keys.max_order} values were not searched: this window has too many "
                     f"attribute values for them (the report counts about {_facts.GROUP_BUDGET:,} combinations at most)")
    # one connection for the whole report: on DuckDB the samples are read once, into the
    # report's temporary tables (search.py), which the search and the exact recount share
    with wh.scratch() as rd:
        report = _build(wh, rd, keys, window, rw, metric, threshold, settings, path, rollup, bucket_ms, notes, compare)
    report.took_ms = round((time.perf_counter() - t0) * 1000, 1)
    return report



def _build(wh: Warehouse, rd: Warehouse, keys: _facts.Keys, window: Window, rw: ReportWindow, metric: str,
           threshold: float, settings: Settings, path: tuple[tuple[str, str], ...], rollup, bucket_ms: int,
           notes: list[str], compare: Sequence[str] | None) -> Report:
    """build_report's work once the window, keys and settings are known; `rd`: the report's
    scratch reader (Warehouse.scratch)."""
    lean = None
    if _search.usable(keys, wh.dialect):
        counter = _exact.Counter(rd, keys, window, metric, threshold, path, rollup)
        lean = counter.lean = _search.LeanTables(rd, keys, window, metric, threshold, rollup, counter.population)
    else:
        counter = _exact.Counter(wh, keys, window, metric, threshold, path, rollup)
    while True:
        try:
            if lean is not None:
                facts = lean.facts(metric, threshold, counter.population, rollup)
            else:
                facts = _facts.fetch_facts(wh, window, metric, threshold, bucket_ms, VERSION_KEYS, keys=keys,
                                           population=counter.population, rollup=rollup)
            break
        except Exception as exc:  # the warehouse's memory limit: search fewer values at once
            if "OutOfMemory" not in type(exc).__name__ or keys.max_order <= 1:
                raise
            keys.max_order -= 1
            notes.append(f"the search ran out of the warehouse's memory and was redone with combinations of at "
                         f"most {keys.max_order} values")
    numeric = keys.numeric_edges()
    result = _explain.explain(facts.counts, facts.total, settings, numeric)
    version_key = next((k for k in VERSION_KEYS if k in keys.session), None)
    stage_key = next((k for k in STAGE_KEYS if k in keys.sample), keys.sample[0] if keys.sample else None)

    # exact counts of everything shown, in few statements: the path's root and each node with
    # its numeric threshold tried at every observed value between the neighbouring edges; then
    # the heatmap and comparison cells by GROUP BY
    shown = list({id(e): e for e in result.explanations + result.tree_nodes}.values())
    variants: dict[int, list[Combo]] = {}
    groups: list[Combo] = [()]
    for e in shown:
        group = tuple(sorted(e.attrs.items()))
        num = next((k for k, _ in group if k in numeric), None)
        variants[id(e)] = _exact.threshold_variants(counter, group, num, numeric[num]) if num else [group]
        groups += variants[id(e)]
    exact, exact_cells, exact_timeline = counter.count_all(groups, version_key, stage_key, bucket_ms, version_key,
                                                                 phases=facts.total.units)
    root = exact[()]
    min_high = settings.min_support if settings.min_support >= 1 else settings.min_support * root.high_sessions
    min_high = max(float(settings.min_support_sessions), min_high)
    for e in shown:
        group = tuple(sorted(e.attrs.items()))
        best = _exact.best_variant(variants[id(e)], exact, root, min_high) if len(variants[id(e)]) > 1 else None
        _apply_exact(e, *(best or (group, exact[group])), root)
    ranked = sorted(result.explanations, key=lambda e: (-e.risk_ratio, -e.high_sessions, sorted(e.attrs.items())))
    ranked = _explain._one_threshold_per_shape(ranked, set(numeric))
    tree_nodes = _explain._one_threshold_per_shape(sorted(result.tree_nodes, key=lambda e: -e.risk_ratio),
                                                   set(numeric))
    # the heatmap and comparison read exact cells, over the search's sums and samples
    versions = list(keys.session.get(version_key, [])) if version_key else []
    cells = dict(facts.counts)
    if version_key:
        for g, c in exact_cells.items():
            old = cells.get(g) or Counts()
            cells[g] = Counts(c.sessions, c.high_sessions, c.units, c.high_units, old.samples, old.metric_sum)
    timeline_rows: dict[tuple[int, str], list[int]] = {}
    for b0, b1, v, n, h in exact_timeline:
        v = v if v in versions else ""
        for b in range(b0, min(b1, b0 + 100_000) + 1):
            acc = timeline_rows.setdefault((b, v), [0, 0])
            acc[0] += n
            acc[1] += h
    timeline = [_facts.TimelineRow(b, v, n, h) for (b, v), (n, h) in sorted(timeline_rows.items())]
    report = Report(
        window=rw, metric=metric, threshold=float(threshold), sessions=root.sessions,
        high_sessions=root.high_sessions, high_share=_share(root.high_sessions, root.sessions),
        units=root.units, high_units=root.high_units, clients=root.clients, high_clients=root.high_clients,
        where=dict(path), path=_path_steps(wh, keys, window, metric, threshold, path, rollup, root),
        explanations=ranked[: settings.max_explanations],
        tree=build_tree(tree_nodes, _counts_of(root), root_label=_path_label(path), root_clients=root),
        timeline=_timeline(timeline, rw, bucket_ms, version_key),
        heatmap=_heatmap(cells, keys, version_key, stage_key),
        compare=_compare(cells, keys, version_key, stage_key, compare),
        worst_sessions=[_worst(f) for f in facts.worst[:WORST_SESSIONS]],
        keys={
            "session": list(keys.session), "sample": list(keys.sample),
            "sample_numeric": [nk.key for nk in keys.sample_numeric],
            "event_numeric": [nk.key for nk in keys.event_numeric], "event_text": list(keys.event_text),
            "version": [version_key] if version_key else [], "stage": [stage_key] if stage_key else [],
        },
        settings=settings, candidates=result.candidates, notes=notes,
    )
    for e in {id(e): e for e in report.explanations + tree_nodes}.values():
        e.examples = [f.session_id for f in facts.worst if _explain.matches(e.attrs, f.items, f.phases, numeric)][:5]
    return report


def _path_label(path: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{k} {_fmt_value(v)}" for k, v in path) if path else "all sessions"


def _path_steps(wh: Warehouse, keys: _facts.Keys, window: Window, metric: str, threshold: float,
                path: Sequence[tuple[str, str]], rollup, root: _exact.ExactCounts) -> list[PathStep]:
    """All sessions, then each step of the path with its exact counts (the breadcrumb)."""
    prefixes: list[Combo] = [tuple(path[:i]) for i in range(len(path))]
    counted = _exact.Counter(wh, keys, window, metric, threshold, (), rollup).count(prefixes) if path else {}
    steps = []
    for i in range(len(path) + 1):
        c = root if i == len(path) else counted[prefixes[i]]
        label = "all sessions" if i == 0 else f"{path[i - 1][0]} {_fmt_value(path[i - 1][1])}"
        steps.append(PathStep(label=label, attrs=dict(path[:i]), sessions=c.sessions, high_sessions=c.high_sessions,
                              high_share=_share(c.high_sessions, c.sessions), clients=c.clients,
                              high_clients=c.high_clients))
    return steps


def build_tree(explanations: Sequence[Explanation], tot: Counts, root_label: str = "all sessions",
               root_clients: _exact.ExactCounts | None = None) -> TreeNode:
    """Nest explanations under the largest simpler explanation they extend: the drill-down tree."""
    root = TreeNode(
        label=root_label, attrs={}, sessions=tot.sessions, high_sessions=tot.high_sessions,
        high_share=round(tot.high_sessions / tot.sessions, 4) if tot.sessions else 0.0, share_of_parent=1.0,
        clients=root_clients.clients if root_clients else 0, high_clients=root_clients.high_clients if root_clients else 0,
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
            risk_ratio=e.risk_ratio, clients=e.clients, high_clients=e.high_clients,
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
    return [v for v, c in sorted(found, key=lambda vc: -(vc[1].sessions if vc[1] else 0)) if c and c.sessions]


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
                    {k: float(v) for k, v in json_object(vals).items() if _facts.as_number(v) is not None})
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
