"""The on-disk home of in-app stats: SQLite, or SQLCipher when a key is given.

One file holds every run of the application (`runs`), each run's series as of its last
completed flush (`series`), the metric definitions (`metrics`) and periodic cumulative
snapshots for time windows (`history`). Past runs are folded into run 0 when a new run
attaches, so the file does not grow with restarts.

Guarantees:
- every flush, forget and reset is one transaction: after a crash the file holds exactly
  the last completed one;
- with a key, the file (and its WAL) is encrypted: neither metric names nor label values
  appear in its bytes; a wrong key raises StoreKeyError and leaves the file untouched;
- `forget()` deletes with `secure_delete` on and truncates the WAL before returning, so
  the forgotten label values are gone from disk, not just unlinked from the b-tree;
- one writer: a second process attaching the same file gets StoreLockedError.

Several registries can share one store (one per Spacedrive library, say): each attaches under
its own namespace (`reg.attach(store, namespace="library-7f3a")`) and gets tables of its own
(runs, metrics, series, history, meta) in the same file, under the same key and lock.

Format evolution: `meta.format` is the format version. Rows are JSON objects decoded
leniently (unknown fields ignored, missing ones zero), unknown metric kinds are skipped,
and a run only ever rewrites its own rows, so an older appvitals never destroys what a
newer one wrote.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from appvitals.stats import snapshot as _snap

FORMAT = 1
KEY_ENV = "VITALS_STORE_KEY"
KINDS = ("counter", "gauge", "histogram", "state", "events", "distinct")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, started_at REAL NOT NULL, flushed_at REAL);
CREATE TABLE IF NOT EXISTS metrics(
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, help TEXT NOT NULL DEFAULT '', unit TEXT NOT NULL DEFAULT '',
    grp TEXT NOT NULL DEFAULT '', label_names TEXT NOT NULL DEFAULT '[]', capacity INTEGER, view TEXT);
CREATE TABLE IF NOT EXISTS series(
    run INTEGER NOT NULL, metric TEXT NOT NULL, labels TEXT NOT NULL, value REAL, data BLOB,
    PRIMARY KEY(run, metric, labels)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history(ts REAL PRIMARY KEY, tier INTEGER NOT NULL, snapshot BLOB NOT NULL);
"""


class StoreError(RuntimeError):
    """The store cannot be used: corrupt, not a store, missing."""


class StoreKeyError(StoreError):
    """The key is wrong (or missing for an encrypted store)."""


class StoreLockedError(StoreError):
    """Another process has this store attached."""


class StoreDamagedError(StoreError):
    """The file is a damaged SQLite database (bytes flipped, truncated). It is left as it is;
    `Store(path, recover=True)` moves it aside and starts a new store."""


_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def namespace_prefix(namespace: str) -> str:
    """The prefix of a namespace's table names, after the store's table_prefix (checked: 1-64
    letters, digits, '_', '.', '-'): every table of the store is the namespace's own."""
    if not _NAMESPACE.match(namespace or ""):
        raise ValueError(f"namespace must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter "
                         f"or digit), not {namespace!r}")
    return f"ns:{namespace}:"


class HistoryPolicy(msgspec.Struct, frozen=True):
    """How often cumulative snapshots are kept, and for how long."""

    fine_every: float = 60.0
    fine_keep: float = 48 * 3600.0
    coarse_every: float = 3600.0
    coarse_keep: float = 90 * 86400.0
    enabled: bool = True


_series_data_decoder = msgspec.json.Decoder(_snap.Series)
_encoder = msgspec.json.Encoder()
_labels_decoder = msgspec.json.Decoder(dict[str, str])
_list_decoder = msgspec.json.Decoder(list[str])
_labels_list_decoder = msgspec.json.Decoder(list[dict[str, str]])


def _safe_labels(text: str) -> dict[str, str] | None:
    try:
        return _labels_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def encode_labels(names: Iterable[str], values: Iterable[str]) -> str:
    """Canonical JSON of a series' labels (label-name order)."""
    return _encoder.encode(dict(zip(names, values))).decode()


