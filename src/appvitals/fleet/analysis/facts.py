"""The report's SQL: compact counts out of the warehouse, one dialect switch for DuckDB and ClickHouse.

Nothing here ranks or decides; it only aggregates, so the heavy lifting (10M samples)
stays in the database and `explain.py` works on a few thousand rows of counts. The SQL
is plain enough for ClickHouse 18.16 (no Map, no window functions, no CTE subqueries,
one JOIN per SELECT) as well as current ClickHouse and DuckDB; every spelling that
differs lives in `Dialect`. The report uses it on ClickHouse (a few statements), and on
DuckDB only when a window has too many distinct sample attrs texts to list; otherwise
DuckDB's search is `search.py` (GROUPING SETS over per-report tables), which counts the
same (tests/fleet/analysis/test_search.py). Key discovery and the worst sessions' attrs
(`discover_keys`, `_fill_worst`) serve both.

Units: a *phase* is one session's samples that share their sample attrs (stage, and the
bucket of numeric sample attrs such as file_name_length); it is high when its mean metric
passes the threshold. A session is high when any of its phases is. Counting rows:

- `S` rows: per combination of session items (session attrs, event attrs): sessions, high
  sessions, phases, high phases, samples and metric sum; the combination '*' is the total.
- `P` rows: per combination holding at least one sample item: phases and high phases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import msgspec

from appvitals.fleet.analysis.model import (  # noqa: F401 - re-exported for the report and tests
    MAX_EDGES,
    Combo,
    Counts,
    Facts,
    Item,
    Keys,
    NumericKey,
    SessionFacts,
    TimelineRow,
    Window,
    candidate_edges,
    fmt_number,
    interval_bounds,
    interval_labels,
    nice_edges,
    session_mean,
)
from appvitals.fleet.warehouse.base import Warehouse
from appvitals.fleet.warehouse.dialects import Dialect, dialect_for
from appvitals.fleet.wire.schema import EMPTY_JSON, attr_text, json_object

GS = "\x1d"  # between a session id and its phase items
US = "\x1f"  # between an attr name and its value inside a combination key
RS = "\x1e"  # between the items of a combination key
TOTAL = "*"
SESSION_LOOKBACK_MS = 7 * 86400 * 1000  # session lines this far before the window still name values
MAX_SESSION_KEYS = 10
MAX_VALUES_PER_KEY = 50
MAX_SAMPLE_KEYS = 3
MAX_EVENT_KEYS = 4
MAX_ITEMS = 3
NUMERIC_QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 5 %, 10 %, ... 95 %
KEY_SCAN_ROWS = 200_000
MAX_ATTR_TEXTS = 20_000
MAX_STAT_PAIRS = 10_000  # distinct (attr, value) pairs of a key scan read into Python, at most
MAX_LISTED_TEXTS = 2_000  # at most this many attrs texts are written into the report's SQL
WORST_LIMIT = 200


def metric_expr(d: Dialect, metric: str) -> tuple[str, str]:
    """(value expression, extra WHERE condition) for a metric: the cpu column or a `values` entry."""
    if metric == "cpu":
        return "cpu", "1 = 1"
    value = d.sattr_number(metric, "vals")
    return value, f"{value} IS NOT NULL"


def _ts(window: Window) -> str:
    return f"ts >= {int(window.since_ms)} AND ts < {int(window.until_ms)}"


def _time_slices(window: Window, rows: int, slices: int = 20) -> str:
    """A deterministic condition keeping about KEY_SCAN_ROWS of `rows`: thin time slices spread over the window."""
    if rows <= KEY_SCAN_ROWS:
        return "1 = 1"
    period = max(1, (window.until_ms - window.since_ms) // slices)
    keep = max(1, int(period * KEY_SCAN_ROWS / rows))
    return f"(ts - {int(window.since_ms)}) % {period} < {keep}"


def _numeric_key(k: str, n, nn, nv, qs) -> NumericKey | None:
    if int(nn) >= 0.95 * int(n) and int(nv) > 2:
        edges = candidate_edges(qs or [])
        if edges:
            return NumericKey(k, edges)
    return None


def discover_keys(wh: Warehouse, window: Window, metric: str = "cpu",
                  rollup: tuple[int, int, list[int]] | None = None) -> Keys:
    """Find which session, sample and event attrs exist in the window and which values are common enough.

    `rollup`: the warehouse's rollup state (DuckDB); sample attrs are then counted from it
    where it covers the window (~5x fewer rows than the samples)."""
    d = dialect_for(wh.dialect)
    session_where = f"ts >= {int(window.since_ms) - SESSION_LOOKBACK_MS} AND ts < {int(window.until_ms)}"
    rows = wh.query(
        f"SELECT k, v, count(*) AS n FROM ({d.array_join(d.table('sessions'), session_where)}) "
        "GROUP BY k, v HAVING count(*) >= 2 ORDER BY n DESC, k, v LIMIT 20000"
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
    keep = sorted(session, key=lambda k: (-totals[k], k))[:MAX_SESSION_KEYS]
    session = {k: sorted(session[k]) for k in sorted(keep)}

    _, metric_cond = metric_expr(d, metric)
    num = d.number("v")
    stats = (
        f"SELECT k, count(*) AS n, count({num}) AS nn, {d.count_distinct('v')} AS nv, "
        f"{d.quantiles(num, NUMERIC_QUANTILES)} AS qs FROM "
    )
    def attr_stats(table: str, condition: str) -> list[tuple]:
        # stats of every attr in thin time slices of the window (about KEY_SCAN_ROWS rows): from
        # the counts of their distinct values when there are few (cheaper than the database's
        # distinct count and quantiles), else in the database
        n_rows = int(wh.query(f"SELECT count(*) FROM {d.table(table)} WHERE {_ts(window)}")[0][0] or 0)
        sampled = f"({d.array_join(d.table(table), f'{_ts(window)}{condition} AND {_time_slices(window, n_rows)}')})"
        pairs = wh.query(f"SELECT k, v, {num} AS x, count(*) AS c FROM {sampled} GROUP BY k, v LIMIT {MAX_STAT_PAIRS + 1}")
        if len(pairs) <= MAX_STAT_PAIRS and not any(x is not None and x != x for _, _, x, _ in pairs):  # no NaN
            return _stats_of_pairs(pairs)
        return wh.query(stats + f"{sampled} GROUP BY k ORDER BY n DESC, k")

    sample_rows, sample_rows_texts = _sample_attr_stats(wh, d, window, f" AND {metric_cond}", metric, rollup)
    sample, sample_numeric = _split_keys(sample_rows, set(session), MAX_SAMPLE_KEYS)
    taken = set(session) | set(sample) | {nk.key for nk in sample_numeric}
    event_text, event_numeric = _split_keys(attr_stats("events", ""), taken, MAX_EVENT_KEYS)
    texts = None
    if sample_rows_texts is not None and len(sample_rows_texts) <= MAX_LISTED_TEXTS:
        texts = sorted({EMPTY_JSON if t is None else t for t in sample_rows_texts})
    return Keys(
        session=session, sample=sorted(sample), sample_numeric=sample_numeric,
        event_numeric=event_numeric, event_text=event_text, sample_texts=texts,
        sessions_seen=max(totals.values(), default=0),
    )


def _stats_of_pairs(pairs: Sequence[tuple]) -> list[tuple]:
    """Stats rows (k, n, nn, nv, qs) from counts of distinct values (k, v, x: v as a number or
    None, c), as the database's `count(*)`, `count(x)`, `count(DISTINCT v)` and `quantile_disc`
    per k give them, most frequent first (then by k, NULL last)."""
    n_of: dict = {}
    nn_of: dict = {}
    nv_of: dict = {}
    numbers_of: dict = {}
    for k, v, x, c in pairs:
        c = int(c)
        n_of[k] = n_of.get(k, 0) + c
        nn_of.setdefault(k, 0)
        nv_of[k] = nv_of.get(k, 0) + (v is not None)
        if x is not None:
            nn_of[k] += c
            numbers = numbers_of.setdefault(k, {})
            numbers[float(x)] = numbers.get(float(x), 0) + c
    order = sorted(n_of, key=lambda k: (-n_of[k], k is None, k or ""))
    return [
        (k, n_of[k], nn_of[k], nv_of[k], _quantiles_disc(numbers_of[k], NUMERIC_QUANTILES) if k in numbers_of else None)
        for k in order
    ]


def as_number(value) -> float | None:
    """A JSON attr value as a float, as SQL's TRY_CAST would read its text; None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _quantiles_disc(weighted: dict[float, int], qs: Sequence[float]) -> list[float]:
    """quantile_disc over values given with their counts: the value at 1-based position
    max(1, ceil(q * n)) of the sorted values (DuckDB's definition)."""
    values = sorted(weighted)
    n = sum(weighted.values())
    out: list[float] = []
    i, seen = 0, weighted[values[0]] if values else 0
    for q in qs:
        target = max(1, math.ceil(q * n))
        while seen < target and i + 1 < len(values):
            i += 1
            seen += weighted[values[i]]
        out.append(values[i])
    return out


