"""The instruments: Counter, Gauge, Histogram, State and Events, with labelled families.

How one number is stored lives in the `_*Child` classes; the families around them only
validate labels and cache children. The hot path is one call deep:

- A counter series is an `itertools.count` subclass: `inc()` is `next(self)`, a single C
  call that the GIL makes atomic, so 8 threads incrementing lose nothing without a lock.
  Other amounts (`inc(2.5)`) go to `_extra` under the module's mutation lock.
- Everything else mutates under `MUTATION_LOCK`. A snapshot takes that lock and reads every
  counter in one C-level sweep (`list(map(repr, cells))`, during which no other thread can
  run), so it is a consistent point in time across all metrics of the registry.
"""

from __future__ import annotations

import collections
import itertools
import keyword
import math
import operator
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appvitals.stats import hll as _hll
from appvitals.stats.sketch import INV_LOG_GAMMA, MIN_POSITIVE

MUTATION_LOCK = threading.Lock()
OVERFLOW = "__overflow__"
FORGOTTEN = "__forgotten__"  # label value of the anonymous series forget(..., keep_totals=True) fills
MAX_EVENT_FIELDS = 10_000

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_log = math.log
_ceil = math.ceil
_now = time.time


class LabelError(ValueError):
    """Wrong, missing or extra label names."""


class Hooks:
    """What an instrument may tell its owner, and nothing more: a family reached its series
    limit (`overflow(name)`, called with MUTATION_LOCK held), or a state/event changed
    (`changed()`, called after the lock is released, from the mutating thread)."""

    __slots__ = ("changed", "overflow", "past")

    def __init__(self, overflow: Callable[[str], None] | None = None, changed: Callable[[], None] | None = None,
                 past: Callable[[str, tuple], Any] | None = None) -> None:
        self.overflow = overflow or _ignore
        self.changed = changed
        self.past = past  # past(name, key): earlier sessions' distinct sketches of that series, or None


def _ignore(name: str) -> None:
    pass


# ---------------------------------------------------------------- how one number is stored


class _CounterChild(itertools.count):
    """One counter series: unit increments are `next(self)`; other amounts go to `_extra`."""

    __slots__ = ("_extra", "__weakref__")

    def __new__(cls):
        self = super().__new__(cls)
        self._extra = 0
        return self

    def inc(self, amount: float = 1) -> None:
        """Add `amount` (default 1, must be >= 0)."""
        if amount == 1:
            next(self)
        elif amount > 0:
            with MUTATION_LOCK:
                self._extra += amount
        elif amount != 0:
            raise ValueError("counters only go up: use a gauge for values that go down")

    def get(self) -> float:
        """The current value (not synchronised with other series; use a snapshot for that)."""
        with MUTATION_LOCK:
            return count_of(repr(self)) + self._extra

    def _zero(self) -> None:  # caller holds MUTATION_LOCK
        self._extra = -count_of(repr(self))

    def _used(self) -> bool:  # caller holds MUTATION_LOCK
        return count_of(repr(self)) + self._extra != 0

    def _absorb(self, other: _CounterChild) -> None:  # caller holds MUTATION_LOCK
        self._extra += count_of(repr(other)) + other._extra


_PREFIX = len("_CounterChild(")
_EXTRA = operator.attrgetter("_extra")


def count_of(text: str) -> int:
    """A counter cell's unit count from its repr (the snapshot sweep reads reprs)."""
    return int(text[_PREFIX:-1])


class _GaugeChild:
    __slots__ = ("_value", "_at", "__weakref__")

    def __init__(self) -> None:
        self._value = 0.0
        self._at = 0.0  # when it was last set (0: never), so that the latest value wins a merge

    def set(self, value: float) -> None:
        """Set the gauge to `value`."""
        with MUTATION_LOCK:
            self._value = float(value)
            self._at = _now()

    def inc(self, amount: float = 1) -> None:
        """Add `amount` (may be negative)."""
        with MUTATION_LOCK:
            self._value += amount
            self._at = _now()

    def dec(self, amount: float = 1) -> None:
        """Subtract `amount`."""
        with MUTATION_LOCK:
            self._value -= amount
            self._at = _now()

    def get(self) -> float:
        """The current value."""
        return self._value

    def _zero(self) -> None:
        self._value = 0.0
        self._at = 0.0

    def _used(self) -> bool:
        return self._at != 0.0

    def _read(self):
        return (self._value, self._at)


