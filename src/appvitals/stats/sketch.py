"""A mergeable quantile sketch with a relative-error guarantee (DDSketch-style).

Values are counted in logarithmically spaced buckets: bucket i holds (gamma^(i-1), gamma^i],
with gamma = (1 + alpha) / (1 - alpha). Any quantile is then returned within a relative
error of alpha (1 % by default) of the true value, two sketches merge exactly by adding
bucket counts, and a later cumulative sketch minus an earlier one is the sketch of the
values observed in between (used for `--since` windows).

Zero and values below `MIN_POSITIVE` in magnitude go to a zero bucket; negative values use a
mirrored bucket map.
"""

from __future__ import annotations

import math

import msgspec

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
INV_LOG_GAMMA = 1.0 / LOG_GAMMA
MIN_POSITIVE = 1e-9


def bucket_index(value: float) -> int:
    """Index of the bucket holding a positive value."""
    return math.ceil(math.log(value) * INV_LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of a bucket: within ALPHA of everything in it."""
    return 2.0 * GAMMA**index / (GAMMA + 1.0)


class SketchData(msgspec.Struct, omit_defaults=True, array_like=False):
    """Plain data of a sketch: bucket counts, as stored and sent over the wire."""

    pos: dict[int, int] = {}
    neg: dict[int, int] = {}
    zero: int = 0


def quantile(data: SketchData, count: int, q: float, lo: float, hi: float) -> float | None:
    """The q-quantile (0..1) of a sketch holding `count` values in [lo, hi]; None when empty."""
    if count <= 0:
        return None
    rank = q * (count - 1)
    seen = 0
    for index in sorted(data.neg, reverse=True):
        seen += data.neg[index]
        if seen > rank:
            return max(lo, min(hi, -bucket_value(index)))
    seen += data.zero
    if seen > rank:
        return max(lo, min(hi, 0.0))
    for index in sorted(data.pos):
        seen += data.pos[index]
        if seen > rank:
            return max(lo, min(hi, bucket_value(index)))
    return hi


def merge(a: SketchData, b: SketchData) -> SketchData:
    """The sketch of both inputs' values (exact: bucket counts add)."""
    return SketchData(pos=_add(a.pos, b.pos, 1), neg=_add(a.neg, b.neg, 1), zero=a.zero + b.zero)


def subtract(later: SketchData, earlier: SketchData) -> SketchData:
    """The sketch of values in `later` but not in `earlier` (both cumulative, same series)."""
    return SketchData(
        pos=_add(later.pos, earlier.pos, -1), neg=_add(later.neg, earlier.neg, -1), zero=max(0, later.zero - earlier.zero)
    )


def _add(a: dict[int, int], b: dict[int, int], sign: int) -> dict[int, int]:
    out = dict(a)
    for index, n in b.items():
        v = out.get(index, 0) + sign * n
        if v > 0:
            out[index] = v
        else:
            out.pop(index, None)
    return out
