"""Current vs previously used keys (the SimpleX servers summary): per-series last-update times,
persisted, and --current / --previous from Python, the CLI and HTTP, with --where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

import appvitals
from appvitals import Registry, Store
from appvitals.stats import query as Q

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VITALS_STORE_KEY", "VITALS_TOKEN")}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _servers(snap: appvitals.Snapshot, name: str = "msgs_sent") -> list[tuple[str, str]]:
    m = snap.metric(name)
    return sorted((s.labels["user"], s.labels["server"]) for s in m.series) if m else []


def _app(db: Path) -> tuple[Registry, object]:
    reg = Registry()
    c = reg.counter("msgs_sent", "Messages sent", labels=("user", "server"))
    reg.attach(Store(db), interval=60)
    return reg, c


def test_current_and_previous_servers(tmp_path):
    db = tmp_path / "chat.db"
    reg, c = _app(db)
    c.labels(user="1", server="smp1").inc(3)
    c.labels(user="1", server="smp2").inc()
    c.labels(user="2", server="smp9").inc()
    reg.detach()
    run1_end = time.time()
    reg, c = _app(db)
    c.labels(user="1", server="smp2").inc()
    c.labels(user="1", server="smp3").inc(2)

    current = Q.read_registry(reg, Q.build(keys="current"))
    previous = Q.read_registry(reg, Q.build(keys="previous"))
    assert _servers(current) == [("1", "smp2"), ("1", "smp3")]
    assert _servers(previous) == [("1", "smp1"), ("2", "smp9")]
    assert _servers(Q.read_registry(reg, Q.build(keys="previous", where=["user=1"]))) == [("1", "smp1")]
    # the counts are all-time counts of those keys
    assert current.value("msgs_sent", server="smp2") == 2

    # every series knows its last update, and it is persisted
    reg.flush()
    with Store.open_readonly(db) as ro:
        snap = ro.snapshot()
    when = {s.labels["server"]: s.updated_at.timestamp() for s in snap.metric("msgs_sent").series}
    assert when["smp1"] <= run1_end < when["smp3"]

    # HTTP: the same query parameters
    with appvitals.serve(reg, port=0) as handle:
        for params, want in (({"keys": "current"}, ["smp2", "smp3"]), ({"previous": ""}, ["smp1", "smp9"]),
                             ({"previous": "", "where": "user=1"}, ["smp1"])):
            doc = httpx.get(handle.url + "/v1/snapshot", params=params, timeout=10).json()
            m = next(m for m in doc["metrics"] if m["name"] == "msgs_sent")
            assert sorted(s["labels"]["server"] for s in m["series"]) == want, params
        bad = httpx.get(handle.url + "/v1/snapshot", params={"keys": "recent"}, timeout=10)
        assert bad.status_code == 400
    reg.flush()

    # the CLI, on the store of the running app (current = this run's series)
    for flag, want in (("--current", ["smp2", "smp3"]), ("--previous", ["smp1", "smp9"])):
        out = subprocess.run([sys.executable, "-m", "appvitals.cli", "metrics", "--db", str(db), flag, "--json"],
                             capture_output=True, text=True, env=_env(), timeout=60)
        assert out.returncode == 0, out.stderr
        m = next(m for m in json.loads(out.stdout)["metrics"] if m["name"] == "msgs_sent")
        assert sorted(s["labels"]["server"] for s in m["series"]) == want
    out = subprocess.run([sys.executable, "-m", "appvitals.cli", "metrics", "--db", str(db), "--previous",
                          "--where", "user=1"], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0 and "smp1" in out.stdout and "smp2" not in out.stdout, out.stdout
    reg.detach()


def test_updated_at_survives_the_fold_of_runs(tmp_path):
    db = tmp_path / "chat.db"
    reg, c = _app(db)
    g = reg.gauge("last_seen", labels=("server",))
    c.labels(user="1", server="smp1").inc()
    g.labels(server="smp1").set(5)
    reg.detach()
    first = Store.open_readonly(db)
    before = {m.name: m.series[0].updated_at for m in first.snapshot().metrics}
    first.close()
    assert all(before.values())
    reg, c = _app(db)  # attaching folds the earlier run into the past
    snap = reg.snapshot(scope="past")
    assert {m.name: m.series[0].updated_at for m in snap.metrics if m.series} == before
    reg.detach()
