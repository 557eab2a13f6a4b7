"""Snapshot -> the human view of `vitals metrics`, laid out like Spacedrive's sync metrics.

Pure: `render(snap)` returns a Rich renderable and `render_text(snap)` its text, so the
layout is tested on fixed data (tests/golden/). Sections come from the metric groups the
app declares; inside, each metric reads as one line, or as a total with tree branches
(├─ └─) and shares in percent. Units drive formatting: "bytes" -> "45.2 MB", "ms"/"s"/
"seconds" -> "1h 23m", "timestamp" (epoch seconds) -> "2m 5s ago", anything else -> "1,234 unit".

What the app declared shapes the view (`snapshot.View`): sections and lines follow the
declaration order, a metric with `share_of`/`per` carries its ratio ("(99.8%)", "(avg 53.7
items/batch)"), label values take their display names ("Device A (MacBook)", "This device")
and the status another metric gives them ("(online)").

With `previous` (from `--compare`), numbers carry the change against it: "1,234 ▲ 12%".
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Iterable, Sequence

from appvitals.extras import require as _require_extra

_require_extra('cli')

from rich.console import Console, Group
from rich.text import Text

from appvitals.stats import snapshot as _snap

MAX_BRANCHES = 10
MAX_RECENT = 5
RULE_WIDTH = 60
_KIND_RANK = {"state": 0, "counter": 1, "gauge": 1, "histogram": 2, "events": 3}
_DURATION_UNITS = {"s": 1.0, "sec": 1.0, "seconds": 1.0, "second": 1.0, "ms": 1e-3, "milliseconds": 1e-3,
                   "us": 1e-6, "µs": 1e-6, "microseconds": 1e-6, "ns": 1e-9, "nanoseconds": 1e-9}
_BYTE_UNITS = ("bytes", "byte", "B")
TIMESTAMP = "timestamp"  # a gauge holding a moment (epoch seconds)

# styles (dropped when colour is off)
S_TITLE, S_SECTION, S_NAME, S_DIM, S_UP, S_DOWN, S_ERR = ("bold", "bold cyan", "bold", "dim", "green", "yellow", "red")


# ---------------------------------------------------------------- numbers


def fmt_number(value: float | None) -> str:
    """1234 -> '1,234'; 53.666 -> '53.67'; None -> '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def fmt_bytes(value: float | None) -> str:
    """45200000 -> '45.2 MB' (decimal units, as disks and networks count)."""
    if value is None:
        return "-"
    size = float(value)
    if abs(size) < 1000:
        return f"{int(size):,} B" if size.is_integer() else f"{size:.1f} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        size /= 1000.0
        if abs(size) < 999.95 or unit == "PB":
            return f"{size:.1f} {unit}"
    return f"{size:.1f} PB"  # pragma: no cover


def fmt_duration(seconds: float | None) -> str:
    """0.045 -> '45ms', 8.4 -> '8.4s', 2832 -> '47m 12s', 4980 -> '1h 23m', 93600 -> '1d 2h'."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 0:
        return "-" + fmt_duration(-s)
    if s == 0:
        return "0s"
    if s < 0.001:
        return f"{s * 1e6:.0f}µs"
    if s < 1:
        ms = s * 1000
        return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms".replace(".0ms", "ms")
    if s < 60:
        return f"{s:.1f}s".replace(".0s", "s")
    total = int(round(s))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m {secs}s" if secs else f"{minutes}m"


def fmt_uptime(seconds: float | None) -> str:
    """Every unit down to seconds, as an uptime reads: 9252 -> '2h 34m 12s', 93784 -> '1d 2h 3m 4s'."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts + [f"{secs}s"]) if secs or not parts else " ".join(parts)


def fmt_ago(moment: float | None, now: dt.datetime) -> str:
    """An epoch-seconds moment against `now`: '2m 5s ago', 'just now', 'in 3s', 'never' (0 or None)."""
    if not moment:
        return "never"
    at = _snap.moment(moment)
    if at is None:
        return f"{fmt_number(moment)} (not a time)"
    delta = (now - at).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{fmt_duration(delta)} ago" if delta > 0 else f"in {fmt_duration(-delta)}"


