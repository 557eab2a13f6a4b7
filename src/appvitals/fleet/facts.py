"""The report's SQL: compact counts out of the warehouse, one dialect switch for DuckDB and ClickHouse.

Nothing here ranks or decides; it only aggregates, so the heavy lifting (10M samples)
stays in the database and `explain.py` works on a few thousand rows. The SQL is kept
plain enough for ClickHouse 18.16 (no Map, no window functions, no CTEs, one JOIN per
SELECT) as well as current ClickHouse and DuckDB; every difference between the dialects
lives in `Dialect`.

Units: a *phase* is one session's samples that share their sample attrs (e.g. stage); it is
high when its mean metric passes the threshold. A session is high when any phase is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from .warehouse.base import Warehouse

SEP = "\x1e"  # between sample-attr values inside a phase key
FLAG = "\x1f"  # between a phase key and its high flag
SESSION_LOOKBACK_MS = 7 * 86400 * 1000  # session lines this far before the window still name values
MAX_SESSION_KEYS = 12
MAX_VALUES_PER_KEY = 50
MAX_SAMPLE_KEYS = 3
MAX_EVENT_KEYS = 8
NUMERIC_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
KEY_SCAN_ROWS = 200_000


class Dialect:
    """The few SQL spellings that differ between DuckDB and ClickHouse."""

    def __init__(self, name: str):
        if name not in ("duckdb", "clickhouse"):
            raise ValueError(f"unknown SQL dialect {name!r}")
        self.name = name
        self.ch = name == "clickhouse"

    def lit(self, value: str) -> str:
        """A string literal."""
        text = str(value)
        if self.ch:
            text = text.replace("\\", "\\\\")
        return "'" + text.replace("'", "''") + "'"

    def attr(self, key: str, keys: str = "attr_keys", values: str = "attr_values") -> str:
        """Value of one attr from the parallel arrays, '' when absent."""
        if self.ch:
            return f"{values}[indexOf({keys}, {self.lit(key)})]"
        return f"coalesce(list_extract({values}, list_position({keys}, {self.lit(key)})), '')"

    def has(self, key: str, keys: str) -> str:
        """True when the array holds the key."""
        return f"has({keys}, {self.lit(key)})" if self.ch else f"list_contains({keys}, {self.lit(key)})"

    def number(self, expr: str) -> str:
        """A string cast to a float, NULL when it is not a number."""
        return f"toFloat64OrNull({expr})" if self.ch else f"TRY_CAST({expr} AS DOUBLE)"

    def idiv(self, a: str, b: int) -> str:
        """Integer division."""
        return f"intDiv({a}, {b})" if self.ch else f"(({a}) // {b})"

    def sorted_list(self, expr: str) -> str:
        """Aggregate values into a sorted array."""
        return f"arraySort(groupArray({expr}))" if self.ch else f"list_sort(list({expr}))"

    def concat(self, *parts: str) -> str:
        """String concatenation."""
        return "concat(" + ", ".join(parts) + ")"

    def in_list(self, expr: str, values: Sequence[str]) -> str:
        """`expr IN (...)`, false for an empty list."""
        if not values:
            return "(1 = 0)"
        return f"{expr} IN (" + ", ".join(self.lit(v) for v in values) + ")"

    @property
    def left_join(self) -> str:
        return "ANY LEFT JOIN" if self.ch else "LEFT JOIN"

    def array_join(self, table_sql: str, where: str, limit: int | None = None) -> str:
        """Rows (k, v) of every attr of the rows of `table_sql` matching `where`."""
        lim = f" LIMIT {limit}" if limit else ""
        if self.ch:
            return (
                f"SELECT k, v FROM (SELECT attr_keys, attr_values FROM {table_sql} WHERE {where}{lim}) "
                "ARRAY JOIN attr_keys AS k, attr_values AS v"
            )
        return (
            f"SELECT unnest(attr_keys) AS k, unnest(attr_values) AS v FROM "
            f"(SELECT attr_keys, attr_values FROM {table_sql} WHERE {where}{lim})"
        )

    def quantiles(self, expr: str, qs: Sequence[float]) -> str:
        """An array of quantiles of expr."""
        if self.ch:
            return f"quantiles({', '.join(str(q) for q in qs)})({expr})"
        return f"quantile_cont({expr}, [{', '.join(str(q) for q in qs)}])"

    def count_distinct(self, expr: str) -> str:
        return f"uniqExact({expr})" if self.ch else f"count(DISTINCT {expr})"


class Window(msgspec.Struct):
    """The report's time range, Unix epoch milliseconds [since_ms, until_ms)."""

    since_ms: int
    until_ms: int


