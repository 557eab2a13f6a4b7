"""The in-process agent: a Python app reports its own CPU% and lifecycle to a collector.

    agent = Agent("http://collector:8080", app_version="7.0.0")
    agent.start()                         # session line; sampling + upload threads; end at exit
    with agent.stage("indexing"):         # samples taken meanwhile carry stage=indexing
        ...
    agent.event("file_received", file_name_length=57)

Every line gets its `seq` and goes to the on-disk spool before any upload; the uploader
removes it after the collector's `200`. A spool left by an earlier (crashed) run is
replayed on start (after asking `replay_consent` when it is big). When the collector
pushes back, sampling slows down (interval x uploader.pressure) and recovers later.

`clock`, `cpu_source` and `background=False` make the agent drivable step by step: the
simulator runs many agents in compressed time this way, and `vitals watchdog` uses
`cpu_source` to measure another process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from appvitals.fleet.client.recorder import Recorder
from appvitals.fleet.client.spool import DEFAULT_MAX_BYTES, Spool, SpoolBusy, write_atomic
from appvitals.fleet.client.uploader import Uploader
from appvitals.fleet.wire.protocol import (
    MAX_LINE_BYTES,
    AnyLine,
    AttrValue,
    EndLine,
    decode_line,
    encode_line,
)

log = logging.getLogger("appvitals.agent")

DEFAULT_REPLAY_THRESHOLD = 5 * 1024 * 1024
# seq of the `end` line written for a run that died without one: above any real seq (so
# seq still increases within the session), the same on every retry (so it is deduplicated)
# and exact in JSON/JavaScript doubles.
CRASH_END_SEQ = 2**53 - 1
SPOOL_SLOTS = 8  # instances of one app that may run at once with the same home
ConsentCallback = Callable[[int, int], bool]  # (backlog bytes, backlog lines) -> replay?


def default_home(name: str = "default") -> Path:
    """Where an agent keeps its spool and client id: $APPVITALS_HOME or the user cache dir."""
    base = os.environ.get("APPVITALS_HOME")
    if base:
        return Path(base) / name
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "appvitals" / name


def system_attrs() -> dict[str, AttrValue]:
    """os, os_version, cpu_count and python of this machine, as session attrs."""
    system = platform.system().lower()
    if system == "darwin":
        system, version = "macos", platform.mac_ver()[0]
    elif system == "windows":
        version = platform.version()
    else:
        version = platform.release()
    return {
        "os": system or "unknown",
        "os_version": version or "unknown",
        "cpu_count": os.cpu_count() or 1,
        "python": platform.python_version(),
    }


def process_cpu_source(pid: int | None = None) -> Callable[[], float]:
    """CPU% of one core used by process `pid` (this one by default) since the previous call."""
    from appvitals.extras import require

    require("agent")
    import psutil

    proc = psutil.Process(pid)
    proc.cpu_percent(None)  # prime: the first reading is always 0.0
    return lambda: proc.cpu_percent(None)


def _client_id(home: Path) -> str:
    path = home / "client_id"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    cid = uuid.uuid4().hex
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("client_id.tmp")
    tmp.write_text(cid)
    os.replace(tmp, path)
    return cid


class Agent:
    """Reports this run (one session) of an app: CPU samples, stages, events, end."""

    def __init__(
        self,
        url: str | None,
        *,
        app_version: str = "",
        attrs: dict[str, AttrValue] | None = None,
        name: str = "default",
        home: str | os.PathLike | None = None,
        client_id: str | None = None,
        session_id: str | None = None,
        interval: float = 1.0,
        token: str | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        replay_threshold: int = DEFAULT_REPLAY_THRESHOLD,
        replay_consent: ConsentCallback | None = None,
        batch_seconds: float = 10.0,
        batch_bytes: int = 256 * 1024,
        fsync_every: float = 1.0,
        clock: Callable[[], float] = time.time,
        cpu_source: Callable[[], float] | None = None,
        system_info: bool = True,
        background: bool = True,
        close_at_exit: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0 seconds")
        self.url = url
        self.home = Path(home) if home is not None else default_home(name)
        self.interval = interval
        self.token = token
        self.spool_max_bytes = spool_max_bytes
        self.replay_threshold = replay_threshold
        self.replay_consent = replay_consent
        self.batch_seconds = batch_seconds
        self.batch_bytes = batch_bytes
        self.fsync_every = fsync_every
        self.clock = clock
        self.cpu_source = cpu_source
        self.background = background
        self.close_at_exit = close_at_exit
        self.session_attrs: dict[str, AttrValue] = {}
        if app_version:
            self.session_attrs["app_version"] = app_version
        if system_info:
            self.session_attrs.update(system_attrs())
        self.session_attrs.update(attrs or {})
        self.client_id = client_id or _client_id(self.home)
        self.session_id = session_id or uuid.uuid4().hex
        self.recorder = Recorder(self.session_id, self.client_id, clock)
        self.spool: Spool | None = None
        self.uploader: Uploader | None = None
        self.replayed_lines = 0
        self.declined_lines = 0
        self.crashed_sessions: list[str] = []  # runs start() found dead without an `end` line
        self.spool_dir = self.home / "spool"
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake_upload = threading.Event()
        self._upload_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._appended_since_upload = 0
        self._started = False
        self._closed = False

    # ---- life cycle ------------------------------------------------------------------------

    def start(self) -> Agent:
        """Open the spool (replaying an old one), send the session line, start the threads."""
        if self._started:
            return self
        self.spool = self._open_spool()
        self._adopt_idle_spools()
        self._consider_replay()
        self._end_crashed_run(self.spool_dir / "running.json", self.spool)
        write_atomic(self.spool_dir / "running.json", json.dumps(
            {"session_id": self.session_id, "client_id": self.client_id, "pid": os.getpid()}).encode())
        if self.url:
            self.uploader = Uploader(self.url, self.spool, token=self.token, batch_bytes=self.batch_bytes)
        self._started = True
        self._append(self.recorder.session(self.session_attrs))
        if self.background:
            if self.cpu_source is None:
                self.cpu_source = process_cpu_source()
            self._spawn(self._sample_loop, "appvitals-sampler")
            if self.uploader is not None:
                self._spawn(self._upload_loop, "appvitals-uploader")
        if self.close_at_exit:
            atexit.register(self.close)
        return self

    def _consider_replay(self) -> None:
        assert self.spool is not None
        backlog_bytes, backlog_lines = self.spool.backlog_bytes, self.spool.backlog_lines
        if not backlog_lines:
            return
        if backlog_bytes > self.replay_threshold and self.replay_consent is not None:
            try:
                ok = bool(self.replay_consent(backlog_bytes, backlog_lines))
            except Exception:  # a broken callback must not break the app; keep the data
                log.exception("replay_consent failed; keeping the spool")
                ok = True
            if not ok:
                self.declined_lines = self.spool.discard_pending()
                return
        self.replayed_lines = backlog_lines

    def _open_spool(self) -> Spool:
        # Several instances of one app (or several watchdogs) may share a home: each takes
        # the first spool slot no other live process holds.
        for i in range(SPOOL_SLOTS):
            path = self.home / ("spool" if i == 0 else f"spool.{i}")
            try:
                spool = Spool(path, max_bytes=self.spool_max_bytes, fsync_every=self.fsync_every)
            except SpoolBusy:
                continue
            self.spool_dir = path
            return spool
        raise SpoolBusy(f"all {SPOOL_SLOTS} spool slots under {self.home} are in use")

    def _adopt_idle_spools(self) -> None:
        # A slot left behind by an instance that ran alongside us is nobody's now: move its
        # unsent lines (bytes unchanged, so seqs too) into our spool before it is forgotten.
        assert self.spool is not None
        for path in sorted(self.home.glob("spool*")):
            if path == self.spool_dir or not path.is_dir():
                continue
            try:
                other = Spool(path, max_bytes=self.spool_max_bytes)
            except SpoolBusy:
                continue
            try:
                self._end_crashed_run(path / "running.json", other)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path / "running.json")
                while True:
                    batch = other.read()
                    if not batch.lines:
                        break
                    self.spool.append(batch.lines)
                    self.spool.sync()
                    other.commit(batch.end)
                carried = other.dropped_unreported()
                if carried:
                    self.spool.add_dropped(carried)
                    other.mark_reported(carried)
            finally:
                other.close()
        self.spool.backlog_bytes = self.spool.pending_bytes()
        self.spool.backlog_lines = self.spool.pending_lines()

    def _end_crashed_run(self, marker: Path, spool: Spool) -> None:
        # `running.json` names a spool's session in progress; a clean close() removes it.
        # Found while we hold that spool's lock (its process is gone): that run crashed.
        assert self.spool is not None
        try:
            old = json.loads(marker.read_bytes())
            sid = str(old["session_id"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s", marker)
            return
        if sid == self.session_id:
            return
        ts = int(spool.last_append_time() * 1000) or int(self.clock() * 1000)
        end = EndLine(session_id=sid, ts=ts, seq=CRASH_END_SEQ, reason="crashed")
        self.spool.append([encode_line(end)])
        self.crashed_sessions.append(sid)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("error" if exc_type else "exit")

    def close(self, reason: str = "exit", flush: bool = True, timeout: float = 5.0) -> None:
        """Send the end line, stop the threads, try to upload what is left for `timeout` seconds."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True
            self._append(self.recorder.end(reason))
        self._stop.set()
        self._wake_upload.set()
        for t in self._threads:
            t.join(timeout=max(timeout, 1.0))
        if self.uploader is not None and self._upload_lock.acquire(timeout=max(timeout, 0.1)):
            try:
                if flush:
                    # a dead collector must not hold the app's exit longer than `timeout`
                    self.uploader.close()
                    self.uploader.timeout = min(self.uploader.timeout, max(timeout, 0.5))
                    self.uploader.flush(timeout=timeout)
            except Exception:  # at exit nothing may raise; the spool keeps the lines for next time
                log.exception("final upload failed")
            finally:
                self.uploader.close()
                self._upload_lock.release()
        assert self.spool is not None
        self.spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool_dir / "running.json")
        if self.close_at_exit:
            atexit.unregister(self.close)

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._closed

    # ---- what the app reports --------------------------------------------------------------

    def _append(self, line: AnyLine) -> None:
        data = encode_line(line)
        try:
            if len(data) > MAX_LINE_BYTES:
                raise ValueError(f"line of {len(data)} bytes is over the {MAX_LINE_BYTES}-byte limit")
            # the collector's own check, here: a bad attr is the app's ValueError now, not a
            # line silently rejected later (LineError is a ValueError)
            decode_line(data)
        except ValueError:
            if line.session_id == self.session_id and line.seq == self.recorder.next_seq - 1:
                self.recorder.next_seq -= 1  # give the seq back: no gap for a refused call
            raise
        assert self.spool is not None
        self.spool.append([data])
        self._appended_since_upload += len(data) + 1
        if self._appended_since_upload >= self.batch_bytes:
            self._wake_upload.set()

    def _check_open(self) -> None:
        if not self._started:
            raise RuntimeError("Agent.start() was not called")
        if self._closed:
            raise RuntimeError("Agent is closed")

    def set_stage(self, name: str | None, **attrs: AttrValue) -> None:
        """Attach stage `name` (and `attrs`) to the following samples; None clears it."""
        with self._lock:
            self.recorder.set_stage(name, attrs)

    @contextlib.contextmanager
    def stage(self, name: str, **attrs: AttrValue) -> Iterator[None]:
        """`with agent.stage("indexing"):` samples taken inside carry stage=indexing."""
        with self._lock:
            previous = dict(self.recorder.stage_attrs)
            self.recorder.set_stage(name, attrs)
        try:
            yield
        finally:
            with self._lock:
                self.recorder.stage_attrs = previous

    def event(self, name: str, **attrs: AttrValue) -> None:
        """Record that something happened (login, file_received with file_name_length=57...)."""
        if not name:
            raise ValueError("event name must not be empty")
        with self._lock:
            self._check_open()
            self._append(self.recorder.event(name, attrs))

    def sample(self, cpu: float | None = None, **values: float) -> None:
        """Take one CPU sample now (from `cpu_source` unless `cpu` is given)."""
        if cpu is None:
            if self.cpu_source is None:
                self.cpu_source = process_cpu_source()
            cpu = self.cpu_source()
        with self._lock:
            self._check_open()
            self._append(self.recorder.sample(cpu, values or None))

    def flush(self, timeout: float | None = None) -> bool:
        """Upload everything spooled now; True when the spool is empty afterwards."""
        if self.uploader is None:
            return False
        with self._upload_lock:
            self._appended_since_upload = 0
            ok = self.uploader.flush(timeout=timeout)
            if self._report_dropped():
                ok = self.uploader.flush(timeout=timeout)
            return ok

    # ---- background threads ----------------------------------------------------------------

    def current_interval(self) -> float:
        """The sampling interval now: slower while the collector pushes back."""
        pressure = self.uploader.pressure if self.uploader is not None else 1.0
        return self.interval * pressure

    def _sample_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.current_interval()
            delay = next_at - time.monotonic()
            if delay < 0:  # we fell behind (suspended laptop, starved CPU): skip, do not burst
                next_at = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                return
            try:
                self.sample()
            except RuntimeError:
                return
            except Exception:
                log.exception("sampling failed")

    def _upload_loop(self) -> None:
        assert self.uploader is not None
        while not self._stop.is_set():
            self._wake_upload.wait(self.batch_seconds)
            self._wake_upload.clear()
            if self._stop.is_set():
                return
            self._appended_since_upload = 0
            while not self._stop.is_set():
                with self._upload_lock:
                    outcome = self.uploader.send_once()
                if outcome.status == "empty":
                    break
                if outcome.status == "sent":
                    self._report_dropped()
                elif self._stop.wait(outcome.delay):
                    return

    def _report_dropped(self) -> bool:
        # Called after a 200: the collector is back, so the count reaches it promptly.
        # (A crash between the append and mark_reported reports the count twice; the
        # running `dropped_total` attr lets a reader see that.)
        assert self.spool is not None
        with self._lock:
            n = self.spool.dropped_unreported()
            if not n or self._closed:
                return False
            attrs: dict[str, AttrValue] = {"count": n, "dropped_total": self.spool.dropped_total}
            self._append(self.recorder.event("spool_dropped", attrs))
            self.spool.mark_reported(n)
            return True
