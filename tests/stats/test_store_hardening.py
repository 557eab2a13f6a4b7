"""The store against careless users and bad files: empty keys, file modes, damaged files,
readers that must not write, a removed lock file, and forget() on a full disk."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appvitals import Registry, Store
from appvitals.stats.store import StoreDamagedError, StoreError, StoreKeyError, StoreLockedError

HERE = Path(__file__).resolve().parent
SUPPORT_CHILD = str(HERE.parent / "support" / "store_child.py")
APP_CHILD = str(HERE / "app_child.py")
SRC = str(HERE.parents[1] / "src")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VITALS_STORE_KEY"}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _files(db: Path) -> dict[str, str]:
    """The database and its WAL, byte for byte (the -shm is SQLite's shared-memory index, not data:
    a reader may rebuild it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(db.parent.glob(db.name + "*")) if p.is_file() and p.name.endswith((".db", "-wal"))}


def _filled(db: Path, n: int = 300) -> None:
    reg = Registry()
    c = reg.counter("msgs", "Messages", labels=("user", "server"))
    reg.attach(Store(db), interval=60)
    for i in range(n):
        c.labels(user=f"user-{i}", server="smp.example").inc(i + 1)
    reg.detach()


def test_an_empty_key_is_refused(tmp_path):
    db = tmp_path / "stats.db"
    for key in ("", "   "):
        with pytest.raises(StoreKeyError, match="empty key"):
            Store(db, key=key)
    assert not db.exists()


def test_store_files_and_backups_are_private(tmp_path):
    os.umask(0o022)
    db = tmp_path / "stats.db"
    reg = Registry()
    reg.counter("msgs", labels=("user",)).labels(user="alice").inc()
    reg.attach(Store(db), interval=60)
    reg.flush()
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(str(db) + suffix).st_mode)
        assert mode & 0o077 == 0, (suffix, oct(mode))
    backup = tmp_path / "backup.txt"
    with pytest.warns(RuntimeWarning, match="plain text"):
        reg.export_backup(str(backup))
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    reg.detach()


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_store_is_kept_aside_and_renewed_only_when_asked(tmp_path, damage):
    db = tmp_path / "stats.db"
    _filled(db)
    data = bytearray(db.read_bytes())
    if damage == "flipped":  # the first bytes of every page but the header page
        for page in range(4096, len(data), 4096):
            for i in range(page, page + 8):
                data[i] ^= 0xA5
    else:
        data = data[: len(data) // 2]
    db.write_bytes(bytes(data))
    before = _files(db)
    with pytest.raises(StoreDamagedError, match="damaged") as info:
        Store(db)
    assert isinstance(info.value, StoreError) and "recover=True" in str(info.value)
    with pytest.raises(StoreDamagedError):
        Store.open_readonly(db)
    assert _files(db)["stats.db"] == before["stats.db"]  # left as it was
    store = Store(db, recover=True)
    aside = Path(store.moved_aside)
    assert aside.read_bytes() == bytes(data)
    assert store.snapshot().metrics == []
    store.close()
    # a second recovery never overwrites the first file put aside
    db.write_bytes(bytes(data))
    again = Store(db, recover=True)
    assert again.moved_aside != str(aside) and aside.read_bytes() == bytes(data)
    again.close()


def test_a_reader_never_checkpoints_the_wal_of_a_crashed_app(tmp_path):
    db = tmp_path / "stats.db"
    proc = subprocess.Popen([sys.executable, APP_CHILD, "distinct", str(db), "0", "100"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().startswith("flushed"), proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert Path(str(db) + "-wal").stat().st_size > 0
    before = _files(db)
    out = subprocess.run([sys.executable, "-m", "appvitals.cli", "metrics", "--db", str(db), "--json"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"msgs"' in out.stdout
    with Store.open_readonly(db) as ro:
        assert ro.snapshot().value("msgs") == 100
    assert _files(db) == before  # the WAL is where the crashed app left it, byte for byte


def test_removing_the_lock_file_lets_no_second_writer_in(tmp_path):
    db = tmp_path / "stats.db"
    proc = subprocess.Popen([sys.executable, SUPPORT_CHILD, "hold", str(db), ""], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().startswith("ready"), proc.stderr.read()
        os.unlink(str(db) + ".lock")
        with pytest.raises(StoreLockedError, match="another writer"):
            Store(db)
    finally:
        proc.kill()
        proc.wait()
    Store(db).close()


FULL_DISK_CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    import appvitals
    db = sys.argv[1]
    reg = appvitals.Registry()
    c = reg.counter("msgs", "Messages", labels=("user", "server"))
    reg.attach(appvitals.Store(db), interval=300)
    for round in range(40):  # many flushes: the WAL holds older copies of the secret user's row
        c.labels(user="secret-user-77", server="smp.example").inc()
        for i in range(50):
            c.labels(user=f"user-{round}-{i}", server="smp.example").inc()
        reg.flush()
    limit = max(os.path.getsize(db), os.path.getsize(db + "-wal"))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # no file may grow: a full disk
    try:
        reg.forget(user="secret-user-77")
        print("forgot", flush=True)
    except Exception as exc:
        print("raised", type(exc).__name__, exc, flush=True)
    os._exit(0)
""")


def test_forget_on_a_full_disk_leaves_no_copy_in_the_wal(tmp_path):
    db = tmp_path / "stats.db"
    out = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(db)], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert out.stdout.startswith(("forgot", "raised")), out.stderr
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or b"secret-user-77" not in wal.read_bytes()
    if out.stdout.startswith("forgot"):  # it worked despite the full disk: gone from every file
        assert all(b"secret-user-77" not in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
