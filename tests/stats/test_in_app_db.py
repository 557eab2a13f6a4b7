"""The store inside the application's own (SQLite or SQLCipher) database: prefixed tables beside
the app's, one key, the app's connection writing at the same time, forget still durable."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appvitals import Registry, Store
from appvitals.stats.store import StoreError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _connect(path: Path, key: str | None):
    if key:
        sqlcipher = pytest.importorskip("sqlcipher3")
        conn = sqlcipher.dbapi2.connect(str(path), check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA key = '" + key + "'")
    else:
        import sqlite3

        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


@pytest.mark.parametrize("key", [None, "chat-db-key"])
def test_stats_live_beside_the_apps_tables(tmp_path, key):
    chat = tmp_path / "chat.db"
    app = _connect(chat, key)
    app.execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, body TEXT)")
    app.execute("CREATE TABLE meta(k TEXT, v TEXT)")  # the app's own table of that name stays its own
    app.execute("INSERT INTO meta VALUES ('schema', '7')")
    app.commit()
    with pytest.raises(StoreError, match="table_prefix"):
        Store(chat, key=key)

    reg = Registry()
    sent = reg.counter("msgs_sent", "Messages sent", labels=("user", "server"))
    reg.attach(Store(chat, key=key, table_prefix="appvitals_"), interval=60)

    stop = threading.Event()
    written = []

    def app_writes():  # the application keeps writing its own tables meanwhile
        i = 0
        while not stop.is_set() or i < 200:
            app.execute("INSERT INTO messages(body) VALUES (?)", (f"hello {i}",))
            app.commit()
            written.append(i)
            i += 1

    writer = threading.Thread(target=app_writes)
    writer.start()
    try:
        for _ in range(30):
            sent.labels(user="1", server="smp1").inc()
            sent.labels(user="secret-user-42", server="smp2").inc()
            reg.flush()
        reg.forget(user="secret-user-42")
    finally:
        stop.set()
        writer.join()
    reg.detach()

    assert app.execute("SELECT count(*) FROM messages").fetchone()[0] == len(written)
    assert app.execute("SELECT * FROM meta").fetchall() == [("schema", "7")]
    tables = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"appvitals_meta", "appvitals_series", "appvitals_runs"} <= tables and "series" not in tables
    app.close()

    with Store.open_readonly(chat, key=key, table_prefix="appvitals_") as ro:
        snap = ro.snapshot()
    assert snap.value("msgs_sent", user="1") == 30 and snap.value("msgs_sent", user="secret-user-42") == 0
    # forget stays durable here too: the label is in no byte of the database or its WAL
    for p in tmp_path.iterdir():
        if p.name.startswith("chat.db") and p.is_file():
            assert b"secret-user-42" not in p.read_bytes(), p.name

    # a restart restores from the prefixed tables; the CLI reads them
    reg = Registry()
    reg.counter("msgs_sent", "Messages sent", labels=("user", "server"))
    reg.attach(Store(chat, key=key, table_prefix="appvitals_"), interval=60)
    assert reg.snapshot().value("msgs_sent") == 30
    reg.detach()
    env = {k: v for k, v in os.environ.items() if k != "VITALS_STORE_KEY"}
    env["PYTHONPATH"] = SRC
    args = [sys.executable, "-m", "appvitals.cli", "metrics", "--db", str(chat), "--table-prefix", "appvitals_", "--json"]
    out = subprocess.run(args + (["--key", key] if key else []), capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"msgs_sent"' in out.stdout


def test_a_bad_prefix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="table_prefix"):
        Store(tmp_path / "x.db", table_prefix="x; DROP TABLE y")
    with pytest.raises(ValueError, match="table_prefix"):
        Store(tmp_path / "x.db", table_prefix="appvitals_", recover=True)
