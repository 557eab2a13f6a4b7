"""`vitals demo`: the main job end to end -- collector, simulated fleet with planted problems, the report."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import click

from appvitals.cli.app import BadUsage, VitalsError


@contextlib.contextmanager
def running_collector(db_path: str, port: int = 0):
    """Run a collector on an embedded DuckDB file in a background thread; yields its base URL."""
    import uvicorn

    from appvitals.fleet.collector.app import create_app

    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db_path), host="127.0.0.1", port=port, log_level="error",
                                           lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, name="vitals-demo-collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise VitalsError(f"the collector did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def planted_findings(scenario, explanations) -> list[tuple[str, int | None]]:
    """For each planted problem of a scenario: its name and the rank (1-based) of the explanation naming it.

    An explanation names a problem when it holds every condition of the problem (a numeric
    threshold in the same direction), except that `stage` may be left implied, as when only
    receiving samples carry file_name_length.
    """
    out = []
    for problem in scenario.problems:
        want = {k: str(v) for k, v in problem.when.items()}
        rank = None
        for i, e in enumerate(explanations, 1):
            if not set(e.attrs) <= set(want) or not set(want) - {"stage"} <= set(e.attrs):
                continue
            if all(e.attrs[k] == v or (v[:1] in "<>" and e.attrs[k][:1] == v[:1]) for k, v in want.items()
                   if k in e.attrs):
                rank = i
                break
        out.append((problem.name, rank))
    return out


@click.command("demo")
@click.option("--dir", "workdir", default=None, type=click.Path(file_okay=False),
              help="Keep the warehouse here (e.g. ./vitals-demo); default: a temporary directory, removed at the end.")
@click.option("--clients", default=100, show_default=True, type=click.IntRange(1, 2000), help="Simulated clients.")
@click.option("--minutes", default=120.0, show_default=True, type=float, help="Fleet minutes to simulate.")
@click.option("--seed", default=7, show_default=True, type=int, help="Simulation seed.")
@click.option("--scenario", default=None, help="Scenario TOML (default: the shipped one with four planted problems).")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Collector port (default: a free one).")
@click.option("--keep-serving", is_flag=True, help="Keep the collector and dashboard running until Ctrl-C.")
def command(workdir, clients, minutes, seed, scenario, port, keep_serving) -> None:
    """Start a collector on DuckDB, run a simulated fleet with planted CPU problems through real agents, print the report."""
    from rich.console import Console

    from appvitals.cli.report import fetch_report, print_report
    from appvitals.fleet.analysis.report import ReportError
    from appvitals.fleet.sim.scenario import ScenarioError, load_scenario
    from appvitals.fleet.sim.simulate import run_simulation

    if minutes <= 0 or minutes > 24 * 60:
        raise BadUsage("--minutes must be within (0, 1440]")
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise BadUsage(str(exc))
    console = Console()
    t0 = time.monotonic()
    tmp = None
    if workdir:
        base = Path(workdir)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = base = Path(tempfile.mkdtemp(prefix="vitals-demo-"))
    db = str(base / "fleet.duckdb")
    try:
        with running_collector(db, port) as (url, _server):
            console.print(f"[bold]1.[/] collector on {url}, warehouse {db}")
            console.print(
                f"[bold]2.[/] simulating {clients} clients over {minutes:g} fleet minutes (scenario "
                f"{sc.name!r}: {len(sc.problems)} planted problems) through real agents…"
            )
            try:
                stats = run_simulation(url, clients=clients, minutes=minutes, seed=seed, scenario=sc, progress=True)
            except (RuntimeError, ValueError) as exc:
                raise VitalsError(f"simulation failed: {exc}")
            console.print(
                f"   {stats.sessions} sessions, {stats.lines:,} lines ({stats.samples:,} samples, "
                f"{stats.events:,} events) accepted {stats.accepted:,} in {stats.wall_seconds:.1f} s"
            )
            since = f"{int(minutes) + 5}m"
            console.print(f"[bold]3.[/] the report (GET {url}/v1/report?since={since}&threshold=30):")
            try:
                report = fetch_report(url, since=since, threshold=30.0, metric="cpu")
            except ReportError as exc:
                raise VitalsError(str(exc))
            print_report(report, console, since=since, dashboard=f"{url}/?since={since}")
            found = planted_findings(sc, report.explanations)
            if found:
                console.print("\n[bold]Planted problems[/] (from the scenario) and where the report ranks them:")
                for name, rank in found:
                    mark = f"[green]found as #{rank}[/]" if rank else "[red]not found[/]"
                    console.print(f"  - {name}: {mark}")
            console.print(f"\nDone in {time.monotonic() - t0:.0f} s.")
            if keep_serving:
                console.print(f"Dashboard: {url}/?since={since}  (Ctrl-C to stop)")
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
            elif tmp is None:
                console.print(f"Data kept in {db}: `vitals report --db {db} --since {since}` or "
                              f"`vitals serve --db {db}` for the dashboard.")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
