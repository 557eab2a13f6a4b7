"""The Registry: creates instruments, takes consistent snapshots, forgets and resets."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from appvitals.stats import collect as _collect
from appvitals.stats import hll as _hll
from appvitals.stats import snapshot as _snap
from appvitals.stats.instruments import (
    KINDS,
    MUTATION_LOCK,
    NOOP,
    Counter,
    Distinct,
    Events,
    Gauge,
    Histogram,
    Hooks,
    Metric,
    State,
)

if TYPE_CHECKING:  # pragma: no cover
    from appvitals.stats.store import Store

DEFAULT_MAX_SERIES = 10_000


class Registry:
    """A set of metrics of one application; `Registry(enabled=False)` makes every call a no-op."""

    def __init__(self, enabled: bool = True, max_series: int = DEFAULT_MAX_SERIES, clock=time.time) -> None:
        self.enabled = enabled
        self.max_series = max_series
        self._clock = clock
        self._metrics: dict[str, Metric] = {}
        self._define_lock = threading.Lock()
        now = clock()
        self.session_started_at = now
        self.tracking_since = now
        self._past: _snap.Snapshot | None = None
        self._overflow: Counter | None = None
        self._warned: set[str] = set()
        self._store: Store | None = None
        self._persister = None
        self._backup_unknown: dict[str, str] = {}
        self._listeners: tuple = ()
        self._hooks = Hooks(overflow=self._note_overflow, changed=self._notify_change, past=self._past_distinct)
        self._distinct_key = _hll.DistinctKey()
        self._pending_forgets: list[tuple[dict[str, str], bool]] = []  # forgets waiting for attach()

    # ------------------------------------------------------------ factories

    # Every factory also takes the view options of `snapshot.View` (how `vitals metrics` shows the
    # metric): share_of="other" / per="other" (+ ratio_unit), status="other_gauge" (+ status_text),
    # display={"A": "Device A (MacBook)"}, local="self". Sections and lines follow declaration order.

    def counter(self, name: str, help: str = "", labels: Sequence[str] = (), unit: str = "", group: str = "",
                max_series: int | None = None, **view: Any) -> Counter:
        """A counter (labelled when `labels` are given)."""
        return self._define(Counter, name, help, unit, labels, group, max_series, view=view)

    def gauge(self, name: str, help: str = "", labels: Sequence[str] = (), unit: str = "", group: str = "",
              max_series: int | None = None, **view: Any) -> Gauge:
        """A gauge; `unit="timestamp"` holds a moment (epoch seconds), shown as "2m 5s ago"."""
        return self._define(Gauge, name, help, unit, labels, group, max_series, view=view)

    def histogram(self, name: str, help: str = "", unit: str = "", labels: Sequence[str] = (), group: str = "",
                  max_series: int | None = None, **view: Any) -> Histogram:
        """A histogram with count, sum, min, max and p50/p90/p99 (1 % relative error)."""
        return self._define(Histogram, name, help, unit, labels, group, max_series, view=view)

    def state(self, name: str, help: str = "", states: Iterable[str] = (), labels: Sequence[str] = (),
              history: int = 20, group: str = "", max_series: int | None = None, **view: Any) -> State:
        """A state machine; the first of `states` is the initial state."""
        return self._define(State, name, help, "", labels, group, max_series, view=view, states=tuple(states),
                            history=history)

    def events(self, name: str, help: str = "", capacity: int = 100, group: str = "", **view: Any) -> Events:
        """A ring buffer of the last `capacity` records with totals per type."""
        return self._define(Events, name, help, "", (), group, None, view=view, capacity=capacity)

    def distinct(self, name: str, help: str = "", labels: Sequence[str] = (), group: str = "",
                 max_series: int | None = None, **view: Any) -> Distinct:
        """Distinct active ids (`.add(id)`, str or bytes) per UTC day, ISO week, month and all time.

        Only a keyed hash of each id is kept (the key lives in the attached store); counts are
        HyperLogLog estimates with at most 2 % relative error."""
        return self._define(Distinct, name, help, "", labels, group, max_series, view=view, key=self._distinct_key)

    def _define(self, cls, name, help, unit, labels, group, max_series, view=None, **options):
        if not self.enabled:
            return NOOP
        with self._define_lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if type(existing) is not cls or existing.label_names != tuple(labels):
                    raise ValueError(
                        f"metric {name!r} is already registered as a {existing.kind} with labels {list(existing.label_names)}"
                    )
                return existing
            declared = _view_of(name, labels, view or {}, len(self._metrics) + 1)
            metric = cls(self._hooks, name, help, unit, labels, group, max_series or self.max_series, **options)
            metric.view = declared
            self._metrics[name] = metric
            return metric

    def subscribe(self, listener) -> callable:
        """Call `listener()` (from the mutating thread; keep it cheap) after every state transition
        and every event record; returns a function that unsubscribes."""
        with self._define_lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._define_lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def _notify_change(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a broken listener must not break the application
                pass

    def get(self, name: str) -> Metric | None:
        """The metric registered under `name`, or None."""
        return self._metrics.get(name)

    def metrics(self) -> list[Metric]:
        """Every registered metric."""
        return list(self._metrics.values())

    def _note_overflow(self, name: str) -> None:
        # called with MUTATION_LOCK held: the overflow counter's child is a lock-free counter
        if self._overflow is None:
            self._overflow = Counter(self._hooks, "appvitals_series_overflow", "Updates sent to the overflow series because a "
                                     "metric reached its series limit", "", ("metric",), "", 10_000)
            self._metrics["appvitals_series_overflow"] = self._overflow
        self._overflow.child_locked((name,)).inc()
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"appvitals: metric {name!r} reached its series limit; new label values go to "
                          f"the '__overflow__' series", RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------ snapshots

    def snapshot(self, scope: str = "all", since: Any = None, until: Any = None) -> _snap.Snapshot:
        """A consistent point-in-time Snapshot: scope "session" (this run), "past" (earlier runs) or "all".

        With `since`/`until` (and an attached store keeping history), the snapshot covers that window."""
        if scope not in ("session", "past", "all"):
            raise ValueError(f"scope must be 'session', 'past' or 'all', not {scope!r}")
        if since is not None or until is not None:
            if self._store is None:
                raise ValueError("time windows need an attached store (reg.attach(store)) keeping history")
            self.flush()
            return self._store.window(since, until, scope=scope)
        if not self.enabled:
            return _snap.empty(self._clock(), scope=scope)
        session = self._collect()
        if scope == "session":
            return session
        past = self._past or _snap.empty(self.tracking_since, self.tracking_since, self.tracking_since, scope="past")
        if scope == "past":
            return _snap.Snapshot(taken_at=session.taken_at, tracking_since=_snap.to_datetime(self.tracking_since),
                                  session_started_at=session.session_started_at, scope="past", metrics=past.metrics)
        merged = _snap.merge(past, session, scope="all")
        merged.tracking_since = _snap.to_datetime(self.tracking_since)
        merged.taken_at = session.taken_at
        return merged

    def collect(self) -> _collect.Collected:
        """This session's raw values at one instant (see collect.py); used by the persister."""
        return _collect.collect(self._metrics.values(), self._clock)

    def _collect(self) -> _snap.Snapshot:
        """This session's values as a Snapshot."""
        return _collect.to_snapshot(self.collect(), self.session_started_at if self._store else self.tracking_since,
                                    self.session_started_at)

    # ------------------------------------------------------------ forgetting

    def forget(self, keep_totals: bool = False, **labels: Any) -> int:
        """Drop every series whose labels include all of `labels`, in memory, in the past and on
        disk (durably, before returning). Returns the number of in-memory series dropped.

        Before `attach()`, the forget is remembered and applied to the store when it is attached.
        With `keep_totals=True`, counters, histograms and distinct counts move into an anonymous
        series (the forgotten labels say "__forgotten__") and event totals stay, so "all" still
        adds up while nothing names the forgotten labels."""
        if not labels:
            raise ValueError("forget() needs at least one label, e.g. forget(user='5'); use reset() to drop everything")
        if not self.enabled:
            return 0
        want = {k: str(v) for k, v in labels.items()}
        with self._persistence_paused():
            if self._store is not None and keep_totals:
                self._persister.flush_locked()  # the session's values move in memory; the store's past moves on disk
            dropped = 0
            for m in list(self._metrics.values()):
                if isinstance(m, Events):
                    dropped += m.remove_records(keep_totals=keep_totals, **want)
                else:
                    dropped += m.remove(keep_totals=keep_totals, **want)
            with MUTATION_LOCK:
                if self._past is not None:
                    self._past = _snap.drop_series(self._past, want, keep_totals)
            if self._store is not None:
                self._store.forget(want, keep_totals=keep_totals, session_run=self._persister.run_id)
            else:
                self._pending_forgets.append((want, keep_totals))
        return dropped

    def _persistence_paused(self):
        """No flush may interleave with a forget or reset (it could write back what was just removed)."""
        if self._persister is not None:
            return self._persister.paused()
        return contextlib.nullcontext()

    def reset(self) -> None:
        """Forget everything, in memory and on disk; tracking starts again now."""
        if not self.enabled:
            return
        now = self._clock()
        with self._persistence_paused():
            with MUTATION_LOCK:
                for m in self._metrics.values():
                    m._zero_all_locked()
                self._past = None
                self.tracking_since = now
            if self._store is not None:
                self._store.reset(now)

    # ------------------------------------------------------------ persistence

    def attach(self, store: Store, interval: float = 15.0, history: Any = None, log: str | None = None,
               log_every: str = "day", namespace: str = "") -> None:
        """Restore earlier sessions from `store`, then flush to it every `interval` seconds and at exit.

        With `log="stats.csv"`, one CSV row per closed `log_every` period ("hour", "day", "week",
        "month", UTC) is appended to that file, on start for periods that closed while the app was
        down (see appvitals.period_rows).

        `namespace`: keep this registry apart from others in the same store (one per library, say);
        detaching then leaves the store open for the others."""
        from appvitals.stats.periods import PeriodLog
        from appvitals.stats.persist import Persister

        if not self.enabled:
            return
        if not 1.0 <= interval <= 300.0:
            raise ValueError("interval must be between 1 and 300 seconds")
        if self._store is not None:
            raise RuntimeError("this registry is already attached to a store")
        if namespace:
            store = store.namespace(namespace)
        period_log = PeriodLog(log, log_every) if log is not None else None
        persister = Persister(self, store, interval, history, period_log)
        for want, keep_totals in self._pending_forgets:  # before the past is read back: it never returns
            store.forget(want, keep_totals=keep_totals)
        self._pending_forgets = []
        self._store = store
        self._persister = persister
        try:
            persister.start()
        except BaseException:  # e.g. a full disk while restoring: stay detached, nothing half-done
            self._store = None
            self._persister = None
            raise

    def flush(self) -> None:
        """Write this session's changes to the attached store now (one transaction)."""
        if self._persister is not None:
            self._persister.flush()

    def detach(self) -> None:
        """Flush one last time and stop the background flusher."""
        if self._persister is not None:
            self._persister.stop()
            self._persister = None
            self._store = None

    def export_backup(self, path: str | None = None) -> str:
        """The text backup (one key=value a line) of all stats; written atomically to `path` if given."""
        from appvitals.stats import backup

        text = backup.dump(self.snapshot(scope="all"), unknown=self._backup_unknown)
        if path is not None:
            import os

            warnings.warn(f"appvitals: the backup {path} holds label values (user ids, servers) in plain text; "
                          f"it is readable by its owner only (0600): keep it as safe as the data it describes",
                          RuntimeWarning, stacklevel=2)
            tmp = f"{path}.tmp{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # also when an older temporary file was there
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return text

    def import_backup(self, source: str) -> _snap.Snapshot:
        """Add a text backup (a path, or the text itself) to the past; unknown keys are kept for re-export."""
        import os

        from appvitals.stats import backup

        text = open(source, encoding="utf-8").read() if os.path.exists(source) else source
        loaded, unknown = backup.load(text)
        with self._persistence_paused():
            with MUTATION_LOCK:
                self._past = loaded if self._past is None else _snap.merge(self._past, loaded, scope="past")
                self._backup_unknown.update(unknown)
            if self._store is not None:
                self._store.add_past(loaded)
        return loaded

    def restore_past(self, past: _snap.Snapshot | None, tracking_since: float) -> None:
        """Adopt earlier sessions (read back from a store) as the past; used when attaching."""
        with MUTATION_LOCK:
            self._past = past
            self.tracking_since = tracking_since
            # a distinct series carries the earlier sessions' sketches (a union, so merging the past
            # again on read changes nothing): a day that spans a restart counts each id once
            for m in self._metrics.values():
                if isinstance(m, Distinct):
                    m.seed_existing_locked()

    def _past_distinct(self, name: str, key: tuple[str, ...]) -> _hll.DistinctData | None:
        past = self._past
        metric = past.metric(name) if past is not None else None
        if metric is None or metric.kind != "distinct":
            return None
        labels = dict(zip(metric.label_names, key))
        for s in metric.series:
            if s.labels == labels:
                return s.hll
        return None

    def distinct_key(self) -> bytes:
        """The key distinct ids are hashed with."""
        return self._distinct_key.key

    def use_distinct_key(self, key: bytes) -> None:
        """Hash distinct ids with `key` (the attached store's), so sketches merge across runs."""
        if key == self._distinct_key.key:
            return
        with MUTATION_LOCK:
            used = any(m.used_locked() for m in self._metrics.values() if isinstance(m, Distinct))
        if used:
            warnings.warn("appvitals: distinct ids added before attach() were hashed with another key; an id "
                          "seen both before and after attaching may be counted twice", RuntimeWarning, stacklevel=3)
        with MUTATION_LOCK:
            self._distinct_key.set(key)
            for m in self._metrics.values():
                if isinstance(m, Distinct):
                    m.rekey_locked()


