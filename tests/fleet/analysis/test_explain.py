"""The pure explanation engine (fleet/explain.py) on hand-built counts: no database, no server."""

from __future__ import annotations

import math

import pytest

from appvitals.fleet.analysis.explain import (
    Settings,
    chi2_p,
    explain,
    matches,
    risk_ratio,
    satisfies,
    with_thresholds,
)
from appvitals.fleet.analysis.model import Counts, interval_bounds, interval_labels, nice_edges


def C(sessions, high_sessions, units=None, high_units=None):
    """Counts where one session is one unit unless told otherwise."""
    return Counts(sessions, high_sessions, sessions if units is None else units,
                  high_sessions if high_units is None else high_units)


def combo(**attrs):
    return tuple(sorted(attrs.items()))


def test_chi2_p_matches_known_values():
    # 2x2 table with chi2 = 3.841 has p = 0.05 (1 degree of freedom)
    a, b, c, d = 30, 70, 17.35, 82.65
    n = a + b + c + d
    chi2 = n * (a * d - b * c) ** 2 / ((a + b) * (c + d) * (a + c) * (b + d))
    assert chi2_p(a, b, c, d) == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    assert chi2_p(50, 50, 50, 50) == pytest.approx(1.0)
    assert chi2_p(90, 10, 10, 90) < 1e-20
    assert chi2_p(0, 0, 5, 5) == 1.0  # degenerate table


def test_risk_ratio_is_smoothed_and_finite():
    assert risk_ratio(10, 10, 0, 100) == pytest.approx((10.5 / 11) / (0.5 / 101))
    assert risk_ratio(5, 50, 50, 500) == pytest.approx(1.0, rel=0.1)


def _fleet(total_sessions=1000, base_high=50):
    """Total and per-value counts of a fleet with app_version and os, nothing planted."""
    counts = {
        combo(app_version="1.0"): C(500, 25),
        combo(app_version="2.0"): C(500, 25),
        combo(os="win"): C(600, 30),
        combo(os="mac"): C(400, 20),
        combo(app_version="1.0", os="win"): C(300, 15),
        combo(app_version="1.0", os="mac"): C(200, 10),
        combo(app_version="2.0", os="win"): C(300, 15),
        combo(app_version="2.0", os="mac"): C(200, 10),
    }
    return counts, C(total_sessions, base_high)


def test_nothing_planted_nothing_explained():
    counts, total = _fleet()
    assert explain(counts, total).explanations == []


def test_a_planted_single_value_is_the_top_explanation_and_its_refinements_are_pruned():
    counts, _ = _fleet()
    counts[combo(app_version="2.0")] = C(500, 450)
    counts[combo(app_version="2.0", os="win")] = C(300, 271)  # same rate as its parent: adds nothing
    counts[combo(app_version="2.0", os="mac")] = C(200, 179)
    counts[combo(os="win")] = C(600, 286)
    counts[combo(os="mac")] = C(400, 189)
    total = C(1000, 475)
    result = explain(counts, total)
    assert [e.attrs for e in result.explanations] == [{"app_version": "2.0"}]
    top = result.explanations[0]
    assert top.sessions == 500 and top.high_sessions == 450 and top.high_share == 0.9
    assert top.risk_ratio > 5 and top.p_value < 1e-10
    assert top.coverage == pytest.approx(450 / 475, abs=1e-3)


def test_a_pair_harmless_alone_beats_its_halves_and_the_halves_are_explained_away():
    counts, _ = _fleet()
    counts[combo(app_version="2.0", os="mac")] = C(200, 180)
    counts[combo(app_version="2.0")] = C(500, 195)
    counts[combo(os="mac")] = C(400, 190)
    total = C(1000, 230)
    result = explain(counts, total)
    assert result.explanations[0].attrs == {"app_version": "2.0", "os": "mac"}
    # the single values are high only because of the pair: not in the list, kept as tree nodes
    assert all(len(e.attrs) == 2 for e in result.explanations)
    assert {"app_version": "2.0"} in [e.attrs for e in result.tree_nodes]


def test_support_threshold_drops_tiny_combinations():
    counts, _ = _fleet()
    counts[combo(app_version="3.0")] = C(2, 2)
    total = C(1002, 52)
    assert explain(counts, total).explanations == []  # 2 high sessions < min_support_sessions
    counts[combo(app_version="3.0")] = C(20, 20)
    total = C(1020, 70)
    result = explain(counts, total, Settings(min_support=0.1))
    assert [e.attrs for e in result.explanations] == [{"app_version": "3.0"}]