class _Timer:
    __slots__ = ("_child", "_scale", "_start")

    def __init__(self, child, scale: float) -> None:
        self._child, self._scale = child, scale

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._child.observe((time.perf_counter() - self._start) * self._scale)


class _HistogramChild:
    # no count field: it is derived from the buckets (one less store on the hot path, and no
    # second number that could drift from them)
    __slots__ = ("sum", "min", "max", "zero", "pos", "neg", "_scale", "__weakref__")

    def __init__(self, scale: float = 1.0) -> None:
        self._scale = scale
        self._zero()

    def observe(self, value: float, _lock=MUTATION_LOCK, _log=_log, _ceil=_ceil, _k=INV_LOG_GAMMA,
                _eps=MIN_POSITIVE) -> None:
        """Record one value: sum, min, max and the quantile sketch (the count is the buckets' total)."""
        with _lock:
            self.sum += value
            if value < self.min:
                self.min = value
            if value > self.max:
                self.max = value
            if value > _eps:
                i = _ceil(_log(value) * _k)
                try:
                    self.pos[i] += 1  # no method call on the common path (bucket already seen)
                except KeyError:
                    self.pos[i] = 1
            elif value < -_eps:
                i = _ceil(_log(-value) * _k)
                try:
                    self.neg[i] += 1
                except KeyError:
                    self.neg[i] = 1
            else:
                self.zero += 1

    def time(self) -> _Timer:
        """Context manager observing the elapsed time in the histogram's unit."""
        return _Timer(self, self._scale)

    @property
    def count(self) -> int:
        """How many values were observed."""
        return self.zero + sum(self.pos.values()) + sum(self.neg.values())

    def _zero(self) -> None:
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zero = 0
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}

    def _read(self):
        return (self.count, self.sum, self.min, self.max, self.zero, dict(self.pos), dict(self.neg))

    def _used(self) -> bool:
        return bool(self.zero or self.pos or self.neg)

    def _absorb(self, other: _HistogramChild) -> None:
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.zero += other.zero
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for i, n in theirs.items():
                mine[i] = mine.get(i, 0) + n


class _StateChild:
    __slots__ = ("current", "entered_at", "times", "transitions", "history", "_allowed", "_changed", "__weakref__")

    def __init__(self, allowed: tuple[str, ...], history: int, changed=None) -> None:
        self._changed = changed  # the registry's change notifier: live streams push transitions at once
        self._allowed = frozenset(allowed)
        self.current: str | None = allowed[0] if allowed else None
        self.entered_at = _now()
        self.times: dict[str, float] = {}
        self.transitions: dict[str, int] = {}
        self.history: collections.deque = collections.deque(maxlen=history)

    def set(self, state: str, reason: str | None = None) -> None:
        """Enter `state`; time in the previous state, the transition and `reason` are recorded."""
        if self._allowed and state not in self._allowed:
            raise ValueError(f"unknown state {state!r}; expected one of {sorted(self._allowed)}")
        with MUTATION_LOCK:
            now = _now()
            previous = self.current
            if previous is not None:
                self.times[previous] = self.times.get(previous, 0.0) + (now - self.entered_at)
            if previous != state:
                key = f"{previous}->{state}"
                self.transitions[key] = self.transitions.get(key, 0) + 1
                self.history.append((now, previous, state, reason))
            self.current = state
            self.entered_at = now
        if previous != state and self._changed is not None:
            self._changed()

    def _zero(self) -> None:
        self.entered_at = _now()
        self.times = {}
        self.transitions = {}
        self.history.clear()

    def _read(self):
        return (self.current, self.entered_at, dict(self.times), dict(self.transitions), list(self.history))

    def _used(self) -> bool:
        return bool(self.transitions)