class NumericKey(msgspec.Struct):
    """A numeric event attr and the edges its per-session maximum is bucketed at."""

    key: str
    edges: list[float]


class Keys(msgspec.Struct):
    """Which attrs the report looks at, and the values it keeps apart (rarer ones become '')."""

    session: dict[str, list[str]] = {}
    sample: list[str] = []
    event_numeric: list[NumericKey] = []
    event_text: list[str] = []


class Profile(msgspec.Struct, array_like=True):
    """Sessions that look alike: same session/event items and the same phases with the same high flags."""

    items: tuple[tuple[str, str], ...]
    phases: tuple[tuple[tuple[tuple[str, str], ...], bool], ...]
    sessions: int
    samples: int
    metric_sum: float


def bucket_label(value: float, edge: float) -> str:
    """The item label of a number against one edge: '>=40' or '<40'."""
    return (">=" if value >= edge else "<") + fmt_number(edge)


def fmt_number(x: float) -> str:
    """A number as short text: 40 rather than 40.0."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def nice_edges(quantiles: Sequence[float | None]) -> list[float]:
    """Round quantiles to two significant digits and drop duplicates."""
    edges: list[float] = []
    for q in quantiles:
        if q is None or not math.isfinite(q):
            continue
        if q == 0:
            e = 0.0
        else:
            digits = 1 - int(math.floor(math.log10(abs(q))))
            e = round(q, digits)
        if e not in edges:
            edges.append(float(e))
    return sorted(edges)


def metric_expr(d: Dialect, metric: str) -> tuple[str, str]:
    """(value expression, extra WHERE condition) for a metric: the cpu column or a `values` entry."""
    if metric == "cpu":
        return "cpu", "1 = 1"
    if d.ch:
        return f"value_values[indexOf(value_keys, {d.lit(metric)})]", d.has(metric, "value_keys")
    return f"list_extract(value_values, list_position(value_keys, {d.lit(metric)}))", d.has(metric, "value_keys")


def _ts(window: Window) -> str:
    return f"ts >= {int(window.since_ms)} AND ts < {int(window.until_ms)}"


def discover_keys(wh: Warehouse, window: Window, metric: str = "cpu") -> Keys:
    """Find which session, sample and event attrs exist in the window and which values are common enough."""
    d = Dialect(wh.dialect)
    session_where = f"ts >= {int(window.since_ms) - SESSION_LOOKBACK_MS} AND ts < {int(window.until_ms)}"
    rows = wh.query(
        f"SELECT k, v, count(*) AS n FROM ({d.array_join('sessions', session_where)}) "
        "GROUP BY k, v HAVING count(*) >= 2 ORDER BY n DESC LIMIT 20000"
    )
    session: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for k, v, n in rows:
        if v == "":
            continue
        vals = session.setdefault(k, [])
        if len(vals) < MAX_VALUES_PER_KEY:
            vals.append(v)
        totals[k] = totals.get(k, 0) + int(n)
    keep = sorted(session, key=lambda k: -totals[k])[:MAX_SESSION_KEYS]
    session = {k: sorted(session[k]) for k in sorted(keep)}

    _, metric_cond = metric_expr(d, metric)
    rows = wh.query(
        f"SELECT k, {d.count_distinct('v')} AS nv, count(*) AS n FROM "
        f"({d.array_join('samples', _ts(window) + ' AND ' + metric_cond, KEY_SCAN_ROWS)}) "
        "GROUP BY k ORDER BY n DESC"
    )
    sample = [k for k, nv, _n in rows if int(nv) <= MAX_VALUES_PER_KEY and k not in session][:MAX_SAMPLE_KEYS]

    num = d.number("v")
    rows = wh.query(
        f"SELECT k, count(*) AS n, count({num}) AS nn, {d.count_distinct('v')} AS nv, "
        f"{d.quantiles(num, NUMERIC_QUANTILES)} AS qs FROM ({d.array_join('events', _ts(window))}) "
        "GROUP BY k ORDER BY n DESC"
    )
    event_numeric: list[NumericKey] = []
    event_text: list[str] = []
    taken = set(session) | set(sample)
    for k, n, nn, nv, qs in rows:
        if k in taken or len(event_numeric) + len(event_text) >= MAX_EVENT_KEYS:
            continue
        if int(nn) >= 0.95 * int(n) and int(nv) > 2:
            edges = nice_edges([float(q) if q is not None else None for q in (qs or [])])
            if edges:
                event_numeric.append(NumericKey(k, edges))
        elif int(nv) <= MAX_VALUES_PER_KEY:
            event_text.append(k)
    return Keys(session=session, sample=sorted(sample), event_numeric=event_numeric, event_text=event_text)


def _phases_subquery(d: Dialect, keys: Keys, window: Window, metric: str, threshold: float) -> str:
    """Per session: sorted phase keys with high flags, sample count and metric sum."""
    value, cond = metric_expr(d, metric)
    if keys.sample:
        parts: list[str] = []
        for i, k in enumerate(keys.sample):
            if i:
                parts.append(d.lit(SEP))
            parts.append(d.attr(k))
        phase = d.concat(*parts) if len(parts) > 1 else parts[0]
    else:
        phase = "''"
    inner = (
        f"SELECT session_id, {phase} AS phase, count(*) AS ph_n, sum({value}) AS ph_sum, max({value}) AS ph_max "
        f"FROM samples WHERE {_ts(window)} AND {cond} GROUP BY session_id, phase"
    )
    flag = f"CASE WHEN ph_sum > {float(threshold)} * ph_n THEN '1' ELSE '0' END"
    return (
        f"SELECT session_id, {d.sorted_list(d.concat('phase', d.lit(FLAG), flag))} AS phases, "
        f"sum(ph_n) AS n_samples, sum(ph_sum) AS metric_sum, max(ph_max) AS peak FROM ({inner}) GROUP BY session_id"
    )


def _session_attrs_subquery(d: Dialect, keys: Keys) -> tuple[str, list[str]]:
    cols, names = [], []
    for i, (k, values) in enumerate(keys.session.items()):
        col = f"sa_{i}"
        cols.append(f"min(CASE WHEN {d.in_list(d.attr(k), values)} THEN {d.attr(k)} ELSE '' END) AS {col}")
        names.append(col)
    if not cols:
        return "", []
    return f"SELECT session_id, {', '.join(cols)} FROM sessions GROUP BY session_id", names


def _event_subquery(d: Dialect, keys: Keys, window: Window) -> tuple[str, list[str]]:
    inner_cols, outer_cols, names = [], [], []
    for i, nk in enumerate(keys.event_numeric):
        inner_cols.append(f"max({d.number(d.attr(nk.key))}) AS em_{i}")
        for j, edge in enumerate(nk.edges):
            col = f"en_{i}_{j}"
            outer_cols.append(
                f"CASE WHEN em_{i} IS NULL THEN '' WHEN em_{i} >= {edge!r} THEN {d.lit('>=' + fmt_number(edge))} "
                f"ELSE {d.lit('<' + fmt_number(edge))} END AS {col}"
            )
            names.append(col)
    for i, k in enumerate(keys.event_text):
        col = f"et_{i}"
        inner_cols.append(f"max({d.attr(k)}) AS {col}_raw")
        outer_cols.append(f"{col}_raw AS {col}")
        names.append(col)
    if not inner_cols:
        return "", []
    inner = f"SELECT session_id, {', '.join(inner_cols)} FROM events WHERE {_ts(window)} GROUP BY session_id"
    return f"SELECT session_id, {', '.join(outer_cols)} FROM ({inner})", names


def item_names(keys: Keys) -> list[str]:
    """The attr name of each item column of a profile row, in column order."""
    names = list(keys.session)
    for nk in keys.event_numeric:
        names.extend([nk.key] * len(nk.edges))
    names.extend(keys.event_text)
    return names


def _joined_sessions_sql(d: Dialect, keys: Keys, window: Window, metric: str, threshold: float) -> tuple[str, list[str]]:
    """One row per session with samples in the window: phases, counts and item columns."""
    sql = _phases_subquery(d, keys, window, metric, threshold)
    cols = ["session_id", "phases", "n_samples", "metric_sum"]
    sa_sql, sa_names = _session_attrs_subquery(d, keys)
    if sa_sql:
        sql = f"SELECT {', '.join(cols + sa_names)} FROM ({sql}) AS p {d.left_join} ({sa_sql}) AS sa USING (session_id)"
        cols = cols + sa_names
    ev_sql, ev_names = _event_subquery(d, keys, window)
    if ev_sql:
        sql = f"SELECT {', '.join(cols + ev_names)} FROM ({sql}) AS q {d.left_join} ({ev_sql}) AS ev USING (session_id)"
        cols = cols + ev_names
    return sql, sa_names + ev_names


def _parse_phases(raw: Sequence[str], sample_keys: Sequence[str]) -> tuple:
    phases = []
    for text in raw:
        key, _, flag = text.rpartition(FLAG)
        values = key.split(SEP) if sample_keys else []
        items = tuple((k, v) for k, v in zip(sample_keys, values, strict=False) if v != "")
        phases.append((items, flag == "1"))
    return tuple(phases)


def fetch_profiles(wh: Warehouse, keys: Keys, window: Window, metric: str, threshold: float) -> list[Profile]:
    """Sessions in the window grouped into profiles (identical items and phases) with counts."""
    d = Dialect(wh.dialect)
    sql, item_cols = _joined_sessions_sql(d, keys, window, metric, threshold)
    group = [f"coalesce({c}, '')" for c in item_cols] + ["phases"]
    rows = wh.query(
        f"SELECT {', '.join(group)}, count(*) AS n, sum(n_samples) AS s, sum(metric_sum) AS m "
        f"FROM ({sql}) AS j GROUP BY {', '.join(group)}"
    )
    names = item_names(keys)
    out = []
    for row in rows:
        values = row[: len(item_cols)]
        items = tuple((k, v) for k, v in zip(names, values, strict=True) if v)
        phases = _parse_phases(row[len(item_cols)] or [], keys.sample)
        out.append(Profile(items, phases, int(row[-3]), int(row[-2] or 0), float(row[-1] or 0.0)))
    return out


def fetch_timeline(
    wh: Warehouse, window: Window, metric: str, threshold: float, bucket_ms: int, version_key: str | None
) -> list[tuple[int, str, int, int]]:
    """Rows (bucket index, version, sessions, high sessions): per time bucket, per version."""
    d = Dialect(wh.dialect)
    value, cond = metric_expr(d, metric)
    b = d.idiv(f"ts - {int(window.since_ms)}", int(bucket_ms))
    inner = (
        f"SELECT {b} AS b, session_id, count(*) AS bn, sum({value}) AS bs FROM samples "
        f"WHERE {_ts(window)} AND {cond} GROUP BY b, session_id"
    )
    flagged = f"SELECT b, session_id, CASE WHEN bs > {float(threshold)} * bn THEN 1 ELSE 0 END AS hi FROM ({inner})"
    if version_key:
        ver = f"SELECT session_id, min({d.attr(version_key)}) AS ver FROM sessions GROUP BY session_id"
        sql = (
            f"SELECT b, coalesce(ver, '') AS v, count(*) AS n, sum(hi) AS h FROM ({flagged}) AS f "
            f"{d.left_join} ({ver}) AS vv USING (session_id) GROUP BY b, v"
        )
    else:
        sql = f"SELECT b, '' AS v, count(*) AS n, sum(hi) AS h FROM ({flagged}) GROUP BY b"
    return [(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in wh.query(sql)]


class SessionFacts(msgspec.Struct):
    """One session's numbers in the window, for the worst-sessions list."""

    session_id: str
    samples: int
    mean: float
    max: float
    phases: list[tuple[tuple[tuple[str, str], ...], bool]]
    attrs: dict[str, str] = {}
    event_max: dict[str, float] = {}
    event_text: dict[str, str] = {}


