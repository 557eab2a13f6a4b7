"""Periodic, incremental persistence of a registry into a Store.

A flush reads the registry's raw values (one consistent sweep), compares them with what
the previous flush wrote and writes only the changed series, in one transaction. Counter
cells are compared by their C-level reprs, so finding 1,000 changes among 100,000 series
costs a list comparison, not 100,000 snapshots.

Flushes happen every `interval` seconds in a daemon thread, on `reg.flush()`, at normal
interpreter exit, and on SIGTERM (the application's own handler still runs afterwards).
"""

from __future__ import annotations

import atexit
import itertools
import operator
import os
import signal
import threading
import time
from typing import Any, Protocol

import msgspec

from appvitals.stats import collect as _collect
from appvitals.stats.store import HistoryPolicy, Store, encode_labels, encode_series, encode_view


class Persistable(Protocol):
    """What the persister needs of a registry: its collected form, its past and its key.

    A Protocol, so that persistence depends on this narrow surface and not on the Registry
    class (which creates the persister in `attach()`)."""

    session_started_at: float

    def collect(self) -> _collect.Collected: ...

    def restore_past(self, past: Any, tracking_since: float) -> None: ...

    def distinct_key(self) -> bytes: ...

    def use_distinct_key(self, key: bytes) -> None: ...

    def snapshot(self, scope: str = "all", since: Any = None, until: Any = None) -> Any: ...


def _snapshot_time(now: float):
    from appvitals.stats.snapshot import to_datetime

    return to_datetime(now)


def _snap_epoch(value) -> float:
    from appvitals.stats.snapshot import to_epoch

    return to_epoch(value)


def _stamp(now: float) -> bytes:
    """What a counter or gauge row keeps in its data column: when it last changed (JSON)."""
    return msgspec.json.encode({"updated_at": _snapshot_time(now)})


