"""Which attribute combinations make the metric high: pure ranking over compact counts.

MacroBase-style: every combination of up to three attr values (session attrs, event attrs,
sample attrs such as stage, numeric attrs as thresholds like ">=40") is a candidate; its
*risk ratio* says how much more often its units are high than the rest's. A candidate is
kept when it has enough support (high sessions it covers), a risk ratio of at least
`min_risk_ratio` (the effect-size floor), passes a chi-square test whose false discovery
rate over every candidate tried is held at `fdr` (Benjamini-Hochberg), and -- for two or
three values -- is significantly higher than each simpler combination it extends
(otherwise it adds nothing). A combination whose excess lies entirely
inside its overlap with a stronger explanation (e.g. `stage = receiving` when only long file
names make receiving high) is kept for the drill-down tree but left out of the ranked list.

Units are *phases* (one session's samples sharing their sample attrs); a combination with
a sample attr covers the matching phases, one without covers every phase of its sessions.
The chi-square uses counts scaled to sessions, since phases of one session are not
independent. Counts come from `facts.fetch_facts` (types in `model`); nothing here touches a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import msgspec

from appvitals.fleet.analysis.model import Combo, Counts, fmt_number, interval_bounds, interval_labels


class Settings(msgspec.Struct):
    """Knobs of the explanation search."""

    min_support: float = 0.01  # < 1: share of all high sessions; >= 1: a number of high sessions
    min_support_sessions: int = 3
    min_risk_ratio: float = 2.0  # the effect-size floor
    fdr: float = 0.01  # false discovery rate over all candidates (Benjamini-Hochberg)
    max_order: int = 3  # attr values in one combination, at most
    max_explanations: int = 20


class Explanation(msgspec.Struct):
    """One combination of attr values that is high more often than the rest."""

    attrs: dict[str, str]
    sessions: int  # sessions in the combination (session-phases when it names a sample attr)
    high_sessions: int
    high_share: float  # high_sessions / sessions
    risk_ratio: float  # high-phase rate inside / outside, +0.5 smoothed
    coverage: float  # share of all high sessions inside this combination
    units: int
    high_units: int
    p_value: float
    clients: int = 0  # distinct clients of its sessions
    high_clients: int = 0  # distinct clients with a high session in it (the clients affected)
    same_as: list[dict[str, str]] = []  # other combinations covering exactly the same units
    examples: list[str] = []  # worst sessions in this combination


class Result(msgspec.Struct):
    """Ranked explanations, plus the wider set the drill-down tree is built from."""

    explanations: list[Explanation]
    tree_nodes: list[Explanation]
    candidates: int


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


def _test(h: float, u: float, f1: float, rest_h: float, rest_u: float, f2: float) -> float:
    """p-value of inside vs outside, each side's phase counts scaled by its sessions-per-phase factor."""
    return chi2_p(h * f1, (u - h) * f1, rest_h * f2, (rest_u - rest_h) * f2)


def _factor(c: Counts) -> float:
    return min(1.0, c.sessions / c.units) if c.units else 1.0


def with_thresholds(counts: Mapping[Combo, Counts], numeric: Mapping[str, Sequence[float]],
                    min_high: float = 0.0) -> dict[Combo, Counts]:
    """Replace numeric interval items ('[20,30)') by threshold items ('>=20', '<30'), summing intervals.

    Combinations whose other items already hold fewer than `min_high` high sessions are
    skipped: no threshold can give them more. The session counts of a threshold combination
    add up phases, so they are capped by the same combination without its numeric items.
    """
    if not numeric:
        return dict(counts)
    index = {key: {label: i for i, label in enumerate(interval_labels(edges))} for key, edges in numeric.items()}
    out: dict[Combo, Counts] = {}
    groups: dict[tuple[str, Combo], list] = {}  # (numeric attr, other items) -> counts per interval
    for combo, c in counts.items():
        for num in combo:
            at_of = index.get(num[0])
            if at_of is not None:
                break
        else:
            out[combo] = c
            continue
        at = at_of.get(num[1])
        rest = tuple(i for i in combo if i[0] != num[0])
        if at is None or (rest and min_high and (rc := counts.get(rest)) is not None and rc.high_sessions < min_high):
            continue
        per = groups.get((num[0], rest))
        if per is None:
            per = groups[(num[0], rest)] = [None] * len(at_of)
        per[at] = c
    below_labels = {key: ["<" + fmt_number(e) for e in edges] for key, edges in numeric.items()}
    above_labels = {key: [">=" + fmt_number(e) for e in edges] for key, edges in numeric.items()}
    made: dict[Combo, Counts] = {}
    for (key, rest), per in groups.items():
        # the threshold item goes where sorting puts it (the other items name other attrs)
        ordered = sorted(rest)
        pos = sum(1 for k, _ in ordered if k < key)
        head, tail = tuple(ordered[:pos]), tuple(ordered[pos:])
        parent = out.get(tuple(i for i in ordered if i[0] not in numeric))
        cap_s, cap_h = (parent.sessions, parent.high_sessions) if parent is not None else (None, None)

        def emit(label: str, acc: Counts) -> None:
            cnt = msgspec.structs.replace(acc)
            if cap_s is not None:
                if cnt.sessions > cap_s:
                    cnt.sessions = cap_s
                if cnt.high_sessions > cap_h:
                    cnt.high_sessions = cap_h
            made[(*head, (key, label), *tail)] = cnt

        # intervals 0..n-1; edge j separates interval j (below) from j+1 (above)
        below = Counts()
        for j, label in enumerate(below_labels[key]):
            if per[j] is not None:
                below.add(per[j])
            if below.units:
                emit(label, below)
        above = Counts()
        labels = above_labels[key]
        for j in range(len(per) - 1, 0, -1):
            if per[j] is not None:
                above.add(per[j])
            if above.units:
                emit(labels[j - 1], above)
    out.update(made)
    return out


