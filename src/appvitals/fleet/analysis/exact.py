"""Exact counts of the groups the report shows: sessions, high sessions, phases, clients.

The search for explanations (`facts` + `explain`) works on counts of numeric *intervals*;
summed into a threshold such as `file_name_length >=40` they over-count sessions that
have phases in several intervals, so they are only good for ranking. Every number the
report shows comes from here instead: one statement counts each shown group straight
from the samples, with its numeric items as plain comparisons (`x >= 42`), so it is exact
and the threshold can sit anywhere, not only at an interval edge.

Units, as the user reads them:

- a *phase* is one session's samples that share the values of the report's sample attrs
  (stage, and the exact value of numeric sample attrs such as file_name_length); it is high
  when its mean metric passes the threshold;
- a session is *in* a group when it has a phase matching the group (session and event
  attrs are the session's: its attrs, and its largest value of each event attr in the
  window); it is *high* in the group when one of those matching phases is high;
- a group's *clients* are the distinct `client_id`s of its sessions, its *high clients*
  those of its high sessions (the clients affected).

A group is a tuple of items (attr, requirement): '6.04' (equals), '>=42', '<42'. The
drill path (`where`) is a group that every other group is taken inside of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from appvitals.fleet.analysis.facts import as_number, rows_sql
from appvitals.fleet.analysis.model import Keys, Window
from appvitals.fleet.warehouse.base import Warehouse
from appvitals.fleet.warehouse.dialects import Dialect, dialect_for
from appvitals.fleet.wire.schema import json_object

GROUPS_PER_STATEMENT = 60  # one bit each in a 64-bit mask per session
KEEP_SHARE = 2  # the phase rows are kept for reuse when they take at most 1/KEEP_SHARE of memory
BYTES_PER_VALUE = 16  # a kept value, as the estimate reckons it (DuckDB's inline string size)
MAX_CUTS = 16  # candidate cut points tried around one threshold

Item = tuple[str, str]
Group = tuple[Item, ...]


class ExactCounts(msgspec.Struct, array_like=True):
    """Exact counts of one group."""

    sessions: int = 0
    high_sessions: int = 0
    units: int = 0
    high_units: int = 0
    clients: int = 0
    high_clients: int = 0


class Level(msgspec.Struct):
    """Where an attr lives and the column that holds it in the phase rows."""

    column: str
    numeric: bool
    on_sample: bool


def levels(keys: Keys) -> dict[str, Level]:
    """Every attr the report looks at -> its column in the phase rows."""
    out: dict[str, Level] = {}
    for i, k in enumerate(keys.session):
        out[k] = Level(f"xa_{i}", False, False)
    for i, nk in enumerate(keys.event_numeric):
        out.setdefault(nk.key, Level(f"xen_{i}", True, False))
    for i, k in enumerate(keys.event_text):
        out.setdefault(k, Level(f"xet_{i}", False, False))
    for i, k in enumerate(keys.sample):
        out.setdefault(k, Level(f"xs_{i}", False, True))
    for i, nk in enumerate(keys.sample_numeric):
        out.setdefault(nk.key, Level(f"xn_{i}", True, True))
    return out


def parse_requirement(value: str) -> tuple[str, float | None]:
    """'>=42' -> ('>=', 42.0); '<42' -> ('<', 42.0); '6.04' -> ('=', None)."""
    for op in (">=", "<"):
        if value.startswith(op):
            try:
                x = float(value[len(op):])
            except ValueError:
                return "=", None
            if math.isfinite(x):
                return op, x
    return "=", None


def predicate(d: Dialect, lv: dict[str, Level], item: Item) -> str:
    """SQL truth of one item on a phase row."""
    key, value = item
    level = lv[key]
    op, x = parse_requirement(value)
    if x is not None and level.numeric:
        return f"{level.column} {op} {x!r}"
    if level.numeric:
        try:
            number = float(value)
        except ValueError:
            return "(1 = 0)"
        return f"{level.column} = {number!r}" if math.isfinite(number) else "(1 = 0)"
    return f"{level.column} = {d.lit(value)}"


def population_sql(d: Dialect, keys: Keys, window: Window, where: Group) -> str:
    """A condition on sample rows (session_id, attrs) keeping only the drill path: samples of
    sessions whose session items match, and whose own sample items match ('' for no path)."""
    lv = levels(keys)
    conds: list[str] = []
    for key, value in where:
        level = lv[key]
        if level.on_sample:
            column = d.sattr_number(key) if level.numeric else d.sattr(key)
        elif key in keys.session:
            column = f"(SELECT session_id, min({d.attr(key)}) AS {level.column} FROM {d.table('sessions')} GROUP BY session_id)"
        else:
            getter = d.attr_number(key) if level.numeric else d.attr(key)
            column = (f"(SELECT session_id, max({getter}) AS {level.column} FROM {d.table('events')} "
                      f"WHERE ts >= {int(window.since_ms)} AND ts < {int(window.until_ms)} GROUP BY session_id)")
        if level.on_sample:
            conds.append(predicate(d, {key: Level(column, level.numeric, True)}, (key, value)))
        else:
            conds.append(f"session_id IN (SELECT session_id FROM {column} AS w "
                         f"WHERE {predicate(d, lv, (key, value))})")
    return " AND ".join(conds)


def phase_rows_sql(d: Dialect, keys: Keys, window: Window, metric: str, threshold: float,
                   rollup: tuple[int, int, list[int]] | None = None, population: str = "",
                   only: set[str] | None = None) -> str:
    """One row per phase (session_id, client_id, ph_n, ph_sum, ph_hi, t0, t1, item columns).

    `only`: the session and event attrs to carry (default all); sample attrs are always
    carried, since they define the phases."""
    lv = levels(keys)
    if only is not None:
        keys = msgspec.structs.replace(
            keys, session={k: v for k, v in keys.session.items() if k in only},
            event_numeric=[nk for nk in keys.event_numeric if nk.key in only],
            event_text=[k for k in keys.event_text if k in only])
    sample_cols = [(lv[k].column, k, lv[k].numeric) for k in (*keys.sample, *(nk.key for nk in keys.sample_numeric))
                   if lv[k].on_sample]
    rows = rows_sql(d, window, metric, rollup, population)
    thr = float(threshold)
    stats = (f"sum(n) AS ph_n, sum(s) AS ph_sum, min(t0) AS ph_t0, max(t1) AS ph_t1, "
             f"CASE WHEN sum(s) > {thr!r} * sum(n) THEN 1 ELSE 0 END AS ph_hi")
    if sample_cols:
        # each distinct attrs text is read (JSON) once into its items and a 64-bit phase key;
        # the samples are grouped by (session, key), and the items joined back to the phases
        if keys.sample_texts is not None:
            texts = d.rows_of([d.lit(t) for t in keys.sample_texts], "attrs")
        else:
            texts = f"SELECT DISTINCT attrs FROM ({rows})"
        parsed = ", ".join(f"{d.sattr_number(k) if numeric else d.sattr(k)} AS {col}" for col, k, numeric in sample_cols)
        cols = [col for col, _, _ in sample_cols]
        hashed = [h for c, _, numeric in sample_cols for h in ([d.if_null(c, '0'), f'({c} IS NULL)'] if numeric else [c])]
        tmap = f"SELECT attrs, {d.hash_of(hashed)} AS pid, {', '.join(cols)} FROM (SELECT attrs, {parsed} FROM ({texts}))"
        ph = (f"SELECT session_id, pid, {stats} FROM ({rows}) AS r {d.inner_join} (SELECT attrs, pid FROM ({tmap})) AS tm "
              "USING (attrs) GROUP BY session_id, pid")
        phases = (f"SELECT session_id, {', '.join(cols)}, ph_n, ph_sum, ph_t0, ph_t1, ph_hi FROM ({ph}) AS ph "
                  f"{d.inner_join} (SELECT DISTINCT pid, {', '.join(cols)} FROM ({tmap})) AS pm USING (pid)")
    else:
        phases = f"SELECT session_id, {stats} FROM ({rows}) GROUP BY session_id"
    have = ["session_id", *(col for col, _, _ in sample_cols), "ph_n", "ph_sum", "ph_t0", "ph_t1", "ph_hi"]
    empty = d.lit("")
    s_cols = [f"min({d.attr(k)}) AS {lv[k].column}" for k in keys.session]
    sessions = (f"SELECT session_id, min(client_id) AS client_id{''.join(', ' + c for c in s_cols)} "
                f"FROM {d.table('sessions')} GROUP BY session_id")
    sql = (
        f"SELECT {', '.join(have)}, coalesce(client_id, '') AS client_id"
        f"{''.join(f', coalesce({lv[k].column}, {empty}) AS {lv[k].column}' for k in keys.session)} "
        f"FROM ({phases}) AS p {d.left_join} ({sessions}) AS sa USING (session_id)"
    )
    have += ["client_id", *(lv[k].column for k in keys.session)]
    e_cols = [f"max({d.attr_number(nk.key)}) AS {lv[nk.key].column}" for nk in keys.event_numeric
              if lv[nk.key].column.startswith("xen_")]
    e_cols += [f"max({d.attr(k)}) AS {lv[k].column}" for k in keys.event_text if lv[k].column.startswith("xet_")]
    if e_cols:
        events = (f"SELECT session_id, {', '.join(e_cols)} FROM {d.table('events')} "
                  f"WHERE ts >= {int(window.since_ms)} AND ts < {int(window.until_ms)} GROUP BY session_id")
        ev_names = [c.rsplit(" AS ", 1)[1] for c in e_cols]
        sql = (f"SELECT {', '.join(have)}, {', '.join(ev_names)} "
               f"FROM ({sql}) AS ps {d.left_join} ({events}) AS ev USING (session_id)")
    return sql


class _CountSql:
    """The SQL counting up to 63 groups at once over phase rows.

    Phases matching each group and the high ones among them are plain sums over the phase
    rows. Per session, one bit per group says whether it has a matching phase (`im`) and a
    matching high phase (`hm`): two integers a session, however many groups, so the
    per-session state stays small on a million sessions. Sessions per group sum those bits;
    clients per group OR them per client first."""

    def __init__(self, d: Dialect, conds: list[str], groups: list[Group], extra: Sequence[str] = ()):
        assert len(groups) <= 63
        self.d, self.conds, self.groups, self.extra = d, conds, groups, list(extra)
        self.columns = [f"{c}_{j}" for j in range(len(groups)) for c in ("s", "sh", "n", "nh", "c", "chi")]

    def masked(self, base: str) -> str:
        """The phase rows with their two masks: `m_i` (the groups the phase matches) and `m_h`
        (the same, when the phase is high)."""
        d = self.d
        im = " + ".join(f"CASE WHEN {cond} THEN {1 << j} ELSE 0 END" for j, cond in enumerate(self.conds))
        hm = " + ".join(f"CASE WHEN ph_hi = 1 AND {cond} THEN {1 << j} ELSE 0 END" for j, cond in enumerate(self.conds))
        return f"SELECT *, {d.as_mask(im)} AS m_i, {d.as_mask(hm)} AS m_h FROM {base}"

    def units(self, masked: str) -> str:
        """Phases per group: the masked phase rows grouped by their masks first (few distinct
        pairs), then each bit summed with its pair's count."""
        d = self.d
        sums = ", ".join(f"sum({d.bit_at(mask, j)} * k) AS {name}_{j}"
                         for j in range(len(self.conds)) for mask, name in (("m_i", "n"), ("m_h", "nh")))
        return f"SELECT {sums} FROM (SELECT m_i, m_h, count(*) AS k FROM {masked} GROUP BY m_i, m_h) AS mk"

    def per_session(self, masked: str) -> str:
        d = self.d
        return (f"SELECT sk, min(client_id) AS client_id, {d.bit_or_agg('m_i')} AS im, {d.bit_or_agg('m_h')} AS hm"
                f"{''.join(', ' + e for e in self.extra)} FROM {masked} GROUP BY sk")

    def _bits(self, im: str, hm: str, names: tuple[str, str]) -> str:
        d = self.d
        return ", ".join(f"sum({d.bit_at(mask, j)}) AS {name}_{j}"
                         for j in range(len(self.conds)) for mask, name in ((im, names[0]), (hm, names[1])))

    def sessions(self, per_session: str) -> str:
        return f"SELECT {self._bits('im', 'hm', ('s', 'sh'))} FROM {per_session}"

    def clients(self, per_session: str) -> str:
        d = self.d
        per_client = (f"SELECT client_id, {d.bit_or_agg('im')} AS cim, {d.bit_or_agg('hm')} AS chm "
                      f"FROM {per_session} GROUP BY client_id")
        return f"SELECT {self._bits('cim', 'chm', ('c', 'chi'))} FROM ({per_client})"

    def read(self, row) -> dict[Group, ExactCounts]:
        by_name = dict(zip(self.columns, row, strict=True)) if row is not None else {}
        return {g: ExactCounts(*(int(by_name.get(f"{c}_{j}") or 0) for c in ("s", "sh", "n", "nh", "c", "chi")))
                for j, g in enumerate(self.groups)}