class Store:
    """An appvitals stats file: `Store(path, key=None)`; key given (or $VITALS_STORE_KEY) -> SQLCipher."""

    def __init__(self, path: str | os.PathLike, key: str | None = None, *, readonly: bool = False,
                 history: HistoryPolicy | None = None, recover: bool = False, table_prefix: str = "") -> None:
        self.path = os.fspath(path)
        if table_prefix and not _PREFIX.match(table_prefix):
            raise ValueError(f"table_prefix must be letters, digits and '_' (e.g. 'appvitals_'), not {table_prefix!r}")
        if table_prefix and recover:
            raise ValueError("recover=True would move the application's own database aside: not with table_prefix")
        # with a prefix the stats live in prefixed tables of the application's own database, beside its tables
        self.table_prefix = table_prefix
        if key is not None and not str(key).strip():
            raise StoreKeyError("an empty key would leave the store unencrypted: give a real key, or key=None "
                                "for a plain file")
        self.key = key if key is not None else (os.environ.get(KEY_ENV) or None)
        self.readonly = readonly
        self.history = history or HistoryPolicy()
        self.moved_aside: str | None = None  # where recover=True put a damaged file
        self.namespace_name = ""  # "" is the store's own registry; see namespace()
        self._owner: Store | None = None  # a namespace's store, when the namespace opened it
        self._lock_fd: int | None = None
        self._db_fd: int | None = None
        self._db_lock = threading.RLock()
        if readonly and not os.path.exists(self.path):
            raise StoreError(f"no stats store at {self.path}")
        if not readonly:
            self._take_lock()
        try:
            try:
                self._conn = self._connect()
            except StoreDamagedError:
                if not recover or readonly:
                    raise
                self.moved_aside = self._move_aside()
                self._conn = self._connect()
        except BaseException:
            self._release_lock()
            raise

    @classmethod
    def open_readonly(cls, path: str | os.PathLike, key: str | None = None, table_prefix: str = "",
                      namespace: str = "") -> Store:
        """Open for reading while an application may hold the store (no lock, no writes);
        `namespace`: one of several registries kept in it (StoreError naming the known ones)."""
        store = cls(path, key, readonly=True, table_prefix=table_prefix)
        if not namespace:
            return store
        try:
            known = store.namespaces()
            if namespace not in known:
                listed = ", ".join(known) if known else "none"
                raise StoreError(f"no namespace {namespace!r} in {store.path} (namespaces: {listed})")
            view = store.namespace(namespace)
        except BaseException:
            store.close()
            raise
        view._owner = store
        return view

    def namespace(self, name: str) -> Store:
        """The registry `name` of this file: its own tables beside the others', sharing this store's
        connection, key and writer lock (closing it leaves this store open). "" is this store."""
        if not name:
            return self
        if self.namespace_name:
            raise ValueError("namespaces do not nest: call namespace() on the store itself")
        namespace_prefix(name)  # checks the name before anything is made
        view = copy.copy(self)  # path, key, the lock (_db_lock) and the connection are shared ...
        view.history = HistoryPolicy()  # ... not what is the registry's own
        view.namespace_name = name
        view._owner = None
        view._lock_fd = view._db_fd = None  # the store holds (and releases) the file's locks
        view._conn = _PrefixedConnection(_raw(self._conn), self.table_prefix + namespace_prefix(name))
        if not self.readonly:
            with self._db_lock:
                _create_schema(view._conn)
        return view

    def namespaces(self) -> list[str]:
        """The names of the registries kept in this file under a namespace, sorted."""
        start = self.table_prefix + "ns:"
        with self._db_lock:
            names = [r[0] for r in _raw(self._conn).execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sorted(n[len(start):-len(":meta")] for n in names if n.startswith(start) and n.endswith(":meta"))

    # ------------------------------------------------------------ opening

    def _take_lock(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"directory {directory} does not exist")
        fd = os.open(self.path + (f".{self.table_prefix}lock" if self.table_prefix else ".lock"),
                     os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            if holder == str(os.getpid()):
                raise StoreLockedError(f"store {self.path} is already open in this process: another Store object "
                                       f"holds it (close that one first, or share it)")
            raise StoreLockedError(f"store {self.path} is attached by another process (pid {holder})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        if not self.table_prefix:
            # not in the application's own database: closing our descriptor of it would drop the
            # POSIX locks its own connection holds in this process
            self._lock_db_file()

    def _lock_db_file(self) -> None:
        """flock the database file too, so that deleting the side lock file lets no second writer in.
        SQLite's own locks are POSIX record locks, which flock does not touch; this descriptor stays
        open until after the connection is closed (closing a descriptor drops a process's POSIX locks)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # a new store is born private
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._release_lock()
            raise StoreLockedError(f"store {self.path} is attached by another writer (its lock file "
                                   f"{self.path}.lock was removed or replaced)")
        self._db_fd = fd

    def _release_lock(self) -> None:
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _move_aside(self) -> str:
        """Rename a damaged store (and its -wal/-shm) to a new name, never over an existing file."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        n = 0
        while True:
            target = f"{self.path}.damaged-{stamp}" + (f"-{n}" if n else "")
            if not any(os.path.exists(target + s) for s in ("", "-wal", "-shm")):
                break
            n += 1
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None
        for suffix in ("-wal", "-shm", ""):
            if os.path.exists(self.path + suffix):
                os.link(self.path + suffix, target + suffix)  # link + unlink: never replaces a file
                os.unlink(self.path + suffix)
        if self._lock_fd is not None:
            self._lock_db_file()
        return target

    def _connect(self):
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if self.key:
            from appvitals.extras import require

            require("crypto")
            from sqlcipher3 import dbapi2 as driver
        else:
            driver = sqlite3
        if self.readonly:
            # a reader never writes: no checkpoint, and the WAL of an application that crashed stays
            import urllib.parse

            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            conn = driver.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10.0)
        else:
            conn = driver.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        if self.table_prefix:
            conn = _PrefixedConnection(conn, self.table_prefix)
        try:
            if self.key:
                conn.execute("PRAGMA cipher_log_level = NONE")  # errors are ours to report, in one line
                conn.execute("PRAGMA key = '" + self.key.replace("'", "''") + "'")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except driver.DatabaseError as exc:
                if not self.key and _looks_like_sqlite(self.path):
                    raise StoreDamagedError(self._damaged_message(exc)) from exc
                if self.key:
                    raise StoreKeyError(f"cannot open {self.path}: wrong key, not an appvitals store, or a "
                                        f"damaged file") from exc
                raise StoreKeyError(
                    f"cannot open {self.path}: it is encrypted (give the key, or set ${KEY_ENV}) or it is not a "
                    f"SQLite file"
                ) from exc
            if existed and not self.table_prefix:  # (the application's database can be large: not checked whole)
                try:
                    problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
                except driver.DatabaseError as exc:
                    raise StoreDamagedError(self._damaged_message(exc)) from exc
                if problems != ["ok"]:
                    raise StoreDamagedError(self._damaged_message(problems[0]))
            if existed:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                p = self.table_prefix
                if p and self.readonly and p + "meta" not in tables:
                    raise StoreError(f"{self.path} holds no stats tables named {p}*")
                if not p and ("meta" not in tables or "series" not in tables):
                    raise StoreError(f"{self.path} is a database but not an appvitals store (to keep the stats "
                                     f"inside an application's database, give table_prefix='appvitals_')")
            if not self.readonly:
                if not self.table_prefix:  # the application's database keeps the journal mode it chose
                    conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives a killed process and the file is never torn; a power
                # cut may roll back to an earlier completed flush. forget()/reset() checkpoint with a sync.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA secure_delete=ON")
                _create_schema(conn)
            return conn
        except BaseException:
            try:
                conn.close()
            except Exception:
                pass
            raise

    def _damaged_message(self, why: Any) -> str:
        return (f"the stats store {self.path} is damaged ({str(why).splitlines()[0] if str(why) else 'corrupt'}); "
                f"it was left as it is: Store(path, recover=True) moves it aside and starts a new one")

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction: committed whole, or rolled back whole (caller holds _db_lock)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            # some errors (SQLITE_FULL, IOERR) already rolled the transaction back: never let a
            # failing ROLLBACK hide the error that matters
            with contextlib.suppress(Exception):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _meta(conn, key: str, default: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def close(self) -> None:
        """Close the file and release the writer lock (a namespace: only what it opened itself)."""
        if self.namespace_name:
            if self._owner is not None:
                self._owner.close()
            return
        with self._db_lock:
            try:
                self._conn.close()
            finally:
                self._release_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ metadata

    @property
    def format(self) -> int:
        """The format version recorded in the file."""
        with self._db_lock:
            return int(self._meta(self._conn, "format", "1"))

    @property
    def tracking_since(self) -> float:
        """When tracking started (creation, or the last reset), epoch seconds."""
        with self._db_lock:
            return float(self._meta(self._conn, "tracking_since", "0"))

    def _metric_defs(self) -> dict[str, dict[str, Any]]:
        view = "view" if _has_column(self._conn, "metrics", "view") else "NULL"
        rows = self._conn.execute(f"SELECT name, kind, help, unit, grp, label_names, capacity, {view} FROM metrics").fetchall()
        return {r[0]: {"kind": r[1], "help": r[2], "unit": r[3], "group": r[4], "label_names": r[5],
                       "capacity": r[6], "view": _decode_view(r[7])} for r in rows if r[1] in KINDS}

    def distinct_key(self, proposed: bytes) -> bytes:
        """The key of the keyed hash of distinct ids kept in this store (`proposed` when it has none yet)."""
        with self._db_lock:
            if not self.readonly:
                with self._transaction():
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('distinct_key', ?)", (proposed.hex(),))
            return bytes.fromhex(self._meta(self._conn, "distinct_key", proposed.hex()))

    # ------------------------------------------------------------ runs

    def begin_run(self, started_at: float) -> tuple[int, _snap.Snapshot | None, float]:
        """Start a new run: fold earlier runs into the past (one transaction); return (run id, past, tracking_since)."""
        with self._db_lock:
            conn = self._conn
            with self._transaction():
                # fold earlier runs into run 0 so the file does not grow with restarts; a file written by a
                # newer format is never rewritten (its rows may hold fields this version cannot carry over)
                folded = None
                if int(self._meta(conn, "format", "1")) <= FORMAT:
                    folded = self._fold_locked()
                conn.execute("INSERT OR IGNORE INTO runs(id, started_at) VALUES (0, 0)")
                run = conn.execute("INSERT INTO runs(started_at) VALUES (?) RETURNING id", (started_at,)).fetchone()[0]
            if folded is None:
                past = self._runs_snapshot(exclude_latest=True, scope="past")
            else:
                past = folded
                past.scope = "past"
                past.tracking_since = _snap.to_datetime(self.tracking_since)
                past.session_started_at = _snap.to_datetime(started_at)
            return run, past, self.tracking_since

    def _fold_locked(self) -> _snap.Snapshot | None:
        """Fold every run into run 0; returns the folded past (None when there was nothing to fold)."""
        conn = self._conn
        if conn.execute("SELECT count(*) FROM runs WHERE id > 0").fetchone()[0] == 0:
            return None
        # counters add and gauges keep the latest run's value: plain SQL, no round trip through Python
        conn.execute("DROP TABLE IF EXISTS temp.fold")
        # a counter or gauge row's data holds only its last-change time (JSON): the latest one stays
        conn.execute(
            "CREATE TEMP TABLE fold AS "
            "SELECT s.metric AS metric, s.labels AS labels, sum(s.value) AS value, max(s.data) AS data FROM series s "
            "JOIN metrics m ON m.name = s.metric WHERE m.kind = 'counter' GROUP BY s.metric, s.labels")
        conn.execute(
            "INSERT INTO temp.fold SELECT metric, labels, value, data FROM ("
            "  SELECT s.metric AS metric, s.labels AS labels, s.value AS value, s.data AS data, "
            "         row_number() OVER (PARTITION BY s.metric, s.labels ORDER BY s.run DESC) AS rn "
            "  FROM series s JOIN metrics m ON m.name = s.metric WHERE m.kind = 'gauge') WHERE rn = 1")
        # histograms, states and events merge in Python (sketches, times, ring buffers)
        defs = self._metric_defs()
        complex_names = [n for n, d in defs.items() if d["kind"] in ("histogram", "state", "events", "distinct")]
        merged: _snap.Snapshot | None = None
        if complex_names:
            tracking = self.tracking_since
            for (run_id,) in conn.execute("SELECT id FROM runs ORDER BY id").fetchall():
                snap = self._read_run(run_id, defs, tracking, tracking, tracking, only=complex_names)
                merged = snap if merged is None else _snap.merge(merged, snap)
        # the folded counters and gauges are also the past this run starts from: read them from the
        # in-memory temp table rather than the (possibly encrypted) file a second time
        simple = conn.execute("SELECT metric, labels, value, data FROM temp.fold ORDER BY metric, labels").fetchall()
        conn.execute("DELETE FROM series WHERE metric IN "
                     "(SELECT name FROM metrics WHERE kind IN ('counter', 'gauge', 'histogram', 'state', 'events', 'distinct'))")
        conn.execute("INSERT INTO series(run, metric, labels, value, data) SELECT 0, metric, labels, value, data FROM temp.fold")
        if merged is not None:
            conn.executemany("INSERT INTO series(run, metric, labels, value, data) VALUES (?, ?, ?, ?, ?)",
                             list(self._rows_for(merged, run=0)))
        conn.execute("DROP TABLE temp.fold")
        conn.execute("DELETE FROM runs WHERE id > 0 AND id NOT IN (SELECT DISTINCT run FROM series)")
        tracking = self.tracking_since
        past = self._build_run(simple, defs, tracking, tracking, tracking)
        return past if merged is None else _snap.merge(past, merged)

    def _rows_for(self, snap: _snap.Snapshot, run: int):
        for m in snap.metrics:
            for s in m.series:
                labels = encode_labels(m.label_names, (s.labels.get(n, "") for n in m.label_names))
                if m.kind in ("counter", "gauge"):
                    yield (run, m.name, labels, s.value or 0.0,
                           _encoder.encode({"updated_at": s.updated_at}) if s.updated_at is not None else None)
                else:
                    yield (run, m.name, labels, None, encode_series(s))

    def add_past(self, snap: _snap.Snapshot) -> None:
        """Merge a snapshot (e.g. an imported backup) into the past, in one transaction."""
        if self.readonly:
            raise StoreError("store is open read-only")
        with self._db_lock:
            conn = self._conn
            defs = self._metric_defs()
            tracking = self.tracking_since
            current = self._read_run(0, defs, tracking, tracking, tracking)
            merged = _snap.merge(current, snap, scope="past")
            with self._transaction():
                conn.execute("INSERT OR IGNORE INTO runs(id, started_at) VALUES (0, 0)")
                conn.executemany("INSERT OR IGNORE INTO metrics(name, kind, help, unit, grp, label_names, capacity, view) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                    (m.name, m.kind, m.help, m.unit, m.group, msgspec.json.encode(m.label_names).decode(), m.capacity,
                     encode_view(m.view))
                    for m in snap.metrics])
                conn.execute("DELETE FROM series WHERE run = 0")
                conn.executemany("INSERT INTO series(run, metric, labels, value, data) VALUES (?, ?, ?, ?, ?)", list(self._rows_for(merged, run=0)))

    def write_flush(self, run: int, now: float, metric_defs: list[tuple], rows: list[tuple],
                    history_point: Any = None) -> None:
        """One flush as one transaction: metric definitions, changed rows, run time, maybe a history point."""
        if self.readonly:
            raise StoreError("store is open read-only")
        with self._db_lock:
            conn = self._conn
            with self._transaction():
                if metric_defs:
                    conn.executemany("INSERT OR REPLACE INTO metrics(name, kind, help, unit, grp, label_names, capacity, view) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     [(*d, None) if len(d) == 7 else d for d in metric_defs])
                if rows:
                    conn.executemany("INSERT OR REPLACE INTO series(run, metric, labels, value, data) VALUES (?, ?, ?, ?, ?)", rows)
                conn.execute("UPDATE runs SET flushed_at = ? WHERE id = ?", (now, run))
                if history_point is not None:
                    snap = history_point() if callable(history_point) else history_point
                    self._add_history_locked(now, snap)

    # ------------------------------------------------------------ history

    def last_history_at(self) -> float | None:
        """Time of the newest history point."""
        with self._db_lock:
            row = self._conn.execute("SELECT max(ts) FROM history").fetchone()
            return row[0] if row else None

    def _add_history_locked(self, now: float, snap: _snap.Snapshot) -> None:
        policy = self.history
        # distinct counts cannot be subtracted, and their sketches are large: history points leave
        # them out (which also keeps history readable by versions that do not know the kind)
        snap = msgspec.structs.replace(snap, metrics=[m for m in snap.metrics if m.kind != "distinct"])
        last_coarse = self._conn.execute("SELECT max(ts) FROM history WHERE tier = 1").fetchone()[0]
        tier = 1 if last_coarse is None or now - last_coarse >= policy.coarse_every else 0
        blob = zlib.compress(_snap.encode(snap), 6)
        self._conn.execute("INSERT OR REPLACE INTO history(ts, tier, snapshot) VALUES (?, ?, ?)", (now, tier, blob))
        self._conn.execute("DELETE FROM history WHERE tier = 0 AND ts < ?", (now - policy.fine_keep,))
        self._conn.execute("DELETE FROM history WHERE ts < ?", (now - policy.coarse_keep,))

    def history_times(self) -> list[float]:
        """Times of all kept history points."""
        with self._db_lock:
            return [r[0] for r in self._conn.execute("SELECT ts FROM history ORDER BY ts")]

    def history_at(self, ts: float) -> _snap.Snapshot | None:
        """The newest history point at or before epoch seconds `ts` (a cumulative "all" snapshot), or None."""
        with self._db_lock:
            return self._history_at(ts)

    def _history_at(self, ts: float) -> _snap.Snapshot | None:
        row = self._conn.execute("SELECT snapshot FROM history WHERE ts <= ? ORDER BY ts DESC LIMIT 1", (ts,)).fetchone()
        return _snap.decode(zlib.decompress(row[0])) if row else None

    def window(self, since: Any = None, until: Any = None, scope: str = "all") -> _snap.Snapshot:
        """What happened between `since` and `until` (datetimes or epoch seconds; None = start / now),
        from the difference of two cumulative snapshots; works across restarts."""
        since_ts = _as_epoch(since)
        until_ts = _as_epoch(until)
        with self._db_lock:
            later = self._history_at(until_ts) if until_ts is not None else None
            if later is None or until_ts is None:
                latest = self.snapshot(scope="all")
                if until_ts is None or (later is None and _snap.to_epoch(latest.taken_at) <= until_ts):
                    later = latest
            if later is None:
                raise StoreError("no history that old in this store")
            earlier = self._history_at(since_ts) if since_ts is not None else None
        if scope == "session":
            # the window of the latest run only: start no earlier than that run
            run_start = _snap.to_epoch(later.session_started_at)
            if since_ts is None or since_ts < run_start:
                earlier = self._history_at(run_start) if earlier is None else earlier
        out = _snap.window(later, earlier)
        out.scope = scope
        if since_ts is not None:
            # honest bounds: with no history point at or before `since`, the window starts where
            # the data does (tracking start), not where it was asked to
            start = since_ts if earlier is not None else min(since_ts, _snap.to_epoch(later.tracking_since))
            out.window = {"since": _snap.to_datetime(start), "until": later.taken_at}
        return out

    # ------------------------------------------------------------ reading

    def snapshot(self, scope: str = "all") -> _snap.Snapshot:
        """The latest flushed state: "session" (most recent run), "past" (earlier runs) or "all"."""
        if scope not in ("session", "past", "all"):
            raise ValueError(f"scope must be 'session', 'past' or 'all', not {scope!r}")
        with self._db_lock:
            if scope == "all":
                snap = self._runs_snapshot(exclude_latest=False, scope="all")
            elif scope == "past":
                snap = self._runs_snapshot(exclude_latest=True, scope="past")
            else:
                snap = self._runs_snapshot(only_latest=True, scope="session")
            if snap is None:
                now = time.time()
                snap = _snap.empty(now, self.tracking_since, self._latest_run_start() or now, scope=scope)
            return snap

    def _latest_run_start(self) -> float | None:
        row = self._conn.execute("SELECT started_at FROM runs WHERE id > 0 ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def _runs_snapshot(self, exclude_latest: bool = False, only_latest: bool = False,
                       scope: str = "all") -> _snap.Snapshot | None:
        conn = self._conn
        runs = conn.execute("SELECT id, started_at, flushed_at FROM runs ORDER BY id").fetchall()
        if not runs:
            return None
        latest = max(r[0] for r in runs)
        if only_latest:
            runs = [r for r in runs if r[0] == latest and r[0] > 0]
        elif exclude_latest:
            runs = [r for r in runs if r[0] != latest or latest == 0]
        if not runs:
            return None
        defs = self._metric_defs()
        tracking = self.tracking_since
        out: _snap.Snapshot | None = None
        for run_id, started, flushed in runs:
            snap = self._read_run(run_id, defs, started or tracking, flushed or started or tracking, tracking)
            out = snap if out is None else _snap.merge(out, snap)
        if out is not None:
            out.scope = scope
            out.tracking_since = _snap.to_datetime(tracking)
            start = self._latest_run_start()
            if start is not None:
                out.session_started_at = _snap.to_datetime(start)
        return out

    def _read_run(self, run: int, defs: dict, started: float, flushed: float, tracking: float,
                  only: list[str] | None = None) -> _snap.Snapshot:
        if only is not None:
            marks = ",".join("?" * len(only))
            rows = self._conn.execute(f"SELECT metric, labels, value, data FROM series WHERE run = ? AND metric IN ({marks}) "
                                      "ORDER BY metric, labels", (run, *only)).fetchall()
        else:
            rows = self._conn.execute("SELECT metric, labels, value, data FROM series WHERE run = ? "
                                      "ORDER BY metric, labels", (run,)).fetchall()
        return self._build_run(rows, defs, started, flushed, tracking)

    def _build_run(self, rows: list, defs: dict, started: float, flushed: float, tracking: float) -> _snap.Snapshot:
        """A Snapshot from (metric, labels, value, data) rows."""
        rows = [r for r in rows if r[0] in defs]  # kinds this version does not know stay untouched on disk
        try:  # one decode call for every label set: much faster than one call a row
            all_labels = _labels_list_decoder.decode("[" + ",".join(r[1] for r in rows) + "]")
        except (msgspec.DecodeError, msgspec.ValidationError):
            all_labels = [_safe_labels(r[1]) for r in rows]
        by_metric: dict[str, list[_snap.Series]] = {}
        Series = _snap.Series
        for (metric, _, value, data), label_map in zip(rows, all_labels):
            if label_map is None:
                continue
            kind = defs[metric]["kind"]
            if kind == "counter" or kind == "gauge":
                series = Series(labels=label_map, value=float(value or 0.0), updated_at=_updated_at(data))
            else:
                try:
                    series = decode_series(data, label_map)
                except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                    continue  # an unreadable row is skipped, never rewritten
            by_metric.setdefault(metric, []).append(series)
        metrics = []
        for name in sorted(by_metric):
            d = defs[name]
            try:
                label_names = _list_decoder.decode(d["label_names"])
            except msgspec.DecodeError:
                label_names = []
            metrics.append(_snap.MetricSnapshot(name=name, kind=d["kind"], help=d["help"], unit=d["unit"],
                                                group=d["group"], label_names=label_names, capacity=d["capacity"],
                                                series=by_metric[name], view=d["view"]))
        return _snap.Snapshot(taken_at=_snap.to_datetime(flushed), tracking_since=_snap.to_datetime(tracking),
                              session_started_at=_snap.to_datetime(started), scope="all", metrics=metrics)

    # ------------------------------------------------------------ forgetting

    def forget(self, labels: Mapping[str, Any], keep_totals: bool = False, session_run: int | None = None) -> None:
        """Delete every series (and history entry) whose labels include `labels`, durably, now.

        With `keep_totals`, the counts of counters, histograms and distinct series of runs other than
        `session_run` (whose values the live registry moves itself) go to the anonymous
        "__forgotten__" series of run 0, and event totals stay."""
        if self.readonly:
            raise StoreError("store is open read-only")
        want = {k: str(v) for k, v in labels.items()}
        if not want:
            raise ValueError("forget() needs at least one label")
        with self._db_lock:
            conn = self._conn
            # move older WAL frames (which hold the values about to be forgotten) into the file and empty
            # the WAL first: on a full disk this frees room, and if the delete still fails, no copy of the
            # value is left behind in the WAL (a failed forget raises; the file is where it always was)
            with contextlib.suppress(Exception):
                self._scrub()
            try:
                self._forget_locked(conn, want, keep_totals, session_run)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._scrub()
                raise
            self._scrub()

    def _forget_locked(self, conn, want: dict[str, str], keep_totals: bool, session_run: int | None) -> None:
        with self._transaction():
            clause = " AND ".join("json_extract(labels, ?) = ?" for _ in want)
            params: list[Any] = []
            for k, v in want.items():
                params += ["$." + _json_path_key(k), v]
            moved = None
            if keep_totals:
                defs = self._metric_defs()
                rows = conn.execute(
                    f"SELECT s.metric, s.labels, s.value, s.data FROM series s JOIN metrics m ON m.name = s.metric "
                    f"WHERE m.kind IN ('counter', 'histogram', 'distinct') AND s.run IS NOT ? AND {clause}",
                    [session_run, *params]).fetchall()
                if rows:
                    tracking = self.tracking_since
                    matched = self._build_run(rows, defs, tracking, tracking, tracking)
                    moved = _snap.drop_series(matched, want, keep_totals=True)
            conn.execute(f"DELETE FROM series WHERE {clause}", params)
            if moved is not None:
                tracking = self.tracking_since
                current = self._read_run(0, defs, tracking, tracking, tracking)
                merged = _snap.merge(current, moved, scope="past")
                conn.execute("INSERT OR IGNORE INTO runs(id, started_at) VALUES (0, 0)")
                conn.execute("DELETE FROM series WHERE run = 0")
                conn.executemany("INSERT INTO series(run, metric, labels, value, data) VALUES (?, ?, ?, ?, ?)",
                                 list(self._rows_for(merged, run=0)))
            # event rows keep records mentioning the label in their data: rewrite those rows
            for run, metric, lab, data in conn.execute(
                    "SELECT s.run, s.metric, s.labels, s.data FROM series s JOIN metrics m ON m.name = s.metric "
                    "WHERE m.kind = 'events'").fetchall():
                series = decode_series(data, _labels_decoder.decode(lab))
                cleaned = _snap.forget_records(series, want, keep_totals)
                if cleaned != series:
                    conn.execute("UPDATE series SET data = ? WHERE run = ? AND metric = ? AND labels = ?",
                                 (encode_series(cleaned), run, metric, lab))
            for ts, blob in conn.execute("SELECT ts, snapshot FROM history").fetchall():
                snap = _snap.decode(zlib.decompress(blob))
                cleaned = _snap.drop_series(snap, want, keep_totals)
                conn.execute("UPDATE history SET snapshot = ? WHERE ts = ?",
                             (zlib.compress(_snap.encode(cleaned), 6), ts))

    def reset(self, now: float | None = None) -> None:
        """Delete everything; tracking starts at `now`."""
        if self.readonly:
            raise StoreError("store is open read-only")
        now = time.time() if now is None else now
        with self._db_lock:
            conn = self._conn
            with self._transaction():
                conn.execute("DELETE FROM series")
                conn.execute("DELETE FROM history")
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('tracking_since', ?)", (str(now),))
            self._scrub()

    def _scrub(self) -> None:
        # secure_delete zeroed the freed content; moving the WAL into the file and truncating it
        # removes the older page images that still held the deleted values.
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def _create_schema(conn) -> None:
    """The tables of a store (or of one namespace), created when missing, and brought up to date."""
    now = repr(time.time())
    conn.executescript(
        "BEGIN IMMEDIATE;" + _SCHEMA
        + f"INSERT OR IGNORE INTO meta VALUES ('format', '{FORMAT}');"
        + f"INSERT OR IGNORE INTO meta VALUES ('tracking_since', '{now}');"
        + f"INSERT OR IGNORE INTO meta VALUES ('created_at', '{now}');"
        + "COMMIT;"
    )
    if int(Store._meta(conn, "format", "1")) < FORMAT:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),))
    if not _has_column(conn, "metrics", "view"):  # a file from before declared views
        conn.execute("ALTER TABLE metrics ADD COLUMN view TEXT")


