"""A query over in-app stats: scope, time window, label filter, metric globs and groups.

The same `Query` is read from `vitals metrics` options and from `/v1/snapshot` parameters,
and applied the same way to a registry, a store or a snapshot fetched over HTTP. Parsing and
filtering are pure; `QueryError` carries the one-line message users see (CLI exit 2, HTTP 400).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from appvitals.stats import snapshot as _snap
from appvitals.timeparse import TimeParseError, parse_time

SCOPES = ("all", "session", "past")
KEYS = ("all", "current", "previous")
_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class QueryError(ValueError):
    """A bad scope, time, filter or parameter; the message is one line for the user."""


class SourceError(RuntimeError):
    """The stats could not be read (app unreachable, HTTP error); one line for the user."""


class Query(msgspec.Struct, frozen=True):
    """What to show: which runs, which window, which series, which metrics."""

    scope: str = "all"
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    where: dict[str, str] = {}
    metrics: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    # "current": only series used in this session; "previous": only series used in earlier sessions
    # and not in this one (the SimpleX "current / previously used servers")
    keys: str = "all"

    @property
    def windowed(self) -> bool:
        """True when a time window was asked for."""
        return self.since is not None or self.until is not None

    def params(self) -> list[tuple[str, str]]:
        """The query as /v1/snapshot parameters (times as ISO 8601)."""
        out: list[tuple[str, str]] = [("scope", self.scope)]
        if self.since is not None:
            out.append(("since", self.since.isoformat()))
        if self.until is not None:
            out.append(("until", self.until.isoformat()))
        out += [("where", f"{k}={v}") for k, v in self.where.items()]
        out += [("metric", m) for m in self.metrics]
        out += [("group", g) for g in self.groups]
        if self.keys != "all":
            out.append(("keys", self.keys))
        return out


def parse_scope(text: str | None) -> str:
    """'all', 'session' or 'past' (default 'all')."""
    scope = (text or "all").strip().lower()
    if scope not in SCOPES:
        raise QueryError(f"scope must be one of {', '.join(SCOPES)}, not {text!r}")
    return scope


def parse_keys(text: str | None) -> str:
    """'all', 'current' or 'previous' (default 'all')."""
    keys = (text or "all").strip().lower()
    if keys not in KEYS:
        raise QueryError(f"keys must be one of {', '.join(KEYS)}, not {text!r}")
    return keys


def parse_when(text: str | None, what: str = "time", now: dt.datetime | None = None) -> dt.datetime | None:
    """A time expression ("1 hour ago", "90m", ISO 8601) or Unix epoch seconds; None when empty."""
    if text is None or not str(text).strip():
        return None
    s = str(text).strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", s):  # epoch seconds, as a program would send
        return _snap.to_datetime(float(s))
    try:
        return parse_time(s, now)
    except TimeParseError as exc:
        raise QueryError(f"{what}: {exc}")


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """['peer=B', 'user=5'] -> {'peer': 'B', 'user': '5'}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise QueryError(f"where: expected key=value (e.g. peer=B), not {item!r}")
        out[key] = value.strip()
    return out


def build(scope: str | None = None, since: str | None = None, until: str | None = None,
          where: Iterable[str] = (), metrics: Iterable[str] = (), groups: Iterable[str] = (),
          now: dt.datetime | None = None, keys: str | None = None) -> Query:
    """A Query from user text (CLI options or HTTP parameters); raises QueryError."""
    now = now or dt.datetime.now(dt.timezone.utc)
    q = Query(
        scope=parse_scope(scope),
        since=parse_when(since, "since", now),
        until=parse_when(until, "until", now),
        where=parse_where(where),
        metrics=tuple(m for m in metrics if m),
        groups=tuple(g for g in groups if g),
        keys=parse_keys(keys),
    )
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise QueryError("until must be later than since")
    return q


