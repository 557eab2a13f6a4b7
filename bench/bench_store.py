"""Store speed: full flush of 100,000 series, incremental flush of 1,000 changed among them,
and restore of 100,000 at start, in plain SQLite and in SQLCipher.

Targets (issue #3): 0.5 s, 0.05 s and 0.5 s. Prints JSON; writes bench/results/store.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import appvitals
from appvitals.stats.store import HistoryPolicy

SERIES = int(os.environ.get("BENCH_SERIES", "100000"))
CHANGED = 1000


def _registry():
    reg = appvitals.Registry(max_series=SERIES * 2)
    c = reg.counter("messages", "Messages", labels=("user", "server"))
    return reg, c


def run(key: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        no_history = HistoryPolicy(enabled=False)  # history points are measured separately below
        reg, c = _registry()
        reg.attach(appvitals.Store(db, key=key, history=no_history), interval=300)
        children = [c.labels(user=f"user-{i}", server=f"smp{i % 97}.example") for i in range(SERIES)]
        for ch in children:
            ch.inc()
        t = time.perf_counter()
        rows = reg._persister.flush()
        full = time.perf_counter() - t
        assert rows == SERIES
        for ch in children[:: SERIES // CHANGED]:
            ch.inc()
        t = time.perf_counter()
        rows = reg._persister.flush()
        incremental = time.perf_counter() - t
        assert rows == CHANGED, rows
        t = time.perf_counter()
        reg._persister.flush()
        nothing = time.perf_counter() - t
        reg.detach()

        t = time.perf_counter()
        reg2, c2 = _registry()
        reg2.attach(appvitals.Store(db, key=key, history=no_history), interval=300)
        restore = time.perf_counter() - t
        assert reg2.snapshot(scope="past").value("messages") == SERIES + CHANGED
        t = time.perf_counter()
        reg2._store.write_flush(reg2._persister.run_id, time.time(), [], [], reg2.snapshot(scope="all"))
        history_point = time.perf_counter() - t
        reg2.detach()
        size = os.path.getsize(db)
    return {"full_flush_s": round(full, 4), "incremental_flush_s": round(incremental, 4),
            "unchanged_flush_s": round(nothing, 4), "restore_s": round(restore, 4),
            "history_point_s": round(history_point, 4), "file_bytes": size}


def main() -> dict:
    out = {"series": SERIES, "changed": CHANGED, "python": sys.version.split()[0],
           "sqlite": run(None), "sqlcipher": run("bench-key")}
    targets = {"full_flush_s": 0.5, "incremental_flush_s": 0.05, "restore_s": 0.5}
    out["targets_met"] = {f"{mode}.{k}": out[mode][k] <= v for mode in ("sqlite", "sqlcipher") for k, v in targets.items()}
    return out


if __name__ == "__main__":
    result = main()
    text = json.dumps(result, indent=2)
    print(text)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "store.json"), "w") as fh:
        fh.write(text + "\n")