class _EventsChild:
    __slots__ = ("recent", "total", "by_type", "_changed", "by_field", "__weakref__")

    def __init__(self, capacity: int, changed=None) -> None:
        self._changed = changed
        self.recent: collections.deque = collections.deque(maxlen=capacity)
        self.total = 0
        self.by_type: dict[str, int] = {}
        # "field=value" -> {type: count}: what forget(field=value) takes off total and by_type,
        # including records the ring has already let go
        self.by_field: dict[str, dict[str, int]] = {}

    def record(self, type: str = "event", message: str = "", **fields: Any) -> None:
        """Keep one record in the ring buffer and count it by `type`."""
        rec = {"type": str(type), "message": str(message)}
        for k, v in fields.items():
            rec[k] = v if isinstance(v, (int, float, bool)) or v is None else str(v)
        with MUTATION_LOCK:
            rec["at"] = _now()
            self.recent.append(rec)
            self.total += 1
            t = rec["type"]
            self.by_type[t] = self.by_type.get(t, 0) + 1
            by_field = self.by_field
            for k, v in fields.items():
                if v is None or isinstance(v, (float, bool)):
                    continue
                tag = f"{k}={v}"
                counts = by_field.get(tag)
                if counts is None:
                    if len(by_field) >= MAX_EVENT_FIELDS:
                        continue
                    counts = by_field[tag] = {}
                counts[t] = counts.get(t, 0) + 1
        if self._changed is not None:
            self._changed()

    def _zero(self) -> None:
        self.recent.clear()
        self.total = 0
        self.by_type = {}
        self.by_field = {}

    def _read(self):
        return (self.total, dict(self.by_type), [dict(r) for r in self.recent],
                {k: dict(v) for k, v in self.by_field.items()})

    def _used(self) -> bool:
        return self.total > 0

    def _forget_locked(self, want: dict[str, str], keep_totals: bool = False) -> int:
        """Drop the records matching `want`, and their counts from total and by_type; returns how many
        records left the ring."""
        keep = [r for r in self.recent if not all(str(r.get(k)) == v for k, v in want.items())]
        dropped_records = [r for r in self.recent if all(str(r.get(k)) == v for k, v in want.items())]
        tags = [f"{k}={v}" for k, v in want.items()]
        if len(tags) == 1 and tags[0] in self.by_field:
            gone = self.by_field.pop(tags[0])  # exact: every record with that field, in the ring or not
        else:
            gone = {}
            for r in dropped_records:
                gone[r["type"]] = gone.get(r["type"], 0) + 1
        if keep_totals:
            gone = {}
        for t, n in gone.items():
            left = self.by_type.get(t, 0) - n
            if left > 0:
                self.by_type[t] = left
            else:
                self.by_type.pop(t, None)
        self.total = max(0, self.total - sum(gone.values()))
        self.recent.clear()
        self.recent.extend(keep)
        return len(dropped_records)


