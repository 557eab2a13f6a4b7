"""What makes an explanation trustworthy: real aliases only, discoveries held at a false
discovery rate that still finds problems in small fleets."""

from __future__ import annotations

import datetime as dt

import pytest

from appvitals.cli.demo import planted_findings
from appvitals.fleet.analysis.explain import Settings, bh_cutoff, explain
from appvitals.fleet.analysis.model import Counts
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.sim.scenario import load_scenario
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

START_MS = 1_764_000_000_000


def C(sessions, high):
    return Counts(sessions, high, sessions, high)


def combo(**attrs):
    return tuple(sorted(attrs.items()))


def test_disjoint_groups_with_equal_counts_are_not_folded():
    """m1=low and m1=high (and s0, s1) hold the same counts but not the same sessions."""
    counts = {
        combo(m1="low"): C(100, 60), combo(m1="high"): C(100, 60), combo(m1="mid"): C(800, 40),
        combo(s="s0"): C(100, 60), combo(s="s1"): C(100, 60), combo(s="s2"): C(800, 40),
        combo(m1="low", s="s0"): C(100, 60), combo(m1="high", s="s1"): C(100, 60),
        combo(m1="low", s="s1"): C(0, 0), combo(m1="high", s="s0"): C(0, 0),
    }
    result = explain(counts, C(1000, 160), Settings())
    listed = {tuple(sorted(e.attrs.items())): e for e in result.explanations}
    # each of the two groups stands on its own; m1=low and s=s0 really are the same sessions
    assert combo(m1="high") in listed or combo(s="s1") in listed
    assert combo(m1="low") in listed or combo(s="s0") in listed
    for e in result.explanations:
        for other in e.same_as:
            union = tuple(sorted({**e.attrs, **other}.items()))
            assert len({k for k, _ in union}) == len(union), (e.attrs, other)
            assert counts[union].sessions == e.sessions, (e.attrs, other)


def test_benjamini_hochberg_cutoff():
    assert bh_cutoff([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205], 0.05) == 0.008
    assert bh_cutoff([0.5, 0.9], 0.05) == -1.0
    assert bh_cutoff([0.01, 0.02, 0.03, 0.04], 0.05) == 0.04


def _small_fleet_report(seed: int):
    wh = DuckDBWarehouse(":memory:")
    try:
        wh.insert(list(generate_lines(None, clients=30, minutes=60, seed=seed, start_ms=START_MS)))
        now = dt.datetime.fromtimestamp(START_MS / 1000 + 3600, dt.timezone.utc)
        return build_report(wh, since="60m", threshold=30, now=now)
    finally:
        wh.close()


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_small_fleet_keeps_the_login_problem(seed):
    """30 clients for an hour: 7.0.0 at login is high nearly always; the report must say so."""
    scenario = load_scenario(None)
    found = dict(planted_findings(scenario, _small_fleet_report(seed).explanations))
    assert found["version 7.0.0 at login"] is not None, found


def test_planted_limit_is_reported_where_the_data_changes():
    """File names of 5-90 characters, receiving hot from 42 on: the report says >=42, not a
    rounded quantile edge such as >=50 or >=40."""
    from support.fleets import BASE, MINUTES

    from appvitals.fleet.sim.scenario import parse_scenario

    text = BASE.replace("file_name_length = { min = 5, max = 70 }", "file_name_length = { min = 5, max = 90 }")
    text += '[[problems]]\nname = "long names"\nwhen = { stage = "receiving", file_name_length = ">=42" }\ncpu_add = 55.0\n'
    wh = DuckDBWarehouse(":memory:")
    try:
        wh.insert(list(generate_lines(parse_scenario(text, "limit"), clients=300, minutes=MINUTES, seed=4,
                                      start_ms=START_MS)))
        now = dt.datetime.fromtimestamp(START_MS / 1000 + MINUTES * 60, dt.timezone.utc)
        r = build_report(wh, since=f"{MINUTES}m", threshold=30, now=now)
    finally:
        wh.close()
    top = r.explanations[0].attrs
    assert top.get("file_name_length") == ">=42", top
