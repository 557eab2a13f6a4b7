"""Human time expressions for `--since`, `--until`, `--compare` and HTTP `since`/`until`.

Accepted: "now", "today", "yesterday", "90m", "12h", "2d", "1w", "1 hour ago",
"3 days ago", "2025-10-23 10:00:00", "2025-10-23", and ISO 8601 / RFC 3339
("2025-10-23T10:00:00Z", "...+02:00"). Naive datetimes are local time.
"""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_COMPOUND = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


class TimeParseError(ValueError):
    """An expression we cannot read; the message says what is accepted."""


def parse_duration(text: str) -> float:
    """Seconds in "90m", "1h30m", "2 days", "1 hour"; raises TimeParseError."""
    s = text.strip().lower()
    if s.endswith(" ago"):
        s = s[:-4]
    parts = _COMPOUND.findall(s)
    if not parts or _COMPOUND.sub("", s).strip(" ,and"):
        raise TimeParseError(f"cannot read duration {text!r} (try '90m', '12h', '2 days')")
    total = 0.0
    for number, unit in parts:
        if unit not in _UNITS:
            raise TimeParseError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * _UNITS[unit]
    return total


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An aware UTC datetime for a human or ISO 8601 time expression; raises TimeParseError."""
    now = now or dt.datetime.now(dt.timezone.utc)
    s = text.strip().lower()
    if not s:
        raise TimeParseError("empty time expression")
    if s == "now":
        return now
    local_now = now.astimezone()
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    if s == "today":
        return midnight.astimezone(dt.timezone.utc)
    if s == "yesterday":
        return (midnight - dt.timedelta(days=1)).astimezone(dt.timezone.utc)
    if s[0].isdigit() and not re.match(r"^\d{4}-\d\d", s):
        try:
            return now - dt.timedelta(seconds=parse_duration(s))
        except TimeParseError:
            pass
    iso = text.strip().replace(" ", "T", 1) if re.match(r"^\d{4}-\d\d-\d\d \d", text.strip()) else text.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise TimeParseError(
            f"cannot read time {text!r} (try '1 hour ago', '90m', 'yesterday', '2025-10-23 10:00:00' or ISO 8601)"
        )
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive -> local time, as a person typing it means
    return parsed.astimezone(dt.timezone.utc)


def parse_epoch(text: str, now: dt.datetime | None = None) -> float:
    """Like parse_time, as Unix epoch seconds."""
    return parse_time(text, now).timestamp()
