"""The SimpleX-style examples end to end: the client's current and previous servers and distinct
active queues; the server's distinct counts, stats in its own database and its stats log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VITALS_STORE_KEY", "NO_COLOR")}
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out


def _metric(doc: dict, name: str) -> dict:
    return next(m for m in doc["metrics"] if m["name"] == name)


def test_messenger_current_and_previous_servers(tmp_path):
    db = str(tmp_path / "chat-stats.db")
    common = ("examples/messenger.py", "--db", db, "--duration", "1.5", "--interval", "1", "--tick", "0.005")
    _run(*common, "--seed", "1", "--smp-servers", "smp1.simplex.im,smp2.simplex.im")
    _run(*common, "--seed", "2", "--smp-servers", "smp.example.org")
    doc = json.loads(_run("-m", "appvitals.cli", "metrics", "--db", db, "--previous", "--where", "user=1",
                          "--metric", "smp_subscriptions", "--json").stdout)
    assert {s["labels"]["server"] for s in _metric(doc, "smp_subscriptions")["series"]} == {
        "smp1.simplex.im", "smp2.simplex.im"}
    doc = json.loads(_run("-m", "appvitals.cli", "metrics", "--db", db, "--current", "--metric",
                          "smp_subscriptions", "--json").stdout)
    assert {s["labels"]["server"] for s in _metric(doc, "smp_subscriptions")["series"]} == {"smp.example.org"}
    doc = json.loads(_run("-m", "appvitals.cli", "metrics", "--db", db, "--json").stdout)
    active = _metric(doc, "smp_active_queues")["series"]
    assert active and all(0 < s["day"] <= 400 and s["day"] == s["all"] for s in active)


def test_smp_server_distinct_counts_own_database_and_log(tmp_path):
    db = str(tmp_path / "server.db")
    _run("examples/smp_server.py", "--db", db, "--duration", "1.5", "--interval", "1", "--seed", "4",
         "--log", str(tmp_path / "stats.csv"))
    doc = json.loads(_run("-m", "appvitals.cli", "metrics", "--db", db, "--table-prefix", "appvitals_",
                          "--json").stdout)
    created = _metric(doc, "smp_queues_created")["series"][0]["value"]
    sent = {s["labels"]["activity"]: s for s in _metric(doc, "smp_active_queues")["series"]}["sent"]
    assert 0 < sent["day"] <= created + 1
    out = _run("-m", "appvitals.cli", "log", "--db", db, "--table-prefix", "appvitals_", "--every", "hour")
    assert out.stdout.startswith("period,start,end")