def _sample_attr_stats(wh: Warehouse, d: Dialect, window: Window, condition: str, metric: str = "cpu",
                       rollup: tuple[int, int, list[int]] | None = None) -> tuple[list[tuple], list | None]:
    """Stats rows (k, n, nn, nv, qs) of the sample attrs in the window, most frequent first, and
    the distinct attrs texts (None when there were MAX_ATTR_TEXTS or more, so not all were read).

    Samples keep attrs as one JSON text, and a fleet has few distinct ones (stage x a few
    values), so the database only counts samples per distinct text and Python reads the keys:
    every sample in the window counts, and the SQL needs no JSON key listing (which ClickHouse
    18.16 lacks)."""
    if rollup is not None:  # the same counts, most of them from the rollup
        source = f"SELECT attrs, sum(n) AS n FROM ({rows_sql(d, window, metric, rollup)}) GROUP BY attrs"
    else:
        source = f"SELECT attrs, count(*) AS n FROM {d.table('samples')} WHERE {_ts(window)}{condition} GROUP BY attrs"
    rows = wh.query(f"{source} ORDER BY n DESC, attrs LIMIT {MAX_ATTR_TEXTS}")
    n_of: dict[str, int] = {}
    texts_of: dict[str, set[str]] = {}
    numbers_of: dict[str, dict[float, int]] = {}
    for text, n in rows:
        n = int(n)
        for k, v in json_object(text).items():
            n_of[k] = n_of.get(k, 0) + n
            texts_of.setdefault(k, set()).add(attr_text(v) if isinstance(v, (str, int, float, bool)) else str(v))
            x = as_number(v)
            if x is not None:
                numbers = numbers_of.setdefault(k, {})
                numbers[x] = numbers.get(x, 0) + n
    out = []
    for k in sorted(n_of, key=lambda k: (-n_of[k], k)):
        numbers = numbers_of.get(k, {})
        qs = _quantiles_disc(numbers, NUMERIC_QUANTILES) if numbers else None
        out.append((k, n_of[k], sum(numbers.values()), len(texts_of[k]), qs))
    return out, ([text for text, _ in rows] if len(rows) < MAX_ATTR_TEXTS else None)


def _split_keys(rows: list[tuple], taken: set[str], limit: int) -> tuple[list[str], list[NumericKey]]:
    """Attr stats rows (k, n, nn, nv, qs), most frequent first -> (text keys, numeric keys), at most
    `limit` in all, skipping keys already `taken` and text keys with too many values."""
    text: list[str] = []
    numeric: list[NumericKey] = []
    for k, n, nn, nv, qs in rows:
        if k in taken or len(text) + len(numeric) >= limit:
            continue
        nk = _numeric_key(k, n, nn, nv, qs)
        if nk:
            numeric.append(nk)
        elif int(nv) <= MAX_VALUES_PER_KEY:
            text.append(k)
    return text, numeric


def _interval_sql(d: Dialect, value: str, edges: Sequence[float]) -> str:
    """The interval label of a numeric expression ('' when it is NULL): a balanced CASE tree, so
    each value takes about log2(len(edges)) comparisons."""
    labels = interval_labels(edges)

    def tree(lo: int, hi: int) -> str:  # intervals lo..hi; interval i lies below edges[i]
        if lo == hi:
            return d.lit(labels[lo])
        mid = (lo + hi) // 2
        return f"CASE WHEN {value} < {edges[mid]!r} THEN {tree(lo, mid)} ELSE {tree(mid + 1, hi)} END"

    return f"CASE WHEN {value} IS NULL THEN '' ELSE {tree(0, len(labels) - 1)} END"


class _Cols(msgspec.Struct):
    """Item columns: (column alias, attr name)."""

    session: list[tuple[str, str]]
    phase: list[tuple[str, str]]
    order: int = MAX_ITEMS  # items in one combination, at most


def _columns(keys: Keys) -> _Cols:
    session = [(f"sa_{i}", k) for i, k in enumerate(keys.session)]
    session += [(f"en_{i}", nk.key) for i, nk in enumerate(keys.event_numeric)]
    session += [(f"et_{i}", k) for i, k in enumerate(keys.event_text)]
    phase = [(f"sp_{i}", k) for i, k in enumerate(keys.sample)]
    phase += [(f"sn_{i}", nk.key) for i, nk in enumerate(keys.sample_numeric)]
    return _Cols(session, phase, min(MAX_ITEMS, max(1, keys.max_order)))


class _Sql(msgspec.Struct):
    """The building blocks of the report's statements."""

    phases: str  # per (session, phase): ph_n, ph_sum, ph_max, ph_t0, ph_t1, ph_hi + phase columns
    sessions: str  # per session: counts + session item columns
    # narrow form (DuckDB): phases carry the phase key `pid` instead of their item columns, and
    # `phase_items` maps each pid to them; join the two where the items are needed
    phase_items: str | None = None
    # stage masks (DuckDB): `phase_items` also holds `qbit`, one bit per stage split into several
    # phases (0 for the others), and the per-session rows `qm`/`hm`, the bits of the split stages
    # the session ran / was high in
    masks: bool = False


MAX_MASK_STAGES = 63  # split stages a 64-bit stage mask holds


