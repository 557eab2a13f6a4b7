"""Distinct counts: HyperLogLog sketches of keyed hashes, per UTC day, ISO week, month and all time.

The sketch is HyperLogLog with 2**14 one-byte registers (16 KiB), read with Ertl's improved
estimator (O. Ertl, "New cardinality estimation algorithms for HyperLogLog sketches", 2017),
which needs no bias tables and is unbiased from 0 to billions: its standard error is
1.04 / sqrt(16384) = 0.81 %, so 2 % is about 2.5 standard errors. Small counts are close to
exact. Registers merge by taking the maximum, which is exact, associative and idempotent:
merging a sketch with itself or with one it already contains changes nothing.

Identifiers never enter a sketch: `DistinctKey.digest(id)` is a keyed BLAKE2b hash (the key
lives in the store, encrypted when the store is), and only its bits set registers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os

import msgspec

P = 14
M = 1 << P
Q = 64 - P
_SENTINEL = 1 << Q
_ALPHA = 1.0 / (2.0 * math.log(2.0))
KEEP_CLOSED = 400  # closed periods whose final count is kept
RELATIVE_ERROR = 1.04 / math.sqrt(M)


class DistinctData(msgspec.Struct, omit_defaults=True, gc=False):
    """The sketches of one distinct series as of `day` (an ISO date, UTC).

    `d`, `w`, `m`, `a`: registers of that day, its ISO week, its month and all time (empty
    bytes: no id yet). `closed`: final counts of earlier periods ("2026-12-03", "2026-W49",
    "2026-11")."""

    day: str = ""
    d: bytes = b""
    w: bytes = b""
    m: bytes = b""
    a: bytes = b""
    closed: dict[str, float] = {}


class DistinctKey:
    """The key of the keyed hash; identical keys are what let sketches of several processes merge."""

    __slots__ = ("base", "key")

    def __init__(self, key: bytes | None = None) -> None:
        self.set(key or os.urandom(16))

    def set(self, key: bytes) -> None:
        """Use `key` from now on (ids hashed before keep the old key's bits)."""
        self.key = bytes(key)
        self.base = hashlib.blake2b(key=self.key, digest_size=8)

    def hasher(self):
        """A fresh keyed hasher (copying the keyed state is cheaper than keying again)."""
        return self.base.copy()

    def digest(self, value: str | bytes) -> bytes:
        """The keyed 8-byte hash of one identifier."""
        h = self.base.copy()
        h.update(value.encode() if isinstance(value, str) else bytes(value))
        return h.digest()


_RANK8 = [0] + [(v & -v).bit_length() for v in range(1, 256)]  # 1 + trailing zeros of a nonzero byte


def fold(registers: bytearray, digests) -> None:
    """Set the registers of 8-byte digests, read as big-endian integers: the top P bits pick the
    register, the rank is one plus the trailing zeros of the other Q bits (at most Q + 1)."""
    rank8, frm = _RANK8, int.from_bytes
    for dg in digests:
        r = rank8[dg[7]]  # the last byte decides the rank 255 times in 256
        if not r:
            v = frm(dg) | _SENTINEL
            r = (v ^ (v - 1)).bit_length()
        i = (dg[0] << 6) | (dg[1] >> 2)  # the top 14 bits
        if r > registers[i]:
            registers[i] = r


def estimate(registers: bytes | bytearray) -> float:
    """Ertl's improved raw estimate of the number of distinct hashes behind `registers`."""
    if not registers:
        return 0.0
    m = len(registers)
    counts = [registers.count(k) for k in range(Q + 2)]
    if counts[0] == m:
        return 0.0
    z = m * _tau(1.0 - counts[Q + 1] / m)
    for k in range(Q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += m * _sigma(counts[0] / m)
    return _ALPHA * m * m / z


def count(registers: bytes | bytearray) -> float:
    """The estimate rounded to a whole number of ids."""
    return float(round(estimate(registers)))


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


def union(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    """Registers of the union of two sketches (empty bytes stand for an empty sketch)."""
    if not a:
        return bytes(b)
    if not b:
        return bytes(a)
    if len(a) != len(b):
        raise ValueError("distinct sketches of different sizes cannot be merged")
    return bytes(map(max, a, b))


# ---------------------------------------------------------------- calendar periods (UTC)


def day_of(ts: float) -> str:
    """The UTC date of epoch seconds `ts`, ISO format."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat()


def week_of(day: str) -> str:
    """The ISO week of an ISO date: "2026-W49"."""
    year, week, _ = dt.date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def month_of(day: str) -> str:
    """The month of an ISO date: "2026-12"."""
    return day[:7]


def next_day_start(ts: float) -> float:
    """Epoch seconds of the next UTC midnight after `ts`."""
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc).date() + dt.timedelta(days=1)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()


def roll(data: DistinctData, today: str) -> DistinctData:
    """`data` moved forward to `today`: periods that ended are closed (their count kept)."""
    if not data.day or data.day == today:
        return data if data.day else msgspec.structs.replace(data, day=today)
    if data.day > today:  # a clock that went back: never rewind the periods
        return data
    closed = dict(data.closed)
    closed[data.day] = max(closed.get(data.day, 0.0), count(data.d))
    w, m = data.w, data.m
    if week_of(data.day) != week_of(today):
        key = week_of(data.day)
        closed[key] = max(closed.get(key, 0.0), count(w))
        w = b""
    if month_of(data.day) != month_of(today):
        key = month_of(data.day)
        closed[key] = max(closed.get(key, 0.0), count(m))
        m = b""
    return DistinctData(day=today, d=b"", w=w, m=m, a=data.a, closed=_trim(closed))


def _trim(closed: dict[str, float]) -> dict[str, float]:
    if len(closed) <= KEEP_CLOSED:
        return closed
    keep = sorted(closed)[-KEEP_CLOSED:]
    return {k: closed[k] for k in keep}


def merge(a: DistinctData, b: DistinctData) -> DistinctData:
    """Union of two sketches of one series, exact for every period whose registers both still hold
    (the current day, week and month of the later one, and all time); closed periods keep the larger
    final count."""
    today = max(a.day, b.day)
    if not today:
        return DistinctData(a=union(a.a, b.a))
    a, b = roll(a, today), roll(b, today)
    closed = dict(a.closed)
    for k, v in b.closed.items():
        closed[k] = max(closed.get(k, 0.0), v)
    return DistinctData(day=today, d=union(a.d, b.d), w=union(a.w, b.w), m=union(a.m, b.m), a=union(a.a, b.a),
                        closed=_trim(closed))


def counts(data: DistinctData, now: float | None = None) -> tuple[float, float, float, float]:
    """(day, week, month, all) counts as of `now` (None: as of the sketch's own day); a day, week
    or month that has ended counts 0."""
    if now is not None and data.day:
        data = roll(data, day_of(now))
    return count(data.d), count(data.w), count(data.m), count(data.a)


def period_count(data: DistinctData, key: str, now: float) -> float | None:
    """The count of one period ("2026-12-03", "2026-W49", "2026-12"): final when it has ended,
    so far when it is the current one; None when unknown."""
    data = roll(data, day_of(now)) if data.day else data
    if key == data.day:
        return count(data.d)
    if data.day and key == week_of(data.day):
        return count(data.w)
    if data.day and key == month_of(data.day):
        return count(data.m)
    return data.closed.get(key)