def fetch_worst_sessions(
    wh: Warehouse, keys: Keys, window: Window, metric: str, threshold: float, limit: int = 100
) -> list[SessionFacts]:
    """The sessions with the highest mean metric in the window, with their attrs."""
    d = Dialect(wh.dialect)
    value, cond = metric_expr(d, metric)
    phases = _phases_subquery(d, keys, window, metric, threshold)
    rows = wh.query(
        f"SELECT session_id, phases, n_samples, metric_sum, peak FROM ({phases}) "
        f"ORDER BY metric_sum / n_samples DESC LIMIT {int(limit)}"
    )
    found: dict[str, SessionFacts] = {}
    for sid, ph, n, s, peak in rows:
        n = int(n)
        found[sid] = SessionFacts(
            session_id=sid, samples=n, mean=float(s) / n if n else 0.0, max=float(peak or 0.0),
            phases=list(_parse_phases(ph or [], keys.sample)),
        )
    if not found:
        return []
    ids = d.in_list("session_id", list(found))
    for sid, k, v in wh.query(f"SELECT session_id, attr_keys, attr_values FROM sessions WHERE {ids}"):
        found[sid].attrs.update({kk: str(vv) for kk, vv in zip(k, v, strict=False)})
    numeric = {nk.key for nk in keys.event_numeric}
    text = set(keys.event_text)
    if numeric or text:
        for sid, k, v in wh.query(
            f"SELECT session_id, attr_keys, attr_values FROM events WHERE {ids} AND {_ts(window)}"
        ):
            facts = found[sid]
            for kk, vv in zip(k, v, strict=False):
                if kk in numeric:
                    try:
                        x = float(vv)
                    except ValueError:
                        continue
                    facts.event_max[kk] = max(facts.event_max.get(kk, x), x)
                elif kk in text:
                    facts.event_text[kk] = max(facts.event_text.get(kk, ""), str(vv))
    return sorted(found.values(), key=lambda f: -f.mean)


def fetch_session(wh: Warehouse, session_id: str, limit: int = 50_000) -> dict:
    """One session's attrs, samples, events and end, in time order (raw rows)."""
    d = Dialect(wh.dialect)
    sid = d.lit(session_id)
    sessions = wh.query(
        f"SELECT client_id, ts, attr_keys, attr_values FROM sessions WHERE session_id = {sid} ORDER BY ts"
    )
    samples = wh.query(
        f"SELECT ts, cpu, attr_keys, attr_values, value_keys, value_values FROM samples "
        f"WHERE session_id = {sid} ORDER BY ts, seq LIMIT {int(limit)}"
    )
    events = wh.query(
        f"SELECT ts, name, attr_keys, attr_values FROM events WHERE session_id = {sid} ORDER BY ts, seq LIMIT {int(limit)}"
    )
    ends = wh.query(f"SELECT ts, reason FROM ends WHERE session_id = {sid} ORDER BY ts")
    return {"sessions": sessions, "samples": samples, "events": events, "ends": ends}
