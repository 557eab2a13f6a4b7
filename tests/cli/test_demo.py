"""`vitals demo`, the README's first command: collector + real agents + report, ending by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from support.collector import SRC


def test_demo_finds_every_planted_problem_and_ends_by_itself(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="120")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "appvitals", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "collector on http://127.0.0.1:" in out
    assert "What makes it high" in out and "Dashboard:" in out
    assert "app_version = 7.0.0" in out
    # the shipped scenario plants four problems; the report ranks each of them
    assert out.count("found as #") == 4 and "not found" not in out, out[-1500:]
    assert (tmp_path / "demo" / "fleet.duckdb").exists()
    assert took < 120


def test_demo_bad_usage_is_one_line():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "appvitals", "demo", "--minutes", "-5"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "minutes" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