class Persister:
    """Keeps one registry's session flushed into one store."""

    def __init__(self, registry: Persistable, store: Store, interval: float, history: HistoryPolicy | None = None,
                 period_log=None) -> None:
        self.registry = registry
        self.period_log = period_log
        self.store = store
        self.interval = interval
        if history is not None:
            store.history = history
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: dict[str, Any] = {}  # metric -> what the last flush wrote
        self._defs_written: dict[str, tuple] = {}
        self._label_json: dict[tuple[str, tuple], str] = {}
        self._last_history: float | None = None
        self._previous_sigterm: Any = None
        self._term_pending = False
        self._term_flushed = False
        self.run_id = 0
        self.flushes = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Restore earlier runs into the registry's past and start flushing."""
        reg = self.registry
        reg.use_distinct_key(self.store.distinct_key(reg.distinct_key()))
        run, past, tracking_since = self.store.begin_run(reg.session_started_at)
        self.run_id = run
        reg.restore_past(past, tracking_since)
        self._last_history = self.store.last_history_at()
        if self.period_log is not None:  # periods that closed while the application was down
            self.period_log.catch_up(self.store)
        self._thread = threading.Thread(target=self._loop, name="appvitals-flush", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)
        self._install_sigterm()

    def paused(self) -> threading.Lock:
        """Hold this (a context manager) to keep flushes out, e.g. while forgetting."""
        return self._flush_lock

    def stop(self) -> None:
        """Final flush; stop the thread; close the store."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        try:
            self.flush()
        finally:
            atexit.unregister(self._at_exit)
            self._restore_sigterm()
            self.store.close()

    def _wait(self) -> float:
        """Seconds to the next flush: the interval, or less when a logged period ends sooner."""
        if self.period_log is None:
            return self.interval
        return max(0.05, min(self.interval, self.period_log.next_due - time.time() + 0.05))

    def _loop(self) -> None:
        while not self._stop.wait(self._wait()):
            try:
                self.flush()
                if self.period_log is not None and time.time() >= self.period_log.next_due:
                    self.period_log.catch_up(self.store)
            except Exception as exc:  # keep the app alive; the next flush retries everything unwritten
                import warnings

                warnings.warn(f"appvitals: flush failed: {exc}", RuntimeWarning, stacklevel=1)

    def _at_exit(self) -> None:
        try:
            self.flush()
        except Exception:
            pass

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            self._previous_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
            except (ValueError, OSError):
                pass

    def _on_sigterm(self, signum, frame) -> None:
        # The handler may have interrupted the main thread inside an instrument's locked section, so
        # it must not flush here (that would wait on a lock its own thread holds). A helper thread
        # flushes once the main thread has moved on, then sends SIGTERM again; this handler then
        # hands over to the application's handler, or to the default action.
        if self._term_flushed:
            self._chain_sigterm(signum, frame)
        elif not self._term_pending:
            self._term_pending = True
            threading.Thread(target=self._flush_then_resignal, args=(signum,), name="appvitals-sigterm",
                             daemon=True).start()

    def _flush_then_resignal(self, signum: int) -> None:
        try:
            self.flush()
        except Exception:
            pass
        self._term_flushed = True
        os.kill(os.getpid(), signum)

    def _chain_sigterm(self, signum, frame) -> None:
        self._term_flushed = self._term_pending = False
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # default action: die of SIGTERM, as the app would have without us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    # ------------------------------------------------------------ flushing

    def flush(self) -> int:
        """Write what changed since the last flush, in one transaction; returns the number of rows written."""
        with self._flush_lock:
            return self.flush_locked()

    def flush_locked(self) -> int:
        """flush() for a caller already holding `paused()`."""
        reg = self.registry
        collected = reg.collect()
        now = collected.now
        rows: list[tuple] = []
        defs: list[tuple] = []
        pending: dict[str, Any] = {}
        run = self.run_id
        for metric, data in collected.entries:
            d = (metric.name, metric.kind, metric.help, metric.unit, metric.group,
                 msgspec.json.encode(list(metric.label_names)).decode(),
                 getattr(metric, "capacity", None) or getattr(metric, "history_size", None),
                 encode_view(metric.view))
            if self._defs_written.get(metric.name) != d:
                defs.append(d)
                pending["__def__" + metric.name] = d
            if isinstance(data, _collect.CounterCells):
                rows.extend(self._counter_rows(metric, data, run, pending, now))
            else:
                rows.extend(self._other_rows(metric, data, run, now, pending))
        history = None
        policy = self.store.history
        if policy.enabled and (self._last_history is None or now - self._last_history >= policy.fine_every):
            history = lambda: reg.snapshot(scope="all")  # noqa: E731
        if rows or defs or history is not None or self.flushes == 0:
            self.store.write_flush(run, now, defs, rows, history)
        # only now is it written: remember it, so a failed flush is retried in full
        for key, value in pending.items():
            if key.startswith("__def__"):
                self._defs_written[key[7:]] = value
            else:
                self._written[key] = value
        if history is not None:
            self._last_history = now
        self.flushes += 1
        return len(rows)

    def _labels(self, metric, key: tuple) -> str:
        cache_key = (metric.name, key)
        text = self._label_json.get(cache_key)
        if text is None:
            text = encode_labels(metric.label_names, key)
            if len(self._label_json) < 1_000_000:
                self._label_json[cache_key] = text
        return text

    def _counter_rows(self, metric, data: _collect.CounterCells, run: int, pending: dict, now: float) -> list[tuple]:
        keys, texts, extras = data.keys, data.texts, data.extras
        prev = self._written.get(metric.name)
        n = len(texts)
        if prev is not None and prev[0] is keys and len(prev[1]) <= n:
            old_texts, old_extras = prev[1], prev[2]
            m = len(old_texts)
            # C-level comparisons (map/compress): 100,000 unchanged cells cost a few milliseconds
            differs = list(map(operator.ne, texts, old_texts))
            if extras != old_extras:
                differs = list(map(operator.or_, differs, map(operator.ne, extras, old_extras)))
            changed = list(itertools.compress(range(m), differs))
            changed.extend(range(m, n))
        else:
            changed = range(n)
        stamp = _stamp(now)
        rows = [(run, metric.name, self._labels(metric, keys[i]), data.value(i), stamp) for i in changed]
        pending[metric.name] = (keys, texts, extras)
        return rows

    def _other_rows(self, metric, data, run: int, now: float, pending: dict) -> list[tuple]:
        prev = self._written.get(metric.name) or {}
        current = {}
        rows = []
        if metric.kind == "state":  # time in the current state grows between transitions
            changed = list(data)
        else:
            changed = [(key, value) for key, value in data if prev.get(key) != value]
        for key, value in data:
            current[key] = value
        if changed:
            snap = _collect.metric_snapshot(metric, changed, now)
            by_key = {tuple(s.labels.get(n, "") for n in metric.label_names): s for s in snap.series}
            for key, _ in changed:
                s = by_key[key]
                if metric.kind == "gauge":
                    at = _stamp(_snap_epoch(s.updated_at)) if s.updated_at is not None else None
                    rows.append((run, metric.name, self._labels(metric, key), s.value or 0.0, at))
                else:
                    if metric.kind == "state":  # last changed when it entered its current state
                        s.updated_at = s.entered_at
                    elif metric.kind != "distinct":  # a distinct series knows its last add() itself
                        s.updated_at = _snapshot_time(now)
                    rows.append((run, metric.name, self._labels(metric, key), None, encode_series(s)))
        pending[metric.name] = current
        return rows