def _view_of(name: str, labels: Sequence[str], options: dict[str, Any], order: int) -> _snap.View:
    """The declared view of a metric, checked: a clear error for an unknown or ill-typed option."""
    known = [f for f in _snap.View.__struct_fields__ if f != "order"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"metric {name!r}: unknown option {unknown[0]!r} (view options: {', '.join(known)})")
    if options.get("share_of") and options.get("per"):
        raise ValueError(f"metric {name!r}: give share_of or per, not both")
    if name in (options.get("share_of"), options.get("per"), options.get("status")):
        raise ValueError(f"metric {name!r} cannot refer to itself")
    if options.get("status") and not labels:
        raise ValueError(f"metric {name!r}: status= needs a labelled metric (the status is per label value)")
    for words in ("status_text", "display"):  # label values are strings: {1: "online"} means {"1": ...}
        if options.get(words) is not None:
            options = {**options, words: {str(k): str(v) for k, v in dict(options[words]).items()}}
    if options.get("local") is not None:
        options = {**options, "local": str(options["local"])}
    try:
        return msgspec.convert({**options, "order": order}, _snap.View)
    except msgspec.ValidationError as exc:
        raise TypeError(f"metric {name!r}: {exc}") from None


def value_of(snapshot: _snap.Snapshot, name: str, **labels: Any) -> float:
    """Convenience: one counter/gauge value from a snapshot."""
    return snapshot.value(name, **labels)


__all__ = ["Registry", "KINDS", "DEFAULT_MAX_SERIES"]
