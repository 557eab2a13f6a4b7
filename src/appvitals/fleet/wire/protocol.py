"""Wire protocol v1 (SPEC section 3): one JSON object a line, client -> collector.

The structs here are the single definition of a wire line, used by the agent, the
collector, the warehouses and the tests alike.
"""

from __future__ import annotations

import datetime as _dt
import operator
import re
from typing import Annotated, Literal

import msgspec

MAX_ATTRS = 64
MAX_SESSION_ID = 128
MAX_KEY = 128
MAX_STRING = 1024
MAX_LINE_BYTES = 64 * 1024

# Every limit is a msgspec constraint, checked in C while decoding: a valid line costs no
# Python-level checks at all (only an RFC 3339 ts is converted in Python).
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SESSION_ID)]
Key = Annotated[str, msgspec.Meta(max_length=MAX_KEY)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
AttrValue = str | int | float | bool
Attrs = Annotated[dict[Key, Text | int | float | bool], msgspec.Meta(max_length=MAX_ATTRS)]
Count = Annotated[int, msgspec.Meta(ge=0)]
EMPTY_RAW = msgspec.Raw(b"{}")


class Line(msgspec.Struct, tag_field="kind", forbid_unknown_fields=False, omit_defaults=True):
    """Fields every line has."""

    session_id: Id
    ts: Count | str
    seq: Count | None = None


class SessionLine(Line, tag="session", kw_only=True):
    client_id: Id
    attrs: Attrs = {}


class SampleLine(Line, tag="sample", kw_only=True):
    cpu: Annotated[float, msgspec.Meta(ge=0)]
    values: dict[str, float] = {}
    attrs: Attrs = {}


class EventLine(Line, tag="event", kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
    attrs: Attrs = {}


class EndLine(Line, tag="end"):
    reason: str | None = None


class RawSample(Line, tag="sample", kw_only=True, gc=False):
    """A sample line as the collector's block decoder reads it: every field checked as in
    SampleLine, except `attrs` and `values`, kept as their raw JSON text. Fleets repeat a few
    attrs texts millions of times, so the writer checks each distinct text once
    (`attrs_decoder`, `values_decoder`) instead of building and checking a dict per line."""

    cpu: Annotated[float, msgspec.Meta(ge=0)]
    values: msgspec.Raw = EMPTY_RAW
    attrs: msgspec.Raw = EMPTY_RAW


AnyLine = SessionLine | SampleLine | EventLine | EndLine
Kind = Literal["session", "sample", "event", "end"]

_decoder = msgspec.json.Decoder(AnyLine)
_block_decoder = msgspec.json.Decoder(list[SessionLine | RawSample | EventLine | EndLine])
attrs_decoder = msgspec.json.Decoder(Attrs)
values_decoder = msgspec.json.Decoder(dict[str, float])
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


def decode_line(raw: bytes | str) -> AnyLine:
    """Decode and validate one line; raise LineError with a client-facing message."""
    try:
        line = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise LineError(_friendly(str(exc)))
    except msgspec.DecodeError as exc:
        raise LineError(f"invalid JSON: {exc}")
    if line.ts.__class__ is not int:
        line.ts = parse_ts(line.ts)
    return line


def decode_many(raws: list[bytes]) -> list[AnyLine] | None:
    """Every line of `raws` decoded, or None when any is blank or bad (then use `decode_line`
    one by one for the line-numbered errors). The fast path: no Python frame per line."""
    try:
        lines = list(map(_decoder.decode, raws))
    except msgspec.DecodeError:
        return None
    return _int_ts(lines)


def decode_block(data: bytes, count: int) -> list[AnyLine | RawSample] | None:
    """The `count` newline-separated lines of `data` decoded in one call (as one JSON array),
    samples as RawSample; None when any line is blank or bad, or is not exactly one value
    (then use `decode_line` one by one for the line-numbered errors)."""
    try:
        lines = _block_decoder.decode(b"[" + data.replace(b"\n", b",") + b"]")
    except msgspec.DecodeError:
        return None
    if len(lines) != count:  # a line holding two values ("{...},{...}"): not a wire line
        return None
    return _int_ts(lines)


def _int_ts(lines: list) -> list | None:
    if set(map(type, map(_TS, lines))) - _INT:  # an RFC 3339 ts somewhere: convert those
        try:
            for line in lines:
                if line.ts.__class__ is not int:
                    line.ts = parse_ts(line.ts)
        except LineError:
            return None
    return lines


_TS = operator.attrgetter("ts")
_INT = {int}


# msgspec's constraint messages, said the way a client reads them
_LIMITS = [
    (re.compile(r"Expected `object` of length <= (\d+)"), "at most {0} keys"),
    (re.compile(r"Expected `str` of length <= (\d+)"), "longer than {0} characters"),
    (re.compile(r"Expected `str` of length >= 1"), "must not be empty"),
    (re.compile(r"Expected `(?:int|float)` >= (\S+?)(?:\.0)?"), "must be >= {0}"),
]


def _friendly(msg: str) -> str:
    # msgspec says "Expected `float`, got `str` - at `$.cpu`"; clients want "cpu: expected a number".
    if " - at `key` in `$." in msg:  # a dict key: "attrs: key longer than 128 characters"
        msg = msg.replace(" - at `key` in `$.", " - at `$.", 1)
        return _friendly(msg).replace(": ", ": key ", 1)
    if " - at `$." in msg:
        text, _, path = msg.partition(" - at `$.")
        path = path.rstrip("`").replace("[...]", "")
        for pattern, say in _LIMITS:
            found = pattern.fullmatch(text)
            if found:
                return f"{path}: {say.format(*found.groups())}"
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