def from_params(params: Iterable[tuple[str, str]], now: dt.datetime | None = None) -> Query:
    """A Query from /v1/snapshot parameters (`where`, `metric`, `group` repeatable)."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {"where": [], "metric": [], "group": []}
    for key, value in params:
        if key in multi:
            multi[key].append(value)
        elif key in ("scope", "since", "until", "keys"):
            if key in single:
                raise QueryError(f"parameter {key!r} given twice")
            single[key] = value
        elif key in ("current", "previous"):  # ?current or ?previous: the same as keys=...
            if "keys" in single and single["keys"] != key:
                raise QueryError("give one of current, previous (or keys=...)")
            single["keys"] = key
        else:
            raise QueryError(f"unknown parameter {key!r} (known: scope, since, until, where, metric, group, "
                             f"keys, current, previous)")
    return build(single.get("scope"), single.get("since"), single.get("until"),
                 multi["where"], multi["metric"], multi["group"], now, keys=single.get("keys"))


def check_where(snap: _snap.Snapshot, where: Mapping[str, str]) -> None:
    """Raise QueryError naming the known keys when `where` uses a key no metric has."""
    known = _snap.label_keys(snap)
    unknown = [k for k in where if k not in known]
    if unknown:
        listed = ", ".join(sorted(known)) if known else "none (no labelled metrics)"
        raise QueryError(f"unknown where key {unknown[0]!r}; known keys: {listed}")


def apply(snap: _snap.Snapshot, q: Query, current: set[tuple[str, tuple]] | None = None) -> _snap.Snapshot:
    """The query's filters applied to a snapshot (the window is applied by whoever read it).

    `current`: the (metric, label items) of the series used in this session, for `keys`."""
    if q.where:
        check_where(snap, q.where)
        snap = _snap.filter_snapshot(snap, where=q.where)
    if q.keys != "all":
        snap = select_keys(snap, q.keys, current)
    # ratios and status are derived over the series the filters kept, before --metric/--group
    # drop the metrics they refer to
    snap = _snap.derive(snap)
    if not (q.metrics or q.groups):
        return snap
    return _snap.filter_snapshot(snap, metrics=q.metrics, groups=q.groups)


def without_distinct_sketches(snap: _snap.Snapshot) -> _snap.Snapshot:
    """Distinct series without their 64 KiB of registers (their counts stay): for people reading
    JSON. HTTP keeps them, so that a client can still merge series (the total of several servers)."""
    if not any(m.kind == "distinct" for m in snap.metrics):
        return snap
    metrics = [msgspec.structs.replace(m, series=[msgspec.structs.replace(s, hll=None) for s in m.series])
               if m.kind == "distinct" else m for m in snap.metrics]
    return msgspec.structs.replace(snap, metrics=metrics)


def session_keys(session: _snap.Snapshot) -> set[tuple[str, tuple]]:
    """(metric, label items) of every series of a session snapshot."""
    return {(m.name, _snap._key(s.labels)) for m in session.metrics for s in m.series}


def select_keys(snap: _snap.Snapshot, keys: str, current: set[tuple[str, tuple]] | None) -> _snap.Snapshot:
    """Only the series used in this session ("current"), or only those used in earlier sessions and not
    in this one ("previous"). Without `current`, a series is current when it changed since the
    session started (its `updated_at`)."""
    want_current = keys == "current"

    def is_current(name: str, s: _snap.Series) -> bool:
        if current is not None:
            return (name, _snap._key(s.labels)) in current
        return s.updated_at is not None and s.updated_at >= snap.session_started_at

    metrics = []
    for m in snap.metrics:
        if not m.label_names:  # no keys to tell apart: such a metric is neither
            continue
        series = [s for s in m.series if is_current(m.name, s) == want_current]
        metrics.append(msgspec.structs.replace(m, series=series))
    return msgspec.structs.replace(snap, metrics=metrics)


def read_registry(registry: Any, q: Query) -> _snap.Snapshot:
    """Run a query against a live registry; windows need an attached store (else QueryError)."""
    if q.windowed:
        try:
            snap = registry.snapshot(scope=q.scope, since=q.since, until=q.until)
        except ValueError as exc:
            if "attached store" in str(exc):
                raise QueryError("since/until need the app's registry attached to a store (reg.attach(store))")
            raise QueryError(str(exc))
    else:
        snap = registry.snapshot(scope=q.scope)
    current = session_keys(registry.snapshot(scope="session")) if q.keys != "all" else None
    return apply(snap, q, current)


def read_store(store: Any, q: Query) -> _snap.Snapshot:
    """Run a query against a Store (history-based windows when since/until are given)."""
    snap = store.window(q.since, q.until, scope=q.scope) if q.windowed else store.snapshot(scope=q.scope)
    current = session_keys(store.snapshot(scope="session")) if q.keys != "all" else None
    return apply(snap, q, current)


def previous_window(q: Query, compare_at: dt.datetime, now: dt.datetime) -> tuple[Query, Query]:
    """(current, previous) queries for `--compare`: with `since` given, the previous window starts
    at `compare_at` and has the same length; otherwise the current window starts at `compare_at`
    and the previous one is the same length just before it."""
    until = q.until or now
    if q.since is not None:
        length = until - q.since
        current = q
        previous = msgspec.structs.replace(q, since=compare_at, until=compare_at + length)
    else:
        if compare_at >= until:
            raise QueryError("compare: the time must be in the past")
        length = until - compare_at
        current = msgspec.structs.replace(q, since=compare_at, until=q.until)
        previous = msgspec.structs.replace(q, since=compare_at - length, until=compare_at)
    return current, previous


def snapshot_url(url: str) -> str:
    """The /v1/snapshot address of an app served at `url` ("host:port" gets http://)."""
    base = url.strip()
    if "://" not in base:
        base = "http://" + base
    base = base.rstrip("/")
    for suffix in ("/v1/snapshot", "/metrics", "/v1/events"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base + "/v1/snapshot"


def read_url(url: str, q: Query, token: str | None = None, timeout: float = 10.0) -> _snap.Snapshot:
    """Run a query against a running app's `/v1/snapshot`; QueryError on 400, SourceError otherwise."""
    import urllib.error
    import urllib.parse
    import urllib.request

    address = snapshot_url(url) + "?" + urllib.parse.urlencode(q.params())
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(address, headers=headers), timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        message = _error_of(exc.read())
        if exc.code == 400:
            raise QueryError(message)
        if exc.code == 401:
            raise SourceError(f"{url}: {message} (pass --token or set VITALS_TOKEN)")
        raise SourceError(f"{url}: HTTP {exc.code}: {message}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot reach {url}: {reason}")
    try:
        return _snap.decode(body)
    except msgspec.DecodeError as exc:
        raise SourceError(f"{url} did not answer with a snapshot: {exc}")


def _error_of(body: bytes) -> str:
    try:
        doc = msgspec.json.decode(body)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except msgspec.DecodeError:
        pass
    return body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body.strip() else "no details"