class _DistinctChild:
    """One distinct series. `add()` keeps only the keyed 8-byte hash, in a set (one C call:
    thread-safe without a lock, and a repeated id costs no register work); at most every
    20th of a second, at a day change or on a read, the pending hashes are folded into the
    day's HyperLogLog registers under the mutation lock."""

    __slots__ = ("_a", "_closed", "_d", "_day", "_key", "_last", "_m", "_next", "_pending", "_retired", "_retired_n", "_w", "_base", "__weakref__")

    def __init__(self, key) -> None:
        self._key = key  # the registry's DistinctKey (shared: a re-key reaches every child)
        self._pending: set[bytes] = set()
        self._retired: set[bytes] = set()
        self._retired_n = 0
        self._base = key.base  # the keyed hasher, copied per id
        self._next = 0.0
        self._last = 0.0  # when add() was last called
        self._day = ""
        self._d = bytearray()
        self._w = b""  # week, month and all time, without the current day (folded in on read)
        self._m = b""
        self._a = b""
        self._closed: dict[str, float] = {}

    def add(self, id: str | bytes, _now=_now) -> None:
        """Count `id` (str or bytes) as active now; only its keyed hash is kept."""
        h = self._base.copy()
        h.update(id.encode() if type(id) is str else id)
        self._pending.add(h.digest())
        t = self._last = _now()
        if t >= self._next:
            with MUTATION_LOCK:
                self._drain_locked()

    def _drain_locked(self) -> None:
        now = _now()
        day = _hll.day_of(now)
        if day != self._day:
            self._roll_locked(day)
        # swap in a fresh set (a set never shrinks); an add() that fetched the old set just before the
        # swap lands in it after this drain: the retired set is drained again next time
        retired, pending = self._retired, self._pending
        self._pending = set()
        late = list(retired) if len(retired) != self._retired_n else ()  # rare: added into a set already drained
        items = list(pending)  # one C call: atomic against add()
        self._retired, self._retired_n = pending, len(items)
        if items or late:
            if not self._d:
                self._d = bytearray(_hll.M)
            _hll.fold(self._d, items)
            if late:
                _hll.fold(self._d, late)
        self._next = min(now + 0.05, _hll.next_day_start(now))

    def _roll_locked(self, day: str) -> None:
        if not self._day:
            self._day = day
            return
        data = _hll.roll(self._data_locked(), day)
        self._load_locked(data)

    def _data_locked(self) -> _hll.DistinctData:
        d = bytes(self._d) if self._d and any(self._d) else b""
        return _hll.DistinctData(day=self._day, d=d, w=_hll.union(self._w, d), m=_hll.union(self._m, d),
                                 a=_hll.union(self._a, d), closed=dict(self._closed))

    def _load_locked(self, data: _hll.DistinctData) -> None:
        # the registers of the day are folded into week/month/all on read: keep those without it
        self._day = data.day
        self._d = bytearray(data.d) if data.d else bytearray()
        self._w, self._m, self._a = data.w, data.m, data.a
        self._closed = dict(data.closed)

    def _seed_locked(self, data: _hll.DistinctData) -> None:
        """Union earlier sessions' sketches in (seeding twice changes nothing)."""
        self._drain_locked()
        self._load_locked(_hll.merge(self._data_locked(), data))

    def get(self) -> float:
        """Distinct ids since tracking started (an estimate, <= 2 % off)."""
        with MUTATION_LOCK:
            self._drain_locked()
            data = self._data_locked()
        return _hll.count(data.a)

    def used_locked(self) -> bool:
        """True when this series has seen an id (caller holds MUTATION_LOCK)."""
        return bool(self._pending or self._retired or self._a or (self._d and any(self._d)))

    _used = used_locked

    def _absorb(self, other: _DistinctChild) -> None:  # caller holds MUTATION_LOCK
        other._drain_locked()
        self._seed_locked(other._data_locked())

    def _zero(self) -> None:
        self._pending = set()
        self._retired = set()
        self._retired_n = 0
        self._last = 0.0
        self._day = ""
        self._d = bytearray()
        self._w = self._m = self._a = b""
        self._closed = {}

    def _read(self):
        self._drain_locked()
        return self._data_locked(), self._last


# ---------------------------------------------------------------- families


