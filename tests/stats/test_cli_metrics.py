"""`vitals metrics` as a user runs it: a subprocess against a served app (--url) or a store
file (--db), --json, --watch in a real terminal (tmux), bad input, --since across restarts."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.services import free_port, require

import appvitals

ROOT = Path(__file__).resolve().parents[2]
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
    assert out.startswith("Sync Metrics\n━")  # the title exactly; the scope on the header line
    assert out.splitlines()[2].startswith("All sessions · taken at ")
    for line in ("State\n", "  Sync state\n", "    Current: Backfilling\n", "Operations\n",
                 "  Changes received: 1,234\n", "  ├─ A: 1,200 (97%)\n", "  Sent: 45.2 MB\n",
                 "network: 1 (100%) — timeout", "network: timeout (peer=B)", "\nOther\n  Retry queue: 0\n"):
        assert line in out, out
    # sections in the order the app declared its groups (ungrouped last)
    assert (out.index("\nOperations\n") < out.index("\nData\n") < out.index("\nPerformance\n")
            < out.index("\nState\n") < out.index("\nErrors\n") < out.index("\nOther\n"))


def test_url_filters_and_json(app):
    _, h = app
    proc = vitals("metrics", "--url", h.url, "--json", "--where", "peer=B", "--metric", "changes_*")
    assert proc.returncode == 0 and proc.stderr == ""
    doc = json.loads(proc.stdout)  # only JSON on stdout
    assert [m["name"] for m in doc["metrics"]] == ["changes_received"]
    assert doc["metrics"][0]["series"] == [{"labels": {"peer": "B", "model": "tag"}, "value": 34.0}]
    proc = vitals("metrics", "--url", h.url, "--group", "errors", "--group", "state", "--scope", "session")
    assert proc.returncode == 0
    assert "\nThis session · taken at " in proc.stdout and "Operations" not in proc.stdout
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


@pytest.mark.parametrize("no_color", ["", "1"])
def test_watch_refreshes_in_place_and_exits_cleanly_on_ctrl_c(tmp_path, no_color):
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
        env_args = ["-e", f"PYTHONPATH={SRC}", "-e", f"NO_COLOR={no_color}"]
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
            assert shown.count("All sessions · taken at") == 1  # redrawn in place, not appended
            assert "Refreshing every 1s · Ctrl-C to quit" in shown
            colours = _tmux(sock, "capture-pane", "-p", "-e", "-t", "0").stdout
            if no_color:
                assert "\x1b[" not in colours  # no colours, no styles: plain text
            else:
                assert "\x1b[" in colours  # a terminal gets styles
            _tmux(sock, "send-keys", "-t", "0", "C-c")
            while time.monotonic() < deadline and not (done.exists() and done.read_text().strip()):
                time.sleep(0.2)
            assert done.read_text().strip() == "0"
            err = (tmp_path / "err").read_text()
            assert "Traceback" not in err and "KeyboardInterrupt" not in err
        finally:
            stop.set()
            _tmux(sock, "kill-server")


# ---------------------------------------------------------------- --db: the example apps and their stores


def _run_example(name: str, *args: str, env: dict | None = None, timeout: float = 60) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _json(*args: str, env: dict | None = None) -> dict:
    proc = vitals("metrics", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _value(doc: dict, name: str) -> float:
    for m in doc.get("metrics", []):
        if m["name"] == name:
            return sum(s.get("value") or 0 for s in m["series"])
    return 0.0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def test_since_across_a_restart_of_the_example_app(tmp_path):
    db = str(tmp_path / "sync.db")
    common = ("--db", db, "--duration", "2", "--interval", "1", "--history-every", "0", "--seed", "1")
    before = time.time() - 1
    first = _run_example("sync_engine.py", *common)
    time.sleep(0.5)
    between = time.time()
    time.sleep(0.5)
    second = _run_example("sync_engine.py", *common)
    run1 = int(first.split("done: ")[1].split()[0].replace(",", ""))
    run2 = int(second.split("done: ")[1].split()[0].replace(",", ""))
    assert run1 > 0 and run2 > 0

    assert _value(_json("--db", db), "changes_received") == run1 + run2
    assert _value(_json("--db", db, "--scope", "session"), "changes_received") == run2
    assert _value(_json("--db", db, "--scope", "past"), "changes_received") == run1
    windowed = _json("--db", db, "--since", _iso(between))
    assert _value(windowed, "changes_received") == run2  # only what happened after the restart
    assert windowed["window"]["since"].startswith(_iso(between)[:19])
    assert _value(_json("--db", db, "--since", _iso(before)), "changes_received") == run1 + run2
    assert _value(_json("--db", db, "--until", _iso(between)), "changes_received") == run1

    text = vitals("metrics", "--db", db, "--since", _iso(between), "--title", "Sync Metrics").stdout
    assert "Window: " in text and f"Changes received: {run2:,}" in text

    # --compare: a window after the restart against the one of the same length before it, which
    # ends at the restart (so what it holds does not depend on how fast the runs started)
    until = _iso(between + (between - before))
    proc = vitals("metrics", "--db", db, "--since", _iso(between), "--until", until, "--compare", _iso(before),
                  "--json")
    doc = json.loads(proc.stdout)
    assert _value(doc["current"], "changes_received") <= run2
    assert _value(doc["previous"], "changes_received") == run1
    text = vitals("metrics", "--db", db, "--since", _iso(between), "--until", until, "--compare", _iso(before)).stdout
    assert "Compared with: " in text and "(was " in text and ("▲" in text or "▼" in text)
    # nothing that old in a young store: the current window alone, and a note why
    proc = vitals("metrics", "--db", db, "--compare", "1 day ago", "--json")
    assert proc.returncode == 0 and "nothing to compare with" in proc.stderr
    assert json.loads(proc.stdout)["previous"] is None
    _one_clear_line(vitals("metrics", "--db", db, "--since", "next tuesday-ish"), 2, "cannot read time")
    _one_clear_line(vitals("metrics", "--db", db, "--where", "colour=red"), 2, "known keys: ")


def test_encrypted_store_keys_and_forgetting_a_user(tmp_path):
    db = str(tmp_path / "chat.db")
    out = _run_example("messenger.py", "--db", db, "--duration", "2", "--interval", "1", "--seed", "3",
                       env=_env(VITALS_STORE_KEY="s3cret"))
    assert "done:" in out
    assert b"simplex.im" not in Path(db).read_bytes()  # server names are private: the file is encrypted
    _one_clear_line(vitals("metrics", "--db", db), 2, "encrypted: pass --key")
    _one_clear_line(vitals("metrics", "--db", db, "--key", "wrong"), 2, "wrong key")
    _one_clear_line(vitals("metrics", "--db", db, env=_env(VITALS_STORE_KEY="nope")), 2, "wrong key")
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello " * 1000)
    proc = vitals("metrics", "--db", str(not_a_store))
    assert proc.returncode in (1, 2) and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

    doc = _json("--db", db, "--key", "s3cret", "--where", "user=3")
    assert _value(doc, "smp_messages_sent") > 0
    text = vitals("metrics", "--db", db, env=_env(VITALS_STORE_KEY="s3cret")).stdout
    assert "\nSMP\n" in text and "  SMP messages sent: " in text and "\nXFTP\n" in text

    # the user is deleted in a second run: its series are forgotten everywhere, the others stay
    out = _run_example("messenger.py", "--db", db, "--key", "s3cret", "--duration", "1.5", "--interval", "1",
                       "--delete-user", "3")
    assert "deleted user 3" in out
    everything = _json("--db", db, "--key", "s3cret")
    users = {s["labels"].get("user") for m in everything["metrics"] for s in m["series"]}
    assert "3" not in users and {"1", "2"} <= users
    assert all(r.get("user") != "3" for m in everything["metrics"] if m["kind"] == "events"
               for s in m["series"] for r in s["recent"])


def test_db_can_be_read_while_the_app_runs(tmp_path):
    db = str(tmp_path / "live.db")
    app = subprocess.Popen([sys.executable, str(ROOT / "examples" / "sync_engine.py"), "--db", db, "--duration", "20",
                            "--interval", "1", "--port", "0"], stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        url = app.stdout.readline().split()[1]
        deadline = time.monotonic() + 20
        doc = {}
        while time.monotonic() < deadline and _value(doc, "changes_received") == 0:
            time.sleep(0.5)
            proc = vitals("metrics", "--db", db, "--json")
            if proc.returncode == 0:
                doc = json.loads(proc.stdout)
        assert _value(doc, "changes_received") > 0
        live = _json("--url", url)
        assert _value(live, "changes_received") >= _value(doc, "changes_received")  # the app is ahead of its file
        windowed = _json("--url", url, "--since", "1 hour ago")  # the served registry has a store: windows work
        assert windowed["window"] and _value(windowed, "changes_received") > 0
    finally:
        app.terminate()
        assert app.wait(20) == 0  # SIGTERM: a clean stop with a final flush
    assert "done:" in app.stdout.read()


def test_watch_into_a_pipe_prints_each_refresh_and_stops_on_sigint():
    reg = appvitals.Registry()
    hits = reg.counter("hits", "Hits")
    with appvitals.serve(reg, port=0) as h:
        proc = subprocess.Popen([sys.executable, "-m", "appvitals.cli", "metrics", "--url", h.url, "--watch", "0.3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        seen: list[str] = []
        try:
            for line in proc.stdout:
                if line.startswith("  Hits: "):
                    seen.append(line.strip())
                    hits.inc(5)
                if len(seen) == 3:
                    break
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert seen[0] == "Hits: 0" and len(set(seen)) >= 2
        assert proc.returncode == 0 and "Traceback" not in err
        assert "\x1b[" not in "".join(seen) + out


# ---------------------------------------------------------------- the example app's store: view, shortcuts, JSON, HTTP


def _derived(doc: dict) -> dict:
    """What the view adds to a snapshot document: declared views, ratios, moments, status words."""
    return {m["name"]: (m.get("view"), m.get("ratio"),
                        sorted((json.dumps(s["labels"], sort_keys=True), s.get("at"), s.get("status"))
                               for s in m["series"]))
            for m in doc["metrics"]}


def test_example_store_through_the_cli_json_and_http(tmp_path, monkeypatch):
    from test_render import EXAMPLE_TITLE, GOLDEN, run_sync_example

    db = tmp_path / "sync.db"
    reg, _ = run_sync_example(db, monkeypatch)
    env = _env(TZ="UTC")

    def view(*args: str) -> str:
        proc = vitals("metrics", "--db", str(db), *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # the CLI prints the golden view of the store (tests/stats/golden/sync_example.txt)
    assert view("--title", EXAMPLE_TITLE) == (GOLDEN / "sync_example.txt").read_text(encoding="utf-8")

    # Spacedrive's shortcuts: --peer B, --model entry are --where; --errors, --state are --group
    by_peer = view("--peer", "B")
    assert by_peer == view("--where", "peer=B") and "Device B (Desktop)" in by_peer and "Device A" not in by_peer
    assert view("--model=entry") == view("--where", "model=entry")
    assert view("--errors") == view("--group", "errors")
    both = view("--state", "--operations")
    assert both == view("--group", "state", "--group", "operations")
    assert both.index("\nState\n") < both.index("\nOperations\n") and "\nData\n" not in both
    assert view("--operations", "--state").index("\nOperations\n") < view("--operations", "--state").index("\nState\n")
    bad = vitals("metrics", "--db", str(db), "--colour", "red", env=env)
    _one_clear_line(bad, 2, "no such option --colour")
    assert "labels: --direction, --kind, --message, --model, --peer, --type;" in bad.stderr
    assert "groups: --data, --errors, --operations, --performance, --state" in bad.stderr
    _one_clear_line(vitals("metrics", "--db", str(db), "--peer", env=env), 2, "--peer needs a value")
    _one_clear_line(vitals("metrics", "--db", str(db), "stray", env=env), 2, "unexpected argument 'stray'")

    # --json carries what the view shows: order, ratios, moments (ISO 8601) and status words
    doc = _json("--db", str(db), env=env)
    metrics = {m["name"]: m for m in doc["metrics"]}
    assert [m["view"]["order"] for m in doc["metrics"]] and metrics["sync_state"]["view"]["order"] == 1
    assert metrics["changes_applied"]["view"]["share_of"] == "changes_received"
    assert metrics["changes_applied"]["ratio"] == _value(doc, "changes_applied") / _value(doc, "changes_received")
    assert metrics["broadcast_batches_sent"]["ratio"] == (_value(doc, "broadcasts_sent")
                                                          / _value(doc, "broadcast_batches_sent"))
    last = {s["labels"]["peer"]: s for s in metrics["last_sync"]["series"]}
    moment = datetime.datetime.fromisoformat(last["A"]["at"].replace("Z", "+00:00"))
    assert moment.timestamp() == last["A"]["value"] and last["A"]["at"].startswith("2025-10-23T")
    assert last["A"]["status"] == "online"
    device = {s["labels"]["peer"]: s for s in metrics["records_by_device"]["series"]}
    assert device["B"]["status"] == "online" and "status" not in device["self"]
    assert metrics["records_by_device"]["view"]["display"]["A"] == "Device A (MacBook)"
    # ... and so does /v1/snapshot, served by the app's registry
    with appvitals.serve(reg, port=0) as h:
        import urllib.request

        with urllib.request.urlopen(h.url + "/v1/snapshot", timeout=10) as response:
            served = json.loads(response.read())
        over_url = _json("--url", h.url, "--peer", "B", env=env)  # the shortcuts work over HTTP too
    assert _derived(served) == _derived(doc)
    by_peer_doc = _json("--db", str(db), "--peer", "B", env=env)
    assert _derived(over_url) == _derived(by_peer_doc) and "records_by_device" in _derived(by_peer_doc)


def test_several_libraries_in_one_store(tmp_path):
    db = tmp_path / "libraries.db"
    store = appvitals.Store(db)
    libraries = {"library-7f3a": 5, "library-b2": 7}
    regs = []
    for name, n in libraries.items():
        reg = appvitals.Registry()
        reg.counter("changes_received", "Changes received", labels=("peer",), group="operations").labels(peer="A").inc(n)
        reg.attach(store, interval=5, namespace=name)
        regs.append(reg)
    for reg in regs:
        reg.detach()  # a library's registry detaching leaves the store to the others
    plain = appvitals.Registry()
    plain.counter("app_starts", "App starts").inc()
    plain.attach(store, interval=5)
    plain.detach()  # the store's own registry closes it, as before
    with appvitals.Store.open_readonly(db) as reader:
        assert reader.namespaces() == sorted(libraries)

    for name, n in libraries.items():
        doc = _json("--db", str(db), "--namespace", name)
        assert [m["name"] for m in doc["metrics"]] == ["changes_received"] and _value(doc, "changes_received") == n
        windowed = _json("--db", str(db), "--namespace", name, "--since", "1 hour ago")  # each its own history
        assert windowed["window"] and _value(windowed, "changes_received") == n
        text = vitals("metrics", "--db", str(db), "--namespace", name, "--title", "Sync Metrics").stdout
        assert text.splitlines()[2].startswith(f"All sessions · {name} · taken at ")
    assert [m["name"] for m in _json("--db", str(db))["metrics"]] == ["app_starts"]
    _one_clear_line(vitals("metrics", "--db", str(db), "--namespace", "library-zz"), 2,
                    "no namespace 'library-zz'")
    assert "namespaces: library-7f3a, library-b2" in vitals("metrics", "--db", str(db), "--namespace", "x").stderr
    _one_clear_line(vitals("metrics", "--url", "http://127.0.0.1:1", "--namespace", "x"), 2, "--namespace picks")

    # a restart restores each library from its own tables
    store = appvitals.Store(db)
    reg = appvitals.Registry()
    again = reg.counter("changes_received", "Changes received", labels=("peer",), group="operations")
    reg.attach(store, interval=5, namespace="library-b2")
    again.labels(peer="A").inc()
    assert reg.snapshot().value("changes_received") == 8
    with pytest.raises(ValueError, match="namespace must be"):
        appvitals.Registry().attach(store, namespace="no spaces")
    reg.detach()
    store.close()
    assert _value(_json("--db", str(db), "--namespace", "library-b2"), "changes_received") == 8
    assert _value(_json("--db", str(db), "--namespace", "library-7f3a"), "changes_received") == 5


def test_a_store_with_only_namespaces_says_how_to_pick_one(tmp_path):
    db = tmp_path / "only.db"
    store = appvitals.Store(db)
    reg = appvitals.Registry()
    reg.counter("hits", "Hits").inc()
    reg.attach(store, interval=5, namespace="library-1")
    reg.detach()
    store.close()
    proc = vitals("metrics", "--db", str(db), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["metrics"] == []
    assert "pick one with --namespace (library-1)" in proc.stderr


def test_namespaces_of_an_encrypted_store_are_encrypted(tmp_path):
    db = tmp_path / "secret.db"
    store = appvitals.Store(db, key="k3y")
    reg = appvitals.Registry()
    reg.counter("changes_received", "Changes", labels=("peer",)).labels(peer="laptop-of-alice").inc(3)
    reg.attach(store, interval=5, namespace="library-secret")
    reg.detach()
    store.close()
    raw = db.read_bytes()
    assert b"library-secret" not in raw and b"laptop-of-alice" not in raw  # table names and values alike
    _one_clear_line(vitals("metrics", "--db", str(db), "--namespace", "library-secret"), 2, "encrypted")
    doc = _json("--db", str(db), "--key", "k3y", "--namespace", "library-secret")
    assert _value(doc, "changes_received") == 3


def test_namespaces_inside_the_apps_own_database(tmp_path):
    import sqlite3

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as app_db:
        app_db.execute("CREATE TABLE libraries(id TEXT PRIMARY KEY, name TEXT)")
        app_db.execute("INSERT INTO libraries VALUES ('library-7f3a', 'My Library')")
    store = appvitals.Store(db, table_prefix="appvitals_")
    reg = appvitals.Registry()
    reg.counter("changes_received", "Changes", labels=("peer",)).labels(peer="A").inc(4)
    reg.attach(store, interval=5, namespace="library-7f3a")
    reg.detach()
    assert store.namespaces() == ["library-7f3a"]
    store.close()
    with sqlite3.connect(db) as app_db:
        tables = {r[0] for r in app_db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert app_db.execute("SELECT name FROM libraries").fetchall() == [("My Library",)]
    assert "appvitals_ns:library-7f3a:series" in tables and "series" not in tables
    doc = _json("--db", str(db), "--table-prefix", "appvitals_", "--namespace", "library-7f3a")
    assert _value(doc, "changes_received") == 4
    _one_clear_line(vitals("metrics", "--db", str(db), "--table-prefix", "appvitals_", "--namespace", "x"), 2,
                    "namespaces: library-7f3a")
