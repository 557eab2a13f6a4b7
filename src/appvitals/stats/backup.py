"""A human-readable text backup of stats: one `key=value` a line.

The sturdier form of the SimpleX servers' backup file: the parser looks keys up by name, so lines may
come in any order, a missing key counts as zero, and keys it does not know are kept (and
written back by `dump`) rather than rejected, so old and new versions can both read the file.

    format=1
    tracking_since=2025-10-23T10:00:00+00:00
    metric.changes_received.kind=counter
    metric.changes_received.labels=peer,model
    series.changes_received{peer="B",model="entry"}.value=3.5
    series.apply_latency{model="entry"}.count=1000
    series.apply_latency{model="entry"}.sketch.pos.35=1
    series.sync_state{}.time_in_state.Ready=4980.5
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec

from appvitals.stats import hll as _hll
from appvitals.stats import snapshot as _snap
from appvitals.stats.sketch import SketchData

FORMAT = 1
_SIMPLE = ("value", "count", "sum", "min", "max", "total", "current", "entered_at")
_MAPS = ("time_in_state", "transitions", "by_type")


class BackupError(ValueError):
    """A line that cannot be read; carries the 1-based line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unesc(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _val(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _series_key(name: str, labels: dict[str, str]) -> str:
    return f"series.{name}{{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def dump(snap: _snap.Snapshot, unknown: dict[str, str] | None = None) -> str:
    """The text backup of a snapshot (plus unknown keys carried over from an older/newer file)."""
    lines = ["# appvitals text backup: one key=value a line; order does not matter; unknown keys are kept",
             f"format={FORMAT}", f"tracking_since={snap.tracking_since.isoformat()}",
             f"taken_at={snap.taken_at.isoformat()}"]
    for m in snap.metrics:
        lines.append(f"metric.{m.name}.kind={m.kind}")
        for attr in ("help", "unit", "group"):
            if getattr(m, attr):
                lines.append(f"metric.{m.name}.{attr}={_val(getattr(m, attr))}")
        if m.label_names:
            lines.append(f"metric.{m.name}.labels={','.join(m.label_names)}")
        if m.capacity:
            lines.append(f"metric.{m.name}.capacity={m.capacity}")
        for s in m.series:
            base = _series_key(m.name, s.labels)
            for field in _SIMPLE:
                v = getattr(s, field)
                if v is not None:
                    lines.append(f"{base}.{field}={_val(v.isoformat() if isinstance(v, dt.datetime) else str(v))}")
            for field in _MAPS:
                for k, v in (getattr(s, field) or {}).items():
                    lines.append(f"{base}.{field}.{_val(k)}={v}")
            if s.sketch is not None:
                for sign in ("pos", "neg"):
                    for idx, n in getattr(s.sketch, sign).items():
                        lines.append(f"{base}.sketch.{sign}.{idx}={n}")
                if s.sketch.zero:
                    lines.append(f"{base}.sketch.zero={s.sketch.zero}")
            for i, rec in enumerate(s.recent or []):
                lines.append(f"{base}.recent.{i}={json.dumps(rec, separators=(',', ':'))}")
            if s.by_field:  # events: counts per "field=value", so that forget() can take them off later
                lines.append(f"{base}.by_field={json.dumps(s.by_field, separators=(',', ':'), sort_keys=True)}")
            if s.hll is not None:  # distinct: the counts (for people), then the sketches (base64 JSON)
                for field in ("day", "week", "month", "all"):
                    lines.append(f"{base}.{field}={int(getattr(s, field) or 0)}")
                lines.append(f"{base}.hll={msgspec.json.encode(s.hll).decode()}")
    for k, v in (unknown or {}).items():
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


def _split_series(key: str, lineno: int) -> tuple[str, dict[str, str], str]:
    # series.NAME{k="v",...}.field...
    rest = key[len("series."):]
    brace = rest.find("{")
    if brace <= 0:
        raise BackupError(lineno, f"bad series key {key[:60]!r}")
    name, i = rest[:brace], brace + 1
    labels: dict[str, str] = {}
    while i < len(rest) and rest[i] != "}":
        eq = rest.find('="', i)
        if eq < 0:
            raise BackupError(lineno, "bad label block")
        label = rest[i:eq]
        j, buf = eq + 2, []
        while j < len(rest) and rest[j] != '"':
            if rest[j] == "\\" and j + 1 < len(rest):
                buf.append(rest[j:j + 2])
                j += 2
            else:
                buf.append(rest[j])
                j += 1
        if j >= len(rest):
            raise BackupError(lineno, "unterminated label value")
        labels[label] = _unesc("".join(buf))
        i = j + 1
        if i < len(rest) and rest[i] == ",":
            i += 1
    if i >= len(rest) or not rest[i + 1:].startswith("."):
        raise BackupError(lineno, f"bad series key {key[:60]!r}")
    return name, labels, rest[i + 2:]


def load(text: str) -> tuple[_snap.Snapshot, dict[str, str]]:
    """Parse a text backup: (snapshot, unknown keys). Raises BackupError with a line number."""
    header: dict[str, str] = {}
    metas: dict[str, dict[str, str]] = {}
    series: dict[tuple[str, tuple], dict[str, Any]] = {}
    unknown: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("series."):
            end = _key_end(line, lineno)
            name, labels, field = _split_series(line[:end], lineno)
            value = line[end + 1:]
            entry = series.setdefault((name, tuple(labels.items())), {"labels": labels})
            entry.setdefault("__fields", []).append((field, value))
            continue
        if "=" not in line:
            raise BackupError(lineno, "expected key=value")
        key, value = line.split("=", 1)
        if key.startswith("metric."):
            name, _, attr = key[len("metric."):].rpartition(".")
            if name:
                metas.setdefault(name, {})[attr] = _unesc(value)
                continue
        if key in ("format", "tracking_since", "taken_at"):
            header[key] = value
            continue
        unknown[key] = value
    now = dt.datetime.now(dt.timezone.utc)
    metrics = []
    for name, meta in sorted(metas.items()):
        kind = meta.get("kind", "")
        if kind not in ("counter", "gauge", "histogram", "state", "events", "distinct"):
            for attr, v in meta.items():
                unknown[f"metric.{name}.{attr}"] = v
            continue
        label_names = [x for x in meta.get("labels", "").split(",") if x]
        out = []
        for (sname, _), entry in series.items():
            if sname == name:
                out.append(_build_series(kind, entry, unknown, name))
        metrics.append(_snap.MetricSnapshot(
            name=name, kind=kind, help=meta.get("help", ""), unit=meta.get("unit", ""), group=meta.get("group", ""),
            label_names=label_names, capacity=int(meta["capacity"]) if meta.get("capacity") else None, series=out))
    for (sname, _), entry in series.items():
        if sname not in metas:
            for field, value in entry["__fields"]:
                unknown[f"{_series_key(sname, entry['labels'])}.{field}"] = value
    tracking = _parse_dt(header.get("tracking_since")) or now
    taken = _parse_dt(header.get("taken_at")) or now
    snap = _snap.Snapshot(taken_at=taken, tracking_since=tracking, session_started_at=taken, scope="past", metrics=metrics)
    return snap, unknown


def _key_end(line: str, lineno: int) -> int:
    """Index of the '=' that ends a series key (the first '=' after the closing label brace)."""
    in_quote, i = False, 0
    while i < len(line):
        ch = line[i]
        if in_quote:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "}":
            eq = line.find("=", i)
            if eq < 0:
                raise BackupError(lineno, "expected key=value")
            return eq
        i += 1
    raise BackupError(lineno, "unterminated label block")


def _parse_dt(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _num(value: str) -> float:
    return float(value)


def _build_series(kind: str, entry: dict, unknown: dict[str, str], name: str) -> _snap.Series:
    labels = entry["labels"]
    s = _snap.Series(labels=labels)
    pos: dict[int, int] = {}
    neg: dict[int, int] = {}
    zero = 0
    recent: list[tuple[int, dict]] = []
    for field, value in entry["__fields"]:
        try:
            head, _, tail = field.partition(".")
            if field in ("value", "sum", "min", "max"):
                setattr(s, field, _num(value))
            elif field in ("count", "total"):
                setattr(s, field, int(float(value)))
            elif field == "current":
                s.current = _unesc(value)
            elif field == "entered_at":
                s.entered_at = _parse_dt(value)
            elif head in _MAPS and tail:
                target = getattr(s, head) or {}
                target[_unesc(tail)] = int(value) if head != "time_in_state" else _num(value)
                setattr(s, head, target)
            elif head == "sketch":
                sign, _, idx = tail.partition(".")
                if sign == "zero":
                    zero = int(value)
                elif sign in ("pos", "neg"):
                    (pos if sign == "pos" else neg)[int(idx)] = int(value)
                else:
                    raise KeyError(field)
            elif head == "recent":
                recent.append((int(tail), json.loads(value)))
            elif field == "by_field":
                s.by_field = {str(k): {str(t): int(n) for t, n in v.items()} for k, v in json.loads(value).items()}
            elif field == "hll":
                s.hll = msgspec.json.decode(value, type=_hll.DistinctData)
            elif field in ("day", "week", "month", "all") and kind == "distinct":
                pass  # derived from the sketches
            else:
                raise KeyError(field)
        except (KeyError, ValueError, AttributeError, msgspec.DecodeError, msgspec.ValidationError):
            unknown[f"{_series_key(name, labels)}.{field}"] = value
    # a missing key is zero
    if kind in ("counter", "gauge"):
        s.value = s.value or 0.0
    elif kind == "histogram":
        count = s.count or 0
        s = _snap._hist_from(labels, count, s.sum or 0.0, s.min, s.max, SketchData(pos=pos, neg=neg, zero=zero))
    elif kind == "state":
        s.time_in_state = s.time_in_state or {}
        s.transitions = s.transitions or {}
        s.history = []
    elif kind == "events":
        s.total = s.total or 0
        s.by_type = s.by_type or {}
        s.recent = [r for _, r in sorted(recent, key=lambda x: x[0])]
    elif kind == "distinct":
        s = _snap.distinct_series(labels, s.hll or _hll.DistinctData(), None)
    return s
