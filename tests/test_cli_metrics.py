"""`vitals metrics` as a user runs it: a subprocess against a served app (--url) or a store
file (--db), --json, --watch in a real terminal (tmux), bad input, --since across restarts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, require

import appvitals

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VITALS_STORE_KEY", "VITALS_TOKEN", "NO_COLOR")}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def vitals(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `vitals` (as python -m appvitals.cli) and capture its output."""
    return subprocess.run([sys.executable, "-m", "appvitals.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout, cwd=ROOT)


def _one_clear_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def app():
    reg = appvitals.Registry()
    c = reg.counter("changes_received", "Changes received", labels=("peer", "model"), group="operations")
    c.labels(peer="A", model="entry").inc(1200)
    c.labels(peer="B", model="tag").inc(34)
    reg.counter("bytes_sent", "Sent", unit="bytes", group="data").inc(45_200_000)
    reg.histogram("apply_latency", "Apply latency", unit="ms", group="performance").observe(12)
    s = reg.state("sync_state", "Sync state", states=("Uninitialized", "Backfilling", "Ready"), group="state")
    s.set("Backfilling", reason="peer connected")
    reg.events("sync_errors", "Sync errors", group="errors").record(type="network", message="timeout", peer="B")
    reg.gauge("retry_queue_depth", "Retry queue").set(0)
    with appvitals.serve(reg, port=0) as handle:
        yield reg, handle


def test_url_view_reads_like_seed_003(app):
    _, h = app
    proc = vitals("metrics", "--url", h.url, "--title", "Sync Metrics")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # not a terminal: plain text
    assert out.startswith("Sync Metrics (all sessions)\n━")
    for line in ("State\n", "  Sync state\n", "    Current: Backfilling\n", "Operations\n",
                 "  Changes received: 1,234\n", "  ├─ A: 1,200 (97%)\n", "  Sent: 45.2 MB\n",
                 "network: 1 (100%) — timeout", "network: timeout (peer=B)", "\nOther\n  Retry queue: 0\n"):
        assert line in out, out
    assert out.index("State") < out.index("Operations") < out.index("Performance") < out.index("Errors")


def test_url_filters_and_json(app):
    _, h = app
    proc = vitals("metrics", "--url", h.url, "--json", "--where", "peer=B", "--metric", "changes_*")
    assert proc.returncode == 0 and proc.stderr == ""
    doc = json.loads(proc.stdout)  # only JSON on stdout
    assert [m["name"] for m in doc["metrics"]] == ["changes_received"]
    assert doc["metrics"][0]["series"] == [{"labels": {"peer": "B", "model": "tag"}, "value": 34.0}]
    proc = vitals("metrics", "--url", h.url, "--group", "errors", "--group", "state", "--scope", "session")
    assert proc.returncode == 0
    assert "(this session)" in proc.stdout and "Operations" not in proc.stdout
    assert proc.stdout.index("Errors") < proc.stdout.index("State")  # --group order is the section order


def test_bad_input_gives_one_line_and_exit_code(app, tmp_path):
    _, h = app
    _one_clear_line(vitals("metrics", "--url", h.url, "--since", "next tuesday-ish"), 2, "cannot read time")
    _one_clear_line(vitals("metrics", "--url", h.url, "--where", "colour=red"), 2,
                    "unknown where key 'colour'; known keys: ")
    proc = vitals("metrics", "--url", h.url, "--where", "colour=red")
    assert "model, peer" in proc.stderr
    _one_clear_line(vitals("metrics", "--url", h.url, "--where", "peer"), 2, "expected key=value")
    _one_clear_line(vitals("metrics", "--url", h.url, "--scope", "yesterday"), 2, "--scope")
    _one_clear_line(vitals("metrics"), 2, "give --db FILE")
    _one_clear_line(vitals("metrics", "--db", "x.db", "--url", h.url), 2, "not both")
    _one_clear_line(vitals("metrics", "--db", str(tmp_path / "missing.db")), 2, "no store file")
    _one_clear_line(vitals("metrics", "--url", f"http://127.0.0.1:{free_port()}"), 1, "cannot reach")
    _one_clear_line(vitals("metrics", "--url", h.url, "--since", "1 hour ago"), 2, "attached to a store")


def test_token(tmp_path):
    reg = appvitals.Registry()
    reg.counter("hits", "Hits").inc(3)
    with appvitals.serve(reg, port=0, token="t0k") as h:
        _one_clear_line(vitals("metrics", "--url", h.url), 1, "token")
        proc = vitals("metrics", "--url", h.url, env=_env(VITALS_TOKEN="t0k"))
        assert proc.returncode == 0 and "Hits: 3" in proc.stdout


# ---------------------------------------------------------------- --watch in a real terminal


def _tmux(sock: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=20)


def test_watch_refreshes_in_place_and_exits_cleanly_on_ctrl_c(tmp_path):
    require("tmux", shutil.which("tmux") is not None)
    reg = appvitals.Registry()
    ticks = reg.counter("ticks", "Ticks", group="operations")
    reg.state("sync_state", "Sync state", states=("Uninitialized", "Ready"), group="state")
    stop = threading.Event()

    def tick():
        while not stop.wait(0.1):
            ticks.inc(7)

    threading.Thread(target=tick, daemon=True).start()
    sock = f"vitals-test-{os.getpid()}"
    done = tmp_path / "exit"
    with appvitals.serve(reg, port=0) as h:
        cmd = (f"{sys.executable} -m appvitals.cli metrics --url {h.url} --watch 1 2>{tmp_path / 'err'}; "
               f"echo $? > {done}")
        env_args = ["-e", f"PYTHONPATH={SRC}"]
        try:
            started = _tmux(sock, "new-session", "-d", "-x", "120", "-y", "50", *env_args, "bash", "-c", cmd)
            if started.returncode != 0 and "-e" in started.stderr:  # old tmux: no -e; the env is inherited
                started = _tmux(sock, "new-session", "-d", "-x", "120", "-y", "50", "bash", "-c", cmd)
            assert started.returncode == 0, started.stderr

            def screen() -> str:
                return _tmux(sock, "capture-pane", "-p", "-t", "0").stdout

            def ticks_shown(text: str) -> str | None:
                for line in text.splitlines():
                    if line.strip().startswith("Ticks: "):
                        return line.strip()
                return None

            deadline = time.monotonic() + 30
            first = None
            while time.monotonic() < deadline and first is None:
                time.sleep(0.3)
                first = ticks_shown(screen())
            assert first is not None, screen()
            second = first
            while time.monotonic() < deadline and second == first:
                time.sleep(0.5)
                second = ticks_shown(screen())
            assert second != first, screen()
            shown = screen()
            assert shown.count("Metrics (all sessions)") == 1  # redrawn in place, not appended
            assert "Refreshing every 1s · Ctrl-C to quit" in shown
            assert "\x1b" not in shown
            _tmux(sock, "send-keys", "-t", "0", "C-c")
            while time.monotonic() < deadline and not (done.exists() and done.read_text().strip()):
                time.sleep(0.2)
            assert done.read_text().strip() == "0"
            err = (tmp_path / "err").read_text()
            assert "Traceback" not in err and "KeyboardInterrupt" not in err
        finally:
            stop.set()
            _tmux(sock, "kill-server")
