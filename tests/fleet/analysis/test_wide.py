"""Wide fleets: many attrs of many values must not make the search explode."""

from __future__ import annotations

import msgspec
from support.fleets import wide_fleet_lines

from appvitals.fleet.analysis import facts
from appvitals.fleet.analysis.model import Keys, NumericKey
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse


def _keys(cards, sessions):
    return Keys(session={f"a{i}": [f"v{j}" for j in range(c)] for i, c in enumerate(cards)},
                sample=["stage"], event_numeric=[NumericKey("kb", [float(e) for e in range(12)])],
                sessions_seen=sessions)


def test_search_order_drops_to_pairs_only_on_wide_fleets():
    wide = _keys((4, 6, 8, 10, 12, 16, 20, 24, 32, 40), 20_000)
    narrow = _keys((8, 4, 5, 4, 3, 5), 100_000)
    assert facts.search_order(wide) == 2
    assert facts.search_order(narrow) == 3
    assert facts.search_order(narrow, wanted=2) == 2
    # the combinations counted follow the order
    assert all(len(spec) <= 2 for spec in facts._part_specs(facts._columns(msgspec.structs.replace(wide, max_order=2)))["S"])


def test_wide_fleet_report_finds_both_causes_and_says_what_it_left_out(tmp_path):
    wh = DuckDBWarehouse(str(tmp_path / "wide.duckdb"), memory_limit="256MB")
    try:
        wh.insert(wide_fleet_lines(3000, 4))
        r = build_report(wh, since="6h", threshold=30)
    finally:
        wh.close()
    assert r.settings.max_order == 3 and r.notes and "more than 2 values" in r.notes[0]
    top = [e.attrs for e in r.explanations[:2]]
    assert {"a3": "v3", "stage": "index"} in top and {"a1": "v2", "a6": "v7"} in top, top