def explain(
    counts: Mapping[Combo, Counts], total: Counts, settings: Settings | None = None,
    numeric: Mapping[str, Sequence[float]] | None = None,
) -> Result:
    """Rank combinations of attr values by risk ratio; keep supported, significant, non-redundant ones."""
    s = settings or Settings()
    if total.units == 0 or total.high_units == 0:
        return Result([], [], 0)
    min_high = s.min_support if s.min_support >= 1 else s.min_support * total.high_sessions
    min_high = max(float(s.min_support_sessions), min_high)
    counts = with_thresholds(counts, numeric or {}, min_high)
    for c in counts.values():  # at most the total
        if c.sessions > total.sessions:
            c.sessions = total.sessions
        if c.high_sessions > total.high_sessions:
            c.high_sessions = total.high_sessions
    frequent = {c: n for c, n in counts.items()
                if n.high_sessions >= min_high and n.units > 0 and len(c) <= s.max_order}
    f_all = _factor(total)

    # the test of every supported candidate; Benjamini-Hochberg then keeps the false discovery
    # rate at s.fdr, and its cut-off is the level of the nested tests below
    tested: list[tuple[float, Combo, float]] = []
    for combo, n in frequent.items():
        rest_u, rest_h = total.units - n.units, total.high_units - n.high_units
        p = 1.0
        rr = 0.0
        if rest_u > 0 and n.high_units / n.units > max(0, rest_h) / rest_u:
            rr = risk_ratio(n.high_units, n.units, rest_h, rest_u)
            p = _test(n.high_units, n.units, _factor(n), rest_h, rest_u, f_all)
        tested.append((p, combo, rr))
    alpha = bh_cutoff([p for p, _, _ in tested], s.fdr)

    passed: dict[Combo, Explanation] = {}
    for p, combo, rr in tested:
        if rr < s.min_risk_ratio or p > alpha:
            continue
        n = frequent[combo]
        if len(combo) > 1 and not _adds_to_parents(combo, n, counts, alpha):
            continue
        passed[combo] = Explanation(
            attrs=dict(combo), sessions=n.sessions, high_sessions=n.high_sessions,
            high_share=round(n.high_sessions / n.sessions, 4) if n.sessions else 0.0,
            risk_ratio=round(rr, 3),
            coverage=round(n.high_sessions / total.high_sessions, 4) if total.high_sessions else 0.0,
            units=n.units, high_units=n.high_units, p_value=float(f"{p:.3g}"),
        )
    nodes = merge_aliases(passed, counts)
    explained = _explained_by_better(nodes, counts, total, s, alpha)
    ranked = sorted(
        (e for c, e in nodes.items() if c not in explained),
        key=lambda e: (-e.risk_ratio, -e.high_sessions, len(e.attrs), sorted(e.attrs.items())),
    )
    ranked = _one_threshold_per_shape(ranked, set(numeric or {}))
    shown = {tuple(sorted(e.attrs.items())) for e in ranked[: s.max_explanations]}
    numeric_keys = set(numeric or {})
    # explained-away parents of listed explanations stay in the tree as grouping nodes
    # ("receiving -> of those, long names"), except bare numeric thresholds (their session
    # counts are only upper bounds)
    tree = [
        e for c, e in nodes.items()
        if c in shown or (
            c in explained and not all(k in numeric_keys for k, _ in c)
            and any(set(c) < set(sc) for sc in shown)
        )
    ]
    tree = _one_threshold_per_shape(sorted(tree, key=lambda e: -e.risk_ratio), set(numeric or {}))
    return Result(ranked[: s.max_explanations], tree, len(frequent))


def bh_cutoff(p_values: Sequence[float], q: float) -> float:
    """The Benjamini-Hochberg cut-off: the largest p-value p_(k) with p_(k) <= k/m * q (-1
    when none passes), so that keeping every p <= cut-off holds the false discovery rate at q."""
    ordered = sorted(p_values)
    m = len(ordered)
    cut = -1.0
    for k, p in enumerate(ordered, start=1):
        if p <= k / m * q:
            cut = p
    return cut


