"""The DuckDB warehouse's sample rollup: the report reads closed 10-minute buckets from it and
must say exactly what it says from the samples -- also with late samples, duplicates and
retention in between."""

from __future__ import annotations

import math

import msgspec
import pytest
from support.fleets import BASE, MINUTES, PLANTED, START_MS, _now

from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.sim.scenario import parse_scenario
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import ROLLUP_BUCKET_MS, DuckDBWarehouse
from appvitals.fleet.wire.protocol import SampleLine

LATER = START_MS + 10 * 86_400_000  # a "now" when every bucket of the fleet has closed


def fleet_lines(case: str = "numeric"):
    scenario = parse_scenario(BASE + PLANTED[case], case)
    return list(generate_lines(scenario, clients=200, minutes=MINUTES, seed=5, start_ms=START_MS))


def report_dict(wh) -> dict:
    report = build_report(wh, since=f"{MINUTES}m", threshold=30, now=_now())
    report.took_ms = 0.0
    return msgspec.to_builtins(report)


def assert_same(a, b, path="report"):
    """Equal, floats up to summation order."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def rollup_matches_samples(wh) -> None:
    b = ROLLUP_BUCKET_MS
    direct = wh.query(
        f"SELECT session_id, attrs, ts // {b} AS bucket, count(*), sum(cpu), max(cpu), min(ts), max(ts) FROM samples "
        f"WHERE ts // {b} < {wh.rollup_state()[1]} GROUP BY ALL ORDER BY 1, 2, 3")
    rolled = wh.query(
        "SELECT session_id, attrs, bucket, sum(n), sum(cpu_sum), max(cpu_max), min(ts_min), max(ts_max) "
        "FROM sample_rollup GROUP BY ALL ORDER BY 1, 2, 3")
    assert len(direct) == len(rolled)
    for x, y in zip(direct, rolled):
        assert x[:4] == y[:4] and x[5:] == y[5:] and math.isclose(x[4], y[4], rel_tol=1e-12)


@pytest.mark.parametrize("case", ["numeric", "pair"])
def test_report_from_the_rollup_is_the_report_from_the_samples(tmp_path, case):
    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    lines = fleet_lines(case)
    wh.insert(lines)
    from_samples = report_dict(wh)
    assert wh.catch_up(now_ms=LATER) > 0
    rolled, samples = wh.query("SELECT (SELECT count(*) FROM sample_rollup), (SELECT count(*) FROM samples)")[0]
    assert 0 < rolled < samples / 3  # it is worth having
    rollup_matches_samples(wh)
    assert_same(report_dict(wh), from_samples)
    assert wh.catch_up(now_ms=LATER) == 0  # nothing new


def test_late_samples_and_duplicates_after_the_rollup(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    lines = fleet_lines()
    samples = [line for line in lines if isinstance(line, SampleLine)]
    late = samples[::7]  # every 7th sample arrives after its bucket was rolled up
    keep = set(map(id, late))
    wh.insert([line for line in lines if id(line) not in keep])
    wh.catch_up(now_ms=LATER)
    again = [line for line in samples[:60] if id(line) not in keep]
    assert wh.insert(again).duplicates == len(again)  # seen again: no change anywhere
    assert wh.insert(late).accepted == len(late)  # late: their buckets go dirty, in the same commit
    assert wh.query("SELECT count(*) FROM rollup_dirty")[0][0] > 0

    reference = DuckDBWarehouse(tmp_path / "ref.duckdb")  # the same data, never rolled up
    reference.insert(lines)
    expected = report_dict(reference)
    assert_same(report_dict(wh), expected)  # dirty buckets are read from the samples
    wh.close()
    wh = DuckDBWarehouse(tmp_path / "f.duckdb")  # the marks survive a restart
    assert wh.query("SELECT count(*) FROM rollup_dirty")[0][0] > 0
    assert wh.catch_up(now_ms=LATER) > 0
    assert wh.query("SELECT count(*) FROM rollup_dirty")[0][0] == 0
    rollup_matches_samples(wh)
    assert_same(report_dict(wh), expected)


def test_collector_rolls_up_in_its_writer(tmp_path):
    from support.collector import running_app

    from appvitals.fleet.collector.app import create_app

    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    wh.insert(fleet_lines())  # old data: every bucket closed
    with running_app(create_app(wh)):
        pass  # the collector rolls up at start
    assert wh.rollup_state()[1] > START_MS // ROLLUP_BUCKET_MS
    assert wh.query("SELECT count(*) FROM sample_rollup")[0][0] > 0
    rollup_matches_samples(wh)


def test_roll_up_takes_bounded_steps_and_skips_empty_stretches(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    b = ROLLUP_BUCKET_MS
    t0 = START_MS
    lines = [SampleLine("s1", t0 + k * 60_000, k + 1, cpu=1.0) for k in range(180)]  # 3 hours, 18 buckets
    lines.append(SampleLine("s1", t0 + 5 * 86_400_000, 999, cpu=2.0))  # then nothing for 5 days
    wh.insert(lines)
    steps = []
    while step := wh.roll_up(now_ms=LATER):
        steps.append(step)
    assert steps and max(steps) <= 6  # at most an hour of buckets per step
    assert len(steps) < 10  # the empty days are skipped, not walked bucket by bucket
    assert wh.rollup_state()[1] == (LATER - 600_000) // b
    rollup_matches_samples(wh)


def test_listing_the_attrs_texts_or_scanning_for_them_gives_the_same_report(tmp_path, monkeypatch):
    # discovery reads every distinct sample attrs text; when there are few, the report lists them
    # in its SQL instead of scanning the samples again -- the answer must not depend on which
    from appvitals.fleet.analysis import facts

    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    wh.insert(fleet_lines("numeric"))
    listed = report_dict(wh)
    monkeypatch.setattr(facts, "MAX_LISTED_TEXTS", 0)
    assert_same(report_dict(wh), listed)
    monkeypatch.setattr(facts, "MAX_ATTR_TEXTS", 3)  # discovery cannot see them all
    assert facts.discover_keys(wh, facts.Window(0, LATER)).sample_texts is None


@pytest.mark.parametrize("case", ["numeric", "pair"])
def test_stage_masks_or_per_stage_grouping_give_the_same_report(tmp_path, monkeypatch, case):
    # split stages count their sessions from per-session bit masks when they fit in 64 bits,
    # else by grouping the phases per (session, stage); combinations are coded as integers
    # with the masks: the answer must not depend on which
    from appvitals.fleet.analysis import facts

    wh = DuckDBWarehouse(tmp_path / "f.duckdb")
    wh.insert(fleet_lines(case))
    wh.catch_up(now_ms=LATER)
    keys = facts.discover_keys(wh, facts.Window(0, LATER), rollup=wh.rollup_state())
    assert facts.mask_stages_fit(keys)
    masked = report_dict(wh)
    with monkeypatch.context() as m:  # more values than the combination codes hold: spelled out
        m.setattr(facts, "CODE_BITS", 1)
        assert_same(report_dict(wh), masked)
    monkeypatch.setattr(facts, "MAX_MASK_STAGES", 0)
    assert not facts.mask_stages_fit(keys)
    assert_same(report_dict(wh), masked)


def test_stage_mask_bound_counts_values_and_odd_texts():
    from appvitals.fleet.analysis import facts

    def fits(texts):
        return facts.mask_stages_fit(facts.Keys(sample=["stage"], sample_texts=texts))

    texts = [f'{{"n":{i},"stage":"s{i % 3}"}}' for i in range(200)]
    assert fits(texts)  # 3 stages, however many texts
    assert not fits([f'{{"stage":"s{i}"}}' for i in range(64)])
    # texts SQL might read otherwise (not plain sorted JSON) each count as a stage of their own
    odd = [f'{{"stage":"a","n":{i}}}' for i in range(64)]
    assert not fits(odd)
    assert not facts.mask_stages_fit(facts.Keys(sample=["stage"], sample_texts=None))
