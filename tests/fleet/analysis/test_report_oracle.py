"""Every count the report shows equals a brute-force Python count over the same lines.

Random small fleets (session attrs, a stage, a numeric sample attr with few distinct values,
a numeric event attr, integer CPU so sums are exact), some with planted causes so the tree
has nodes; the report is built on DuckDB and on ClickHouse, with and without a drill path,
and each node (root, tree, explanations, heatmap cells, breadcrumb) is recounted in Python
from the lines, by the definitions in docs/report.md.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 - pytest fixture

from appvitals.fleet.analysis import exact
from appvitals.fleet.analysis.exact import parse_bytes, parse_requirement
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.protocol import EventLine, SampleLine, SessionLine

START_MS = 1_764_000_000_000
NOW = dt.datetime.fromtimestamp(START_MS / 1000 + 3600, dt.timezone.utc)


def random_fleet(seed: int) -> list:
    rng = random.Random(seed)
    lines: list = []
    n_sessions = rng.randint(40, 160)
    clients = [f"c{i}" for i in range(max(5, n_sessions // rng.randint(1, 4)))]
    cut = rng.randint(3, 17)  # the planted limit on n
    bad_version = rng.choice(["1.0", "2.0", "3.0"])
    for s in range(n_sessions):
        sid = f"s{s}"
        t = START_MS + rng.randrange(0, 40 * 60_000)
        version = rng.choice(["1.0", "2.0", "3.0"])
        lines.append(SessionLine(sid, t, 0, client_id=rng.choice(clients),
                                 attrs={"app_version": version, "os": rng.choice(["win", "mac"])}))
        seq = 1
        for i in range(rng.randint(1, 4)):
            lines.append(EventLine(sid, t + i * 1000, seq, name="e", attrs={"size": rng.randint(0, 9)}))
            seq += 1
        busy = rng.random() < 0.1
        for i in range(rng.randint(2, 12)):
            stage = rng.choice(["idle", "work", "sync"])
            n = rng.randint(0, 20)
            cpu = rng.randint(0, 25) + (40 if busy else 0)
            if stage == "work" and n >= cut:
                cpu += 45
            if version == bad_version and stage == "sync":
                cpu += 40
            lines.append(SampleLine(sid, t + 5000 + i * 10_000, seq, cpu=float(cpu), attrs={"stage": stage, "n": n}))
            seq += 1
    return lines


class Oracle:
    """Brute-force counts over lines, by the report's definitions."""

    def __init__(self, lines: list, threshold: float, keys: dict):
        self.sample_keys = list(keys["sample"]) + list(keys["sample_numeric"])
        self.numeric = set(keys["sample_numeric"]) | set(keys["event_numeric"])
        self.session_attrs: dict[str, dict[str, str]] = {}
        self.client: dict[str, str] = {}
        events: dict[str, dict[str, float]] = {}
        phases: dict[tuple, list[float]] = {}
        for line in lines:
            if isinstance(line, SessionLine):
                self.session_attrs[line.session_id] = {k: str(v) for k, v in line.attrs.items()}
                self.client[line.session_id] = line.client_id
            elif isinstance(line, EventLine):
                ev = events.setdefault(line.session_id, {})
                for k, v in line.attrs.items():
                    ev[k] = max(ev.get(k, float(v)), float(v))
            elif isinstance(line, SampleLine):
                key = (line.session_id, tuple(line.attrs.get(k) for k in self.sample_keys))
                acc = phases.setdefault(key, [0.0, 0])
                acc[0] += line.cpu
                acc[1] += 1
        self.phases = []  # (session_id, items, high)
        for (sid, values), (total, n) in phases.items():
            items = dict(self.session_attrs.get(sid, {}))
            items.update(events.get(sid, {}))
            items.update({k: v for k, v in zip(self.sample_keys, values, strict=True) if v is not None})
            self.phases.append((sid, items, total > threshold * n))

    def matches(self, items: dict, group: dict) -> bool:
        for k, req in group.items():
            if k not in items:
                return False
            op, x = parse_requirement(req)
            value = items[k]
            if x is not None and k in self.numeric:
                if not (value >= x if op == ">=" else value < x):
                    return False
            elif str(value) != req:
                return False
        return True

    def count(self, *groups: dict) -> tuple[int, int, int, int]:
        """(sessions, high sessions, clients, high clients) of the phases matching every group."""
        sessions, high = set(), set()
        for sid, items, hi in self.phases:
            if all(self.matches(items, g) for g in groups):
                sessions.add(sid)
                if hi:
                    high.add(sid)
        return (len(sessions), len(high), len({self.client.get(s, "") for s in sessions}),
                len({self.client.get(s, "") for s in high}))