def mask_stages_fit(keys: Keys) -> bool:
    """True when the split stages surely fit a 64-bit mask: the window's attrs texts hold at
    most MAX_MASK_STAGES distinct tuples of categorical sample values, an upper bound of the
    stages SQL reads (equal JSON values read as equal text). A text that is not plain sorted
    JSON (where SQL and Python might read it differently) counts as a value of its own."""
    if keys.sample_texts is None or not keys.sample:
        return False
    seen: set = set()
    for text in keys.sample_texts:
        obj = json_object(text)
        canonical = bool(obj) and msgspec.json.encode(obj, order="sorted").decode() == text
        seen.add(tuple(msgspec.json.encode(obj.get(k)) for k in keys.sample) if canonical else text)
        if len(seen) > MAX_MASK_STAGES:
            return False
    return True


def rows_sql(d: Dialect, window: Window, metric: str, rollup: tuple[int, int, list[int]] | None,
             population: str = "") -> str:
    """The window's samples as rows (session_id, attrs, n, s, mx, t0, t1): one row a sample, or,
    for the metric cpu in closed buckets the warehouse rolled up, one row per (session, attrs,
    bucket) from `sample_rollup` -- and samples for the rest (window edges, newer and dirty
    buckets). The sums are the same either way.

    `population`: a condition on (session_id, attrs) keeping only the drill path's rows."""
    value, cond = metric_expr(d, metric)
    if population:
        cond = f"{cond} AND {population}"

    def raw(lo: int, hi: int) -> str:
        return (
            f"SELECT session_id, coalesce(attrs, '{{}}') AS attrs, 1 AS n, {value} AS s, {value} AS mx, ts AS t0, "
            f"ts AS t1 FROM {d.table('samples')} WHERE ts >= {int(lo)} AND ts < {int(hi)} AND {cond}"
        )

    since, until = int(window.since_ms), int(window.until_ms)
    if rollup is None or metric != "cpu":
        return raw(since, until)
    width, watermark, dirty = rollup
    first = -(-since // width)  # the first bucket wholly inside the window
    end = min(until // width, watermark)  # buckets [first, end) are rolled up
    if end <= first:
        return raw(since, until)
    dirty = [b for b in dirty if first <= b < end]
    skip = f" AND bucket NOT IN ({', '.join(map(str, dirty))})" if dirty else ""
    rolled = (
        f"SELECT session_id, attrs, n, cpu_sum AS s, cpu_max AS mx, ts_min AS t0, ts_max AS t1 FROM sample_rollup "
        f"WHERE bucket >= {first} AND bucket < {end}{skip}{' AND ' + population if population else ''}"
    )
    # the rest as plain ts ranges, so each scan skips every row group outside it (zone maps)
    ranges = [(since, first * width), (end * width, until)] + [(b * width, (b + 1) * width) for b in dirty]
    return " UNION ALL ".join([rolled] + [raw(lo, hi) for lo, hi in ranges if hi > lo])


def _building_blocks(d: Dialect, keys: Keys, window: Window, metric: str, threshold: float, phases_src: str,
                     rollup: tuple[int, int, list[int]] | None = None, narrow: bool = False,
                     masks: bool = False, population: str = "") -> _Sql:
    """SQL for the phase rows, and for the per-session rows built from `phases_src` (the phase rows).

    `narrow`: the phase rows keep their 64-bit key instead of their items (see _Sql): grouping
    ~700k phases no longer copies two strings into each group's state, and what is kept
    between the report's statements is a third smaller."""
    cols = _columns(keys)
    _, cond = metric_expr(d, metric)
    cat = [a for a, _ in cols.phase if a.startswith("sp_")]
    keyed = narrow and bool(cols.phase)  # the phase rows carry sk and pid, their items in phase_items
    masks = masks and keyed and bool(cat)
    phase_items: str | None = None
    # A fleet has few distinct attrs texts (stage x a few values): each is read (JSON) and
    # bucketed once, into its phase items and a 64-bit phase key, and the samples are then
    # grouped by (session_id, phase key) -- one string and one integer, far cheaper to hash
    # than the item strings, and no JSON is parsed per sample.
    where = f"WHERE {_ts(window)} AND {cond}{' AND ' + population if population else ''}"
    samples = rows_sql(d, window, metric, rollup, population)
    thr = float(threshold)
    stats = (
        f"sum(n) AS ph_n, sum(s) AS ph_sum, max(mx) AS ph_max, min(t0) AS ph_t0, max(t1) AS ph_t1, "
        f"CASE WHEN sum(s) > {thr} * sum(n) THEN 1 ELSE 0 END AS ph_hi"
    )
    if cols.phase:
        item_cols = [f"{d.sattr(k)} AS {a}" for a, k in cols.phase if a.startswith("sp_")]
        item_cols += [f"{d.sattr_number(nk.key)} AS nv_{i}" for i, nk in enumerate(keys.sample_numeric)]
        if keys.sample_texts is not None:  # discovery read them all: list them, no second scan
            texts = d.rows_of([d.lit(t) for t in keys.sample_texts], "attrs")
        else:
            texts = f"SELECT DISTINCT coalesce(attrs, '{{}}') AS attrs FROM {d.table('samples')} {where}"
        items = f"SELECT attrs{''.join(', ' + c for c in item_cols)} FROM ({texts})"
        if keys.sample_numeric:  # each number is parsed once, then bucketed
            buckets = [f"{_interval_sql(d, f'nv_{i}', nk.edges)} AS sn_{i}" for i, nk in enumerate(keys.sample_numeric)]
            items = f"SELECT attrs{''.join(', ' + c for c in cat + buckets)} FROM ({items})"
        aliases = [a for a, _ in cols.phase]
        phase_map = f"SELECT attrs, {d.hash_of(aliases)} AS pid, {', '.join(aliases)} FROM ({items})"
        # narrow: also a 64-bit session key, so later groupings and joins hash integers
        carried = "hash(session_id) AS sk, pid" if keyed else ", ".join(f"{d.any_value(a)} AS {a}" for a in aliases)
        phases = (
            f"SELECT session_id, {carried}, {stats} "
            f"FROM ({samples}) AS r {d.inner_join} ({phase_map}) AS pm USING (attrs) GROUP BY session_id, pid"
        )
        if keyed:  # qid: the key of the categorical items alone (stage), for the per-(session, stage) rows
            qid = f"{d.hash_of(cat)} AS qid, " if cat else ""
            phase_items = f"SELECT DISTINCT pid, {qid}{', '.join(aliases)} FROM ({phase_map})"
            if masks:  # one bit per stage split into several phases, in a fixed (qid) order
                split = (f"SELECT qid, (1::BIGINT << (row_number() OVER (ORDER BY qid) - 1)::INTEGER) AS qbit "
                         f"FROM ({phase_items}) GROUP BY qid HAVING count(*) > 1")
                phase_items = (f"SELECT pm0.*, coalesce(qb.qbit, 0) AS qbit FROM ({phase_items}) AS pm0 "
                               f"LEFT JOIN ({split}) AS qb USING (qid)")
    else:
        phases = f"SELECT session_id, {stats} FROM ({samples}) GROUP BY session_id"
    mask_cols = ", bit_or(qbit) AS qm, bit_or(CASE WHEN ph_hi = 1 THEN qbit ELSE 0 END) AS hm" if masks else ""
    per_session = (
        f"SELECT session_id{', hash(session_id) AS sk' if keyed else ''}, count(*) AS n_ph, "
        "sum(ph_hi) AS n_hi, max(ph_hi) AS s_hi, sum(ph_n) AS n_samples, "
        f"sum(ph_sum) AS m_sum, max(ph_max) AS peak, min(ph_t0) AS t0, max(ph_t1) AS t1{mask_cols} "
        f"FROM {f'{phases_src} JOIN (SELECT pid, qbit FROM pm) USING (pid)' if masks else phases_src} GROUP BY session_id"
    )
    base = ["session_id"] + (["sk"] if keyed else []) + ["n_ph", "n_hi", "s_hi", "n_samples", "m_sum", "peak", "t0", "t1"]
    base += ["qm", "hm"] if masks else []
    sql, have = per_session, list(base)
    sa = [(a, k) for a, k in cols.session if a.startswith("sa_")]
    if sa:
        attr_cols = ", ".join(
            f"min(CASE WHEN {d.in_list(d.attr(k), keys.session[k])} THEN {d.attr(k)} ELSE '' END) AS {a}"
            for a, k in sa
        )
        attrs_sql = f"SELECT session_id, {attr_cols} FROM {d.table('sessions')} GROUP BY session_id"
        sql = (
            f"SELECT {', '.join(have + [f'coalesce({a}, {chr(39)}{chr(39)}) AS {a}' for a, _ in sa])} "
            f"FROM ({sql}) AS ps {d.left_join} ({attrs_sql}) AS sa USING (session_id)"
        )
        have += [a for a, _ in sa]
    ev = [(a, k) for a, k in cols.session if not a.startswith("sa_")]
    if ev:
        inner, outer = [], []
        for i, nk in enumerate(keys.event_numeric):
            inner.append(f"max({d.attr_number(nk.key)}) AS em_{i}")
            outer.append(f"{_interval_sql(d, f'em_{i}', nk.edges)} AS en_{i}")
        for i, k in enumerate(keys.event_text):
            inner.append(f"max({d.attr(k)}) AS et_{i}_raw")
            outer.append(f"et_{i}_raw AS et_{i}")
        ev_sql = (
            f"SELECT session_id, {', '.join(outer)} FROM (SELECT session_id, {', '.join(inner)} FROM {d.table('events')} "
            f"WHERE {_ts(window)} GROUP BY session_id)"
        )
        sql = (
            f"SELECT {', '.join(have + [f'coalesce({a}, {chr(39)}{chr(39)}) AS {a}' for a, _ in ev])} "
            f"FROM ({sql}) AS pe {d.left_join} ({ev_sql}) AS ev USING (session_id)"
        )
    return _Sql(phases=phases, sessions=sql, phase_items=phase_items, masks=masks)


GROUP_BUDGET = 100_000  # combinations the search may count in one report, about


def search_order(keys: Keys, wanted: int = MAX_ITEMS) -> int:
    """The largest order (items per combination, at most `wanted`) whose possible combinations
    stay within GROUP_BUDGET: each set of columns holds at most the product of their value
    counts, and at most as many as there are sessions. Ten attrs of 4-40 values have ~1M
    combinations of three values but ~19k of two; six low-cardinality ones ~14k of three."""
    cards = [len(v) + 1 for v in keys.session.values()] + [len(nk.edges) + 1 for nk in keys.event_numeric]
    cards += [MAX_VALUES_PER_KEY for _ in keys.event_text] + [MAX_VALUES_PER_KEY // 4 for _ in keys.sample]
    cards += [len(nk.edges) + 1 for nk in keys.sample_numeric]
    cap = max(1, keys.sessions_seen) if keys.sessions_seen else None
    order = max(1, min(wanted, MAX_ITEMS))
    while order > 1:
        groups = sum(min(cap, math.prod(c)) if cap else math.prod(c)
                     for k in range(1, order + 1) for c in combinations(cards, k))
        if groups <= GROUP_BUDGET:
            break
        order -= 1
    return order


def _combo_specs(cols: Sequence[tuple[str, str]], must: Sequence[tuple[str, str]] = (),
                 order: int = MAX_ITEMS) -> list[list[tuple[str, str]]]:
    """Every combination of up to MAX_ITEMS columns (alias, attr name) of distinct attrs, holding
    one of `must` if given, its columns ordered by attr name."""
    out = []
    allc = list(cols)
    for size in range(1, order + 1):
        for combo in combinations(allc, size):
            names = [k for _, k in combo]
            if len(set(names)) != len(names):
                continue
            if must and not any(c in must for c in combo):
                continue
            out.append(sorted(combo, key=lambda c: c[1]))
    return out


def _listed_values(keys: Keys, cols: _Cols) -> dict[str, list[str]]:
    """The columns coded by their place in a known list (session attrs: one of their kept values
    or ''; numeric event attrs: one of their interval labels or ''), and that list; code i (from
    1) is the list's i-th value."""
    listed = {a: list(keys.session[k]) for a, k in cols.session if a.startswith("sa_")}
    listed.update((f"en_{i}", interval_labels(nk.edges)) for i, nk in enumerate(keys.event_numeric))
    return listed


def _coded_columns(cols: _Cols) -> list[str]:
    """The item columns whose codes part D lists, in order: session items, then phase items."""
    return [a for a, _ in cols.session + cols.phase]


def _part_specs(cols: _Cols) -> dict[str, list[list[tuple[str, str]]]]:
    """The combinations each counting statement explodes into: S (session items; the first,
    empty, one is the total), P (with a numeric sample attr), Q (with a categorical one)."""
    cat = [(a, k) for a, k in cols.phase if a.startswith("sp_")]
    num = [(a, k) for a, k in cols.phase if a.startswith("sn_")]
    return {
        "S": [[]] + _combo_specs(cols.session, order=cols.order),
        "P": _combo_specs(cols.session + cols.phase, must=num, order=cols.order) if num else [],
        "Q": _combo_specs(cols.session + cat, must=cat, order=cols.order) if cat else [],
    }


def _combo_exprs(d: Dialect, specs: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
    """One SQL string expression per combination ('' when a value is missing; the empty one, the total, '*')."""
    out = []
    for ordered in specs:
        if not ordered:
            out.append(d.lit(TOTAL))
            continue
        parts: list[str] = []
        for i, (alias, name) in enumerate(ordered):
            parts.append(d.lit((RS if i else "") + name + US))
            parts.append(alias)
        cond = " AND ".join(f"{a} != ''" for a, _ in ordered)
        out.append(f"CASE WHEN {cond} THEN {d.concat(*parts)} ELSE '' END")
    return out


CODE_BITS = 16  # a value's code in a coded combination key; codes are 1.. (0: no value)
COMBO_SHIFT = CODE_BITS * MAX_ITEMS  # the combination's index sits above its values' codes


def _code_sql(alias: str, values: Sequence[str] | None = None) -> str:
    """A column's value as a small integer code: 0 for '', else its place in `values` (SQL
    literals) when the column can hold only those (a lookup per row), else its rank among the
    distinct values (a DuckDB window: a sort)."""
    if values is not None:
        listed = ", ".join(values)
        return f"CASE WHEN {alias} = '' THEN 0 ELSE coalesce(list_position([{listed}], {alias}), 0) END AS {alias}_c"
    return f"CASE WHEN {alias} = '' THEN 0 ELSE dense_rank() OVER (PARTITION BY {alias} = '' ORDER BY {alias}) END AS {alias}_c"


def _coded_combo_exprs(specs: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
    """One BIGINT expression per combination (-1 when a value is missing): its index in `specs`
    above the codes (`{alias}_c`) of its values; the empty combination (the total) is 0."""
    out = []
    for j, ordered in enumerate(specs):
        if not ordered:
            out.append("0::BIGINT")
            continue
        cond = " AND ".join(f"{a}_c > 0" for a, _ in ordered)
        fields = [f"({a}_c::BIGINT << {CODE_BITS * (MAX_ITEMS - 1 - i)})" for i, (a, _) in enumerate(ordered)]
        out.append(f"CASE WHEN {cond} THEN {j << COMBO_SHIFT} | {' | '.join(fields)} ELSE -1 END")
    return out


def _coded_decoder(specs: Sequence[Sequence[tuple[str, str]]], values: Mapping[str, Mapping[int, str]]):
    """A function naming the combination a coded key stands for (see _coded_combo_exprs)."""
    mask = (1 << CODE_BITS) - 1
    fields = [
        tuple((name, values[alias], CODE_BITS * (MAX_ITEMS - 1 - i)) for i, (alias, name) in enumerate(spec))
        for spec in specs
    ]

    def decode(key: int) -> Combo:
        return tuple((name, table[(key >> shift) & mask]) for name, table, shift in fields[key >> COMBO_SHIFT])

    return decode


class _PartSql:
    """What the statements of one report share: dialect, item columns, combinations to explode,
    the relations they read, and whether combinations are coded as integers."""

    def __init__(self, d: Dialect, keys: Keys, phases_src: str, sessions_src: str, classes_src: str | None,
                 keyed_src: str, masks: bool):
        self.d = d
        self.cols = _columns(keys)
        self.s_aliases = [a for a, _ in self.cols.session]
        self.cat = [(a, k) for a, k in self.cols.phase if a.startswith("sp_")]
        self.num = [(a, k) for a, k in self.cols.phase if a.startswith("sn_")]
        self.phases_src, self.sessions_src, self.classes_src, self.keyed_src = (
            phases_src, sessions_src, classes_src, keyed_src)
        self.coded = masks and bool(classes_src) and bool(self.s_aliases)
        self.specs = _part_specs(self.cols)
        self.ss_items = f"(SELECT session_id{''.join(', ' + a for a in self.s_aliases)} FROM {sessions_src}) AS ss"

    def item_cols(self, aliases: Sequence[str]) -> str:
        """The item columns as the statements group them: their codes when coded."""
        return ", ".join(f"{a}_c" for a in aliases) if self.coded else ", ".join(aliases)

    def exploded(self, part: str, sums: str, counts: str, source: str) -> str:
        """One row per combination of `part`: the rows of `source` exploded into their
        combinations (integer or string keys) and summed."""
        d = self.d
        if self.coded:
            return (f"SELECT '{part}' AS part, CAST(combo AS VARCHAR) AS k, {sums} FROM ("
                    + d.explode(counts, _coded_combo_exprs(self.specs[part]), source, "combo")
                    + ") WHERE combo >= 0 GROUP BY combo")
        return (f"SELECT '{part}' AS part, combo AS k, {sums} FROM ("
                + d.explode(counts, _combo_exprs(d, self.specs[part]), source, "combo")
                + ") WHERE combo != '' GROUP BY combo")


def _parts(d: Dialect, keys: Keys, window: Window, bucket_ms: int, version_alias: str | None,
           phases_src: str, sessions_src: str, classes_src: str | None = None,
           keyed_src: str = "ph0", masks: bool = False) -> dict[str, str]:
    """The statements (S, P, T, W) over the phase rows and per-session rows.

    `classes_src`: a relation (sc, session item columns) with one row per distinct set of
    session items, whose key `sc` the per-session rows carry. The per-phase statements then
    join and group on that one integer instead of every session item string, and name the
    items only for the few thousand groups left. In that form the phase rows carry the 64-bit
    session key `sk` (`keyed_src` holds them without their items), the joined phase rows
    `phases_src` also the stage key `qid`, and `pm` maps pid and qid to the items (narrow
    building blocks, DuckDB).

    `masks` (with `classes_src`; see _Sql.masks): the phases counted per (sc, pid) once, in the
    relation `pc` (sc, pid, c_n, c_h), serve both the numeric and the stage combinations; a
    split stage's sessions come from the per-session stage masks, so no statement groups the
    phases per (session, stage). The combinations are then also spelled as integers (see
    _coded_combo_exprs; `classes_src` and `pm` carry each item column's code `{alias}_c`), and
    part D lists the codes: (k: value, a: code, b: the column's index in _coded_columns)."""
    c = _PartSql(d, keys, phases_src, sessions_src, classes_src, keyed_src, masks)
    parts = {"S": _session_part(c)}
    if c.num:
        parts["P"] = _numeric_part(c)
    if c.cat:
        parts["Q"] = _stage_part(c)
    if c.coded:  # the codes of every item column's values (of a listed one, known without reading)
        listed = _listed_values(keys, c.cols)
        parts["D"] = " UNION ALL ".join(
            [f"SELECT DISTINCT 'D' AS part, {a} AS k, {a}_c AS a, {i} AS b, 0 AS c, 0 AS e, 0 AS x, 0 AS y "
             f"FROM {classes_src if i < len(c.s_aliases) else 'pm'} WHERE {a}_c > 0"
             for i, a in enumerate(_coded_columns(c.cols)) if a not in listed]
            or ["SELECT 'D' AS part, '' AS k, 0 AS a, 0 AS b, 0 AS c, 0 AS e, 0 AS x, 0 AS y WHERE 1 = 0"]
        )
    parts["T"] = _timeline_part(c, window, bucket_ms, version_alias)
    parts["W"] = (
        "SELECT 'W' AS part, session_id AS k, n_samples AS a, s_hi AS b, m_sum AS c, 0 AS e, "
        f"m_sum / n_samples AS x, peak AS y FROM {sessions_src} ORDER BY x DESC, k LIMIT {WORST_LIMIT}"
    )
    if c.cols.phase and d.ctes:  # the worst sessions' phases in the same statement (else _fill_worst reads them)
        enc: list[str] = []
        for i, (alias, name) in enumerate(c.cols.phase):
            enc += [d.lit((RS if i else GS) + name + US), alias]
        parts["V"] = (
            f"SELECT 'V' AS part, {d.concat('session_id', *enc)} AS k, ph_hi AS a, 0 AS b, 0 AS c, 0 AS e, "
            f"ph_t0 AS x, 0 AS y FROM {phases_src} WHERE session_id IN (SELECT k FROM ({parts['W']}))"
        )
    return parts


def _session_part(c: _PartSql) -> str:
    """S: per combination of session items (and the total): sessions, high sessions, phases,
    high phases, samples and metric sum."""
    d, s_aliases = c.d, c.s_aliases
    s_sums = "sum(c_s) AS a, sum(c_sh) AS b, sum(c_u) AS c, sum(c_uh) AS e, sum(c_n) AS x, sum(c_m) AS y"
    s_counts = "c_s, c_sh, c_u, c_uh, c_n, c_m"
    if c.coded:  # per session class, named (coded) from the map
        s_compact = (
            f"SELECT {c.item_cols(s_aliases)}, c_s, c_sh, c_u, c_uh, c_n, c_m FROM (SELECT sc, count(*) AS c_s, "
            f"sum(s_hi) AS c_sh, sum(n_ph) AS c_u, sum(n_hi) AS c_uh, sum(n_samples) AS c_n, sum(m_sum) AS c_m "
            f"FROM {c.sessions_src} GROUP BY sc) AS sg {d.inner_join} {c.classes_src} USING (sc)"
        )
    else:
        s_group = f" GROUP BY {', '.join(s_aliases)}" if s_aliases else ""
        s_compact = (
            f"SELECT {''.join(a + ', ' for a in s_aliases)}count(*) AS c_s, sum(s_hi) AS c_sh, sum(n_ph) AS c_u, "
            f"sum(n_hi) AS c_uh, sum(n_samples) AS c_n, sum(m_sum) AS c_m FROM {c.sessions_src}{s_group}"
        )
    return c.exploded("S", s_sums, s_counts, s_compact)


def _numeric_part(c: _PartSql) -> str:
    """P: combinations naming a numeric sample attr, counted on the phases themselves."""
    d, s_aliases, cols = c.d, c.s_aliases, c.cols
    sel = ", ".join(s_aliases + [a for a, _ in cols.phase])
    has_num = " OR ".join(f"{a} != ''" for a, _ in c.num)
    if c.coded:
        p_compact = (
            f"SELECT {c.item_cols(s_aliases + [a for a, _ in cols.phase])}, c_n, c_h FROM pc {d.inner_join} pm "
            f"USING (pid) {d.inner_join} {c.classes_src} USING (sc) WHERE {has_num}"
        )
    elif c.classes_src and s_aliases:
        # the phases picked and grouped by integer keys (sc, pid), named from the maps after
        joined = (
            f"SELECT sc, pid, ph_hi FROM (SELECT sk, pid, ph_hi FROM {c.keyed_src} "
            f"WHERE pid IN (SELECT pid FROM pm WHERE {has_num})) AS ph "
            f"{d.inner_join} (SELECT sk, sc FROM {c.sessions_src}) AS ss USING (sk)"
        )
        p_compact = (
            f"SELECT {sel}, c_n, c_h FROM (SELECT sc, pid, count(*) AS c_n, sum(ph_hi) AS c_h FROM ({joined}) "
            f"GROUP BY sc, pid) AS pc {d.inner_join} pm USING (pid) {d.inner_join} {c.classes_src} USING (sc)"
        )
    else:
        joined = (
            f"SELECT {sel}, ph_hi FROM (SELECT * FROM {c.phases_src} WHERE {has_num}) AS ph "
            f"{d.inner_join} {c.ss_items} USING (session_id)"
        )
        p_compact = f"SELECT {sel}, count(*) AS c_n, sum(ph_hi) AS c_h FROM ({joined}) GROUP BY {sel}"
    # high phases summed in the group, not a group key: up to half the rows to explode
    return c.exploded("P", "sum(c_n) AS a, sum(c_h) AS b, sum(c_n) AS c, sum(c_h) AS e, 0 AS x, 0 AS y",
                      "c_n, c_h", p_compact)


def _stage_part(c: _PartSql) -> str:
    """Q: combinations naming only categorical sample attrs (stage): one row per (session,
    stage), so sessions are exact, and the phases inside it are counted too."""
    d, s_aliases = c.d, c.s_aliases
    c_aliases = [a for a, _ in c.cat]
    sel = ", ".join(s_aliases + c_aliases)
    if c.coded:
        # phases per (session items, stage) from pc; sessions per (session items, stage): a
        # stage that only one phase can have is that phase in each session, a split stage is
        # counted from the sessions' stage masks (qm: ran it, hm: was high in it)
        units = (f"SELECT sc, qid, sum(c_n) AS c_u, sum(c_h) AS c_uh, max(qbit) AS qbit FROM pc "
                 f"{d.inner_join} pm USING (pid) GROUP BY sc, qid")
        split = (
            f"SELECT sc, qid, sum(n) AS m_s, sum(CASE WHEN (hm & qbit) != 0 THEN n ELSE 0 END) AS m_sh FROM "
            f"(SELECT sc, qm, hm, count(*) AS n FROM {c.sessions_src} WHERE qm != 0 GROUP BY sc, qm, hm) AS sm "
            f"JOIN (SELECT DISTINCT qid, qbit FROM pm WHERE qbit != 0) AS qb ON (sm.qm & qb.qbit) != 0 GROUP BY sc, qid"
        )
        q_compact = (
            f"SELECT {c.item_cols(s_aliases + c_aliases)}, CASE WHEN qbit = 0 THEN c_u ELSE m_s END AS c_s, "
            f"CASE WHEN qbit = 0 THEN c_uh ELSE m_sh END AS c_sh, c_u, c_uh "
            f"FROM ({units}) AS qu LEFT JOIN ({split}) AS qs USING (sc, qid) "
            f"{d.inner_join} {c.classes_src} USING (sc) {d.inner_join} "
            f"(SELECT DISTINCT qid, {c.item_cols(c_aliases)} FROM pm) AS qn USING (qid)"
        )
    elif c.classes_src and s_aliases:
        # integers only until the few thousand (session items, stage) groups are named; a
        # stage with one possible phase (no numeric attr splits it) is that phase in each
        # session, so only the stages split into several phases need the grouping
        per_stage = "SELECT qid FROM pm GROUP BY qid HAVING count(*)"
        coarse = (f"SELECT sk, qid, 1 AS co_n, ph_hi AS co_h, ph_hi AS co_any FROM {c.phases_src} "
                  f"WHERE qid IN ({per_stage} = 1) UNION ALL "
                  f"SELECT sk, qid, count(*) AS co_n, sum(ph_hi) AS co_h, max(ph_hi) AS co_any "
                  f"FROM {c.phases_src} WHERE qid IN ({per_stage} > 1) GROUP BY sk, qid")
        joined = (f"SELECT sc, qid, co_n, co_h, co_any FROM ({coarse}) AS co {d.inner_join} "
                  f"(SELECT sk, sc FROM {c.sessions_src}) AS ss USING (sk)")
        q_compact = (
            f"SELECT {sel}, c_s, c_sh, c_u, c_uh FROM (SELECT sc, qid, count(*) AS c_s, sum(co_any) AS c_sh, "
            f"sum(co_n) AS c_u, sum(co_h) AS c_uh FROM ({joined}) GROUP BY sc, qid) AS qc "
            f"{d.inner_join} {c.classes_src} USING (sc) {d.inner_join} "
            f"(SELECT DISTINCT qid, {', '.join(c_aliases)} FROM pm) AS qm USING (qid)"
        )
    else:
        coarse = (
            f"SELECT session_id, {', '.join(c_aliases)}, count(*) AS co_n, sum(ph_hi) AS co_h, "
            f"max(ph_hi) AS co_any FROM {c.phases_src} GROUP BY session_id, {', '.join(c_aliases)}"
        )
        joined = f"SELECT {sel}, co_n, co_h, co_any FROM ({coarse}) AS co {d.inner_join} {c.ss_items} USING (session_id)"
        q_compact = (
            f"SELECT {sel}, count(*) AS c_s, sum(co_any) AS c_sh, sum(co_n) AS c_u, sum(co_h) AS c_uh "
            f"FROM ({joined}) GROUP BY {sel}"
        )
    return c.exploded("Q", "sum(c_s) AS a, sum(c_sh) AS b, sum(c_u) AS c, sum(c_uh) AS e, 0 AS x, 0 AS y",
                      "c_s, c_sh, c_u, c_uh", q_compact)


def _timeline_part(c: _PartSql, window: Window, bucket_ms: int, version_alias: str | None) -> str:
    """T: sessions and high sessions per (first bucket, last bucket, version)."""
    d = c.d
    since = int(window.since_ms)
    b0 = d.idiv(f"t0 - {since}", int(bucket_ms))
    b1 = d.idiv(f"t1 - {since}", int(bucket_ms))
    ver = version_alias or "''"
    return (
        f"SELECT 'T' AS part, ver AS k, b0 AS a, b1 AS b2, count(*) AS c, sum(s_hi) AS e, 0 AS x, 0 AS y FROM "
        f"(SELECT {b0} AS b0, {b1} AS b1, {ver} AS ver, s_hi FROM {c.sessions_src}) GROUP BY b0, b1, ver"
    )


ROW_COLUMNS = ("part", "k", "a", "b", "c", "e", "x", "y")  # what every part's SELECT returns, in order
# what the generic columns a..y hold in each part (see _parts): rows are read back by these names
PART_FIELDS: dict[str, dict[str, str]] = {
    "S": {"a": "sessions", "b": "high_sessions", "c": "units", "e": "high_units", "x": "samples", "y": "metric_sum"},
    "P": {"a": "sessions", "b": "high_sessions", "c": "units", "e": "high_units"},
    "Q": {"a": "sessions", "b": "high_sessions", "c": "units", "e": "high_units"},
    "D": {"k": "value", "a": "code", "b": "column"},
    "T": {"k": "version", "a": "first_bucket", "b": "last_bucket", "c": "sessions", "e": "high_sessions"},
    "W": {"k": "session_id", "a": "samples", "b": "high", "c": "metric_sum", "x": "mean", "y": "max"},
    "V": {"k": "phase", "a": "high", "x": "first_ts"},
}


def named(row: Sequence) -> dict:
    """One row of the report's statement as {field: value}, by the names of its part."""
    raw = dict(zip(ROW_COLUMNS, row, strict=True))
    fields = PART_FIELDS[raw["part"]]
    out = {"part": raw["part"], "key": raw["k"]}
    out.update({name: raw[col] for col, name in fields.items()})
    return out


def _decode_combo(key: str) -> Combo:
    return tuple(tuple(item.split(US, 1)) for item in key.split(RS))  # type: ignore[misc]


def fetch_facts(
    wh: Warehouse, window: Window, metric: str, threshold: float, bucket_ms: int,
    version_key_pref: Sequence[str] = (), keys: Keys | None = None, population: str = "",
    rollup: tuple[int, int, list[int]] | None = None,
) -> Facts:
    """Aggregate the window into combination counts, a timeline, and the worst sessions.

    `keys`: the attrs to look at (default: discovered); `population`: a condition on sample
    rows (session_id, attrs) keeping only the drill path (see exact.population_sql);
    `rollup`: the warehouse's rollup state, when it keeps one."""
    d = dialect_for(wh.dialect)
    if keys is None:
        keys = discover_keys(wh, window, metric, rollup)
    cols = _columns(keys)
    version_alias = next((a for k in version_key_pref for a, name in cols.session if name == k and a.startswith("sa_")), None)
    rows: list[tuple] = []

    def name_of(part: str, k: str) -> Combo:  # a combination's key back as its items (the total: ())
        return () if k == TOTAL else _decode_combo(k)

    if not d.ctes:
        # no CTEs before ClickHouse 20: inline the phase and session subqueries into each statement
        blocks = _building_blocks(d, keys, window, metric, threshold, "__PH__", population=population)
        ph = f"({blocks.phases})"
        ss = "(" + blocks.sessions.replace("__PH__", ph) + ")"
        parts = _parts(d, keys, window, bucket_ms, version_alias, ph, ss)
        for sql in parts.values():
            rows.extend(wh.query(sql))
    else:
        s_aliases = [a for a, _ in cols.session]
        masks = bool(s_aliases) and mask_stages_fit(keys)
        rows, coded = _duckdb_rows(wh, d, keys, window, metric, threshold, bucket_ms, version_alias, rollup, masks,
                                    population)
        codes = [named(r) for r in rows if r[0] == "D"] if coded else []
        if coded:
            names = _coded_columns(cols)
            codes += [{"value": v, "code": i, "column": names.index(a)}
                      for a, vs in _listed_values(keys, cols).items() for i, v in enumerate(vs, 1)]
        if codes and max(int(r["code"]) for r in codes) >> CODE_BITS:  # too many values to code: spell them out
            rows, coded = _duckdb_rows(wh, d, keys, window, metric, threshold, bucket_ms, version_alias, rollup, False,
                                        population)
        if coded:
            names = _coded_columns(cols)
            values: dict[str, dict[int, str]] = {a: {} for a in names}
            for r in codes:
                values[names[int(r["column"])]][int(r["code"])] = str(r["value"])
            decoders = {part: _coded_decoder(specs, values) for part, specs in _part_specs(cols).items()}

            def name_of(part: str, k: str) -> Combo:
                return decoders[part](int(k))
    counts: dict[Combo, Counts] = {}
    total = Counts()
    worst: list[SessionFacts] = []
    phases_of: dict[str, list] = {}
    timeline_acc: dict[tuple[int, str], list[int]] = {}
    def n(value) -> int:  # sums over no rows are NULL
        return int(value or 0)

    for row in map(named, rows):
        part, k = row["part"], row["key"]
        if part == "S":
            cnt = Counts(n(row["sessions"]), n(row["high_sessions"]), n(row["units"]), n(row["high_units"]),
                         n(row["samples"]), float(row["metric_sum"] or 0.0))
            combo = name_of(part, k)
            if combo:
                counts[combo] = cnt
            else:
                total = cnt
        elif part in ("P", "Q"):
            counts[name_of(part, k)] = Counts(n(row["sessions"]), n(row["high_sessions"]), n(row["units"]),
                                              n(row["high_units"]))
        elif part == "D":
            pass  # read above
        elif part == "T":
            for bucket in range(n(row["first_bucket"]), n(row["last_bucket"]) + 1):  # active in every bucket
                per_bucket = timeline_acc.setdefault((bucket, str(k)), [0, 0])
                per_bucket[0] += n(row["sessions"])
                per_bucket[1] += n(row["high_sessions"])
        elif part == "V":
            sid, _, enc = str(k).partition(GS)
            items = tuple((name, v) for name, v in (i.split(US, 1) for i in enc.split(RS)) if v)
            phases_of.setdefault(sid, []).append((float(row["first_ts"] or 0), items, bool(row["high"])))
        else:
            worst.append(SessionFacts(session_id=str(k), samples=n(row["samples"]),
                                      mean=session_mean(row["metric_sum"] or 0.0, n(row["samples"])),
                                      max=float(row["max"] or 0.0)))
    timeline = [TimelineRow(b, v, n, h) for (b, v), (n, h) in sorted(timeline_acc.items())]
    worst.sort(key=lambda f: (-f.mean, f.session_id))
    for f in worst:
        f.phases = [(items, hi) for _, items, hi in sorted(phases_of.get(f.session_id, []))]
    _fill_worst(wh, d, keys, window, metric, threshold, worst, population)
    return Facts(keys=keys, counts=counts, total=total, timeline=timeline, worst=worst)


def _duckdb_rows(wh: Warehouse, d: Dialect, keys: Keys, window: Window, metric: str, threshold: float,
                 bucket_ms: int, version_alias: str | None, rollup: tuple[int, int, list[int]] | None,
                 masks: bool, population: str = "") -> tuple[list[tuple], bool]:
    """The rows of every part, in one statement over materialized building blocks (DuckDB), and
    whether the combinations in them are coded (see _parts)."""
    cols = _columns(keys)
    s_aliases = [a for a, _ in cols.session]
    blocks = _building_blocks(d, keys, window, metric, threshold, "ph0", rollup, narrow=True, masks=masks,
                              population=population)
    parts = _parts(d, keys, window, bucket_ms, version_alias, "ph", "ss", "sc_map" if s_aliases else None,
                   masks=blocks.masks)
    union = " UNION ALL ".join(f"SELECT * FROM ({sql})" for sql in parts.values())
    if blocks.phase_items is None:
        ctes = f"ph0 AS MATERIALIZED ({blocks.phases}), ph AS NOT MATERIALIZED (SELECT * FROM ph0)"
    else:  # phases with their items, joined (a few hundred keys) in each statement that needs them
        items = blocks.phase_items
        if blocks.masks:  # with their values' codes
            items = f"SELECT *, {', '.join(_code_sql(a) for a, _ in cols.phase)} FROM ({items})"
        ctes = (f"ph0 AS MATERIALIZED ({blocks.phases}), pm AS MATERIALIZED ({items}), "
                "ph AS NOT MATERIALIZED (SELECT * FROM ph0 JOIN pm USING (pid))")
    if s_aliases:
        classes = f"SELECT DISTINCT sc, {', '.join(s_aliases)} FROM ss"
        if blocks.masks:  # with their values' codes
            # a session attr (numeric event attr) holds one of its kept values (interval labels) or '':
            # coded by lookup, not by rank
            listed = {a: [d.lit(v) for v in vs] for a, vs in _listed_values(keys, cols).items()}
            classes = f"SELECT *, {', '.join(_code_sql(a, listed.get(a)) for a in s_aliases)} FROM ({classes})"
        ctes += (f", ss AS MATERIALIZED (SELECT *, hash({', '.join(s_aliases)}) AS sc FROM ({blocks.sessions})), "
                 f"sc_map AS MATERIALIZED ({classes})")
        if blocks.masks:  # phases per (session items, phase), for the numeric and the stage combinations
            # (`n_ph > 0` keeps every session; it only makes the planner, which cannot size the
            # two CTEs, build the join's hash table from the 100k sessions, not the 700k phases)
            ctes += (", pc AS MATERIALIZED (SELECT sc, pid, count(*) AS c_n, sum(ph_hi) AS c_h FROM "
                     "(SELECT sk, pid, ph_hi FROM ph0) AS p JOIN (SELECT sk, sc FROM ss WHERE n_ph > 0) AS s "
                     "USING (sk) GROUP BY sc, pid)")
    else:
        ctes += f", ss AS MATERIALIZED ({blocks.sessions})"
    return wh.query(f"WITH {ctes} {union}"), "D" in parts


def _fill_worst(wh: Warehouse, d: Dialect, keys: Keys, window: Window, metric: str, threshold: float,
                worst: list[SessionFacts], population: str = "") -> None:
    """Attach attrs, phases and event items to the worst sessions (small queries by session id)."""
    if not worst:
        return
    found = {f.session_id: f for f in worst}
    ids = d.in_list("session_id", list(found))
    for sid, k, v in wh.query(f"SELECT session_id, attr_keys, attr_values FROM sessions WHERE {ids}"):
        found[sid].attrs.update({kk: str(vv) for kk, vv in zip(k, v, strict=False)})
    cols = _columns(keys)
    blocks = _building_blocks(d, keys, window, metric, threshold, "__PH__", population=population)
    need_phases = cols.phase and not any(f.phases for f in worst)
    phase_sql = blocks.phases.replace(f"WHERE {_ts(window)}", f"WHERE {ids} AND {_ts(window)}", 1)
    aliases = [a for a, _ in cols.phase]
    names = [k for _, k in cols.phase]
    sel = ", ".join(["session_id", *aliases, "ph_hi"])
    for row in wh.query(f"SELECT {sel} FROM ({phase_sql}) ORDER BY session_id, ph_t0") if need_phases else []:
        items = tuple((n, str(v)) for n, v in zip(names, row[1:-1], strict=True) if v)
        found[row[0]].phases.append((items, bool(row[-1])))
    ev_numeric = {nk.key: nk.edges for nk in keys.event_numeric}
    ev_text = set(keys.event_text)
    if ev_numeric or ev_text:
        maxima: dict[tuple[str, str], float] = {}
        for sid, k, v in wh.query(f"SELECT session_id, attr_keys, attr_values FROM events WHERE {ids} AND {_ts(window)}"):
            for kk, vv in zip(k, v, strict=False):
                if kk in ev_numeric:
                    try:
                        x = float(vv)
                    except ValueError:
                        continue
                    maxima[(sid, kk)] = max(maxima.get((sid, kk), x), x)
                elif kk in ev_text:
                    found[sid].items[kk] = max(found[sid].items.get(kk, ""), str(vv))
        for (sid, kk), x in maxima.items():
            edges = ev_numeric[kk]
            labels = interval_labels(edges)
            idx = sum(1 for e in edges if x >= e)
            found[sid].items[kk] = labels[idx]
    for f in worst:
        for k, values in keys.session.items():
            if f.attrs.get(k) in values:
                f.items[k] = f.attrs[k]


def fetch_session(wh: Warehouse, session_id: str, limit: int = 50_000) -> dict:
    """One session's attrs, samples, events and end, in time order (raw rows)."""
    d = dialect_for(wh.dialect)
    sid = d.lit(session_id)
    sessions = wh.query(
        f"SELECT client_id, ts, attr_keys, attr_values FROM sessions WHERE session_id = {sid} ORDER BY ts"
    )
    samples = wh.query(
        f"SELECT ts, cpu, attrs, vals FROM samples "
        f"WHERE session_id = {sid} ORDER BY ts, seq LIMIT {int(limit)}"
    )
    events = wh.query(
        f"SELECT ts, name, attr_keys, attr_values FROM events WHERE session_id = {sid} "
        f"ORDER BY ts, seq LIMIT {int(limit)}"
    )
    ends = wh.query(f"SELECT ts, reason FROM ends WHERE session_id = {sid} ORDER BY ts")
    return {"sessions": sessions, "samples": samples, "events": events, "ends": ends}
