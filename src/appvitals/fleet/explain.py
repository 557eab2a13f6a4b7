"""Which attribute combinations make the metric high: pure ranking over compact counts.

MacroBase-style: every combination of up to three attr values (session attrs, event attrs
bucketed, sample attrs such as stage) is a candidate; its *risk ratio* says how much more
often its units are high than the rest's. A candidate is kept when it has enough support
(high sessions it covers), a risk ratio of at least `min_risk_ratio`, passes a chi-square
test (Bonferroni-corrected over every candidate tried), and, for combinations of two or
three values, is significantly higher than each simpler combination it extends (else it
adds nothing). Counts come from `facts.fetch_profiles`; nothing here touches a database.

Units are *phases* (one session's samples sharing their sample attrs); a combination with
a sample attr covers the matching phases, one without covers every phase of its sessions.
The chi-square uses counts scaled to sessions, since phases of one session are not
independent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations

import msgspec

from .facts import Profile

Item = tuple[str, str]
Combo = tuple[Item, ...]

MAX_ITEMS = 3


class Settings(msgspec.Struct):
    """Knobs of the explanation search."""

    min_support: float = 0.02  # < 1: share of high sessions; >= 1: number of high sessions
    min_support_sessions: int = 3
    min_risk_ratio: float = 2.0
    alpha: float = 0.01  # family-wise, Bonferroni over all candidates
    max_items: int = MAX_ITEMS
    max_explanations: int = 20


class Counts(msgspec.Struct, array_like=True):
    """Units (phases), high units, sessions and high sessions of one combination."""

    units: int = 0
    high_units: int = 0
    sessions: int = 0
    high_sessions: int = 0


class Explanation(msgspec.Struct):
    """One combination of attr values that is high more often than the rest."""

    attrs: dict[str, str]
    sessions: int
    high_sessions: int
    high_share: float  # high sessions / sessions
    risk_ratio: float  # high-phase rate inside / outside, smoothed
    coverage: float  # share of all high sessions this combination holds
    units: int
    high_units: int
    p_value: float
    examples: list[str] = []


class Totals(msgspec.Struct):
    """Fleet-wide counts the risk ratios compare against."""

    units: int = 0
    high_units: int = 0
    sessions: int = 0
    high_sessions: int = 0


def totals(profiles: Iterable[Profile]) -> Totals:
    """Sum units, high units, sessions and high sessions over profiles."""
    t = Totals()
    for p in profiles:
        hi = sum(1 for _, h in p.phases if h)
        t.units += p.sessions * len(p.phases)
        t.high_units += p.sessions * hi
        t.sessions += p.sessions
        t.high_sessions += p.sessions if hi else 0
    return t


def _combos(items: Sequence[Item], size: int) -> Iterable[Combo]:
    for c in combinations(items, size):
        keys = [k for k, _ in c]
        if len(set(keys)) == len(keys):
            yield c


def count_combos(profiles: Iterable[Profile], allowed: set[Item] | None, max_items: int) -> dict[Combo, Counts]:
    """Counts of every combination of up to max_items items (only items in `allowed`, when given)."""
    out: dict[Combo, Counts] = {}
    for p in profiles:
        w = p.sessions
        s_items = sorted(i for i in p.items if allowed is None or i in allowed)
        n_ph = len(p.phases)
        n_hi = sum(1 for _, h in p.phases if h)
        local: dict[Combo, list] = {}
        phases = [(sorted(i for i in items if allowed is None or i in allowed), h) for items, h in p.phases]
        for size in range(0, max_items + 1):
            for cs in _combos(s_items, size):
                if cs:
                    local[cs] = [n_ph, n_hi, bool(n_hi)]
                for p_items, high in phases:
                    for psize in range(1, max_items - size + 1):
                        for cp in _combos(p_items, psize):
                            combo = tuple(sorted(cs + cp))
                            if len({k for k, _ in combo}) != len(combo):
                                continue
                            e = local.get(combo)
                            if e is None:
                                local[combo] = [1, int(high), high]
                            else:
                                e[0] += 1
                                e[1] += int(high)
                                e[2] = e[2] or high
        for combo, (u, h, any_high) in local.items():
            c = out.get(combo)
            if c is None:
                c = out[combo] = Counts()
            c.units += w * u
            c.high_units += w * h
            c.sessions += w
            c.high_sessions += w if any_high else 0
    return out


def chi2_p(a: float, b: float, c: float, d: float) -> float:
    """Two-sided p-value of a 2x2 chi-square test (1 degree of freedom) on counts a b / c d."""
    n = a + b + c + d
    den = (a + b) * (c + d) * (a + c) * (b + d)
    if n <= 0 or den <= 0:
        return 1.0
    chi2 = n * (a * d - b * c) ** 2 / den
    return math.erfc(math.sqrt(chi2 / 2.0))


def risk_ratio(h: float, u: float, rest_h: float, rest_u: float) -> float:
    """High rate inside over high rate outside, with +0.5 smoothing so it stays finite."""
    return ((h + 0.5) / (u + 1.0)) / ((rest_h + 0.5) / (rest_u + 1.0))


def _scaled_test(c: Counts, rest_units: int, rest_high: int, rest_sessions: float) -> float:
    """p-value of 'c is high more often than the rest', counts scaled from phases to sessions."""
    f1 = c.sessions / c.units if c.units else 1.0
    f2 = rest_sessions / rest_units if rest_units else 1.0
    a, b = c.high_units * f1, (c.units - c.high_units) * f1
    cc, d = rest_high * f2, (rest_units - rest_high) * f2
    return chi2_p(a, b, cc, d)


def explain(profiles: Sequence[Profile], settings: Settings | None = None, numeric_keys: Iterable[str] = ()) -> tuple[
    list[Explanation], dict[Combo, Counts], Totals
]:
    """Rank combinations of attr values by risk ratio; keep supported, significant, non-redundant ones."""
    s = settings or Settings()
    tot = totals(profiles)
    if tot.units == 0 or tot.high_units == 0:
        return [], {}, tot
    min_high = s.min_support if s.min_support >= 1 else s.min_support * tot.high_sessions
    min_high = max(float(s.min_support_sessions), min_high)

    singles = count_combos(profiles, None, 1)
    allowed = {c[0] for c, n in singles.items() if n.high_sessions >= min_high}
    counts = count_combos(profiles, allowed, s.max_items) if s.max_items > 1 else singles
    frequent = {c: n for c, n in counts.items() if n.high_sessions >= min_high}
    tested = max(1, len(frequent))
    alpha = s.alpha / tested
    avg_f = tot.sessions / tot.units

    passed: dict[Combo, Explanation] = {}
    for combo, n in frequent.items():
        rest_u, rest_h = tot.units - n.units, tot.high_units - n.high_units
        if n.units == 0 or rest_u <= 0:
            continue
        rr = risk_ratio(n.high_units, n.units, rest_h, rest_u)
        if rr < s.min_risk_ratio or n.high_units / n.units <= rest_h / rest_u:
            continue
        p = _scaled_test(n, rest_u, rest_h, rest_u * avg_f)
        if p >= alpha:
            continue
        if len(combo) > 1 and not _adds_to_parents(combo, n, counts, alpha):
            continue
        passed[combo] = Explanation(
            attrs={k: v for k, v in combo}, sessions=n.sessions, high_sessions=n.high_sessions,
            high_share=round(n.high_sessions / n.sessions, 4) if n.sessions else 0.0,
            risk_ratio=round(rr, 3), coverage=round(n.high_sessions / tot.high_sessions, 4) if tot.high_sessions else 0.0,
            units=n.units, high_units=n.high_units, p_value=float(f"{p:.3g}"),
        )
    ranked = sorted(passed.values(), key=lambda e: (-e.risk_ratio, -e.high_sessions, len(e.attrs)))
    ranked = _one_bucket_per_shape(ranked, set(numeric_keys))
    return ranked[: s.max_explanations], counts, tot


def _adds_to_parents(combo: Combo, n: Counts, counts: dict[Combo, Counts], alpha: float) -> bool:
    """True when combo is significantly higher than every one-item-shorter combination it extends."""
    for parent in combinations(combo, len(combo) - 1):
        pc = counts.get(parent)
        if pc is None:
            continue
        rest_u, rest_h = pc.units - n.units, pc.high_units - n.high_units
        if rest_u <= 0:
            return False  # same units as the parent: nothing added
        if n.high_units / n.units <= rest_h / rest_u * 1.1:
            return False
        rest_sessions = rest_u * (pc.sessions / pc.units)
        if _scaled_test(n, rest_u, rest_h, rest_sessions) >= alpha:
            return False
    return True


def _one_bucket_per_shape(ranked: list[Explanation], numeric_keys: set[str]) -> list[Explanation]:
    """Of explanations that differ only in a numeric attr's bucket, keep the best one."""
    if not numeric_keys:
        return ranked
    seen: set = set()
    out = []
    for e in ranked:
        shape = tuple(sorted((k, None if k in numeric_keys else v) for k, v in e.attrs.items()))
        if shape in seen:
            continue
        seen.add(shape)
        out.append(e)
    return out


def matches(attrs: dict[str, str], session_attrs: dict[str, str], phases: Sequence, event_max: dict[str, float],
            event_text: dict[str, str]) -> bool:
    """True when a session (attrs, phases, event maxima) has a high phase inside the combination `attrs`."""
    phase_req = {}
    for k, v in attrs.items():
        if k in event_max:
            x = event_max[k]
            if v.startswith(">="):
                if not x >= float(v[2:]):
                    return False
            elif v.startswith("<"):
                if not x < float(v[1:]):
                    return False
            else:
                return False
        elif k in event_text:
            if event_text[k] != v:
                return False
        elif k in session_attrs:
            if session_attrs[k] != v:
                return False
        else:
            phase_req[k] = v
    for items, high in phases:
        d = dict(items)
        if high and all(d.get(k) == v for k, v in phase_req.items()):
            return True
    return False
