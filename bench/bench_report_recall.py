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
import time

from appvitals.cli.demo import planted_findings
from appvitals.fleet.analysis.report import build_report
from appvitals.fleet.sim.scenario import load_scenario, parse_scenario
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

START_MS = 1_764_000_000_000

NULL_SCENARIO = """
name = "no cause"
sample_every = 10.0
session_minutes = [8.0, 20.0]
pause_minutes = [0.0, 2.0]
versions = [{ version = "6.0.0", weight = 5 }, { version = "6.1.0", weight = 3 }, { version = "7.0.0", weight = 2 }]
os = [{ name = "windows", version = "10", weight = 50 }, { name = "macos", version = "14.5", weight = 30 },
      { name = "linux", version = "ubuntu-22.04", weight = 18.5 }, { name = "freebsd", version = "14.1", weight = 1.5 }]

[[session_attrs]]
name = "network"
values = [{ value = "wifi", weight = 5 }, { value = "ethernet", weight = 3 }, { value = "vpn", weight = 2 }]
[[session_attrs]]
name = "sync_mode"
values = [{ value = "on_demand", weight = 2 }, { value = "continuous", weight = 1 }]

[[stages]]
name = "login"
once = true
duration = [10.0, 30.0]
cpu = { mean = 8.0, sd = 3.0 }
[[stages]]
name = "idle"
weight = 3
duration = [30.0, 120.0]
cpu = { mean = 3.0, sd = 2.0 }
[[stages]]
name = "indexing"
weight = 2
duration = [30.0, 120.0]
cpu = { mean = 14.0, sd = 5.0 }
[[stages]]
name = "receiving"
weight = 2
duration = [20.0, 60.0]
cpu = { mean = 10.0, sd = 4.0 }
event = "file_received"
event_attrs = { file_name_length = { min = 5, max = 70 } }

[[problems]]
name = "background"
when = { os = ["windows", "macos", "linux", "freebsd"] }
cpu_add = 30.0
chance = 0.08
"""


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
