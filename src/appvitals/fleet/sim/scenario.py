"""A simulated fleet, described in a TOML file a user can write.

A scenario says which app versions and operating systems the fleet runs (with weights),
which extra session attributes exist, which stages a session goes through and how much
CPU each stage costs, and which planted problems add CPU when their conditions hold.
`load_scenario` reads one; `default_scenario` is the one shipped in the package
(`appvitals/fleet/scenarios/default.toml`, documented there line by line).

`client_script` turns a scenario into what one simulated client does, as a deterministic
list of actions (session starts, stage changes, events, CPU samples, ends) in fleet time.
The same actions feed both the pure `generate_lines` (fleet/simulate.py) and the real
`Agent` driven by `run_simulation`, so both produce the same lines.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import msgspec

AttrValue = str | int | float | bool


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the problem."""


class Weighted(msgspec.Struct, forbid_unknown_fields=True):
    """One choice among several, picked with probability proportional to `weight`."""

    value: AttrValue
    weight: float = 1.0


class Version(msgspec.Struct, forbid_unknown_fields=True):
    """An app version and how common it is in the fleet."""

    version: str
    weight: float = 1.0


class OS(msgspec.Struct, forbid_unknown_fields=True):
    """An operating system (name + version) and how common it is."""

    name: str
    version: str = ""
    weight: float = 1.0


class SessionAttr(msgspec.Struct, forbid_unknown_fields=True):
    """An extra session attribute (network, sync_mode, locale...) with weighted values."""

    name: str
    values: list[Weighted]


