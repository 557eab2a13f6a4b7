"""The report's result types and number helpers: what the SQL side returns and the ranking reads.

No SQL and no database here: `facts` (the SQL) fills these, `explain` (pure ranking) and
`report` read them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import msgspec

MAX_EDGES = 12


class Window(msgspec.Struct):
    """The report's time range, Unix epoch milliseconds [since_ms, until_ms)."""

    since_ms: int
    until_ms: int


class NumericKey(msgspec.Struct):
    """A numeric attr and the edges it is bucketed at."""

    key: str
    edges: list[float]


class Keys(msgspec.Struct):
    """Which attrs the report looks at, and the values it keeps apart (rarer ones become '')."""

    session: dict[str, list[str]] = {}
    sample: list[str] = []
    sample_numeric: list[NumericKey] = []
    event_numeric: list[NumericKey] = []
    event_text: list[str] = []
    # every distinct sample attrs text in the window, when discovery saw them all (few enough):
    # the report then lists them instead of scanning the samples for them again
    sample_texts: list[str] | None = None
    sessions_seen: int = 0  # session lines discovery saw (an estimate of the sessions in the window)
    max_order: int = 3  # attr values in one combination the search counts, at most

    def numeric_edges(self) -> dict[str, list[float]]:
        """Edges of every numeric attr by name."""
        return {nk.key: nk.edges for nk in (*self.sample_numeric, *self.event_numeric)}


class Counts(msgspec.Struct, array_like=True):
    """Counts of one combination: sessions, high sessions, phases (units), high phases, samples, metric sum."""

    sessions: int = 0
    high_sessions: int = 0
    units: int = 0
    high_units: int = 0
    samples: int = 0
    metric_sum: float = 0.0

    def add(self, other: Counts) -> None:
        """Add another combination's counts into this one."""
        self.sessions += other.sessions
        self.high_sessions += other.high_sessions
        self.units += other.units
        self.high_units += other.high_units
        self.samples += other.samples
        self.metric_sum += other.metric_sum


Item = tuple[str, str]
Combo = tuple[Item, ...]


class TimelineRow(msgspec.Struct, array_like=True):
    """Sessions active in one time bucket for one version, and how many of them were high."""

    bucket: int
    version: str
    sessions: int
    high_sessions: int


class SessionFacts(msgspec.Struct):
    """One session's numbers in the window, for the worst-sessions list."""

    session_id: str
    samples: int
    mean: float
    max: float
    phases: list[tuple[Combo, bool]] = []
    attrs: dict[str, str] = {}
    items: dict[str, str] = {}


class Facts(msgspec.Struct):
    """Everything the report needs from the warehouse, already aggregated."""

    keys: Keys
    counts: dict[Combo, Counts]
    total: Counts
    timeline: list[TimelineRow]
    worst: list[SessionFacts]


def session_mean(metric_sum: float, samples: int) -> float:
    """A session's mean metric from its sum and sample count. The sum is rounded to 6
    decimals first: engines add the same samples in different orders, and a sum that is
    547.39999999999998 in one and 547.40000000000003 in another must not show 9.77 in one
    report and 9.78 in the next (metric values carry far fewer decimals)."""
    return round(float(metric_sum), 6) / samples if samples else 0.0


def fmt_number(x: float) -> str:
    """A number as short text: 40 rather than 40.0."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def nice_edges(quantiles: Sequence[float | None]) -> list[float]:
    """Round quantiles to readable steps (1, 5, 10, 50...) and drop duplicates."""
    edges: list[float] = []
    for q in quantiles:
        if q is None or not math.isfinite(q):
            continue
        if q == 0:
            e = 0.0
        else:
            mag = 10 ** math.floor(math.log10(abs(q)))
            step = mag / 2 if abs(q) >= 2 * mag else mag / 10
            e = round(round(q / step) * step, 10)
            if not math.isfinite(e):  # rounding 1.79e308 up passes the largest double
                e = q
        if e not in edges:
            edges.append(float(e))
    return sorted(edges)


def interval_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the intervals the edges cut: '<10', '[10,20)', ..., '>=60'."""
    labels = [f"<{fmt_number(edges[0])}"]
    labels += [f"[{fmt_number(a)},{fmt_number(b)})" for a, b in zip(edges, edges[1:], strict=False)]
    labels.append(f">={fmt_number(edges[-1])}")
    return labels


def interval_bounds(edges: Sequence[float]) -> dict[str, tuple[float, float]]:
    """Label -> (low, high) of each interval the edges cut."""
    return _interval_bounds(tuple(edges))


@functools.lru_cache(maxsize=256)
def _interval_bounds(edges: tuple[float, ...]) -> dict[str, tuple[float, float]]:
    lows = [-math.inf, *edges]
    highs = [*edges, math.inf]
    return dict(zip(interval_labels(edges), zip(lows, highs, strict=True), strict=True))


def candidate_edges(quantiles: Sequence[float | None]) -> list[float]:
    """Readable cut points: the rounded quantiles, plus the middle of any unusually wide gap
    between two quantiles (names of 6-32 and of 40-90 characters get an edge near 36)."""
    qs = sorted({float(q) for q in quantiles if q is not None and math.isfinite(q)})
    gaps = sorted(b - a for a, b in zip(qs, qs[1:], strict=False))
    wide = 3 * gaps[len(gaps) // 2] if gaps else math.inf
    mids = [a / 2 + b / 2 for a, b in zip(qs, qs[1:], strict=False) if b - a > wide]  # no overflow
    edges = nice_edges(qs)
    if len(edges) > MAX_EDGES - len(mids):
        keep = max(1, MAX_EDGES - len(mids))
        edges = [edges[int(i * len(edges) / keep)] for i in range(keep)]
    return sorted(set(edges) | set(nice_edges(mids)))


