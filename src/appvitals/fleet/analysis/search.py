"""The report's search on DuckDB: every combination counted by GROUPING SETS over lean tables.

The samples are read once per report into temporary tables on the report's own connection
(`Warehouse.scratch`, private to it and gone when the report ends), which both the search
and the exact recount (`exact.Counter`) then read:

- `_rpm`, one row per distinct sample attrs text (a few hundred): its phase key `pid` (the
  exact values), the search's coarser `cpid` (numeric values by interval, as ClickHouse's
  search has them), its stage key `qid`, the raw sample items (`xs_i`, `xn_i`) and their
  small integer codes (`cs_i`; `cn_i` the numeric interval);
- `_rph` (and `_rpc` by cpid, with numeric sample attrs), one row per phase: the session's
  64-bit key `sk` (a hash of its id), the phase key and whether it is high: 11 bytes a
  phase, so a million sessions' phases fit the collector's 256 MB;
- `_rse`, one row per session: its phases counted (and, with at most 64 phase keys, the
  set of its phases and of its high phases as two 64-bit masks), its samples summed (mean,
  peak, first and last ts), its client's 64-bit key, its session attrs as one-byte codes
  (`ca_i`: the place of the value in the report's list of kept values, 0 for none), its
  largest numeric event attrs (`xen_i`, interval code `cen_i`) and event texts (`xet_i`).
  Each part is grouped in a statement of its own, so one large hash table is alive at a time.

The search counts every combination of up to `Keys.max_order` items in three statements,
one per kind (S: session items; Q: with a categorical sample item; P: with a numeric sample
item), each one `GROUP BY GROUPING SETS` over small integer codes: no row is exploded into
its combinations, and no combination key is built as text. A grouping set's rows name the
combination by which columns are not NULL; a code 0 (no value) drops the row. With phase
masks and one stage attr, Q reads the sessions' masks instead of the phases.

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
from appvitals.fleet.analysis.model import (
    Combo,
    Counts,
    Facts,
    Keys,
    SessionFacts,
    Window,
    interval_labels,
    session_mean,
)
from appvitals.fleet.warehouse.dialects import dialect_for

MAX_MASKED_PHASES = 256  # phase keys a session's masks hold (four 64-bit words each)
WORD = 64
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
        self._thr = thr
        self._samples = samples = (f"SELECT * FROM ({rows_sql(d, window, metric, rollup, population)}) AS r "
                                   f"JOIN (SELECT attrs, pid, cpid FROM _rpm) AS pm USING (attrs)")
        # at most 64 phase keys: each session also carries the set of its phases and of its high
        # phases as two 64-bit masks, and the exact recount reads sessions, not phases
        self.pids = int(self.rd.query("SELECT coalesce(max(pid), 0) FROM _rpm")[0][0])
        self.masked = 0 < self.pids <= MAX_MASKED_PHASES
        w = -(-self.pids // WORD) if self.masked else 0
        self.words = {"pmask": w, "hmask": w}
        self._make_phases()
        # sessions: their (search) phases counted, their samples summed, their attrs coded (the
        # place of the value in the report's list of kept values; 0: none), a 64-bit key of
        # their client, and their event attrs
        e_raw = [f"max({d.attr_number(nk.key)}) AS xen_{i}" for i, nk in enumerate(keys.event_numeric)]
        e_raw += [f"max({d.attr(k)}) AS xet_{i}" for i, k in enumerate(keys.event_text)]
        e_out = [f"xen_{i}" for i in range(len(keys.event_numeric))]
        e_out += [f"{_interval_code(f'xen_{i}', nk.edges)}::UTINYINT AS cen_{i}" for i, nk in enumerate(keys.event_numeric)]
        e_out += [f"coalesce(xet_{i}, '') AS xet_{i}" for i in range(len(keys.event_text))]
        sums = "sum(n)::BIGINT AS n_samples, sum(s) AS m_sum, max(mx) AS peak, min(t0) AS t0, max(t1) AS t1"
        # each part of the sessions' row its own statement: one large hash table at a time stays
        # within the memory limit, where three at once spilled (3 s against 1 s at a million)
        self._run(f"CREATE OR REPLACE TEMP TABLE _rsd AS SELECT hash(session_id) AS sk, {sums} FROM ({samples}) "
                  "GROUP BY sk")
        if self.masked and not xn:  # the masks alone: a session's phases and high phases are their bits
            per_session = (f"SELECT sk, ({self.shared('pmask')})::INTEGER AS n_ph, ({self.shared('hmask')})::INTEGER "
                           f"AS n_hi, ({self.shared('hmask')} > 0)::UTINYINT AS s_hi, * EXCLUDE (sk) FROM "
                           f"(SELECT sk, {self._mask_aggs('pmask', 'hmask')} FROM {self.sph} GROUP BY sk)")
        else:  # (with numeric sample attrs, the masks of the exact phases are read from _rph below)
            per_session = (f"SELECT sk, count(*)::INTEGER AS n_ph, sum(ph_hi)::INTEGER AS n_hi, max(ph_hi) AS s_hi "
                           f"FROM {self.sph} GROUP BY sk")
        self._run(f"CREATE OR REPLACE TEMP TABLE _rsp AS {per_session}")
        head = "SELECT p.*, sd.* EXCLUDE (sk) FROM _rsp AS p JOIN _rsd AS sd USING (sk)"
        if self.masked and xn:  # the masks of the exact phases (the search's are coarser)
            self._run(f"CREATE OR REPLACE TEMP TABLE _rsm AS SELECT sk, {self._mask_aggs('pmask', 'hmask')} "
                      "FROM _rph GROUP BY sk")
            head = f"SELECT pp.*, _rsm.* EXCLUDE (sk) FROM ({head}) AS pp JOIN _rsm USING (sk)"
        self._run(f"CREATE OR REPLACE TEMP TABLE _rsa AS {self._session_attrs_sql()}")
        no_client = "hash('')"  # sessions without a session line: one client '', as elsewhere in the report
        sql = (f"SELECT h.*, coalesce(sa.ck, {no_client}) AS ck"
               f"{''.join(f', coalesce(ca_{i}, 0) AS ca_{i}' for i in range(len(keys.session)))} "
               f"FROM ({head}) AS h LEFT JOIN _rsa AS sa USING (sk)")
        if e_raw:
            self._run(f"CREATE OR REPLACE TEMP TABLE _rev AS SELECT hash(session_id) AS sk"
                      f"{''.join(', ' + c for c in e_raw)} FROM {d.table('events')} WHERE {ts} GROUP BY sk")
            sql = (f"SELECT ps.*{''.join(', ' + c for c in e_out)} FROM ({sql}) AS ps LEFT JOIN _rev AS ev USING (sk)")
        self._run(f"CREATE OR REPLACE TEMP TABLE _rse AS {sql}")
        for table in ("_rsd", "_rsa", "_rsp", "_rsm", "_rev"):
            self._run(f"DROP TABLE IF EXISTS {table}")

    def _mask_aggs(self, phases: str, high: str) -> str:
        """Aggregates over phase rows (pid, ph_hi): a session's phases and high phases as words
        of 64 bits (`{phases}_0`, ...), bit pid-1 set when it has that phase."""
        if self.words[phases] == 1:  # the usual case: no word to pick
            return (f"bit_or(1::UBIGINT << (pid - 1)) AS {phases}_0, "
                    f"bit_or(ph_hi::UBIGINT << (pid - 1)) AS {high}_0")
        out = []
        for w in range(self.words[phases]):
            bit = f"1::UBIGINT << ((pid - 1) % {WORD})"
            inside = f"(pid - 1) // {WORD} = {w}"
            out += [f"bit_or(CASE WHEN {inside} THEN {bit} ELSE 0::UBIGINT END) AS {phases}_{w}",
                    f"bit_or(CASE WHEN {inside} AND ph_hi = 1 THEN {bit} ELSE 0::UBIGINT END) AS {high}_{w}"]
        return ", ".join(out)

    def _split(self, column: str, mask: int) -> list[tuple[int, int]]:
        return [(w, (mask >> (WORD * w)) & ((1 << WORD) - 1)) for w in range(self.words[column])
                if (mask >> (WORD * w)) & ((1 << WORD) - 1)]

    def meets(self, column: str, mask: int) -> str:
        """SQL: the session's `column` masks (pmask or hmask) share a bit with `mask`."""
        return " OR ".join(f"({column}_{w} & {m}::UBIGINT) != 0" for w, m in self._split(column, mask)) or "false"

    def shared(self, column: str, mask: int | None = None) -> str:
        """SQL: how many bits the session's `column` masks share with `mask` (None: all of them)."""
        if mask is None:
            return " + ".join(f"bit_count({column}_{w})" for w in range(self.words[column])) or "0"
        return " + ".join(f"bit_count({column}_{w} & {m}::UBIGINT)" for w, m in self._split(column, mask)) or "0"

    def mask_columns(self, column: str) -> list[str]:
        return [f"{column}_{w}" for w in range(self.words[column])]

    def _make_phases(self) -> None:
        """The per-phase tables: `_rph` (exact phases) and, with numeric sample attrs, `_rpc` (the
        search's coarser ones), 11 bytes a phase: the session key, the phase key, high or not;
        the search's also the phase's first ts (from the window's start, 4 bytes when the window
        is under 49 days), which orders the worst sessions' phases."""
        high = f"CASE WHEN sum(s) > {self._thr!r} * sum(n) THEN 1 ELSE 0 END::UTINYINT AS ph_hi"
        since, span = int(self.window.since_ms), int(self.window.until_ms) - int(self.window.since_ms)
        first = f"(min(t0) - {since})::{'UINTEGER' if span < 2 ** 32 else 'BIGINT'} AS ph_t0"
        xn = bool(self.keys.sample_numeric)
        self._run(f"CREATE OR REPLACE TEMP TABLE _rph AS SELECT hash(session_id) AS sk, pid, {high}"
                  f"{'' if xn else ', ' + first} FROM ({self._samples}) GROUP BY sk, pid")
        if xn:
            self._run(f"CREATE OR REPLACE TEMP TABLE _rpc AS SELECT hash(session_id) AS sk, cpid AS pid, {high}, "
                      f"{first} FROM ({self._samples}) GROUP BY sk, cpid")

    def _session_attrs_sql(self) -> str:
        """Per session (`sk`): its client's key and its attrs' codes, the code of the smallest
        value when it has several session lines (as on ClickHouse). Most sessions have one: they
        are read line by line, and only the others grouped (twice as fast at a million)."""
        d, keys = self.d, self.keys
        code = [(f"coalesce(list_position([{', '.join(d.lit(v) for v in vs[:MAX_CODED_VALUES])}], ", f"), 0)::UTINYINT "
                 f"AS ca_{i}", d.attr(k)) for i, (k, vs) in enumerate(keys.session.items())]
        one = "".join(f", {a}{x}{b}" for a, b, x in code)
        several = "".join(f", {a}min({x}){b}" for a, b, x in code)
        sessions, sk = d.table("sessions"), "hash(session_id)"
        return (f"WITH multi AS MATERIALIZED (SELECT {sk} AS sk FROM {sessions} GROUP BY sk HAVING count(*) > 1) "
                f"SELECT {sk} AS sk, hash(client_id) AS ck{one} FROM {sessions} WHERE {sk} NOT IN (SELECT sk FROM multi) "
                f"UNION ALL SELECT {sk} AS sk, hash(min(client_id)) AS ck{several} FROM {sessions} "
                f"WHERE {sk} IN (SELECT sk FROM multi) GROUP BY {sk}")

    def _run(self, sql: str) -> None:
        self.rd.query(sql)

    # -- what the exact recount reads --

    def phase_rows(self, only: set[str] | None = None) -> str:
        """The phase rows as exact.phase_rows_sql gives them, keyed by session (`sk`) instead
        of session_id: (sk, ph_hi, ph_t0, ph_t1, xs_i, xn_i, client_id, and the named session
        and event attr columns). ph_t0 and ph_t1 are the session's (all the recount reads of
        them); client_id is a 64-bit key of the client; a session attr holds its value when the
        report keeps it ('' otherwise), which is every value a shown group names."""
        keys = self.keys
        cols = [f"xs_{i}" for i in range(len(keys.sample))] + [f"xn_{i}" for i in range(len(keys.sample_numeric))]
        cols.append("ck AS client_id")
        cols += [f"{self.session_column(f'xa_{i}')} AS xa_{i}" for i, k in enumerate(keys.session)
                 if only is None or k in only]
        cols += [f"xen_{i}" for i, nk in enumerate(keys.event_numeric) if only is None or nk.key in only]
        cols += [f"xet_{i}" for i, k in enumerate(keys.event_text) if only is None or k in only]
        return (f"SELECT sk, ph_hi, t0 AS ph_t0, t1 AS ph_t1{''.join(', ' + c for c in cols)} "
                "FROM _rph JOIN _rpm USING (pid) JOIN _rse USING (sk)")

    def session_column(self, level_column: str) -> str:
        """A session or event attr's column on `_rse` (session attrs decoded from their codes)."""
        if level_column.startswith("xa_"):
            i = int(level_column[3:])
            vs = list(self.keys.session.values())[i][:MAX_CODED_VALUES]
            return f"([''{''.join(', ' + self.d.lit(v) for v in vs)}])[ca_{i} + 1]"
        return level_column

    def pid_masks(self, conditions: Sequence[str]) -> list[int]:
        """For each SQL condition on phase items (xs_i, xn_i), the mask of the phase keys it holds for."""
        if not conditions:
            return []
        masks = [0] * len(conditions)
        for row in self.rd.query(f"SELECT pid, [{', '.join(f'coalesce({c}, false)' for c in conditions)}] FROM _rpm"):
            for j, ok in enumerate(row[1]):
                if ok:
                    masks[j] |= 1 << (int(row[0]) - 1)
        return masks

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

        def items_of(row, columns: list[str]) -> list | None:
            """A grouping set's row as items (its columns that are not NULL); None when one of
            them holds no value (code 0 or '')."""
            items = []
            for c, v in zip(columns, row[:len(columns)], strict=True):
                if v is None:
                    continue
                if v == 0 or v == "":
                    return None
                items.append((names[c], decode[c][v] if c in decode else str(v)))
            return items

        def read(rows, columns: list[str], make) -> None:
            nonlocal total
            width = len(columns)
            for row in rows:
                items = items_of(row, columns)
                if items:
                    counts[tuple(sorted(items))] = make(row[width:])
                elif items is not None:
                    total = make(row[width:])

        def sets(part: str) -> tuple[list[str], str]:
            used = [c for c in alias.values() if any(alias[a] == c for spec in specs[part] for a, _ in spec)]
            grouping = ", ".join("(" + ", ".join(alias[a] for a, _ in spec) + ")" for spec in specs[part])
            return used, grouping

        # S: per combination of session items (and the total, the empty set)
        # (samples and metric sums only for single items and the total: the heatmap and the
        # version comparison read them; combinations of two or more do not, and leaving two of six
        # sums out of most of the sets saves a fifth of the statement)
        for few in (True, False):
            chosen = [spec for spec in specs["S"] if (len(spec) <= 1) == few]
            if not chosen:
                continue
            used = [c for c in alias.values() if any(alias[a] == c for spec in chosen for a, _ in spec)]
            grouping = ", ".join("(" + ", ".join(alias[a] for a, _ in spec) + ")" for spec in chosen)
            sums = "count(*), sum(s_hi), sum(n_ph), sum(n_hi)" + (", sum(n_samples), sum(m_sum)" if few else "")
            rows = self.rd.query(f"SELECT {''.join(c + ', ' for c in used)}{sums} FROM _rse "
                                 f"GROUP BY GROUPING SETS ({grouping})")
            read(rows, used,
                 lambda v: Counts(int(v[0]), int(v[1] or 0), int(v[2] or 0), int(v[3] or 0),
                                  int(v[4] or 0) if len(v) > 4 else 0, float(v[5] or 0.0) if len(v) > 5 else 0.0))
        s_codes = ", ".join(s_cols)
        se = f"(SELECT sk{', ' + s_codes if s_codes else ''} FROM _rse)"
        qp, qh = "pmask", "hmask"
        if specs["Q"] and n_xs == 1 and not n_xn and self.masked:
            # (with numeric sample attrs, a stage spans several phase keys, and reading the
            # per-(session, stage) rows costs less than testing several bits per stage)
            # Q from the sessions' phase masks: a session is in (items, stage = v) when its items
            # match and its mask meets v's phases (one phase key here); its phases there are the
            # bits they share, its high ones those of its high-phase mask
            stage_of = {}
            for r in self.pm:  # (pid, qid, xs_0, cs_0, ...): the stage code of each search phase
                if r[2 + n_xs]:
                    stage_of.setdefault(r[2 + n_xs], 0)
                    stage_of[r[2 + n_xs]] |= 1 << (int(r[0]) - 1)
            stage = sorted(stage_of.items())
            s_specs = [[(a, k) for a, k in spec if a != "sp_0"] for spec in specs["Q"]]
            used = [c for c in s_cols if any(alias[a] == c for spec in s_specs for a, _ in spec)]
            grouping = ", ".join("(" + ", ".join(alias[a] for a, _ in spec) + ")" for spec in s_specs)
            bits = [f"sum(({self.meets(qp, m)})::INTEGER), sum(({self.meets(qh, m)})::INTEGER), "
                    f"sum({self.shared(qp, m)}), sum({self.shared(qh, m)})" for _, m in stage]
            rows = self.rd.query(f"SELECT {''.join(c + ', ' for c in used)}{', '.join(bits)} FROM _rse "
                                 f"GROUP BY GROUPING SETS ({grouping})")
            width = len(used)
            for row in rows:
                items = items_of(row, used)
                if items is not None:
                    for j, (code, _) in enumerate(stage):
                        n, h, u, uh = (int(x or 0) for x in row[width + 4 * j:width + 4 * j + 4])
                        if n:
                            counts[tuple(sorted([*items, (names["cs_0"], decode["cs_0"][code])]))] = Counts(n, h, u, uh)
        elif specs["Q"]:
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
        """The sessions with the highest mean (ties at the cut all read, then ordered by id as
        on ClickHouse), with their phases, attrs and event items."""
        mean = "m_sum / n_samples"
        rows = self.rd.query(
            f"SELECT sk, n_samples, m_sum, peak FROM _rse WHERE {mean} >= (SELECT min(x) FROM "
            f"(SELECT {mean} AS x FROM _rse ORDER BY x DESC LIMIT {WORST_LIMIT}))")
        if not rows:
            return []
        d, keys = self.d, self.keys
        ids: dict[int, str] = {}
        for table in ("sessions", "samples"):  # a session's id from its session line, else from its samples
            missing = [str(int(r[0])) for r in rows if int(r[0]) not in ids]
            if not missing:
                break
            cond = "1 = 1" if table == "sessions" else metric_expr(d, metric)[1]
            window = f"ts >= {int(self.window.since_ms)} AND ts < {int(self.window.until_ms)} AND " if table == "samples" else ""
            for sk, sid in self.rd.query(
                    f"SELECT DISTINCT hash(session_id) AS sk, session_id FROM {d.table(table)} "
                    f"WHERE {window}{cond} AND hash(session_id) IN ({', '.join(missing)})"):
                ids[int(sk)] = sid
        worst = [SessionFacts(session_id=str(ids[int(sk)]), samples=int(n), mean=session_mean(m or 0.0, int(n)),
                          max=float(peak or 0.0)) for sk, n, m, peak in rows if int(sk) in ids]
        sk_of = {str(ids[int(sk)]): int(sk) for sk, *_ in rows if int(sk) in ids}
        worst.sort(key=lambda f: (-f.mean, f.session_id))
        worst = worst[:WORST_LIMIT]
        # their phases (the search's, as on ClickHouse: in time order, named by their items)
        n_xs = len(keys.sample)
        labels = [interval_labels(nk.edges) for nk in keys.sample_numeric]
        items_of = {}
        for row in self.pm:  # (pid, qid, xs..., cs..., cn...)
            items = [(k, str(row[2 + i])) for i, k in enumerate(keys.sample) if row[2 + i]]
            items += [(nk.key, labels[i][row[2 + 2 * n_xs + i] - 1]) for i, nk in enumerate(keys.sample_numeric)
                      if row[2 + 2 * n_xs + i]]
            items_of[int(row[0])] = tuple(items)
        if keys.sample or keys.sample_numeric:
            by_sk = {sk_of[f.session_id]: f for f in worst}
            for sk, pid, hi in self.rd.query(
                    f"SELECT sk, pid, ph_hi FROM {self.sph} WHERE sk IN ({', '.join(map(str, by_sk))}) "
                    "ORDER BY sk, ph_t0, pid"):
                by_sk[int(sk)].phases.append((items_of.get(int(pid), ()), bool(hi)))
        # their attrs and event items: small reads by id
        _fill_worst(self.rd, d, keys, self.window, metric, threshold, worst, population)
        return worst