def check_report(wh, lines, where=None) -> int:
    """Build the report and compare every count it shows with the oracle; the nodes checked."""
    r = build_report(wh, since="1h", threshold=30, now=NOW, where=where, min_support=3)
    oracle = Oracle(lines, 30.0, r.keys)
    path = dict(r.where)
    checked = 0

    def same(group: dict, got: tuple, what: str) -> None:
        nonlocal checked
        want = oracle.count(path, group)
        assert got == want[: len(got)], (what, group, path, got, want)
        checked += 1

    same({}, (r.sessions, r.high_sessions, r.clients, r.high_clients), "root")
    for e in r.explanations:
        same(e.attrs, (e.sessions, e.high_sessions, e.clients, e.high_clients), "explanation")

    def walk(node, parent_high):
        for child in node.children:
            same(child.attrs, (child.sessions, child.high_sessions, child.clients, child.high_clients), "tree")
            assert child.high_sessions <= parent_high  # "of those" is a share of the parent
            walk(child, child.high_sessions)

    walk(r.tree, r.tree.high_sessions)
    hm = r.heatmap
    for i, row in enumerate(hm.rows):
        for j, col in enumerate(hm.cols):
            want = oracle.count(path, {hm.row_key: row, hm.col_key: col})
            assert hm.sessions[i][j] == want[0], ("heatmap", row, col)
            if want[0]:
                assert hm.high_share[i][j] == round(want[1] / want[0], 4), ("heatmap", row, col)
    for step in r.path:
        assert (step.sessions, step.high_sessions, step.clients, step.high_clients) == oracle.count(step.attrs)
    return checked


def _duck(lines):
    wh = DuckDBWarehouse(":memory:")
    wh.insert(lines)
    return wh


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31))
def test_report_counts_equal_brute_force_on_duckdb(seed):
    lines = random_fleet(seed)
    wh = _duck(lines)
    try:
        check_report(wh, lines)
        version = random.Random(seed).choice(["1.0", "2.0", "3.0"])
        check_report(wh, lines, where=[f"app_version={version}"])
        check_report(wh, lines, where=["stage=work", "os=win"])
        check_report(wh, lines, where=["size>=5", "n<12"])
    finally:
        wh.close()


def test_planted_fleet_has_threshold_nodes_checked():
    """The property above must see numeric thresholds, where counts used to be upper bounds."""
    lines = random_fleet(3)
    wh = _duck(lines)
    try:
        r = build_report(wh, since="1h", threshold=30, now=NOW, min_support=3)
        assert any("n" in e.attrs for e in r.explanations), [e.attrs for e in r.explanations]
        assert check_report(wh, lines) >= 3
    finally:
        wh.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_report_counts_equal_brute_force_on_clickhouse(clickhouse_url, seed):  # noqa: F811
    from appvitals.fleet.warehouse.clickhouse import ClickHouseWarehouse

    lines = random_fleet(seed)
    ch = ClickHouseWarehouse(fresh_database(clickhouse_url, f"oracle{seed}"))
    try:
        ch.insert(lines)
        check_report(ch, lines)
        check_report(ch, lines, where=["stage=work"])
        check_report(ch, lines, where=["app_version=2.0", "size>=5"])
    finally:
        ch.close()


def test_counts_exact_when_phase_rows_are_not_kept(monkeypatch):
    """Too big for memory, the phase rows are computed again by each part: same exact counts."""
    monkeypatch.setattr(exact, "KEEP_SHARE", 10**15)
    lines = random_fleet(5)
    wh = _duck(lines)
    try:
        assert check_report(wh, lines) >= 1
        check_report(wh, lines, where=["stage=work"])
    finally:
        wh.close()


def test_memory_limit_texts_parse():
    assert parse_bytes("244.1 MiB") == 244.1 * 2**20
    assert parse_bytes("2GB") == 2e9
    assert parse_bytes("unlimited") == 0.0
