"""The DuckDB search (search.py: GROUPING SETS over per-report tables) against the exploding
search it replaced there (facts.fetch_facts, still ClickHouse's), and its per-report tables."""

from __future__ import annotations

import datetime as dt
import threading

import msgspec
import pytest

from appvitals.fleet.analysis import exact, facts, search
from appvitals.fleet.analysis.model import Window
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.protocol import EventLine

START_MS = 1_764_000_000_000


@pytest.fixture(scope="module")
def fleet():
    wh = DuckDBWarehouse(":memory:")
    # the default scenario: session attrs, a stage, numeric sample attrs split into
    # intervals (file_name_length), numeric event attrs
    lines = list(generate_lines(None, clients=60, minutes=60, seed=11, start_ms=START_MS))
    sessions = sorted({x.session_id for x in lines if type(x).__name__ == "SessionLine"})
    # numeric and text event attrs too: an upload size and a server per session (some none)
    lines += [EventLine(session_id=sid, ts=START_MS + 60_000 + i, seq=10_000_000 + i, name="upload",
                        attrs={"payload_kb": (i * 37) % 900, "server": f"s{i % 3}"})
              for i, sid in enumerate(sessions) if i % 5]
    wh.insert(lines)
    yield wh
    wh.close()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_grouping_sets_count_what_the_exploding_search_counts(fleet, order):
    window = Window(START_MS, START_MS + 60 * 60_000)
    keys = facts.discover_keys(fleet, window, "cpu")
    assert keys.sample and keys.sample_numeric and keys.event_numeric and keys.event_text, "every kind of attr"
    keys.max_order = order
    old = facts.fetch_facts(fleet, window, "cpu", 30.0, 60_000, ("app_version",), keys=keys)
    with fleet.scratch() as rd:
        new = search.LeanTables(rd, keys, window, "cpu", 30.0).facts("cpu", 30.0)
    assert same(new.total, old.total, ())
    assert new.counts.keys() == old.counts.keys()
    diff = [c for c in old.counts if not same(new.counts[c], old.counts[c], c)]
    assert not diff, (diff[:3], [(old.counts[c], new.counts[c]) for c in diff[:3]])
    assert [(w.session_id, w.samples, w.mean, w.max, w.phases) for w in new.worst] == \
        [(w.session_id, w.samples, w.mean, w.max, w.phases) for w in old.worst]


def same(a, b, combo) -> bool:
    """Equal counts; samples and metric sums only where the report reads them (the total and
    single items: the search leaves them out of longer combinations). Sums of floats differ in
    the last bits with the order they are added in."""
    if msgspec.structs.astuple(a)[:4] != msgspec.structs.astuple(b)[:4]:
        return False
    return len(combo) > 1 or (a.samples == b.samples and round(a.metric_sum, 6) == round(b.metric_sum, 6))


def test_the_recount_reads_the_same_phases_from_the_report_tables(fleet):
    window = Window(START_MS, START_MS + 60 * 60_000)
    keys = facts.discover_keys(fleet, window, "cpu")
    groups = [(), (("app_version", "7.0.0"),), (("file_name_length", ">=40"), ("stage", "receiving")),
              (("app_version", "7.0.0"), ("stage", "login"))]
    plain = exact.Counter(fleet, keys, window, "cpu", 30.0).count(groups)
    with fleet.scratch() as rd:
        counter = exact.Counter(rd, keys, window, "cpu", 30.0)
        counter.lean = search.LeanTables(rd, keys, window, "cpu", 30.0)
        assert counter.count(groups) == plain
        assert plain[()].sessions > 50 and plain[groups[1]].high_sessions > 0