class Metric:
    """A named metric: one series, or a family of labelled series."""

    kind = ""
    view = None  # how `vitals metrics` shows it (snapshot.View), set by the registry

    def __init__(self, hooks: Hooks, name: str, help: str, unit: str, labels: Sequence[str],
                 group: str, max_series: int, **options: Any) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}: use letters, digits, '_' and ':'")
        label_names = tuple(labels)
        for label in label_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"duplicate label names for metric {name!r}")
        self._hooks = hooks
        self.name, self.help, self.unit, self.group = name, help, unit, group
        self.label_names = label_names
        self.max_series = max_series
        self.options = options
        self._n = len(label_names)
        # canonical (str) label values -> child, plus aliases as callers passed them (labels(user=5))
        self._children: dict[tuple, Any] = {}
        # every series once, in creation order: canonical keys and children side by side (the snapshot
        # sweep reads `_cells`; one dict plus two lists is the whole per-series memory cost)
        self._keys: list[tuple[str, ...]] = []
        self._cells: list[Any] = []
        # forgotten series whose child objects the application may still hold: used again, they come back
        self._removed: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        if not label_names:
            self._solo = self._add_series(())
            self._bind_solo(self._solo)
        elif not any(keyword.iskeyword(n) for n in label_names):
            self.labels = _compile_labels(label_names, self._children, self._labels_generated_miss)  # type: ignore[method-assign]

    # the unlabelled metric forwards straight to its only child: still one call deep
    def _bind_solo(self, child) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _new_child(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def labels(self, *values: Any, **labels: Any):
        """The child series for these label values (cached; a new one is created on first use)."""
        try:
            if values:
                return self._children[values]
            if len(labels) == self._n:
                return self._children[tuple(map(labels.__getitem__, self.label_names))]
        except (KeyError, TypeError):
            pass
        return self._labels_slow(values, labels)

    def _labels_generated_miss(self, values: tuple, rest: tuple, extra: dict):
        if rest:
            raise LabelError(f"metric {self.name!r} expects {self._n} label values {self.label_names}, got {self._n + len(rest)}")
        given = {n: v for n, v in zip(self.label_names, values) if v is not _MISSING}
        given.update(extra)
        return self._labels_slow((), given)

    def _labels_slow(self, values: tuple, labels: dict):
        if not self._n:
            raise LabelError(f"metric {self.name!r} has no labels")
        if values and labels:
            raise LabelError("pass label values either by position or by name, not both")
        if values:
            if len(values) != self._n:
                raise LabelError(f"metric {self.name!r} expects {self._n} label values {self.label_names}, got {len(values)}")
            raw = values
        else:
            missing = [n for n in self.label_names if n not in labels]
            extra = sorted(set(labels) - set(self.label_names))
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing {missing}")
                if extra:
                    parts.append(f"unknown {extra}")
                raise LabelError(f"metric {self.name!r} has labels {list(self.label_names)}: {', '.join(parts)}")
            raw = tuple(labels[n] for n in self.label_names)
        canonical = tuple(str(v) for v in raw)
        with MUTATION_LOCK:
            child = self._children.get(canonical)
            if child is None and canonical in self._removed:
                child = self._revive_locked(canonical)
            if child is None:
                if len(self._cells) >= self.max_series:
                    child = self._overflow_locked()
                else:
                    child = self._add_series_locked(canonical)
            try:
                if raw != canonical:
                    self._children[raw] = child
            except TypeError:  # unhashable raw values: only the canonical form is cached
                pass
        return child

    def _overflow_locked(self):
        key = (OVERFLOW,) * self._n
        child = self._children.get(key)
        if child is None:
            child = self._add_series_locked(key)
        self._hooks.overflow(self.name)
        return child

    def _add_series(self, key: tuple[str, ...]):
        with MUTATION_LOCK:
            return self._add_series_locked(key)

    def _add_series_locked(self, key: tuple[str, ...]):
        child = self._new_child()
        self._children[key] = child
        self._keys.append(key)
        self._cells.append(child)
        return child

    def child_locked(self, key: tuple[str, ...]):
        """The child of canonical `key`, created if new (caller holds MUTATION_LOCK; no series limit)."""
        child = self._children.get(key)
        if child is None:
            child = self._add_series_locked(key)
        return child

    def raw_locked(self) -> list[tuple[tuple[str, ...], Any]]:
        """(key, raw value) of every series (caller holds MUTATION_LOCK); see collect.py."""
        return [(key, child._read()) for key, child in zip(self._keys, self._cells)]

    @property
    def _series(self) -> dict[tuple[str, ...], Any]:
        """Canonical label values -> child (a copy)."""
        return dict(zip(self._keys, self._cells))

    def remove(self, keep_totals: bool = False, **match: Any) -> int:
        """Drop the series whose labels include `match`; returns how many were dropped. With
        `keep_totals`, their counts (counters, histograms, distinct ids) move to the series whose
        matched labels say "__forgotten__", so the metric's total stays whole.

        A dropped series' child object, if the application still holds it, counts on from zero and
        comes back at the next snapshot (or `labels()` call): counts are never silently lost."""
        want = {k: str(v) for k, v in match.items()}
        if not want or not all(k in self.label_names for k in want):
            return 0
        idx = [(self.label_names.index(k), v) for k, v in want.items()]
        with MUTATION_LOCK:
            doomed = [i for i, key in enumerate(self._keys) if all(key[j] == v for j, v in idx)]
            if not doomed:
                return 0
            doomed_pairs = [(self._keys[i], self._cells[i]) for i in doomed]
            gone = {id(self._cells[i]) for i in doomed}
            keep = [i for i in range(len(self._keys)) if id(self._cells[i]) not in gone]
            # new lists (not in-place edits): the persister notices the identity change
            self._keys = [self._keys[i] for i in keep]
            self._cells = [self._cells[i] for i in keep]
            for raw in [r for r, c in self._children.items() if id(c) in gone]:
                del self._children[raw]
            for key, child in doomed_pairs:
                if keep_totals and self.kind in ("counter", "histogram", "distinct"):
                    anon = tuple(FORGOTTEN if any(j == i for i, _ in idx) else v for j, v in enumerate(key))
                    self.child_locked(anon)._absorb(child)
                child._zero()
                self._removed[key] = child
        return len(doomed)

    def _revive_locked(self, key: tuple[str, ...]):
        child = self._removed.pop(key)
        self._children[key] = child
        self._keys.append(key)
        self._cells.append(child)
        return child

    def revive_locked(self) -> None:
        """Bring back forgotten series whose (still held) child objects were used since (caller holds
        MUTATION_LOCK); a snapshot calls this first."""
        if not self._removed:
            return
        for key, child in list(self._removed.items()):
            if key not in self._children and child._used():
                self._revive_locked(key)

    def _zero_all_locked(self) -> None:
        for child in self._cells:
            child._zero()

    def _items(self) -> list[tuple[tuple[str, ...], Any]]:
        return list(zip(self._keys, self._cells))


class Counter(Metric):
    """A value that only goes up (requests, bytes, errors)."""

    kind = "counter"

    def _bind_solo(self, child: _CounterChild) -> None:
        self.inc = child.inc  # type: ignore[method-assign]
        self.get = child.get  # type: ignore[method-assign]

    def inc(self, amount: float = 1) -> None:
        """Add `amount` to the unlabelled counter."""
        raise LabelError(f"metric {self.name!r} has labels {list(self.label_names)}: use .labels(...).inc()")

    def get(self) -> float:
        """The unlabelled counter's value."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).get()")

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def cells_locked(self) -> tuple[list[tuple[str, ...]], list[_CounterChild]]:
        """The canonical keys and the cells, side by side (caller holds MUTATION_LOCK). The lists
        are replaced, never edited in place, when series are removed: identity tells a change."""
        return self._keys, self._cells

    @staticmethod
    def extras_of(cells: list[_CounterChild]) -> list[float]:
        """The non-unit amounts of `cells` (add them to the cells' counts)."""
        return list(map(_EXTRA, cells))


class Gauge(Metric):
    """A value that goes up and down (queue depth, online peers)."""

    kind = "gauge"

    def _bind_solo(self, child: _GaugeChild) -> None:
        self.set, self.inc, self.dec, self.get = child.set, child.inc, child.dec, child.get  # type: ignore[method-assign]

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).set()")

    inc = dec = get = set  # type: ignore[assignment]

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()


_UNIT_SCALE = {"ms": 1000.0, "milliseconds": 1000.0, "us": 1e6, "microseconds": 1e6, "ns": 1e9, "nanoseconds": 1e9}


class Histogram(Metric):
    """A distribution of values (latencies, sizes): count, sum, min, max and quantiles."""

    kind = "histogram"

    def _bind_solo(self, child: _HistogramChild) -> None:
        self.observe, self.time = child.observe, child.time  # type: ignore[method-assign]

    def observe(self, value: float) -> None:
        """Record a value in the unlabelled histogram."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).observe()")

    def time(self) -> _Timer:
        """Context manager timing a block into the unlabelled histogram."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).time()")

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(_UNIT_SCALE.get(self.unit, 1.0))