def fmt_percent(part: float, whole: float) -> str:
    """A share of a total: '58%', '9.4%', '99.8%', '0.01%'."""
    if not whole:
        return "-"
    pct = 100.0 * part / whole
    if pct == 0:
        return "0%"
    if pct >= 10 and not 99 < pct < 100:
        return f"{pct:.0f}%"
    if pct >= 0.1:
        return f"{pct:.1f}%".replace(".0%", "%")
    return f"{pct:.2f}%" if pct >= 0.005 else "<0.01%"


def fmt_value(value: float | None, unit: str = "") -> str:
    """A value in its unit: bytes, durations, or a number followed by the unit."""
    if value is None:
        return "-"
    if unit in _BYTE_UNITS:
        return fmt_bytes(value)
    if unit in _DURATION_UNITS:
        return fmt_duration(value * _DURATION_UNITS[unit])
    if unit == TIMESTAMP:
        at = _snap.moment(value)
        return at.isoformat() if at is not None else ("never" if not value else f"{fmt_number(value)} (not a time)")
    return fmt_number(value) + (f" {unit}" if unit else "")


def fmt_time(at: dt.datetime, ref: dt.datetime | None = None, tz: dt.tzinfo | None = None) -> str:
    """'13:45:23' for times on the day of `ref`, '2025-10-22 13:45:23' otherwise (or without `ref`)."""
    local = at.astimezone(tz)
    if ref is not None and local.date() == ref.astimezone(tz).date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def humanize(name: str) -> str:
    """'changes_received' -> 'Changes received'."""
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def title_of(m: _snap.MetricSnapshot) -> str:
    """The metric's label in the view: its help text when short, else its humanized name."""
    help_ = (m.help or "").strip().splitlines()[0] if m.help else ""
    return help_.rstrip(".") if help_ and len(help_) <= 48 else humanize(m.name)


# ---------------------------------------------------------------- compare


def change(now: float | None, before: float | None, unit: str = "") -> Text:
    """' ▲ 12%' / ' ▼ 3%' / ' new' / '' against a previous value."""
    if now is None or before is None or unit == TIMESTAMP:
        return Text("")
    if before == now:
        return Text(" (same)", style=S_DIM)
    if before == 0:
        return Text(f" ▲ new (was {fmt_value(0, unit)})", style=S_UP)
    pct = 100.0 * (now - before) / abs(before)
    arrow, style = ("▲", S_UP) if now > before else ("▼", S_DOWN)
    shown = f"{abs(pct):.0f}%" if abs(pct) >= 10 else f"{abs(pct):.1f}%"
    return Text(f" {arrow} {shown} (was {fmt_value(before, unit)})", style=style)


# ---------------------------------------------------------------- building blocks


class _Out:
    """Collects the lines of the view."""

    def __init__(self) -> None:
        self.lines: list[Text] = []
        self.offset = 0  # extra indent of the lines inside a block ("  Broadcasts:")

    def line(self, indent: int, *parts: str | Text | tuple[str, str]) -> None:
        text = Text(" " * (indent + self.offset))
        for part in parts:
            if isinstance(part, tuple):
                text.append(part[0], style=part[1])
            else:
                text.append(part)
        self.lines.append(text)

    def tree(self, indent: int, rows: Sequence[Sequence[str | Text | tuple[str, str]]]) -> None:
        for i, row in enumerate(rows):
            self.line(indent, ("└─ " if i == len(rows) - 1 else "├─ ", S_DIM), *row)

    def blank(self) -> None:
        if self.lines and self.lines[-1].plain.strip():
            self.lines.append(Text(""))