def _adds_to_parents(combo: Combo, n: Counts, counts: Mapping[Combo, Counts], alpha: float) -> bool:
    """True when combo is significantly higher than the rest of every one-item-shorter combination."""
    for parent in combinations(combo, len(combo) - 1):
        pc = counts.get(parent)
        if pc is None:
            continue
        rest_u, rest_h = pc.units - n.units, pc.high_units - n.high_units
        if rest_u <= 0:
            return False  # the same units as the parent: nothing added
        if n.high_units / n.units <= 1.1 * rest_h / rest_u:
            return False
        if _test(n.high_units, n.units, _factor(n), rest_h, rest_u, _factor(pc)) > alpha:
            return False
    return True


def _explained_by_better(nodes: Mapping[Combo, Explanation], counts: Mapping[Combo, Counts], total: Counts,
                         s: Settings, alpha: float) -> set[Combo]:
    """Combinations whose excess lies entirely inside their overlap with a stronger explanation.

    `stage = receiving` is explained away by `file_name_length >= 40` when receiving phases
    without a long name are not high; a parent is explained away by a child the same way.
    """
    out = set()
    for p_combo, p in nodes.items():
        pc = counts[p_combo]
        for q_combo, q in nodes.items():
            if q_combo == p_combo or (q.risk_ratio <= p.risk_ratio and not set(p_combo) < set(q_combo)):
                continue
            union = tuple(sorted(set(p_combo) | set(q_combo)))
            if len({k for k, _ in union}) != len(union) or union == p_combo:
                continue
            uc = counts.get(union)
            if uc is None:
                continue
            rest_u, rest_h = pc.units - uc.units, pc.high_units - uc.high_units
            if rest_u <= 0:
                continue
            out_u, out_h = total.units - pc.units, total.high_units - pc.high_units
            rr = risk_ratio(rest_h, rest_u, out_h, out_u)
            p_value = _test(rest_h, rest_u, _factor(pc), out_h, out_u, _factor(total))
            if rr < s.min_risk_ratio or p_value > alpha:
                out.add(p_combo)
                break
    return out


def merge_aliases(passed: Mapping[Combo, Explanation], counts: Mapping[Combo, Counts]) -> dict[Combo, Explanation]:
    """Fold combinations that cover the very same sessions (os=linux and os_version=ubuntu) into one.

    Two combinations of one size with equal counts are the same sessions only when their union
    (both sets of items at once) still has those counts; equal counts alone happen by chance
    (m1=low and m1=high, two disjoint groups of one size)."""
    by_counts: dict[tuple, list[Combo]] = {}
    out: dict[Combo, Explanation] = {}
    for combo in sorted(passed, key=lambda c: (len(c), c)):
        e = passed[combo]
        sig = (len(combo), e.units, e.high_units, e.sessions, e.high_sessions)
        for first in by_counts.get(sig, []):
            if len(set(first) & set(combo)) != len(combo) - 1:
                continue
            union = tuple(sorted(set(first) | set(combo)))
            if len({k for k, _ in union}) != len(union):
                continue  # two values of one attr: never the same sessions
            uc = counts.get(union)
            if uc is not None and (uc.units, uc.high_units, uc.sessions, uc.high_sessions) == sig[1:]:
                out[first].same_as.append(dict(combo))
                break
        else:
            by_counts.setdefault(sig, []).append(combo)
            out[combo] = e
    return out


def _one_threshold_per_shape(ranked: list[Explanation], numeric_keys: set[str]) -> list[Explanation]:
    """Of explanations that differ only in a numeric attr's threshold (or its side), keep the first (best)."""
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


def satisfies(value: str, requirement: str, bounds: Mapping[str, tuple[float, float]] | None) -> bool:
    """True when an item value (or numeric interval label) meets a requirement ('7.0.0', '>=40', '<10')."""
    if value == requirement:
        return True
    if bounds is None or value not in bounds:
        return False
    lo, hi = bounds[value]
    try:
        if requirement.startswith(">="):
            return lo >= float(requirement[2:])
        if requirement.startswith("<"):
            return hi <= float(requirement[1:])
    except ValueError:
        return False
    return False


def matches(attrs: Mapping[str, str], session_items: Mapping[str, str], phases: Iterable[tuple[Combo, bool]],
            numeric: Mapping[str, Sequence[float]]) -> bool:
    """True when a session (its items and phases) has a high phase inside the combination `attrs`."""
    bounds = {k: interval_bounds(e) for k, e in numeric.items()}
    phase_req = {}
    for k, v in attrs.items():
        if k in session_items:
            if not satisfies(session_items[k], v, bounds.get(k)):
                return False
        else:
            phase_req[k] = v
    for items, high in phases:
        d = dict(items)
        if high and all(k in d and satisfies(d[k], v, bounds.get(k)) for k, v in phase_req.items()):
            return True
    return False