def test_reports_at_once_keep_their_tables_apart(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    wh.insert(list(generate_lines(None, clients=40, minutes=45, seed=3, start_ms=START_MS)))
    now = dt.datetime.fromtimestamp(START_MS / 1000 + 45 * 60, dt.timezone.utc)
    expected = msgspec.to_builtins(build_report(wh, since="45m", threshold=30.0, now=now))
    out, errors = [], []

    def one(threshold: float) -> None:
        try:
            out.append((threshold, msgspec.to_builtins(build_report(wh, since="45m", threshold=threshold, now=now))))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in (30.0, 50.0, 30.0, 50.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    other = msgspec.to_builtins(build_report(wh, since="45m", threshold=50.0, now=now))
    for threshold, got in out:
        got.pop("took_ms")
        want = dict(expected if threshold == 30.0 else other)
        want.pop("took_ms", None)
        assert got == want
    # the tables went with each report's connection: a new one sees none
    with wh.scratch() as rd:
        assert rd.query("SELECT count(*) FROM duckdb_tables() WHERE temporary")[0][0] == 0
    wh.close()


def _stage_only_fleet(wh: DuckDBWarehouse, sessions: int = 400, seed: int = 7, sizes: bool = False) -> None:
    """Sessions with four attrs, samples with a stage only (few phase keys: the masked recount),
    an upload size event, some sessions without a session line or with two of them. `sizes`:
    sync samples also carry a file size of 1-90 (about a hundred phase keys: masks of two words)."""
    import random

    from appvitals.fleet.wire.protocol import SampleLine, SessionLine

    rng = random.Random(seed)
    lines: list = []
    for s in range(sessions):
        sid, t = f"s{s}", START_MS + rng.randrange(0, 40 * 60_000)
        attrs = {"app_version": rng.choice(["6.03", "6.04", "7.0"]), "os": rng.choice(["mac", "win", "linux"]),
                 "net": rng.choice(["wifi", "vpn"]), "tier": rng.choice(["a", "b", "c", "d", "e"])}
        if s % 17:
            lines.append(SessionLine(session_id=sid, client_id=f"c{s // 4}", ts=t, seq=0, attrs=attrs))
        if s % 23 == 0:  # a second session line, another version: the session's is the smallest
            lines.append(SessionLine(session_id=sid, client_id=f"c{s // 4}", ts=t + 5, seq=1,
                                     attrs=dict(attrs, app_version="5.9")))
        lines.append(EventLine(session_id=sid, ts=t + 1, seq=2, name="upload", attrs={"kb": rng.randint(1, 900)}))
        for i in range(rng.randint(1, 12)):
            stage = rng.choice(["idle", "sync", "index"])
            cpu = rng.uniform(0, 25) + (50 if attrs["app_version"] == "6.04" and stage == "index" else 0)
            sample_attrs: dict = {"stage": stage}
            if sizes and stage == "sync":
                sample_attrs["size"] = rng.randint(1, 90)
                cpu += 45 if sample_attrs["size"] >= 63 else 0
            lines.append(SampleLine(session_id=sid, ts=t + 10_000 * (i + 1), seq=i + 3, cpu=round(cpu, 2),
                                    attrs=sample_attrs))
    wh.insert(lines)


@pytest.mark.parametrize("order,sizes", [(1, False), (2, False), (3, False), (2, True), (3, True)])
def test_the_masked_search_counts_what_the_exploding_search_counts(order, sizes):
    wh = DuckDBWarehouse(":memory:")
    _stage_only_fleet(wh, sizes=sizes)
    window = Window(START_MS, START_MS + 60 * 60_000)
    keys = facts.discover_keys(wh, window, "cpu")
    keys.max_order = order
    old = facts.fetch_facts(wh, window, "cpu", 30.0, 60_000, ("app_version",), keys=keys)
    with wh.scratch() as rd:
        lean = search.LeanTables(rd, keys, window, "cpu", 30.0)
        assert lean.masked  # stages counted from the sessions' phase masks
        new = lean.facts("cpu", 30.0)
        # an event attr's observed values come from the sessions' table
        counter = exact.Counter(rd, keys, window, "cpu", 30.0)
        counter.lean = lean
        assert counter.distinct_numbers("kb", 100, 200) == [float(x) for x in range(101, 201)
                                                            if x in _kb_values(wh)]
    assert same(new.total, old.total, ())
    assert new.counts.keys() == old.counts.keys()
    assert all(same(new.counts[c], old.counts[c], c) for c in old.counts)
    assert len(new.counts) > 25 * order
    wh.close()


def _kb_values(wh: DuckDBWarehouse) -> set[int]:
    return {int(r[0]) for r in wh.query("SELECT DISTINCT attr_values[1] FROM events")}


@pytest.mark.parametrize("sizes", [False, True])
def test_the_masked_recount_counts_what_the_phase_rows_count(sizes):
    wh = DuckDBWarehouse(":memory:")
    _stage_only_fleet(wh, sizes=sizes)
    window = Window(START_MS, START_MS + 60 * 60_000)
    keys = facts.discover_keys(wh, window, "cpu")
    assert keys.event_numeric and bool(keys.sample_numeric) == sizes
    groups = [(), (("app_version", "6.04"),), (("app_version", "6.04"), ("stage", "index")),
              (("stage", "sync"),), (("kb", ">=450"), ("os", "mac")), (("kb", "<100"), ("stage", "idle")),
              (("app_version", "5.9"),), (("net", "vpn"), ("os", "win"), ("stage", "index"))]
    if sizes:
        groups += [(("size", ">=63"),), (("size", ">=63"), ("stage", "sync")), (("os", "mac"), ("size", "<20"))]
    want = exact.Counter(wh, keys, window, "cpu", 30.0).count_all(groups, "app_version", "stage", 600_000,
                                                                  "app_version")
    with wh.scratch() as rd:
        counter = exact.Counter(rd, keys, window, "cpu", 30.0)
        counter.lean = search.LeanTables(rd, keys, window, "cpu", 30.0)
        assert counter.lean.masked and counter.lean.words["pmask"] == (2 if sizes else 1)
        got = counter.count_all(groups, "app_version", "stage", 600_000, "app_version")
        assert counter.count(groups[1:3]) == {g: want[0][g] for g in groups[1:3]}
    assert got[0] == want[0]
    assert want[0][groups[2]].high_sessions > 10 and want[0][groups[1]].clients > 10
    assert got[1] == want[1]
    assert sorted(got[2]) == sorted(want[2])
    wh.close()


def test_ingest_goes_on_while_a_report_is_computed(tmp_path, monkeypatch):
    wh = DuckDBWarehouse(tmp_path / "f.duckdb", ingest_log=True)
    _stage_only_fleet(wh, sessions=200)
    reached, release = threading.Event(), threading.Event()
    search_facts = search.LeanTables.facts

    def paused(self, *args, **kwargs):  # the report holds its connection and tables here
        reached.set()
        assert release.wait(60)
        return search_facts(self, *args, **kwargs)

    monkeypatch.setattr(search.LeanTables, "facts", paused)
    now = dt.datetime.fromtimestamp(START_MS / 1000 + 60 * 60, dt.timezone.utc)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(build_report(wh, since="1h", threshold=30.0, now=now)))
    thread.start()
    try:
        assert reached.wait(60)
        before = wh.query("SELECT count(*) FROM samples")[0][0]
        late = DuckDBWarehouse(tmp_path / "other.duckdb")  # another fleet's lines, written meanwhile
        _stage_only_fleet(late, sessions=50, seed=9)
        lines = late.query("SELECT session_id, ts, seq, cpu, attrs FROM samples")
        late.close()
        from appvitals.fleet.wire.protocol import SampleLine
        result = wh.insert([SampleLine(session_id="n" + sid, ts=ts, seq=seq, cpu=cpu, attrs=msgspec.json.decode(a))
                            for sid, ts, seq, cpu, a in lines])
        assert result.accepted == len(lines) > 0 and wh.sync()
        assert wh.query("SELECT count(*) FROM samples")[0][0] == before + len(lines)
    finally:
        release.set()
        thread.join(60)
    assert out and out[0].sessions == 200  # the report reads what was there when it began
    wh.close()
