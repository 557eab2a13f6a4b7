"""The report's search on DuckDB: every combination counted by GROUPING SETS over lean tables.

The samples are read once per report, into three temporary tables on the report's own
connection (`Warehouse.scratch`), which both the search and the exact recount
(`exact.Counter`) then read:

- `_rpm`, one row per distinct sample attrs text (a few hundred): its phase key `pid`, its
  stage key `qid` (the categorical sample items alone), the raw sample items (`xs_i`,
  `xn_i`) and their small integer codes (`cs_i`; `cn_i` the numeric interval);
- `_rph`, one row per phase (session, pid): samples, metric sum, peak, first and last ts,
  high or not. Sessions are keyed by a 64-bit hash of their id (`sk`), so every grouping
  hashes integers, not id strings;
- `_rse`, one row per session: its phase counts, its session attrs (raw `xa_i` and coded
  `ca_i`: the place of the value in the report's list of kept values, 0 for none), its
  largest numeric event attrs (`xen_i`, interval code `cen_i`) and event texts (`xet_i`).

The search then counts every combination of up to `Keys.max_order` items in three
statements, one per kind (S: session items; Q: with a categorical sample item; P: with a
numeric sample item), each one `GROUP BY GROUPING SETS` over small integer codes: no row is
exploded into its combinations, and no combination key is built as a string. A grouping
set's rows name the combination by which columns are not NULL; a code 0 (no value) drops
the row.

Two sessions whose ids hash alike would be counted as one; with 64 bits the odds are about
one in 37 million at a million sessions (see docs/report.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from appvitals.fleet.analysis.facts import (
    WORST_LIMIT,
    _columns,
    _fill_worst,
    _part_specs,
    metric_expr,
    rows_sql,
)
from appvitals.fleet.analysis.model import Combo, Counts, Facts, Keys, SessionFacts, Window, interval_labels
from appvitals.fleet.warehouse.dialects import dialect_for

MAX_CODED_VALUES = 250  # session attr values coded in one byte (the report keeps at most 50 per attr)


def usable(keys: Keys, dialect: str) -> bool:
    """True when this search can run: DuckDB, and every sample attrs text of the window known."""
    return dialect == "duckdb" and keys.sample_texts is not None


def _interval_code(column: str, edges: Sequence[float]) -> str:
    """1 + the number of edges at or below the value (the index of its interval label, from 1); 0 for none."""
    steps = " + ".join(f"({column} >= {float(e)!r})::INTEGER" for e in edges)
    return f"CASE WHEN {column} IS NULL THEN 0 ELSE 1 + {steps} END"


class LeanTables:
    """The report's temporary tables on one scratch reader (see the module's docstring)."""

    def __init__(self, reader, keys: Keys, window: Window, metric: str, threshold: float,
                 rollup=None, population: str = ""):
        self.rd = reader
        self.d = d = dialect_for(reader.dialect)
        self.keys = keys
        self.window = window
        ts = f"ts >= {int(window.since_ms)} AND ts < {int(window.until_ms)}"
        # the phase map: every attrs text, read (JSON) once
        texts = d.rows_of([d.lit(t) for t in keys.sample_texts or []], "attrs")
        raw = [f"{d.sattr(k)} AS xs_{i}" for i, k in enumerate(keys.sample)]
        raw += [f"{d.sattr_number(nk.key)} AS xn_{i}" for i, nk in enumerate(keys.sample_numeric)]
        xs = [f"xs_{i}" for i in range(len(keys.sample))]
        xn = [f"xn_{i}" for i in range(len(keys.sample_numeric))]
        order = ", ".join(xs + [f"{c} NULLS FIRST" for c in xn]) or "1"
        codes = [f"CASE WHEN {c} = '' THEN 0 ELSE dense_rank() OVER (PARTITION BY {c} = '' ORDER BY {c}) END AS c{c[1:]}"
                 for c in xs]
        codes += [f"{_interval_code(c, nk.edges)} AS c{c[1:]}" for c, nk in zip(xn, keys.sample_numeric, strict=True)]
        coded = (f"SELECT *{''.join(', ' + c for c in codes)} FROM (SELECT attrs{''.join(', ' + c for c in raw)} "
                 f"FROM ({texts}))")
        cs = [f"cs_{i}" for i in range(len(keys.sample))]
        cn = [f"cn_{i}" for i in range(len(keys.sample_numeric))]
        # pid: the phase (its exact values); cpid: the search's coarser phase (numeric values by
        # interval, as on ClickHouse); qid: the stage (the categorical items alone)
        self._run(
            f"CREATE OR REPLACE TEMP TABLE _rpm AS SELECT *, dense_rank() OVER (ORDER BY {order})::INTEGER AS pid, "
            f"dense_rank() OVER (ORDER BY {', '.join(xs + cn) or '1'})::INTEGER AS cpid, "
            f"dense_rank() OVER (ORDER BY {', '.join(xs) or '1'})::INTEGER AS qid FROM ({coded})"
        )
        # what the search reads: the phases by cpid (the same as by pid without numeric sample attrs)
        self.spm = "_rpm" if not xn else "_rpmc"
        self.sph = "_rph" if not xn else "_rpc"
        if xn:
            self._run(f"CREATE OR REPLACE TEMP TABLE _rpmc AS SELECT DISTINCT cpid AS pid, qid"
                      f"{''.join(', ' + c for c in xs + cs + cn)} FROM _rpm")
        self.pm = self.rd.query(f"SELECT pid, qid{''.join(', ' + c for c in xs + cs + cn)} FROM {self.spm}")
        thr = float(threshold)
        samples = rows_sql(d, window, metric, rollup, population)
        self._run(
            "CREATE OR REPLACE TEMP TABLE _rph AS SELECT hash(session_id) AS sk, pid, sum(n)::BIGINT AS ph_n, "
            "sum(s) AS ph_sum, max(mx) AS ph_max, min(t0) AS ph_t0, max(t1) AS ph_t1, "
            f"CASE WHEN sum(s) > {thr!r} * sum(n) THEN 1 ELSE 0 END::UTINYINT AS ph_hi "
            f"FROM ({samples}) AS r JOIN (SELECT attrs, pid FROM _rpm) AS pm USING (attrs) GROUP BY sk, pid"
        )
        if xn:
            self._run(
                "CREATE OR REPLACE TEMP TABLE _rpc AS SELECT sk, cpid AS pid, sum(ph_n)::BIGINT AS ph_n, "
                "sum(ph_sum) AS ph_sum, max(ph_max) AS ph_max, min(ph_t0) AS ph_t0, max(ph_t1) AS ph_t1, "
                f"CASE WHEN sum(ph_sum) > {thr!r} * sum(ph_n) THEN 1 ELSE 0 END::UTINYINT AS ph_hi "
                "FROM _rph JOIN (SELECT pid, cpid FROM _rpm) AS pm USING (pid) GROUP BY sk, cpid")
        # sessions: their (search) phases summed, their attrs (raw and coded) and their event attrs
        s_raw = [f"min({d.attr(k)}) AS xa_{i}" for i, k in enumerate(keys.session)]
        s_out = [f"coalesce(xa_{i}, '') AS xa_{i}" for i in range(len(keys.session))]
        s_out += [f"coalesce(list_position([{', '.join(d.lit(v) for v in vs[:MAX_CODED_VALUES])}], xa_{i}), 0)"
                  f"::UTINYINT AS ca_{i}" for i, vs in enumerate(keys.session.values())]
        e_raw = [f"max({d.attr_number(nk.key)}) AS xen_{i}" for i, nk in enumerate(keys.event_numeric)]
        e_raw += [f"max({d.attr(k)}) AS xet_{i}" for i, k in enumerate(keys.event_text)]
        e_out = [f"xen_{i}" for i in range(len(keys.event_numeric))]
        e_out += [f"{_interval_code(f'xen_{i}', nk.edges)}::UTINYINT AS cen_{i}" for i, nk in enumerate(keys.event_numeric)]
        e_out += [f"coalesce(xet_{i}, '') AS xet_{i}" for i in range(len(keys.event_text))]
        per_session = ("SELECT sk, count(*)::INTEGER AS n_ph, sum(ph_hi)::INTEGER AS n_hi, max(ph_hi) AS s_hi, "
                       "sum(ph_n)::BIGINT AS n_samples, sum(ph_sum) AS m_sum, max(ph_max) AS peak, min(ph_t0) AS t0, "
                       f"max(ph_t1) AS t1 FROM {self.sph} GROUP BY sk")
        sql = (f"SELECT p.*, sa.session_id, coalesce(sa.client_id, '') AS client_id{''.join(', ' + c for c in s_out)} "
               f"FROM ({per_session}) AS p LEFT JOIN (SELECT hash(session_id) AS sk, min(session_id) AS session_id, "
               f"min(client_id) AS client_id{''.join(', ' + c for c in s_raw)} FROM {d.table('sessions')} GROUP BY sk) "
               "AS sa USING (sk)")
        if e_raw:
            sql = (f"SELECT ps.*{''.join(', ' + c for c in e_out)} FROM ({sql}) AS ps LEFT JOIN "
                   f"(SELECT hash(session_id) AS sk{''.join(', ' + c for c in e_raw)} FROM {d.table('events')} "
                   f"WHERE {ts} GROUP BY sk) AS ev USING (sk)")
        self._run(f"CREATE OR REPLACE TEMP TABLE _rse AS {sql}")

    def _run(self, sql: str) -> None:
        self.rd.query(sql)

    def drop(self) -> None:
        for table in ("_rse", "_rpc", "_rph", "_rpmc", "_rpm"):
            self._run(f"DROP TABLE IF EXISTS {table}")

    # -- what the exact recount reads --

    def phase_rows(self, only: set[str] | None = None) -> str:
        """The phase rows as exact.phase_rows_sql gives them, with the session key `sk` and
        without session_id: (sk, ph_n, ph_sum, ph_t0, ph_t1, ph_hi, xs_i, xn_i, client_id,
        and the named session and event attr columns)."""
        keys = self.keys
        cols = [f"xs_{i}" for i in range(len(keys.sample))] + [f"xn_{i}" for i in range(len(keys.sample_numeric))]
        cols.append("client_id")
        cols += [f"xa_{i}" for i, k in enumerate(keys.session) if only is None or k in only]
        cols += [f"xen_{i}" for i, nk in enumerate(keys.event_numeric) if only is None or nk.key in only]
        cols += [f"xet_{i}" for i, k in enumerate(keys.event_text) if only is None or k in only]
        return (f"SELECT sk, ph_n, ph_sum, ph_t0, ph_t1, ph_hi{''.join(', ' + c for c in cols)} "
                "FROM _rph JOIN _rpm USING (pid) JOIN _rse USING (sk)")

    # -- the search --

    def facts(self, metric: str, threshold: float, population: str = "", rollup=None) -> Facts:
        """Counts of every combination, the total and the worst sessions (see the module)."""
        keys = self.keys
        cols = _columns(keys)
        # the search's item aliases -> the lean tables' coded columns
        alias = {f"sa_{i}": f"ca_{i}" for i in range(len(keys.session))}
        alias.update((f"en_{i}", f"cen_{i}") for i in range(len(keys.event_numeric)))
        alias.update((f"et_{i}", f"xet_{i}") for i in range(len(keys.event_text)))
        alias.update((f"sp_{i}", f"cs_{i}") for i in range(len(keys.sample)))
        alias.update((f"sn_{i}", f"cn_{i}") for i in range(len(keys.sample_numeric)))
        names = {alias[a]: k for a, k in cols.session + cols.phase}  # coded column -> attr name
        decode: dict[str, dict] = {}
        for i, vs in enumerate(keys.session.values()):
            decode[f"ca_{i}"] = dict(enumerate(vs[:MAX_CODED_VALUES], 1))
        for i, nk in enumerate(keys.event_numeric):
            decode[f"cen_{i}"] = dict(enumerate(interval_labels(nk.edges), 1))
        for i, nk in enumerate(keys.sample_numeric):
            decode[f"cn_{i}"] = dict(enumerate(interval_labels(nk.edges), 1))
        n_xs, n_xn = len(keys.sample), len(keys.sample_numeric)
        for row in self.pm:  # (pid, qid, xs..., cs..., cn...)
            for i in range(n_xs):
                decode.setdefault(f"cs_{i}", {})[row[2 + n_xs + i]] = row[2 + i]
        specs = _part_specs(cols)
        s_cols = [alias[a] for a, _ in cols.session]
        counts: dict[Combo, Counts] = {}
        total = Counts()

        def read(rows, columns: list[str], make) -> None:
            nonlocal total
            width = len(columns)
            for row in rows:
                items = []
                for c, v in zip(columns, row[:width], strict=True):
                    if v is None:
                        continue
                    if v == 0 or v == "":
                        break
                    items.append((names[c], decode[c][v] if c in decode else str(v)))
                else:
                    if items:
                        counts[tuple(sorted(items))] = make(row[width:])
                    else:
                        total = make(row[width:])

        def sets(part: str) -> tuple[list[str], str]:
            used = [c for c in alias.values() if any(alias[a] == c for spec in specs[part] for a, _ in spec)]
            grouping = ", ".join("(" + ", ".join(alias[a] for a, _ in spec) + ")" for spec in specs[part])
            return used, grouping

        # S: per combination of session items (and the total, the empty set)
        used, grouping = sets("S")
        rows = self.rd.query(
            f"SELECT {''.join(c + ', ' for c in used)}count(*), sum(s_hi), sum(n_ph), sum(n_hi), sum(n_samples), "
            f"sum(m_sum) FROM _rse GROUP BY GROUPING SETS ({grouping})")
        read(rows, used,
             lambda v: Counts(int(v[0]), int(v[1] or 0), int(v[2] or 0), int(v[3] or 0), int(v[4] or 0),
                              float(v[5] or 0.0)))
        s_codes = ", ".join(s_cols)
        se = f"(SELECT sk{', ' + s_codes if s_codes else ''} FROM _rse)"
        if specs["Q"]:
            # Q: per (session, stage): sessions are exact; phases inside it counted too
            used, grouping = sets("Q")
            cs = [f"cs_{i}" for i in range(n_xs)]
            if n_xn:  # stages split into several phases by a numeric sample attr: group them first
                per_stage = (f"SELECT sk, qid, count(*) AS co_n, sum(ph_hi) AS co_h, max(ph_hi) AS co_any FROM {self.sph} "
                             f"JOIN (SELECT pid, qid FROM {self.spm}) USING (pid) GROUP BY sk, qid")
                src = (f"({per_stage}) AS q JOIN (SELECT DISTINCT qid, {', '.join(cs)} FROM {self.spm}) AS qm USING (qid) "
                       f"JOIN {se} AS se USING (sk)")
            else:
                src = (f"(SELECT sk, pid, 1 AS co_n, ph_hi AS co_h, ph_hi AS co_any FROM _rph) AS q "
                       f"JOIN (SELECT pid, {', '.join(cs)} FROM _rpm) AS qm USING (pid) JOIN {se} AS se USING (sk)")
            rows = self.rd.query(f"SELECT {''.join(c + ', ' for c in used)}count(*), sum(co_any), sum(co_n), "
                                 f"sum(co_h) FROM {src} GROUP BY GROUPING SETS ({grouping})")
            read(rows, used,
                 lambda v: Counts(int(v[0]), int(v[1] or 0), int(v[2] or 0), int(v[3] or 0)))
        if specs["P"]:
            # P: combinations naming a numeric sample attr, counted on the phases themselves
            used, grouping = sets("P")
            pcols = [f"cs_{i}" for i in range(n_xs)] + [f"cn_{i}" for i in range(n_xn)]
            has_num = " OR ".join(f"cn_{i} > 0" for i in range(n_xn))
            src = (f"(SELECT sk, pid, ph_hi FROM {self.sph}) AS p JOIN (SELECT pid, {', '.join(pcols)} FROM {self.spm} "
                   f"WHERE {has_num}) AS pm USING (pid) JOIN {se} AS se USING (sk)")
            rows = self.rd.query(f"SELECT {''.join(c + ', ' for c in used)}count(*), sum(ph_hi) FROM {src} "
                                 f"GROUP BY GROUPING SETS ({grouping})")
            read(rows, used,
                 lambda v: Counts(int(v[0]), int(v[1] or 0), int(v[0]), int(v[1] or 0)))
        worst = self._worst(metric, threshold, population, rollup)
        return Facts(keys=keys, counts=counts, total=total, timeline=[], worst=worst)

    def _worst(self, metric: str, threshold: float, population: str, rollup) -> list[SessionFacts]:
        """The sessions with the highest mean, with their phases, attrs and event items."""
        rows = self.rd.query(
            "SELECT sk, session_id, n_samples, s_hi, m_sum / n_samples AS mean, peak FROM _rse "
            f"ORDER BY mean DESC, session_id LIMIT {WORST_LIMIT}")
        if not rows:
            return []
        d, keys = self.d, self.keys
        ids = {int(r[0]): r[1] for r in rows}
        missing = [sk for sk, sid in ids.items() if sid is None]
        if missing:  # sessions with samples but no session line: their ids from the samples
            _, cond = metric_expr(d, metric)
            for sk, sid in self.rd.query(
                    f"SELECT DISTINCT hash(session_id) AS sk, session_id FROM {d.table('samples')} "
                    f"WHERE ts >= {int(self.window.since_ms)} AND ts < {int(self.window.until_ms)} AND {cond} "
                    f"AND hash(session_id) IN ({', '.join(map(str, missing))})"):
                ids[int(sk)] = sid
        n_xs = len(keys.sample)
        labels = [interval_labels(nk.edges) for nk in keys.sample_numeric]
        items_of = {}
        for row in self.pm:  # the search's phase items: categorical values and numeric intervals
            items = [(k, str(row[2 + i])) for i, k in enumerate(keys.sample) if row[2 + i]]
            items += [(nk.key, labels[i][row[2 + 2 * n_xs + i] - 1]) for i, nk in enumerate(keys.sample_numeric)
                      if row[2 + 2 * n_xs + i]]
            items_of[row[0]] = tuple(items)
        phases: dict[int, list] = {}
        for sk, pid, hi, _t0 in self.rd.query(
                f"SELECT sk, pid, ph_hi, ph_t0 FROM {self.sph} WHERE sk IN ({', '.join(str(int(r[0])) for r in rows)}) "
                "ORDER BY sk, ph_t0, pid"):
            phases.setdefault(int(sk), []).append((items_of.get(pid, ()), bool(hi)))
        worst = []
        for sk, _sid, n, _hi, mean, peak in rows:
            sid = ids.get(int(sk))
            if sid is None:
                continue
            worst.append(SessionFacts(session_id=str(sid), samples=int(n), mean=float(mean or 0.0),
                                      max=float(peak or 0.0), phases=phases.get(int(sk), [])))
        worst.sort(key=lambda f: (-f.mean, f.session_id))
        _fill_worst(self.rd, d, keys, self.window, metric, threshold, worst, population)
        return worst