class Cpu(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """CPU% (of one core) drawn from a normal distribution, clipped to [floor, ceiling]."""

    mean: float
    sd: float = 0.0
    floor: float = 0.0
    ceiling: float = 400.0


class Range(msgspec.Struct, forbid_unknown_fields=True):
    """Integers in [min, max], picked with probability proportional to `weight`."""

    min: int
    max: int
    weight: float = 1.0


class AttrGen(msgspec.Struct, forbid_unknown_fields=True):
    """How an event attribute is drawn: an integer in [min, max], one of weighted `ranges`
    (e.g. mostly short names, a tail of long ones), or one of `choices`."""

    min: int | None = None
    max: int | None = None
    ranges: list[Range] = []
    choices: list[Weighted] = []


class Stage(msgspec.Struct, forbid_unknown_fields=True):
    """A stage of a session: `once` stages run in file order at session start, then the
    others are picked at random by `weight`. `event` (with `event_attrs`) is sent when the
    stage begins; with `carry = true` its attrs are also attached to the stage's samples."""

    name: str
    duration: tuple[float, float] = (10.0, 60.0)
    cpu: Cpu = Cpu(mean=5.0, sd=2.0)
    once: bool = False
    weight: float = 1.0
    event: str = ""
    event_attrs: dict[str, AttrGen] = {}
    carry: bool = True


class Problem(msgspec.Struct, forbid_unknown_fields=True):
    """A planted problem: while every condition in `when` holds, CPU rises by `cpu_add`
    (then is multiplied by `cpu_multiply`). Conditions match session attrs, `stage` and
    the stage's carried attrs; a value is an exact match, a list of allowed values, or a
    comparison string for numbers (">=40", "<10"). `chance` is the share of matching
    sessions that are affected (decided once per session)."""

    name: str
    when: dict[str, AttrValue | list[AttrValue]]
    cpu_add: float = 0.0
    cpu_multiply: float = 1.0
    chance: float = 1.0


class Scenario(msgspec.Struct, forbid_unknown_fields=True):
    """A whole simulated fleet."""

    name: str = "scenario"
    description: str = ""
    sample_every: float = 5.0
    session_minutes: tuple[float, float] = (10.0, 40.0)
    pause_minutes: tuple[float, float] = (0.0, 5.0)
    versions: list[Version] = []
    os: list[OS] = []
    session_attrs: list[SessionAttr] = []
    stages: list[Stage] = []
    problems: list[Problem] = []


def parse_scenario(text: str, where: str = "scenario") -> Scenario:
    """Parse and check scenario TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: invalid TOML: {exc}")
    try:
        scenario = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{where}: {exc}")
    _check(scenario, where)
    return scenario


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped in the package (default, quiet, rollout...)."""
    folder = resources.files("appvitals.fleet.sim").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Read a scenario TOML file, or a shipped one by name ("default", "quiet"...); None = default."""
    if path is None:
        return default_scenario()
    name = str(path)
    if "/" not in name and "\\" not in name and not name.endswith(".toml") and name in shipped_scenarios():
        text = resources.files("appvitals.fleet.sim").joinpath(f"scenarios/{name}.toml").read_text("utf-8")
        return parse_scenario(text, f"{name}.toml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {p}: {exc.strerror or exc}")
    return parse_scenario(text, str(p))


def default_scenario() -> Scenario:
    """The scenario shipped in the package (fleet/scenarios/default.toml)."""
    text = resources.files("appvitals.fleet.sim").joinpath("scenarios/default.toml").read_text("utf-8")
    return parse_scenario(text, "default.toml")


def _check(s: Scenario, where: str) -> None:
    def bad(msg: str) -> None:
        raise ScenarioError(f"{where}: {msg}")

    if s.sample_every <= 0:
        bad("sample_every must be > 0 seconds")
    if not s.versions:
        bad("at least one [[versions]] entry is needed")
    if not s.os:
        bad("at least one [[os]] entry is needed")
    if not s.stages:
        bad("at least one [[stages]] entry is needed")
    if not any(not st.once for st in s.stages):
        bad("at least one stage must not be `once` (sessions cycle through those)")
    for lo, hi, what in (
        (*s.session_minutes, "session_minutes"),
        (*s.pause_minutes, "pause_minutes"),
    ):
        if lo < 0 or hi < lo:
            bad(f"{what} must be [min, max] with 0 <= min <= max")
    if s.session_minutes[1] <= 0:
        bad("session_minutes max must be > 0")
    for group, items in (("versions", s.versions), ("os", s.os)):
        if sum(i.weight for i in items) <= 0 or any(i.weight < 0 for i in items):
            bad(f"{group}: weights must be >= 0 with a positive total")
    for sa in s.session_attrs:
        if not sa.values or sum(v.weight for v in sa.values) <= 0:
            bad(f"session_attrs {sa.name!r}: needs values with a positive total weight")
    for st in s.stages:
        if st.duration[0] <= 0 or st.duration[1] < st.duration[0]:
            bad(f"stage {st.name!r}: duration must be [min, max] seconds with 0 < min <= max")
        if st.weight < 0:
            bad(f"stage {st.name!r}: weight must be >= 0")
        for key, gen in st.event_attrs.items():
            if gen.choices:
                if sum(c.weight for c in gen.choices) <= 0:
                    bad(f"stage {st.name!r}: event_attrs.{key} choices need a positive total weight")
                continue
            if gen.ranges:
                if any(r.max < r.min or r.weight < 0 for r in gen.ranges) or sum(r.weight for r in gen.ranges) <= 0:
                    bad(f"stage {st.name!r}: event_attrs.{key} ranges need min <= max and positive weights")
                continue
            if gen.min is None or gen.max is None or gen.max < gen.min:
                bad(f"stage {st.name!r}: event_attrs.{key} needs min <= max, or choices")
    if sum(st.weight for st in s.stages if not st.once) <= 0:
        bad("the stages that are not `once` need a positive total weight")
    for p in s.problems:
        if not p.when:
            bad(f"problem {p.name!r}: `when` must name at least one condition")
        if not 0 <= p.chance <= 1:
            bad(f"problem {p.name!r}: chance must be within [0, 1]")
        for key, cond in p.when.items():
            for c in cond if isinstance(cond, list) else [cond]:
                if isinstance(c, str) and c[:1] in "<>" and _comparison(c) is None:
                    bad(f"problem {p.name!r}: when.{key} = {c!r} is not a comparison like '>=40'")


# ---- matching ------------------------------------------------------------------------------

_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def _comparison(cond: str) -> tuple[str, float] | None:
    for op in (">=", "<=", ">", "<"):
        if cond.startswith(op):
            try:
                return op, float(cond[len(op):].strip())
            except ValueError:
                return None
    return None


def _matches_one(cond: AttrValue, value: AttrValue | None) -> bool:
    if value is None:
        return False
    if isinstance(cond, str) and cond[:1] in "<>":
        parsed = _comparison(cond)
        if parsed is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        op, bound = parsed
        return _OPS[op](value, bound)
    if isinstance(cond, bool) or isinstance(value, bool):
        return cond is value or str(cond).lower() == str(value).lower()
    return cond == value or str(cond) == str(value)


def matches(when: dict[str, AttrValue | list[AttrValue]], context: dict[str, AttrValue]) -> bool:
    """True when every condition of a problem's `when` holds in `context`."""
    for key, cond in when.items():
        value = context.get(key)
        options = cond if isinstance(cond, list) else [cond]
        if not any(_matches_one(c, value) for c in options):
            return False
    return True


# ---- one client's script -------------------------------------------------------------------


class Action(msgspec.Struct, frozen=True, array_like=True):
    """One thing a simulated client does at fleet time `t` (epoch seconds).

    kind: "start" (name = session id, attrs = session attrs, client_id), "stage" (name,
    attrs = carried attrs), "event" (name, attrs), "sample" (cpu), "end" (name = reason).
    """

    t: float
    client: int
    kind: str
    name: str = ""
    attrs: dict[str, AttrValue] = {}
    cpu: float = 0.0
    client_id: str = ""


def _pick(rng: random.Random, items: list, weights: list[float]):
    return rng.choices(items, weights=weights, k=1)[0]


def _draw_attr(rng: random.Random, gen: AttrGen) -> AttrValue:
    if gen.choices:
        return _pick(rng, [c.value for c in gen.choices], [c.weight for c in gen.choices])
    if gen.ranges:
        r = _pick(rng, gen.ranges, [r.weight for r in gen.ranges])
        return rng.randint(r.min, r.max)
    return rng.randint(int(gen.min), int(gen.max))  # type: ignore[arg-type]


def _draw_cpu(rng: random.Random, cpu: Cpu) -> float:
    value = rng.gauss(cpu.mean, cpu.sd) if cpu.sd > 0 else cpu.mean
    return min(max(value, cpu.floor), cpu.ceiling)


def client_rng(seed: int, client: int) -> random.Random:
    """The random stream of one simulated client: independent of the others, fixed by seed."""
    return random.Random(f"appvitals-sim:{seed}:{client}")


def client_script(scenario: Scenario, client: int, start: float, end: float, seed: int) -> Iterator[Action]:
    """Yield, in time order, what simulated client number `client` does between `start` and `end`."""
    rng = client_rng(seed, client)
    client_id = f"c{client:05d}-{rng.getrandbits(32):08x}"
    # A client keeps its version and OS across sessions, as a real install does.
    version = _pick(rng, [v.version for v in scenario.versions], [v.weight for v in scenario.versions])
    os_ = _pick(rng, scenario.os, [o.weight for o in scenario.os])
    once = [st for st in scenario.stages if st.once]
    cycle = [st for st in scenario.stages if not st.once]
    cycle_weights = [st.weight for st in cycle]
    step = scenario.sample_every
    # Clients do not all start at the same instant.
    t = start + rng.uniform(0, min(step * 10, max(end - start, 0) / 4))
    while t < end:
        session_len = rng.uniform(*scenario.session_minutes) * 60.0
        session_end = min(t + max(session_len, step), end)
        session_id = f"{rng.getrandbits(128):032x}"
        attrs: dict[str, AttrValue] = {"app_version": version, "os": os_.name}
        if os_.version:
            attrs["os_version"] = os_.version
        for sa in scenario.session_attrs:
            attrs[sa.name] = _pick(rng, [v.value for v in sa.values], [v.weight for v in sa.values])
        affected = [p for p in scenario.problems if rng.random() < p.chance]
        yield Action(t, client, "start", session_id, attrs, client_id=client_id)
        t_sample = t
        stages = iter(once)
        ending = "exit"
        while t < session_end:
            stage = next(stages, None) or _pick(rng, cycle, cycle_weights)
            stage_end = min(t + rng.uniform(*stage.duration), session_end)
            carried: dict[str, AttrValue] = {}
            if stage.event:
                ev_attrs = {k: _draw_attr(rng, g) for k, g in stage.event_attrs.items()}
                yield Action(t, client, "event", stage.event, ev_attrs)
                if stage.carry:
                    carried = ev_attrs
            yield Action(t, client, "stage", stage.name, carried)
            context = {**attrs, **carried, "stage": stage.name}
            add, mul = 0.0, 1.0
            for p in affected:
                if matches(p.when, context):
                    add += p.cpu_add
                    mul *= p.cpu_multiply
            # samples land on the session's sampling grid, one every `step` seconds
            if t_sample < t:
                t_sample += math.ceil((t - t_sample) / step) * step
            while t_sample < stage_end:
                cpu = (_draw_cpu(rng, stage.cpu) + add) * mul
                yield Action(t_sample, client, "sample", cpu=round(max(cpu, 0.0), 1))
                t_sample += step
            t = stage_end
        yield Action(session_end, client, "end", ending)
        t = session_end + rng.uniform(*scenario.pause_minutes) * 60.0 + step
