"""Wire protocol v1 (SPEC section 3): one JSON object a line, client -> collector.

The structs here are the single definition of a wire line, used by the agent, the
collector, the warehouses and the tests alike.

Every value a line can decode to is one every warehouse can store, so a write never fails
on what a client sent; a value outside these ranges rejects its line (by number, like any
other bad line):

- `ts`: integer epoch milliseconds in [0, TS_MAX) -- from the Unix epoch to
  2100-01-01T00:00:00Z -- and an RFC 3339 `ts` must convert into the same range (a year-1
  date with a +14:00 offset is before the epoch). SPEC asks for epoch milliseconds; the
  floor is the epoch itself (replayed and synthetic data use small values), the ceiling
  stays clear of ClickHouse's DateTime (seconds in 32 bits, until 2106), which partitions
  the tables by day.
- `seq`: 0 to 2**63 - 1 (a 64-bit signed column in every backend).
- `cpu`: a finite number in [0, CPU_MAX]: percent of one core, so 100 per core, up to a
  1024-core machine at full load.
- numbers in `attrs` and `values`: finite (JSON numbers beyond the double range are
  refused), integers within 64 bits.
- nesting: attrs and values are flat objects; any line nested too deep for the decoder
  (in any field, known or not) is refused as such instead of raising.
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
TS_MAX = 4_102_444_800_000  # 2100-01-01T00:00:00Z in epoch ms (exclusive)
SEQ_MAX = 2**63 - 1
CPU_MAX = 102_400.0  # 100 % per core, 1024 cores

# Every limit is a msgspec constraint, checked in C while decoding: a valid line costs no
# Python-level checks at all (only an RFC 3339 ts is converted in Python).
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SESSION_ID)]
Key = Annotated[str, msgspec.Meta(max_length=MAX_KEY)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
AttrValue = str | int | float | bool
Attrs = Annotated[dict[Key, Text | Int64 | float | bool], msgspec.Meta(max_length=MAX_ATTRS)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Ts = Annotated[int, msgspec.Meta(ge=0, lt=TS_MAX)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
Cpu = Annotated[float, msgspec.Meta(ge=0, le=CPU_MAX)]
EMPTY_RAW = msgspec.Raw(b"{}")


class Line(msgspec.Struct, tag_field="kind", forbid_unknown_fields=False, omit_defaults=True):
    """Fields every line has."""

    session_id: Id
    ts: Ts | str
    seq: Seq | None = None


class SessionLine(Line, tag="session", kw_only=True):
    client_id: Id
    attrs: Attrs = {}


class SampleLine(Line, tag="sample", kw_only=True):
    cpu: Cpu
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

    cpu: Cpu
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


TOO_DEEP = "invalid JSON: nested too deep"


def parse_ts(ts: int | str) -> int:
    """Return a timestamp (epoch ms int, or RFC 3339 string) as integer epoch milliseconds."""
    if isinstance(ts, bool):
        raise LineError("ts: expected epoch milliseconds or an RFC 3339 string")
    if isinstance(ts, int):
        if not 0 <= ts < TS_MAX:
            raise LineError(_TS_RANGE)
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
    try:
        ms = int(parsed.timestamp() * 1000)
    except (OverflowError, ValueError):
        raise LineError(_TS_RANGE)
    if not 0 <= ms < TS_MAX:
        raise LineError(_TS_RANGE)
    return ms


_TS_RANGE = "ts: must be from 1970-01-01T00:00:00Z (0) to before 2100-01-01T00:00:00Z (4102444800000)"


def decode_line(raw: bytes | str) -> AnyLine:
    """Decode and validate one line; raise LineError with a client-facing message."""
    try:
        line = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise LineError(_friendly(str(exc)))
    except msgspec.DecodeError as exc:
        raise LineError(f"invalid JSON: {exc}")
    except RecursionError:  # msgspec recurses per nesting level, known field or not
        raise LineError(TOO_DEEP)
    if line.ts.__class__ is not int:
        line.ts = parse_ts(line.ts)
    return line


def decode_many(raws: list[bytes]) -> list[AnyLine] | None:
    """Every line of `raws` decoded, or None when any is blank or bad (then use `decode_line`
    one by one for the line-numbered errors). The fast path: no Python frame per line."""
    try:
        lines = list(map(_decoder.decode, raws))
    except (msgspec.DecodeError, RecursionError):
        return None
    return _int_ts(lines)


def decode_block(data: bytes, count: int) -> list[AnyLine | RawSample] | None:
    """The `count` newline-separated lines of `data` decoded in one call (as one JSON array),
    samples as RawSample; None when any line is blank or bad, or is not exactly one value
    (then use `decode_line` one by one for the line-numbered errors)."""
    try:
        lines = _block_decoder.decode(b"[" + data.replace(b"\n", b",") + b"]")
    except (msgspec.DecodeError, RecursionError):
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
    (re.compile(r"Expected `(?:int|float)` <= (\S+?)(?:\.0)?"), "must be <= {0}"),
    (re.compile(r"Expected `(?:int|float)` < (\S+?)(?:\.0)?"), "must be < {0}"),
    (re.compile(r"Number out of range"), "number out of range"),
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
                if path == "ts" and say.startswith("must be"):
                    return _TS_RANGE
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
