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
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from appvitals.fleet.client.recorder import Recorder
from appvitals.fleet.sim.scenario import Action, Scenario, client_script, load_scenario
from appvitals.fleet.wire.protocol import AnyLine


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


def run_simulation(
    url: str,
    clients: int = 20,
    minutes: float = 60.0,
    seed: int = 0,
    scenario: Scenario | str | Path | None = None,
    speed: float = 0.0,
    token: str | None = None,
    progress: bool = True,
    start_ms: int | None = None,
    spool_dir: str | Path | None = None,
    batch_bytes: int = 256 * 1024,
    drain_timeout: float = 60.0,
) -> SimulationStats:
    """Run a simulated fleet through the real Agent (spool + uploader) against a collector.

    Fleet time starts at `start_ms` (default: `minutes` before now, so the data is recent)
    and runs `speed` times faster than real time (0 = as fast as possible). Each client
    keeps its spool under `spool_dir` (a temporary directory by default). Returns the
    run's statistics; raises RuntimeError when lines could not be delivered in the end.
    """
    _check_args(clients, minutes)
    if speed < 0:
        raise ValueError("speed must be >= 0 (0 = as fast as possible)")
    from appvitals.fleet.client.agent import Agent  # noqa: PLC0415 - keeps generate_lines importable without the agent
    from appvitals.fleet.client.spool import Spool
    from appvitals.fleet.client.uploader import Uploader

    sc = _scenario(scenario)
    start_ms = default_start_ms(minutes) if start_ms is None else start_ms
    start = start_ms / 1000.0
    fleet_seconds = minutes * 60.0
    own_dir = spool_dir is None
    root = Path(tempfile.mkdtemp(prefix="vitals-sim-") if own_dir else spool_dir)  # type: ignore[arg-type]
    stats = SimulationStats(clients=clients, fleet_seconds=fleet_seconds, start_ms=start_ms,
                            end_ms=int(start_ms + fleet_seconds * 1000))
    now = [start]
    agents: dict[int, Agent] = {}
    uploads: list = []  # uploader stats of finished agents
    wall0 = time.monotonic()
    last_flush = wall0

    def clock() -> float:
        return now[0]

    quiet_until = [0.0]

    def deliver(agent: Agent) -> None:
        # Mid-run uploads: a collector that fails is left alone for a few seconds (the lines
        # wait in the spools, as on real clients) instead of stalling the fleet clock.
        if time.monotonic() < quiet_until[0]:
            return
        if not agent.flush(timeout=2.0):
            quiet_until[0] = time.monotonic() + 5.0

    bar = _progress_bar(progress)
    task = bar.add_task("simulating fleet", total=fleet_seconds) if bar else None
    try:
        for a in fleet_actions(sc, clients, minutes, seed, start_ms):
            if speed > 0:
                wait = (a.t - start) / speed - (time.monotonic() - wall0)
                if wait > 0:
                    time.sleep(wait)
                if time.monotonic() - last_flush >= 2.0:  # paced runs deliver as they go
                    for agent in agents.values():
                        deliver(agent)
                    last_flush = time.monotonic()
            now[0] = a.t
            if a.kind == "start":
                agent = Agent(
                    url, attrs=a.attrs, home=root / f"client-{a.client:05d}", client_id=a.client_id,
                    session_id=a.name, clock=clock, system_info=False, background=False,
                    close_at_exit=False, token=token, batch_bytes=batch_bytes, fsync_every=5.0,
                )
                agents[a.client] = agent.start()
                stats.sessions += 1
                stats.lines += 1
                continue
            agent = agents[a.client]
            if a.kind == "sample":
                agent.sample(a.cpu)
                stats.samples += 1
                stats.lines += 1
            elif a.kind == "event":
                agent.event(a.name, **a.attrs)
                stats.events += 1
                stats.lines += 1
            elif a.kind == "stage":
                agent.set_stage(a.name, **a.attrs)
            else:
                agent.close(a.name, flush=False)
                uploads.append(agent.uploader.stats)
                del agents[a.client]
                stats.lines += 1
            if agent._appended_since_upload >= batch_bytes and not agent.closed:
                deliver(agent)
            if bar is not None and task is not None:
                bar.update(task, completed=min(a.t - start, fleet_seconds))
        for agent in agents.values():  # sessions still open at the end of the fleet time
            agent.close("simulation_end", flush=False)
            uploads.append(agent.uploader.stats)
        # deliver every client's spool, as each app would at its next start
        unsent = 0
        deadline = time.monotonic() + drain_timeout
        for home in sorted(root.glob("client-*")):
            with Spool(home / "spool") as spool:
                up = Uploader(url, spool, token=token, batch_bytes=batch_bytes)
                up.flush(timeout=max(deadline - time.monotonic(), 0.1))
                up.close()
                uploads.append(up.stats)
                unsent += spool.pending_lines()
        if bar is not None and task is not None:
            bar.update(task, completed=fleet_seconds)
    finally:
        if bar is not None:
            bar.stop()
        for agent in agents.values():
            if not agent.closed:
                agent.close("simulation_aborted", flush=False)
    for u in uploads:
        stats.accepted += u.accepted
        stats.duplicates += u.duplicates
        stats.rejected += u.rejected
        stats.requests += u.requests
    stats.wall_seconds = round(time.monotonic() - wall0, 3)
    if unsent:
        raise RuntimeError(f"{unsent} lines could not be delivered to {url} (kept in {root})")
    if own_dir:
        shutil.rmtree(root, ignore_errors=True)
    return stats


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of fleet time"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )
    bar.start()
    return bar


__all__ = [
    "run_simulation",
    "SimulationStats",
    "generate_lines",
    "fleet_actions",
    "count_kinds",
    "default_start_ms",
]
