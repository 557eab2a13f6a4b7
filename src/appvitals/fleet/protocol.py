"""Wire protocol v1 (SPEC section 3): one JSON object a line, client -> collector.

The structs here are the single definition of a wire line, used by the agent, the
collector, the warehouses and the tests alike.
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

import msgspec

AttrValue = str | int | float | bool
MAX_ATTRS = 64
MAX_SESSION_ID = 128
MAX_STRING = 1024
MAX_LINE_BYTES = 64 * 1024


class Line(msgspec.Struct, tag_field="kind", forbid_unknown_fields=False, omit_defaults=True):
    """Fields every line has."""

    session_id: str
    ts: int | str
    seq: int | None = None


class SessionLine(Line, tag="session"):
    client_id: str = ""
    attrs: dict[str, AttrValue] = {}


class SampleLine(Line, tag="sample"):
    cpu: float = -1.0
    values: dict[str, float] = {}
    attrs: dict[str, AttrValue] = {}


class EventLine(Line, tag="event"):
    name: str = ""
    attrs: dict[str, AttrValue] = {}


class EndLine(Line, tag="end"):
    reason: str | None = None


AnyLine = SessionLine | SampleLine | EventLine | EndLine
Kind = Literal["session", "sample", "event", "end"]

_decoder = msgspec.json.Decoder(AnyLine)
_encoder = msgspec.json.Encoder()


class LineError(ValueError):
    """A line that breaks the protocol; the message is what the client is told."""


def parse_ts(ts: int | str) -> int:
    """Return a timestamp (epoch ms int, or RFC 3339 string) as integer epoch milliseconds."""
    if isinstance(ts, bool):
        raise LineError("ts: expected epoch milliseconds or an RFC 3339 string")
    if isinstance(ts, int):
        if ts < 0:
            raise LineError("ts: must be >= 0")
        return ts
    try:
        text = ts.strip().replace("z", "Z")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise LineError(f"ts: not an RFC 3339 timestamp: {ts[:40]!r}")
    if parsed.tzinfo is None:
        raise LineError("ts: RFC 3339 timestamp needs a timezone offset")
    return int(parsed.timestamp() * 1000)


def _check_attrs(attrs: dict, where: str = "attrs") -> None:
    if len(attrs) > MAX_ATTRS:
        raise LineError(f"{where}: at most {MAX_ATTRS} keys, got {len(attrs)}")
    for key, value in attrs.items():
        if len(key) > 128:
            raise LineError(f"{where}: key longer than 128 characters")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise LineError(f"{where}.{key}: string longer than {MAX_STRING} characters")


def decode_line(raw: bytes | str) -> AnyLine:
    """Decode and validate one line; raise LineError with a client-facing message."""
    try:
        line = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise LineError(_friendly(str(exc)))
    except msgspec.DecodeError as exc:
        raise LineError(f"invalid JSON: {exc}")
    if not 1 <= len(line.session_id) <= MAX_SESSION_ID:
        raise LineError(f"session_id: must be 1-{MAX_SESSION_ID} characters")
    if line.seq is not None and line.seq < 0:
        raise LineError("seq: must be >= 0")
    line.ts = parse_ts(line.ts)
    kind = type(line)
    if kind is SampleLine:
        if line.cpu < 0:
            raise LineError("cpu: expected a number >= 0")
    elif kind is SessionLine:
        if not line.client_id:
            raise LineError("client_id: required for kind 'session'")
        if len(line.client_id) > MAX_SESSION_ID:
            raise LineError(f"client_id: must be at most {MAX_SESSION_ID} characters")
    elif kind is EventLine:
        if not line.name:
            raise LineError("name: required for kind 'event'")
        if len(line.name) > MAX_STRING:
            raise LineError(f"name: longer than {MAX_STRING} characters")
    attrs = getattr(line, "attrs", None)
    if attrs:
        _check_attrs(attrs)
    return line


def _friendly(msg: str) -> str:
    # msgspec says "Expected `float`, got `str` - at `$.cpu`"; clients want "cpu: expected a number".
    if " - at `$." in msg:
        text, _, path = msg.partition(" - at `$.")
        path = path.rstrip("`")
        text = text.replace("`float`", "a number").replace("`int`", "an integer").replace("`str`", "a string")
        return f"{path}: {text[0].lower()}{text[1:]}"
    if "Object missing required field" in msg:
        field = msg.split("`")[1] if "`" in msg else "?"
        return f"{field}: required"
    if "Invalid value" in msg and "kind" in msg:
        return "kind: expected one of session, sample, event, end"
    if "missing required field `kind`" in msg.lower():
        return "kind: required"
    return msg


def encode_line(line: AnyLine) -> bytes:
    """Encode one line as JSON bytes (no trailing newline)."""
    return _encoder.encode(line)
