"""How often the report finds planted causes, and how often it explains a fleet with none.

Recall: the shipped demo scenario (four planted problems) simulated over many seeds on a
small fleet (30 clients, 60 minutes) and the default one (100 clients, 120 minutes); a
planted problem counts as found when an explanation names it (`vitals demo`'s rule).
False explanations: a fleet whose only load is random background load unrelated to any
attribute; the share of seeds whose report still lists an explanation (the target is at
most 5 %).

    python bench/bench_report_recall.py [--seeds 20] [--null-seeds 40] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from appvitals.cli.demo import planted_findings
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.sim.scenario import load_scenario, parse_scenario
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# the report tests' base fleet: its only load is random background load on 8 % of sessions
from support.fleets import BASE, PLANTED, START_MS  # noqa: E402

NULL_SCENARIO = BASE + PLANTED["none"]

FDR: float | None = None


def report_of(scenario, clients: int, minutes: float, seed: int):
    wh = DuckDBWarehouse(":memory:")
    try:
        wh.insert(list(generate_lines(scenario, clients=clients, minutes=minutes, seed=seed, start_ms=START_MS)))
        now = dt.datetime.fromtimestamp(START_MS / 1000 + minutes * 60, dt.timezone.utc)
        return build_report(wh, since=f"{int(minutes)}m", threshold=30, now=now, fdr=FDR)
    finally:
        wh.close()


def recall(clients: int, minutes: float, seeds: range) -> dict:
    scenario = load_scenario(None)
    found: dict[str, int] = {}
    for seed in seeds:
        r = report_of(scenario, clients, minutes, seed)
        for name, rank in planted_findings(scenario, r.explanations):
            found[name] = found.get(name, 0) + (rank is not None)
    n = len(seeds)
    return {"clients": clients, "minutes": minutes, "seeds": n,
            "per_problem": {k: round(v / n, 3) for k, v in found.items()},
            "recall": round(sum(found.values()) / (n * len(found)), 3)}


def false_explanations(clients: int, minutes: float, seeds: range) -> dict:
    scenario = parse_scenario(NULL_SCENARIO, "no cause")
    hit = sum(bool(report_of(scenario, clients, minutes, seed).explanations) for seed in seeds)
    return {"clients": clients, "minutes": minutes, "seeds": len(seeds), "share_explained": round(hit / len(seeds), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--null-seeds", type=int, default=40)
    ap.add_argument("--fdr", type=float, default=None, help="false discovery rate (default: the report's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    global FDR
    FDR = a.fdr
    t0 = time.perf_counter()
    out = {
        "recall_small": recall(30, 60, range(1, a.seeds + 1)),
        "recall_default": recall(100, 120, range(1, a.seeds + 1)),
        "no_cause_small": false_explanations(30, 60, range(1, a.null_seeds + 1)),
        "no_cause_default": false_explanations(100, 120, range(1, a.null_seeds + 1)),
    }
    out["fdr"] = a.fdr
    out["took_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out) if a.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