class _Look:
    """How one metric's lines read, from what the app declared: display names of label values,
    "This device", the status word beside a label value, and the ratio beside the total."""

    def __init__(self, m: _snap.MetricSnapshot, by_name: dict[str, _snap.MetricSnapshot] | None = None) -> None:
        self.m = m
        self.view = m.view or _snap.View()
        self.by_name = by_name or {}
        words: dict[tuple[str, str], set] = {}
        for s in m.series:
            for k, v in s.labels.items():
                words.setdefault((k, v), set()).add(s.status)
        # a label value's status, when every series with that value agrees on it
        self._status = {key: next(iter(w)) for key, w in words.items() if len(w) == 1}

    def name(self, value: str) -> str:
        """A label value as shown: its display name, "This device" for the local one, or itself."""
        if value in self.view.display:
            return self.view.display[value]
        return "This device" if self.view.local and value == self.view.local else value

    def is_local(self, labels: dict[str, str]) -> bool:
        return bool(self.view.local) and self.view.local in labels.values()

    def status(self, label: str, value: str) -> str:
        """' (online)' beside a label value (or '')."""
        word = self._status.get((label, value))
        return f" ({word})" if word else ""

    def ratio(self) -> str:
        """' (99.8%)' for a share, ' (avg 53.7 items/batch)' for a `per` ratio, or ''."""
        view, ratio = self.view, self.m.ratio
        if view.share_of:
            return f" ({fmt_percent(ratio, 1.0)})" if ratio is not None else ""
        if not view.per:
            return ""
        if ratio is None:
            return " (avg -)"
        if view.ratio_unit in _DURATION_UNITS or view.ratio_unit in _BYTE_UNITS:
            return f" (avg {fmt_value(ratio, view.ratio_unit)})"
        number = fmt_number(ratio) if float(ratio).is_integer() or abs(ratio) < 10 else f"{ratio:,.1f}"
        other = self.by_name.get(view.per)
        unit = view.ratio_unit or (f"{title_of(other).lower()} each" if other is not None else f"{view.per} each")
        return f" (avg {number} {unit})"


_PLAIN = _Look(_snap.MetricSnapshot(name="_", kind="counter"))


def _label_text(labels: dict[str, str], names: Sequence[str], look: _Look = _PLAIN) -> str:
    values = [look.name(labels.get(n, "")) for n in names] or [f"{k}={v}" for k, v in labels.items()]
    return " / ".join(values) if values else "(no labels)"


def _ranked(items: list[tuple[str, float]], total: float, unit: str, prev: dict[str, float] | None,
            shares: bool = True, look: _Look = _PLAIN, label: str = "") -> list[list]:
    """Tree rows for (label value, value) pairs, biggest first (this device last), the tail folded
    into '… N more'."""
    local = look.view.local
    items = sorted(items, key=lambda kv: (bool(local) and kv[0] == local, -kv[1], kv[0]))
    rows: list[list] = []
    shown = items if len(items) <= MAX_BRANCHES else items[: MAX_BRANCHES - 1]
    for value_of_label, value in shown:
        row: list = [f"{look.name(value_of_label)}: ", (fmt_value(value, unit), S_NAME)]
        if shares and total:
            row.append(f" ({fmt_percent(value, total)})")
        if label and (status := look.status(label, value_of_label)):
            row.append(status)
        if prev is not None:
            row.append(change(value, prev.get(value_of_label, 0.0), unit))
        rows.append(row)
    rest = items[len(shown):]
    if rest:
        rest_total = sum(v for _, v in rest)
        row = [f"… {len(rest)} more: ", fmt_value(rest_total, unit)]
        if shares and total:
            row.append(f" ({fmt_percent(rest_total, total)})")
        rows.append(row)
    return rows