class Counter:
    """Counts groups exactly over one window, metric, threshold and drill path."""

    def __init__(self, wh: Warehouse, keys: Keys, window: Window, metric: str, threshold: float,
                 where: Group = (), rollup: tuple[int, int, list[int]] | None = None):
        self.wh = wh
        self.d = dialect_for(wh.dialect)
        self.keys = keys
        self.window = window
        self.metric = metric
        self.levels = levels(keys)
        self.where = tuple(where)
        unknown = [k for k, _ in self.where if k not in self.levels]
        if unknown:
            raise KeyError(unknown[0])
        self.population = population_sql(self.d, keys, window, self.where)
        self._args = (keys, window, metric, threshold, rollup, self.population)
        # set: the report's lean tables (search.LeanTables, on the reader `wh`), which hold the
        # phase rows already; else each statement reads the samples again
        self.lean = None

    def base_for(self, attrs: set[str] | None) -> str:
        """The phase rows, carrying only the session and event attrs named (None: all), and a
        64-bit session key: the per-session groupings hash an integer, not the id string."""
        if self.lean is not None:
            return self.lean.phase_rows(attrs)
        rows = phase_rows_sql(self.d, *self._args, only=attrs)
        return f"SELECT *, {self.d.hash_of(['session_id'])} AS sk FROM ({rows})"

    def count(self, groups: Sequence[Group]) -> dict[Group, ExactCounts]:
        """Exact counts of each group (inside the drill path); the empty group is the path itself."""
        out: dict[Group, ExactCounts] = {}
        todo = list(dict.fromkeys(tuple(g) for g in groups))
        for start in range(0, len(todo), GROUPS_PER_STATEMENT):
            chunk = todo[start:start + GROUPS_PER_STATEMENT]
            out.update(self._count(chunk))
        return out

    def _count(self, groups: Sequence[Group]) -> dict[Group, ExactCounts]:
        if self._can_mask(None, None):
            return self._count_all_masked(groups, None, None, 1, None)[0]
        base = f"({self.base_for({k for g in groups for k, _ in g})})"
        q = self._count_sql(groups)
        masked = f"({q.masked(base)})"
        per_session = f"({q.per_session(masked)})"
        # nested: ClickHouse 18.16 takes one JOIN per SELECT
        row = self.wh.query(f"SELECT {', '.join(q.columns)} FROM (SELECT * FROM ({q.units(masked)}) AS u CROSS JOIN "
                            f"({q.sessions(per_session)}) AS s) AS us CROSS JOIN ({q.clients(per_session)}) AS c")
        return q.read(row[0] if row else None)

    def _count_sql(self, groups: Sequence[Group], extra: Sequence[str] = ()) -> _CountSql:
        return _CountSql(self.d, [" AND ".join(predicate(self.d, self.levels, i) for i in g) or "1 = 1"
                                  for g in groups], list(groups), extra)

    def count_all(self, groups: Sequence[Group], row_key: str | None, col_key: str | None, bucket_ms: int,
                  version_key: str | None, phases: int | None = None):
        """count(groups), cells(row_key, col_key) and timeline(bucket_ms, version_key) at once: on
        DuckDB in one statement sharing the per-session rows.

        `phases`: about how many phase rows the window has (the search's total); when they fit
        in a share of the warehouse's memory they are computed once and kept for every part,
        else each part computes them again."""
        todo = list(dict.fromkeys(tuple(g) for g in groups))
        if not self.d.ctes or not todo:  # no CTEs on ClickHouse 18.16: one statement each
            return (self.count(todo), self.cells(row_key, col_key) if row_key else {},
                    self.timeline(bucket_ms, version_key))
        first, rest = todo[:GROUPS_PER_STATEMENT], todo[GROUPS_PER_STATEMENT:]
        if self._can_mask(row_key, col_key):
            counts, cells, timeline = self._count_all_masked(first, row_key, col_key, bucket_ms, version_key)
            if rest:
                counts.update(self.count(rest))
            return counts, cells, timeline
        d = self.d
        ver = self.levels[version_key].column if version_key in self.levels else "''"
        extra = ["min(ph_t0) AS t0", "max(ph_t1) AS t1", "max(ph_hi) AS hi", f"{d.any_value(ver)} AS ver"]
        q = self._count_sql(first, extra)
        since = int(self.window.since_ms)
        parts = [f"SELECT 'G' AS part, NULL AS k1, NULL AS k2, [{', '.join(f'{c}::BIGINT' for c in q.columns)}] AS v "
                 f"FROM ({q.units('b')}) AS u CROSS JOIN ({q.sessions('ps')}) AS s CROSS JOIN ({q.clients('ps')}) AS c",
                 f"SELECT 'T' AS part, ver AS k1, NULL AS k2, [b0, b1, count(*), sum(hi)::BIGINT] AS v FROM "
                 f"(SELECT {d.idiv(f't0 - {since}', int(bucket_ms))} AS b0, {d.idiv(f't1 - {since}', int(bucket_ms))} AS b1, "
                 "ver, hi FROM ps) GROUP BY b0, b1, ver"]
        if row_key:
            parts += [f"SELECT 'C' AS part, rv AS k1, CASE WHEN two = 1 THEN cv END AS k2, [s, h, u, uh] AS v "
                      f"FROM ({c})" for c in self._cells_sql(row_key, col_key, "b")]
        needed = {k for g in first for k, _ in g} | {k for k in (row_key, col_key, version_key) if k}
        # the phase rows are kept when they are small enough, else read again by each part (they
        # can be millions); the per-session rows (two bit masks and a few numbers each) are kept
        width = 9 + len(self.keys.sample) + len(self.keys.sample_numeric) + len(needed)
        if self.lean is not None:  # kept in the lean tables already
            keep = False
            base = self.lean.phase_rows(needed)
        else:
            keep = phases is not None and phases * width * BYTES_PER_VALUE * KEEP_SHARE <= self._memory_bytes()
            base = (f"SELECT * EXCLUDE (session_id, ph_n, ph_sum), {d.hash_of(['session_id'])} AS sk "
                    f"FROM ({phase_rows_sql(d, *self._args, only=needed)})")

        def statement(kept: bool) -> str:
            return (f"WITH b AS {'' if kept else 'NOT '}MATERIALIZED ({q.masked(f'({base})')}), "
                    f"ps AS MATERIALIZED ({q.per_session('b')}) "
                    + " UNION ALL ".join(f"SELECT * FROM ({p})" for p in parts))

        try:
            rows = self.wh.query(statement(keep))
        except Exception as exc:  # the estimate was short of the warehouse's memory: read them again
            if not keep or "OutOfMemory" not in type(exc).__name__:
                raise
            rows = self.wh.query(statement(False))
        counts, cells, timeline = _read_parts(rows, q, row_key, col_key)
        if rest:
            counts.update(self.count(rest))
        return counts, cells, timeline

    def _can_mask(self, row_key: str | None, col_key: str | None) -> bool:
        """True when the lean tables hold each session's phases as masks (see search.py) and the
        cells asked for are (session attr) x (categorical sample attr)."""
        lean, lv = self.lean, self.levels
        return (lean is not None and lean.masked and (row_key is None or not lv[row_key].on_sample)
                and (col_key is None or (lv[col_key].on_sample and not lv[col_key].numeric)))

    def _session_predicate(self, item: Item) -> str:
        """An item on a session or event attr, as SQL on the lean sessions' table: a session
        attr compares its one-byte code (a value the report does not keep matches no session
        there: every group the report shows names kept values)."""
        key, value = item
        level = self.levels[key]
        if level.column.startswith("xa_"):
            values = self.keys.session[key]
            return f"ca_{level.column[3:]} = {values.index(value) + 1}" if value in values else "false"
        return predicate(self.d, self.levels, item)

    def _count_all_masked(self, groups: Sequence[Group], row_key: str | None, col_key: str | None,
                          bucket_ms: int, version_key: str | None):
        """count_all from one row per session: a group's phase items become a mask of the phase
        keys they hold for (read from the few phase map rows), and a session is in the group when
        its session items match and its phase mask meets that mask; its phases in the group are
        the bits they share (bit_count), its high ones those of its high-phase mask."""
        d, lean, lv = self.d, self.lean, self.levels
        q = self._count_sql(groups)
        s_conds, p_conds = [], []
        for g in groups:
            s_conds.append(" AND ".join(self._session_predicate(i) for i in g if not lv[i[0]].on_sample) or "true")
            p_conds.append(" AND ".join(predicate(d, lv, i) for i in g if lv[i[0]].on_sample) or "true")
        masks = lean.pid_masks(p_conds)
        cols: list[str] = []
        im, hm = [], []
        for j, (sc, m) in enumerate(zip(s_conds, masks, strict=True)):
            cols += [f"CASE WHEN {sc} THEN {lean.shared('pmask', m)} ELSE 0 END AS n_{j}",
                     f"CASE WHEN {sc} THEN {lean.shared('hmask', m)} ELSE 0 END AS nh_{j}"]
            im.append(f"CASE WHEN {sc} AND ({lean.meets('pmask', m)}) THEN {1 << j} ELSE 0 END")
            hm.append(f"CASE WHEN {sc} AND ({lean.meets('hmask', m)}) THEN {1 << j} ELSE 0 END")
        ver = lean.session_column(lv[version_key].column) if version_key in lv else "''"
        row = lean.session_column(lv[row_key].column) if row_key else "''"
        ps = (f"(SELECT sk, ck AS client_id, {d.as_mask(' + '.join(im) or '0')} AS im, "
              f"{d.as_mask(' + '.join(hm) or '0')} AS hm, t0, t1, ({lean.shared('hmask')} > 0)::INTEGER AS hi, "
              f"{ver} AS ver, {row} AS rv, {', '.join(lean.mask_columns('pmask') + lean.mask_columns('hmask'))}"
              f"{''.join(', ' + c for c in cols)} FROM _rse)")
        since = int(self.window.since_ms)
        units = ", ".join(f"sum({c}_{j}) AS {c}_{j}" for j in range(len(groups)) for c in ("n", "nh"))
        parts = [f"SELECT 'G' AS part, NULL AS k1, NULL AS k2, [{', '.join(f'{c}::BIGINT' for c in q.columns)}] AS v "
                 f"FROM (SELECT {units or '0 AS none'} FROM ps) AS u CROSS JOIN ({q.sessions('ps')}) AS s "
                 f"CROSS JOIN ({q.clients('ps')}) AS c",
                 f"SELECT 'T' AS part, ver AS k1, NULL AS k2, [b0, b1, count(*), sum(hi)::BIGINT] AS v FROM "
                 f"(SELECT {d.idiv(f't0 - {since}', int(bucket_ms))} AS b0, {d.idiv(f't1 - {since}', int(bucket_ms))} AS b1, "
                 "ver, hi FROM ps) GROUP BY b0, b1, ver"]
        if row_key:
            parts.append(f"SELECT 'C' AS part, rv AS k1, NULL AS k2, [count(*), sum(hi), sum({lean.shared('pmask')}), "
                         f"sum({lean.shared('hmask')})]::BIGINT[] AS v FROM ps GROUP BY rv")
            if col_key:
                column = lv[col_key].column
                values = [r[0] for r in lean.rd.query(f"SELECT DISTINCT {column} FROM _rpm ORDER BY 1")]
                for v, m in zip(values, lean.pid_masks([f"{column} = {d.lit(v)}" for v in values]), strict=True):
                    parts.append(
                        f"SELECT 'C' AS part, rv AS k1, {d.lit(v)} AS k2, v FROM (SELECT rv, "
                        f"[sum(({lean.meets('pmask', m)})::INTEGER), sum(({lean.meets('hmask', m)})::INTEGER), "
                        f"sum({lean.shared('pmask', m)}), sum({lean.shared('hmask', m)})]::BIGINT[] AS v "
                        "FROM ps GROUP BY rv) WHERE v[1] > 0")
        rows = self.wh.query(f"WITH ps AS MATERIALIZED {ps} " + " UNION ALL ".join(f"SELECT * FROM ({p})" for p in parts))
        return _read_parts(rows, q, row_key, col_key)

    def _memory_bytes(self) -> float:
        """The warehouse's memory limit in bytes (0 when it does not say)."""
        rows = self.wh.query(self.d.memory_limit_sql) if self.d.memory_limit_sql else []
        return parse_bytes(str(rows[0][0])) if rows and rows[0][0] is not None else 0.0

    def cells(self, row_key: str, col_key: str | None) -> dict[Group, ExactCounts]:
        """Exact counts of every (row_key = v) and (row_key = v, col_key = w) group, by GROUP BY
        (the heatmap and the comparison); clients are not counted here."""
        out: dict[Group, ExactCounts] = {}
        for rv, cv, two, n, h, u, uh in self.wh.query(" UNION ALL ".join(self._cells_sql(row_key, col_key))):
            if rv is None or (two and cv is None):
                continue
            group = tuple(sorted({row_key: str(rv), **({col_key: str(cv)} if two else {})}.items()))
            out[group] = ExactCounts(int(n), int(h or 0), int(u or 0), int(uh or 0))
        return out

    def _cells_sql(self, row_key: str, col_key: str | None, base: str | None = None) -> list[str]:
        d = self.d
        src = base or f"({self.base_for({k for k in (row_key, col_key) if k})})"
        r = self.levels[row_key].column
        sums = "count(*) AS s, sum(hi) AS h, sum(u) AS u, sum(uh) AS uh"
        per = "max(ph_hi) AS hi, count(*) AS u, sum(ph_hi) AS uh"
        parts = [f"SELECT {r} AS rv, {d.lit('')} AS cv, 0 AS two, {sums} "
                 f"FROM (SELECT sk, {r}, {per} FROM {src} GROUP BY sk, {r}) GROUP BY {r}"]
        if col_key is not None:
            c = self.levels[col_key].column
            parts.append(f"SELECT {r} AS rv, {c} AS cv, 1 AS two, {sums} "
                         f"FROM (SELECT sk, {r}, {c}, {per} FROM {src} GROUP BY sk, {r}, {c}) "
                         f"GROUP BY {r}, {c}")
        return parts

    def distinct_numbers(self, key: str, low: float, high: float, limit: int = 500) -> list[float]:
        """The distinct values of a numeric attr in (low, high], inside the drill path, ascending."""
        level = self.levels[key]
        if level.on_sample and self.keys.sample_texts is not None:
            # discovery read every attrs text of the window: no statement needed (inside a drill
            # path this is a superset; a cut no phase has counts the same as its neighbour)
            found = set()
            for text in self.keys.sample_texts:
                x = as_number(json_object(text).get(key))
                if x is not None and math.isfinite(x) and low < x <= high:
                    found.add(x)
            return sorted(found)[:limit]
        col = level.column
        if self.lean is not None and not level.on_sample:  # a session's value: one row per session will do
            col, source = self.lean.session_column(col), "_rse"
        else:
            source = f"({self.base_for({key})})"
        lo = f" AND {col} > {low!r}" if math.isfinite(low) else ""
        hi = f" AND {col} <= {high!r}" if math.isfinite(high) else ""
        rows = self.wh.query(
            f"SELECT DISTINCT {col} AS x FROM {source} WHERE {col} IS NOT NULL{lo}{hi} ORDER BY x LIMIT {int(limit)}"
        )
        return [float(r[0]) for r in rows if r[0] is not None and math.isfinite(float(r[0]))]

    def timeline(self, bucket_ms: int, version_key: str | None) -> list[tuple[int, int, str, int, int]]:
        """(first bucket, last bucket, version, sessions, high sessions) of the sessions in the path."""
        d = self.d
        since = int(self.window.since_ms)
        ver = self.levels[version_key].column if version_key in self.levels else "''"
        per_session = (f"SELECT sk, min(ph_t0) AS t0, max(ph_t1) AS t1, max(ph_hi) AS hi, "
                       f"{d.any_value(ver)} AS ver FROM ({self.base_for({version_key} if version_key else set())}) "
                       "GROUP BY sk")
        return [
            (int(b0), int(b1), str(v), int(n), int(h or 0)) for b0, b1, v, n, h in self.wh.query(
                f"SELECT {d.idiv(f't0 - {since}', int(bucket_ms))} AS b0, {d.idiv(f't1 - {since}', int(bucket_ms))} AS b1, "
                f"ver, count(*) AS n, sum(hi) AS h FROM ({per_session}) GROUP BY b0, b1, ver"
            )
        ]