class State(Metric):
    """A state machine: current state, time in each state, transition counts, recent transitions."""

    kind = "state"

    def __init__(self, *args: Any, states: Iterable[str] = (), history: int = 20, **kwargs: Any) -> None:
        self.states = tuple(states)
        self.history_size = int(history)
        super().__init__(*args, **kwargs)

    def _bind_solo(self, child: _StateChild) -> None:
        self.set = child.set  # type: ignore[method-assign]

    def set(self, state: str, reason: str | None = None) -> None:
        """Enter `state` in the unlabelled state machine."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).set()")

    @property
    def current(self) -> str | None:
        """The unlabelled state machine's current state."""
        return self._solo.current if not self._n else None

    def _new_child(self) -> _StateChild:
        return _StateChild(self.states, self.history_size, self._hooks.changed)


class Events(Metric):
    """A ring buffer of the last N records, with a total and a count per `type`."""

    kind = "events"

    def __init__(self, *args: Any, capacity: int = 100, **kwargs: Any) -> None:
        self.capacity = int(capacity)
        super().__init__(*args, **kwargs)

    def _bind_solo(self, child: _EventsChild) -> None:
        self.record = child.record  # type: ignore[method-assign]

    def record(self, type: str = "event", message: str = "", **fields: Any) -> None:
        """Record one event."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).record()")

    def _new_child(self) -> _EventsChild:
        return _EventsChild(self.capacity, self._hooks.changed)

    def remove_records(self, keep_totals: bool = False, **match: Any) -> int:
        """Drop the records whose fields include `match` (and their counts from total and by_type,
        unless `keep_totals`); returns how many records were dropped."""
        want = {k: str(v) for k, v in match.items()}
        dropped = 0
        with MUTATION_LOCK:
            for child in self._cells:
                dropped += child._forget_locked(want, keep_totals)
        return dropped


class Distinct(Metric):
    """Distinct active ids (queues, clients) per UTC day, ISO week, month and all time: a
    HyperLogLog sketch of keyed hashes (estimates, <= 2 % off); ids are never kept."""

    kind = "distinct"

    def __init__(self, *args: Any, key=None, **kwargs: Any) -> None:
        self._key = key if key is not None else _hll.DistinctKey()
        super().__init__(*args, **kwargs)

    def _bind_solo(self, child: _DistinctChild) -> None:
        self.add, self.get = child.add, child.get  # type: ignore[method-assign]

    def add(self, id: str | bytes) -> None:
        """Count `id` in the unlabelled distinct metric."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).add()")

    def get(self) -> float:
        """The unlabelled metric's distinct count since tracking started."""
        raise LabelError(f"metric {self.name!r} has labels: use .labels(...).get()")

    def _new_child(self) -> _DistinctChild:
        return _DistinctChild(self._key)

    def _add_series_locked(self, key: tuple[str, ...]):
        child = super()._add_series_locked(key)
        data = self._hooks.past(self.name, key) if self._hooks.past is not None else None
        if data is not None:
            child._seed_locked(data)
        return child

    def seed_existing_locked(self) -> None:
        """Union earlier sessions' sketches into every existing series (caller holds MUTATION_LOCK)."""
        if self._hooks.past is None:
            return
        for key, child in zip(self._keys, self._cells):
            data = self._hooks.past(self.name, key)
            if data is not None:
                child._seed_locked(data)

    def rekey_locked(self) -> None:
        """Hash with the (changed) registry key from now on (caller holds MUTATION_LOCK)."""
        for child in self._cells:
            child._base = self._key.base

    def used_locked(self) -> bool:
        """True when any series has seen an id (caller holds MUTATION_LOCK)."""
        return any(c.used_locked() for c in self._cells)