def _by_label(m: _snap.MetricSnapshot, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in m.series:
        key = s.labels.get(name, "")
        out[key] = out.get(key, 0.0) + (s.value or 0.0)
    return out


# ---------------------------------------------------------------- one metric per kind


def _counter(out: _Out, m: _snap.MetricSnapshot, prev: _snap.MetricSnapshot | None, look: _Look = _PLAIN) -> None:
    total = m.total()
    head: list = [f"{title_of(m)}: ", (fmt_value(total, m.unit), S_NAME), look.ratio()]
    if prev is not None:
        head.append(change(total, prev.total(), m.unit))
    out.line(2, *head)
    names = [n for n in m.label_names if any(n in s.labels for s in m.series)]
    if not names or not m.series or (len(m.series) == 1 and not m.series[0].labels):
        return
    if len(names) == 1:
        out.tree(2, _ranked(list(_by_label(m, names[0]).items()), total, m.unit,
                            _by_label(prev, names[0]) if prev else None, look=look, label=names[0]))
        return
    # a label with one value across the series (say, fixed by --where) says nothing as a tree
    varying = [n for n in names if len({s.labels.get(n, "") for s in m.series}) > 1]
    if not varying:
        only = m.series[0]
        out.tree(2, [[f"{_label_text(only.labels, m.label_names, look)}: ", (fmt_value(total, m.unit), S_NAME)]])
        return
    for name in varying:
        out.line(2, f"By {name}:")
        out.tree(2, _ranked(list(_by_label(m, name).items()), total, m.unit,
                            _by_label(prev, name) if prev else None, look=look, label=name))


def _gauge(out: _Out, m: _snap.MetricSnapshot, prev: _snap.MetricSnapshot | None, look: _Look = _PLAIN,
           taken_at: dt.datetime | None = None) -> None:
    prev_values = {_snap._key(s.labels): s.value for s in prev.series} if prev else {}

    def shown(value: float | None) -> str:
        if m.unit == TIMESTAMP and taken_at is not None:
            return fmt_ago(value, taken_at)
        if look.view.status_text and not look.view.status and value is not None:  # a status gauge: its words
            return _snap.status_word(m, _snap.Series(labels={}, value=value), look.view.status_text) or "-"
        return fmt_value(value, m.unit)

    if len(m.series) == 1 and not m.series[0].labels:
        s = m.series[0]
        out.line(2, f"{title_of(m)}: ", (shown(s.value), S_NAME), look.ratio(),
                 change(s.value, prev_values.get((), None), m.unit) if prev else "")
        return
    out.line(2, f"{title_of(m)}:" + ("" if m.series else " -"))
    rows = []
    series = sorted(m.series, key=lambda s: (look.is_local(s.labels), _label_text(s.labels, m.label_names)))
    for s in series[:MAX_BRANCHES]:
        row: list = [f"{_label_text(s.labels, m.label_names, look)}: ", (shown(s.value), S_NAME)]
        if s.status:
            row.append(f" ({s.status})")
        if prev is not None:
            row.append(change(s.value, prev_values.get(_snap._key(s.labels)), m.unit))
        rows.append(row)
    if len(series) > MAX_BRANCHES:
        rows[-1] = [f"… {len(series) - MAX_BRANCHES + 1} more"]
    out.tree(2, rows)


def _hist_summary(s: _snap.Series, unit: str, prev: _snap.Series | None = None, with_count: bool = True) -> list:
    if not s.count:
        return [("no samples", S_DIM)]
    avg = (s.sum or 0.0) / s.count
    parts: list = [f"avg {fmt_value(avg, unit)}"]
    if prev is not None and prev.count:
        parts.append(change(avg, (prev.sum or 0.0) / prev.count, unit))
    parts += [f", p50 {fmt_value(s.p50, unit)}, p99 {fmt_value(s.p99, unit)}"]
    if prev is not None and prev.count:
        parts.append(change(s.p99, prev.p99, unit))
    parts += [f", max {fmt_value(s.max, unit)}"]
    if with_count:
        parts.append((f" ({fmt_number(s.count)} sample{'' if s.count == 1 else 's'})", S_DIM))
    return parts


def _merged(m: _snap.MetricSnapshot) -> _snap.Series:
    acc: _snap.Series | None = None
    for s in m.series:
        acc = s if acc is None else _snap.merge_series("histogram", acc, s)
    return acc or _snap.Series(labels={}, count=0)


def _histogram(out: _Out, m: _snap.MetricSnapshot, prev: _snap.MetricSnapshot | None, look: _Look = _PLAIN) -> None:
    total = _merged(m)
    out.line(2, f"{title_of(m)}: ", *_hist_summary(total, m.unit, _merged(prev) if prev else None))
    if len(m.series) <= 1 and not any(s.labels for s in m.series):
        return
    prev_by = {_snap._key(s.labels): s for s in prev.series} if prev else {}
    series = sorted(m.series, key=lambda s: (-(s.count or 0), _label_text(s.labels, m.label_names)))
    rows = []
    for s in series[:MAX_BRANCHES]:
        rows.append([f"{_label_text(s.labels, m.label_names, look)}: ",
                     *_hist_summary(s, m.unit, prev_by.get(_snap._key(s.labels)) if prev else None, False),
                     (f" ({fmt_number(s.count or 0)})", S_DIM)])
    if len(series) > MAX_BRANCHES:
        rows[-1] = [f"… {len(series) - MAX_BRANCHES + 1} more"]
    out.tree(2, rows)


def _state(out: _Out, m: _snap.MetricSnapshot, taken_at: dt.datetime, tz, prev: _snap.MetricSnapshot | None,
           look: _Look = _PLAIN, uptime: str = "") -> None:
    if not m.series:
        out.line(2, f"{title_of(m)}: ", ("-", S_DIM))
    for s in sorted(m.series, key=lambda s: _label_text(s.labels, m.label_names)):
        suffix = f" [{_label_text(s.labels, m.label_names, look)}]" if s.labels else ""
        out.line(2, f"{title_of(m)}{suffix}")
        out.line(4, "Current: ", (s.current or "-", S_NAME))
        if uptime:  # "Uptime" (this session), as Spacedrive shows it, under the first state machine's current state
            out.line(4, "Uptime: ", uptime)
            uptime = ""
        history = s.history or []
        if history:
            last = history[-1]
            ago = fmt_duration(max(0.0, (taken_at - last.at).total_seconds()))
            why = f": {last.reason}" if last.reason else ""
            out.line(4, f"Last transition: {ago} ago ({last.from_ or '-'} → {last.to}{why})")
        elif s.entered_at is not None:
            out.line(4, f"In this state for: {fmt_duration(max(0.0, (taken_at - s.entered_at).total_seconds()))}")
        times = s.time_in_state or {}
        if times:
            whole = sum(times.values())
            prev_times: dict[str, float] | None = None
            if prev is not None:
                prev_times = {}
                for ps in prev.series:
                    if ps.labels == s.labels:
                        prev_times = ps.time_in_state or {}
            out.line(4, "Time in state:")
            rows = []
            for state, secs in sorted(times.items(), key=lambda kv: (-kv[1], kv[0])):
                row: list = [f"{state}: ", (fmt_duration(secs), S_NAME), f" ({fmt_percent(secs, whole)})"]
                if prev_times is not None:
                    row.append(change(secs, prev_times.get(state, 0.0), "s"))
                rows.append(row)
            out.tree(4, rows)
        transitions = s.transitions or {}
        if transitions:
            out.line(4, "Transitions: " + ", ".join(
                f"{k.replace('->', ' → ')} ×{fmt_number(v)}" for k, v in sorted(transitions.items(), key=lambda kv: (-kv[1], kv[0]))))


def _events(out: _Out, m: _snap.MetricSnapshot, taken_at: dt.datetime, tz, prev: _snap.MetricSnapshot | None) -> None:
    total = m.total()
    head: list = [f"{title_of(m)}: ", (fmt_number(total), S_ERR if total and "error" in m.name else S_NAME)]
    if prev is not None:
        head.append(change(total, prev.total()))
    out.line(2, *head)
    by_type: dict[str, float] = {}
    recent: list[dict] = []
    for s in m.series:
        for k, v in (s.by_type or {}).items():
            by_type[k] = by_type.get(k, 0) + v
        recent += s.recent or []
    prev_types: dict[str, float] | None = None
    if prev is not None:
        prev_types = {}
        for s in prev.series:
            for k, v in (s.by_type or {}).items():
                prev_types[k] = prev_types.get(k, 0) + v
    if by_type and set(by_type) != {"event"}:
        rows = _ranked(list(by_type.items()), total, "", prev_types)
        for row in rows:
            type_ = row[0][: -len(": ")]
            messages = _distinct(r.get("message", "") for r in reversed(recent) if r.get("type") == type_)
            if messages:
                row.append((" — " + ", ".join(messages), S_DIM))
        out.line(4, "By type:")
        out.tree(4, rows)
    if recent:
        out.line(4, "Recent:")
        for r in sorted(recent, key=lambda r: str(r.get("at", "")), reverse=True)[:MAX_RECENT]:
            at = _snap._parse_at(r)
            extra = {k: v for k, v in r.items() if k not in ("at", "type", "message")}
            detail = f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else ""
            kind = r.get("type", "")
            msg = r.get("message", "")
            body = f"{kind}: {msg}" if kind and kind != "event" and msg else (msg or kind)
            out.line(6, (f"[{fmt_time(at, taken_at, tz)}] ", S_DIM), body, (detail, S_DIM))


def _distinct(messages: Iterable[str], limit: int = 3) -> list[str]:
    seen: list[str] = []
    for msg in messages:
        if msg and msg not in seen:
            seen.append(msg)
            if len(seen) == limit:
                break
    return seen


def _distinct_counts(out: _Out, m: _snap.MetricSnapshot, prev: _snap.MetricSnapshot | None) -> None:
    """Distinct ids today / this week / this month / all, estimated (HyperLogLog, <= 2 % off)."""

    def periods(s: _snap.Series, before: _snap.Series | None) -> list:
        parts: list = []
        for i, (label, field) in enumerate((("today", "day"), ("this week", "week"), ("this month", "month"),
                                            ("all", "all"))):
            value = getattr(s, field)
            parts += [", " if i else "", f"{label} ", (fmt_number(value), S_NAME)]
            if before is not None and field == "day":
                parts.append(change(value, getattr(before, field)))
        return parts

    total = _snap.Series(labels={}, day=0.0, week=0.0, month=0.0, all=0.0)
    if len(m.series) == 1:
        total = m.series[0]
    elif m.series:
        acc = m.series[0]
        for s in m.series[1:]:
            acc = _snap.merge_series("distinct", acc, s)
        total = acc
    prev_by = {_snap._key(s.labels): s for s in prev.series} if prev else {}
    out.line(2, f"{title_of(m)} (distinct, estimated): ", *periods(total, None))
    if len(m.series) <= 1 and not any(s.labels for s in m.series):
        return
    series = sorted(m.series, key=lambda s: (-(s.all or 0), _label_text(s.labels, m.label_names)))
    rows = [[f"{_label_text(s.labels, m.label_names)}: ", *periods(s, prev_by.get(_snap._key(s.labels)))]
            for s in series[:MAX_BRANCHES]]
    if len(series) > MAX_BRANCHES:
        rows[-1] = [f"… {len(series) - MAX_BRANCHES + 1} more"]
    out.tree(2, rows)


# ---------------------------------------------------------------- the view


def _declared(m: _snap.MetricSnapshot) -> int:
    """The metric's declaration order (0: not known, e.g. read from an older store)."""
    return m.view.order if m.view is not None else 0


def section_of(group: str) -> str:
    """The section of a group: 'operations/broadcasts' -> 'operations'."""
    return group.split("/", 1)[0]


def block_of(group: str) -> str:
    """The block inside a section: 'operations/broadcasts' -> 'broadcasts' ('' for none)."""
    return group.split("/", 1)[1] if "/" in group else ""


def _in_declared_order(metrics: list[_snap.MetricSnapshot]) -> None:
    """Sort one section's metrics: each block where its first metric was declared, its metrics
    together; metrics of unknown declaration order by kind and name."""
    first: dict[str, int] = {}
    for m in metrics:
        block = block_of(m.group)
        if block and _declared(m):
            first[block] = min(first.get(block, _declared(m)), _declared(m))

    def key(m: _snap.MetricSnapshot):
        block = block_of(m.group)
        anchor = first.get(block, _declared(m)) if block else _declared(m)
        return (not anchor, anchor, block, not _declared(m), _declared(m), _KIND_RANK.get(m.kind, 9), m.name)

    metrics.sort(key=key)


def sections(snap: _snap.Snapshot, order: Sequence[str] = ()) -> list[tuple[str, list[_snap.MetricSnapshot]]]:
    """Metrics grouped by the section of their group ("operations" for "operations/broadcasts"):
    `order` first; then the sections in the order the app first declared them, each metric where
    it was declared; metrics of unknown declaration order (an older store) after them: groups with
    a state machine, counters and gauges, histograms, event logs, each by name. Metrics without a
    group go last."""
    groups: dict[str, list[_snap.MetricSnapshot]] = {}
    for m in snap.metrics:
        groups.setdefault(section_of(m.group), []).append(m)
    wanted = [section_of(o) for o in order]

    def rank(item: tuple[str, list[_snap.MetricSnapshot]]):
        name, metrics = item
        if name in wanted:
            return (0, wanted.index(name), 0, name)
        if not name:
            return (3, 0, 0, "")
        declared = [_declared(m) for m in metrics if _declared(m)]
        if declared:
            return (1, min(declared), 0, name)
        kinds = {m.kind for m in metrics}
        # a group holding a state machine reads first, one holding event logs last
        kind_rank = 0 if "state" in kinds else 3 if "events" in kinds else max(_KIND_RANK.get(k, 9) for k in kinds)
        return (2, 0, kind_rank, name)

    out = []
    for name, metrics in sorted(groups.items(), key=rank):
        _in_declared_order(metrics)
        out.append((name, metrics))
    return out


def _describe_scope(snap: _snap.Snapshot) -> str:
    return {"all": "All sessions", "session": "This session", "past": "Earlier sessions"}.get(snap.scope, snap.scope)


def render(snap: _snap.Snapshot, *, title: str = "Metrics", previous: _snap.Snapshot | None = None,
           tz: dt.tzinfo | None = None, order: Sequence[str] = (), namespace: str = "") -> Group:
    """The view of a snapshot, laid out like Spacedrive's sync metrics, as a Rich renderable:
    `title` exactly as given, the scope (and `namespace`) on the header line below it;
    `previous`: compare against it."""
    out = _Out()
    snap = _snap.derive(snap)
    if previous is not None:
        previous = _snap.derive(previous)
    taken = snap.taken_at
    uptime = fmt_uptime((taken - snap.session_started_at).total_seconds()) if snap.scope != "past" else ""
    has_state = any(m.kind == "state" and m.series for m in snap.metrics)
    out.line(0, (title, S_TITLE))
    out.line(0, ("━" * RULE_WIDTH, S_DIM))
    out.line(0, _describe_scope(snap), f" · {namespace}" if namespace else "",
             " · taken at ", fmt_time(taken, None, tz),
             f" · tracking since {fmt_time(snap.tracking_since, None, tz)}",
             f" ({fmt_duration((taken - snap.tracking_since).total_seconds())})",
             f" · uptime {uptime}" if uptime and not has_state else "")
    if snap.window:
        since, until = snap.window.get("since"), snap.window.get("until")
        if since is not None and until is not None:
            out.line(0, f"Window: {fmt_time(since, None, tz)} → "
                        f"{fmt_time(until, since, tz)} ({fmt_duration((until - since).total_seconds())})")
    if previous is not None and previous.window:
        since, until = previous.window.get("since"), previous.window.get("until")
        if since is not None and until is not None:
            out.line(0, f"Compared with: {fmt_time(since, None, tz)} → "
                        f"{fmt_time(until, since, tz)} ({fmt_duration((until - since).total_seconds())})")
    prev_by = {m.name: m for m in previous.metrics} if previous is not None else {}
    by_name = {m.name: m for m in snap.metrics}
    groups = sections(snap, order)
    if not groups:
        out.blank()
        out.line(0, ("No metrics match.", S_DIM))
    for name, metrics in groups:
        out.offset = 0
        out.blank()
        out.line(0, (humanize(name) if name else ("Other" if len(groups) > 1 else "Metrics"), S_SECTION))
        block = ""
        for i, m in enumerate(metrics):
            if block_of(m.group) != block:  # a block inside the section, as Spacedrive's "Broadcasts:"
                if i:
                    out.offset = 0
                    out.blank()
                block = block_of(m.group)
                if block:
                    out.line(2, f"{humanize(block)}:")
                    out.offset = 2
                else:
                    out.offset = 0
            prev = prev_by.get(m.name) if previous is not None else None
            if previous is not None and prev is None:
                prev = _snap.MetricSnapshot(name=m.name, kind=m.kind, unit=m.unit)
            look = _Look(m, by_name)
            if m.kind == "counter":
                _counter(out, m, prev, look)
            elif m.kind == "gauge":
                _gauge(out, m, prev, look, taken)
            elif m.kind == "histogram":
                _histogram(out, m, prev, look)
            elif m.kind == "state":
                _state(out, m, taken, tz, prev, look, uptime if m.series else "")
                if m.series:
                    uptime = ""
            elif m.kind == "events":
                _events(out, m, taken, tz, prev)
            elif m.kind == "distinct":
                _distinct_counts(out, m, prev)
    return Group(*out.lines)


def make_console(file=None, color: bool | None = None, width: int | None = None) -> Console:
    """A console for the view: colour only on a terminal without NO_COLOR (or when `color` says so);
    a terminal keeps cursor control either way (for --watch), a pipe gets plain unwrapped text."""
    import os
    import sys

    file = file if file is not None else sys.stdout
    is_tty = bool(getattr(file, "isatty", lambda: False)())
    if color is None:
        color = is_tty and not os.environ.get("NO_COLOR")
    terminal = True if color else (None if is_tty else False)
    return Console(file=file, force_terminal=terminal, no_color=not color, color_system="auto" if color else None,
                   highlight=False, emoji=False, width=width, soft_wrap=not (is_tty or color))


def render_text(snap: _snap.Snapshot, *, title: str = "Metrics", previous: _snap.Snapshot | None = None,
                tz: dt.tzinfo | None = None, order: Sequence[str] = (), color: bool = False, width: int = 120,
                namespace: str = "") -> str:
    """The view as text (plain unless `color`): what `vitals metrics` prints."""
    buf = io.StringIO()
    console = make_console(buf, color=color, width=width)
    console.print(render(snap, title=title, previous=previous, tz=tz, order=order, namespace=namespace))
    return buf.getvalue()