def _read_parts(rows, q: _CountSql, row_key: str | None, col_key: str | None):
    """The rows of a count_all statement: (counts of the groups, cells, timeline)."""
    counts: dict[Group, ExactCounts] = {}
    cells: dict[Group, ExactCounts] = {}
    timeline = []
    for part, k1, k2, v in rows:
        if part == "G":
            counts = q.read(v)
        elif part == "T":
            timeline.append((int(v[0]), int(v[1]), str(k1), int(v[2]), int(v[3] or 0)))
        elif k1 is not None:
            group = tuple(sorted({row_key: str(k1), **({col_key: str(k2)} if k2 is not None else {})}.items()))
            cells[group] = ExactCounts(int(v[0]), int(v[1] or 0), int(v[2] or 0), int(v[3] or 0))
    return counts, cells, timeline


def parse_bytes(text: str) -> float:
    """'244.1 MiB' -> 255958630.4; '2GB' -> 2e9; anything else -> 0."""
    units = {"b": 1, "bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
             "kib": 2.0 ** 10, "mib": 2.0 ** 20, "gib": 2.0 ** 30, "tib": 2.0 ** 40}
    parts = text.strip().lower().replace(" ", "")
    number = parts.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return float(number) * units.get(parts[len(number):] or "b", 0)
    except ValueError:
        return 0.0


