"""`vitals simulate`: a simulated fleet posting section-3 lines (wraps fleet.simulate.run_simulation)."""

from __future__ import annotations

import json

import click
import msgspec

from appvitals.cli.app import BadUsage, VitalsError


@click.command("simulate")
@click.option("--url", required=True, help="Collector base URL, e.g. http://127.0.0.1:8420")
@click.option("--clients", default=20, show_default=True, type=int, help="Simulated clients (installs).")
@click.option("--minutes", default=60.0, show_default=True, type=float, help="Fleet time to simulate, in minutes.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed (and --start), same lines.")
@click.option("--scenario", "scenario", default=None, help="Scenario TOML file, or a shipped one by name: default, quiet, rollout.")
@click.option("--speed", default=0.0, show_default=True, type=float,
              help="Fleet seconds per real second; 0 = as fast as possible.")
@click.option("--token", default=None, help="Bearer token for the collector.")
@click.option("--start", "start", default=None,
              help="Fleet start time (e.g. '2026-01-01T00:00:00Z' or '3 hours ago'); default: --minutes ago.")
@click.option("--spool-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the clients' spools here (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print only the statistics as JSON.")
def command(url, clients, minutes, seed, scenario, speed, token, start, spool_dir, as_json) -> None:
    """Simulate a fleet of clients (the real Agent, in compressed time) posting to a collector."""
    from appvitals.fleet.client.uploader import ingest_url
    from appvitals.fleet.sim.scenario import ScenarioError, load_scenario
    from appvitals.fleet.sim.simulate import run_simulation

    if clients < 1:
        raise BadUsage("--clients must be >= 1")
    if minutes <= 0:
        raise BadUsage("--minutes must be > 0")
    if speed < 0:
        raise BadUsage("--speed must be >= 0")
    try:
        ingest_url(url)
    except ValueError as exc:
        raise BadUsage(f"--url: {exc}")
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise BadUsage(str(exc))
    start_ms = None
    if start:
        from appvitals.timeparse import TimeParseError, parse_time

        try:
            start_ms = int(parse_time(start).timestamp() * 1000)
        except TimeParseError as exc:
            raise BadUsage(f"--start: {exc}")
    try:
        stats = run_simulation(url, clients=clients, minutes=minutes, seed=seed, scenario=sc, speed=speed,
                               token=token, progress=not as_json, start_ms=start_ms, spool_dir=spool_dir)
    except RuntimeError as exc:
        raise VitalsError(str(exc))
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(stats)))
        return
    click.echo(
        f"simulated {stats.clients} clients, {stats.sessions} sessions, {stats.lines} lines "
        f"({stats.samples} samples, {stats.events} events) over {stats.fleet_seconds / 60:.0f} fleet minutes "
        f"in {stats.wall_seconds:.1f} s; collector accepted {stats.accepted}, "
        f"duplicates {stats.duplicates}, rejected {stats.rejected}"
    )