def _has_column(conn, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


_view_decoder = msgspec.json.Decoder(_snap.View)


def encode_view(view: _snap.View | None) -> str | None:
    """A metric's declared view as stored (JSON), or None."""
    return _encoder.encode(view).decode() if view is not None else None


def _decode_view(text: str | None) -> _snap.View | None:
    if not text:
        return None
    try:
        return _view_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # an unreadable view only costs the layout hints


class _Stamp(msgspec.Struct):
    updated_at: dt.datetime | None = None


_stamp_decoder = msgspec.json.Decoder(_Stamp)


def _updated_at(data: bytes | str | None) -> dt.datetime | None:
    """A counter or gauge row's last-change time (None for rows of older versions)."""
    if not data:
        return None
    try:
        return _stamp_decoder.decode(data).updated_at
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLES = re.compile(r"(?<![\w.])(meta|runs|metrics|series|history)(?!\w)")


class _PrefixedConnection:
    """A connection whose SQL names this module's tables with a prefix (`meta` -> `appvitals_meta`),
    so that the stats can live inside an application's own database beside its tables."""

    def __init__(self, conn, prefix: str) -> None:
        self._conn = conn
        self._prefix = prefix
        self._sql: dict[str, str] = {}

    def _rewrite(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = _TABLES.sub(lambda m: _quoted(self._prefix + m.group(1)), sql)
            if len(self._sql) < 1000:
                self._sql[sql] = out
        return out

    def execute(self, sql: str, params: Any = ()):
        return self._conn.execute(self._rewrite(sql), params)

    def executemany(self, sql: str, rows: Any):
        return self._conn.executemany(self._rewrite(sql), rows)

    def executescript(self, sql: str):
        return self._conn.executescript(self._rewrite(sql))

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()


def _quoted(table: str) -> str:
    """A table name as SQL: quoted unless a plain identifier (a namespace's names hold ':' and '-')."""
    return table if _PREFIX.match(table) else '"' + table + '"'


def _raw(conn):
    """The SQLite connection under a prefixed one."""
    return conn._conn if isinstance(conn, _PrefixedConnection) else conn


def _looks_like_sqlite(path: str) -> bool:
    """True when the file starts like a plain SQLite database (an encrypted one looks random)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _json_path_key(key: str) -> str:
    return '"' + key.replace('"', '\\"') + '"'


def encode_series(series: _snap.Series) -> bytes:
    """A complex series (histogram, state, events) as stored: JSON without its labels."""
    return _encoder.encode(msgspec.structs.replace(series, labels={}))


def decode_series(data: bytes | str | None, labels: dict[str, str]) -> _snap.Series:
    """Inverse of encode_series; unknown fields ignored, missing ones empty."""
    series = _series_data_decoder.decode(data or b'{"labels":{}}')
    series.labels = labels
    return series


def _as_epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        from appvitals.timeparse import parse_epoch

        return parse_epoch(value)
    raise TypeError(f"cannot use {value!r} as a time")