_MISSING = object()


def _compile_labels(names: tuple[str, ...], children: dict, miss):
    """A `labels()` specialised to these label names: keyword binding instead of a **kwargs dict
    (about 5x faster). Names are validated identifiers, so the generated source is safe."""
    params = ", ".join(f"{n}=__M" for n in names)
    key = "(" + ", ".join(names) + ",)"
    source = (
        f"def labels({params}, *__rest, **__extra):\n"
        f"    if __rest or __extra:\n"
        f"        return __miss({key}, __rest, __extra)\n"
        f"    try:\n"
        f"        return __children[{key}]\n"
        f"    except (KeyError, TypeError):\n"
        f"        return __miss({key}, __rest, __extra)\n"
    )
    namespace = {"__M": _MISSING, "__children": children, "__miss": miss}
    exec(source, namespace)  # noqa: S102
    fn = namespace["labels"]
    fn.__doc__ = "The child series for these label values (cached; created on first use)."
    return fn


KINDS: dict[str, type[Metric]] = {c.kind: c for c in (Counter, Gauge, Histogram, State, Events, Distinct)}


# ---------------------------------------------------------------- disabled registry


class _NoOp:
    """What a disabled registry hands out: every call does nothing."""

    __slots__ = ()
    kind = "noop"
    current = None

    def labels(self, *values: Any, **labels: Any) -> _NoOp:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: Any = None, reason: str | None = None) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def record(self, type: str = "event", message: str = "", **fields: Any) -> None:
        pass

    def add(self, id: Any = None) -> None:
        pass

    def get(self) -> float:
        return 0.0

    def remove(self, **match: Any) -> int:
        return 0

    def time(self) -> _NoOpTimer:
        return _NOOP_TIMER


class _NoOpTimer:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


NOOP = _NoOp()
_NOOP_TIMER = _NoOpTimer()
