"""A simulated fleet: many clients, in compressed time, following a scenario.

- `generate_lines(scenario, clients, minutes, seed)` is pure: it yields the wire lines
  (protocol structs) the fleet would send, in time order, with no I/O. Same arguments
  (including `start_ms`), same lines.
- `run_simulation(url, clients, minutes, seed, ...)` drives the REAL `Agent` (recorder,
  on-disk spool, gzip uploader with retries) once per simulated session, with an injected
  clock and CPU source, and posts to a collector. `vitals simulate` wraps it.

Both read the same per-client action scripts (fleet/scenario.py) through the same
`Recorder`, so for the same seed and start they produce the same lines.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from .protocol import AnyLine
from .recorder import Recorder
from .scenario import Action, Scenario, client_script, load_scenario


class SimulationStats(msgspec.Struct):
    """What a simulation run did."""

    clients: int = 0
    sessions: int = 0
    lines: int = 0
    samples: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    requests: int = 0
    fleet_seconds: float = 0.0
    wall_seconds: float = 0.0
    start_ms: int = 0
    end_ms: int = 0


def _scenario(scenario: Scenario | str | Path | None) -> Scenario:
    return scenario if isinstance(scenario, Scenario) else load_scenario(scenario)


def default_start_ms(minutes: float, now: float | None = None) -> int:
    """The default fleet start: `minutes` before now, rounded down to the second."""
    return int((now if now is not None else time.time()) - minutes * 60.0) * 1000


def fleet_actions(scenario: Scenario, clients: int, minutes: float, seed: int, start_ms: int) -> Iterator[Action]:
    """Every client's actions merged into one time-ordered stream (ties: client order)."""
    start = start_ms / 1000.0
    end = start + minutes * 60.0
    scripts = [client_script(scenario, c, start, end, seed) for c in range(clients)]
    return heapq.merge(*scripts, key=lambda a: a.t)


def _check_args(clients: int, minutes: float) -> None:
    if clients < 1:
        raise ValueError("clients must be >= 1")
    if minutes <= 0:
        raise ValueError("minutes must be > 0")


def generate_lines(
    scenario: Scenario | str | Path | None = None,
    clients: int = 20,
    minutes: float = 60.0,
    seed: int = 0,
    start_ms: int | None = None,
) -> Iterator[AnyLine]:
    """Yield the fleet's wire lines in time order, deterministically and without I/O.

    `scenario` is a Scenario, a TOML path, or None for the shipped default. `start_ms`
    (epoch ms) is when the fleet starts; by default `minutes` before now, so pass it
    explicitly when you need the very same lines twice.
    """
    _check_args(clients, minutes)
    sc = _scenario(scenario)
    start_ms = default_start_ms(minutes) if start_ms is None else start_ms
    recorders: dict[int, Recorder] = {}
    for action in fleet_actions(sc, clients, minutes, seed, start_ms):
        line = _record(recorders, action)
        if line is not None:
            yield line


def _record(recorders: dict[int, Recorder], a: Action) -> AnyLine | None:
    if a.kind == "start":
        rec = recorders[a.client] = Recorder(a.name, a.client_id, clock=lambda: a.t)
        return rec.session(a.attrs, ts=a.t)
    rec = recorders[a.client]
    if a.kind == "sample":
        return rec.sample(a.cpu, ts=a.t)
    if a.kind == "event":
        return rec.event(a.name, a.attrs, ts=a.t)
    if a.kind == "stage":
        rec.set_stage(a.name, a.attrs)
        return None
    del recorders[a.client]
    return rec.end(a.name, ts=a.t)


def count_kinds(lines: Iterable[AnyLine]) -> dict[str, int]:
    """How many lines of each kind (a small helper for tests and reports)."""
    out: dict[str, int] = {}
    for line in lines:
        kind = type(line).__struct_config__.tag
        out[kind] = out.get(kind, 0) + 1
    return out


__all__ = [
    "SimulationStats",
    "generate_lines",
    "fleet_actions",
    "count_kinds",
    "default_start_ms",
]