def risk_ratio_of(c: ExactCounts, total: ExactCounts) -> float:
    """(o/n) / ((O-o)/(N-n)) over phases, +0.5 smoothed (see explain.risk_ratio)."""
    rest_u, rest_h = total.units - c.units, total.high_units - c.high_units
    return ((c.high_units + 0.5) / (c.units + 1.0)) / ((max(0, rest_h) + 0.5) / (max(0, rest_u) + 1.0))


def threshold_variants(counter: Counter, group: Group, key: str, edges: Sequence[float]) -> list[Group]:
    """The group with the threshold of `key` moved to each observed value between its
    neighbouring edges (at most MAX_CUTS, evenly thinned), the group itself included.

    The search found the best cut among readable interval edges; the true change lies between
    the neighbouring edges, so a limit planted at 42 can be reported as '>=42', not '>=50'."""
    at = next(i for i, (k, _) in enumerate(group) if k == key)
    op, x = parse_requirement(group[at][1])
    if x is None:
        return [group]
    ordered = sorted(set(edges) | {x})
    j = ordered.index(x)
    low = ordered[j - 1] if j > 0 else -math.inf
    high = ordered[j + 1] if j + 1 < len(ordered) else math.inf
    values = counter.distinct_numbers(key, low, high)
    if len(values) > MAX_CUTS:
        values = [values[int(i * len(values) / MAX_CUTS)] for i in range(MAX_CUTS)]
    return [(*group[:at], (key, f"{op}{_fmt(c)}"), *group[at + 1:]) for c in sorted(set(values) | {x})]


def best_variant(variants: Sequence[Group], counted: dict[Group, ExactCounts], total: ExactCounts,
                 min_high: float) -> tuple[Group, ExactCounts] | None:
    """Of a group's threshold variants, exactly counted, the one with the highest risk ratio
    (then the most high sessions) that keeps enough support."""
    best = None
    for g in variants:
        n = counted[g]
        if n.units == 0 or n.high_sessions < min_high or n.units >= total.units:
            continue
        score = (risk_ratio_of(n, total), n.high_sessions)
        if best is None or score > best[0]:
            best = (score, g, n)
    return (best[1], best[2]) if best else None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))