def test_aliases_with_identical_counts_are_folded():
    counts, _ = _fleet()
    counts[combo(os="linux")] = C(40, 36)
    counts[combo(os_version="ubuntu")] = C(40, 36)
    counts[combo(os="linux", os_version="ubuntu")] = C(40, 36)  # the very same sessions
    total = C(1040, 86)
    result = explain(counts, total)
    assert len(result.explanations) == 1
    e = result.explanations[0]
    assert e.attrs == {"os": "linux"} and e.same_as == [{"os_version": "ubuntu"}]


def test_numeric_intervals_become_thresholds():
    edges = [10.0, 20.0, 40.0]
    labels = interval_labels(edges)
    assert labels == ["<10", "[10,20)", "[20,40)", ">=40"]
    counts = {
        (("n", "<10"),): C(100, 5),
        (("n", "[10,20)"),): C(100, 5),
        (("n", "[20,40)"),): C(100, 6),
        (("n", ">=40"),): C(100, 90),
        (("n", ">=40"), ("stage", "rx")): C(50, 50),
    }
    out = with_thresholds(counts, {"n": edges})
    assert out[(("n", ">=40"),)].sessions == 100
    assert out[(("n", ">=20"),)].high_sessions == 96
    assert out[(("n", "<20"),)].sessions == 200
    assert out[(("n", ">=10"),)].units == 300
    assert out[(("n", ">=40"), ("stage", "rx"))].sessions == 50
    assert not any(v.startswith("[") for c in out for _, v in c)
    total = C(400, 106)
    result = explain(counts, total, numeric={"n": edges})
    assert result.explanations[0].attrs["n"] == ">=40"
    # only the best threshold of one shape is listed
    shapes = [tuple(sorted(e.attrs)) for e in result.explanations]
    assert len(shapes) == len(set(shapes))


def test_nice_edges_round_to_readable_numbers():
    assert nice_edges([11.5, 21.0, 37.5, 54.0, 64.0]) == [12.0, 20.0, 40.0, 55.0, 65.0]
    assert nice_edges([0.123, 1234.0, None, float("nan")]) == [0.12, 1200.0]
    assert interval_bounds([10.0, 20.0])["[10,20)"] == (10.0, 20.0)


def test_satisfies_and_matches():
    bounds = interval_bounds([20.0, 40.0])
    assert satisfies(">=40", ">=40", bounds)
    assert satisfies("[20,40)", ">=20", bounds) and not satisfies("[20,40)", ">=40", bounds)
    assert satisfies("<20", "<20", bounds) and satisfies("[20,40)", "<40", bounds)
    assert satisfies("7.0.0", "7.0.0", None) and not satisfies("7.0.0", "6.0.0", None)
    phases = [((("stage", "login"),), True), ((("stage", "idle"),), False)]
    assert matches({"app_version": "7.0.0", "stage": "login"}, {"app_version": "7.0.0"}, phases, {})
    assert not matches({"app_version": "7.0.0", "stage": "idle"}, {"app_version": "7.0.0"}, phases, {})
    assert not matches({"app_version": "6.0.0"}, {"app_version": "7.0.0"}, phases, {})
    numeric_phases = [((("stage", "rx"), ("n", "[20,40)")), True)]
    assert matches({"n": ">=20"}, {}, numeric_phases, {"n": [20.0, 40.0]})
    assert not matches({"n": ">=40"}, {}, numeric_phases, {"n": [20.0, 40.0]})


def test_empty_fleet_explains_nothing():
    result = explain({}, Counts())
    assert result.explanations == [] and result.candidates == 0


def test_candidate_edges_cut_inside_a_gap():
    from appvitals.fleet.analysis.facts import candidate_edges

    # 5 %-quantiles of 80 % names of 6-32 characters and 20 % of 40-90
    low = [6 + 26 * i / 16 for i in range(1, 17)]
    high = [40 + 50 * i / 4 for i in range(0, 3)]
    edges = candidate_edges(low + high)
    assert any(32 < e <= 40 for e in edges), edges
    assert len(edges) <= 13 and edges == sorted(edges)
