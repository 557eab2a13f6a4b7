"""`vitals watchdog`: watch another process's CPU and lifecycle (wraps fleet.watchdog.Watchdog)."""

from __future__ import annotations

import signal
import sys

import click

from appvitals.cli.app import BadUsage, VitalsError


def _attr(text: str) -> tuple[str, str | int | float | bool]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadUsage(f"--attr expects key=value, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    if value in ("true", "false"):
        return key, value == "true"
    return key, value


@click.command("watchdog", context_settings={"ignore_unknown_options": True})
@click.option("--pid", type=int, help="Process to watch (or give a command to start after --).")
@click.option("--url", required=True, help="Collector base URL, e.g. http://127.0.0.1:8420")
@click.option("--port", default=47321, show_default=True, type=int,
              help="UDP port on 127.0.0.1 where the app sends stages and events (0 = any free port).")
@click.option("--app-version", default="", help="The watched app's version (a session attr).")
@click.option("--attr", "attrs", multiple=True, help="Extra session attr key=value (repeatable).")
@click.option("--interval", default=1.0, show_default=True, type=float, help="Seconds between CPU samples.")
@click.option("--token", default=None, help="Bearer token for the collector (also $VITALS_TOKEN or --token-file; "
              "on the command line it shows in ps).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="File holding the bearer token (its first token line).")
@click.option("--home", default=None, type=click.Path(file_okay=False),
              help="Where the spool and client id live (default: the user cache dir).")
@click.option("--replay", type=click.Choice(["ask", "yes", "no"]), default="ask", show_default=True,
              help="A big spool left by an earlier run: ask (on a terminal), always replay, or drop it.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def command(pid, url, port, app_version, attrs, interval, token, token_file, home, replay, cmd) -> None:
    """Measure process PID's CPU from outside and report it, with the stages and events it sends.

    Or start the app yourself: `vitals watchdog --url URL -- ./app --flag`; the app finds the
    UDP port in $VITALS_WATCHDOG_PORT, and the watchdog exits with the app's exit code.
    """
    from appvitals.fleet.client.uploader import ingest_url
    from appvitals.fleet.client.watchdog import Watchdog
    from appvitals.httpauth import TokenError, gather_tokens

    if interval <= 0:
        raise BadUsage("--interval must be > 0")
    if (pid is None) == (not cmd):
        raise BadUsage("give either --pid PID or a command to start after --")
    try:
        ingest_url(url)
    except ValueError as exc:
        raise BadUsage(f"--url: {exc}")
    session_attrs = dict(_attr(a) for a in attrs)
    try:  # the command line first, then $VITALS_TOKEN, then the file
        tokens = gather_tokens([token] if token is not None else [], "VITALS_TOKEN",
                               [token_file] if token_file else [])
    except TokenError as exc:
        raise BadUsage(str(exc))
    token = tokens[0] if tokens else None

    def consent(nbytes: int, nlines: int) -> bool:
        if replay != "ask":
            return replay == "yes"
        if not sys.stdin.isatty():
            return True
        return click.confirm(
            f"An earlier run left {nlines} unsent lines ({nbytes / 1e6:.1f} MB). Send them now?", default=True
        )

    try:
        dog = Watchdog(pid, url, command=cmd or None, port=port, app_version=app_version, attrs=session_attrs, interval=interval,
                       token=token, home=home, replay_consent=consent)
    except ValueError as exc:
        raise BadUsage(str(exc))
    except OSError as exc:
        raise VitalsError(str(exc))
    def on_signal(signum, _frame) -> None:
        if dog.child is not None and dog.child.poll() is None:
            dog.child.send_signal(signum)  # a wrapper passes the signal on and reports the app's end
        else:
            dog.stop("watchdog_stopped")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready(d: Watchdog) -> None:
        host, bound = d.address
        click.echo(f"vitals watchdog: watching pid {d.pid}, session {d.agent.session_id}, "
                   f"listening on udp {host}:{bound}", err=True)

    reason = dog.run(on_ready=ready)
    click.echo(f"vitals watchdog: session ended ({reason}); {dog.messages} messages, "
               f"{dog.bad_messages} refused", err=True)
    if dog.exit_code is not None:
        code = dog.exit_code if dog.exit_code >= 0 else 128 - dog.exit_code
        sys.exit(code)
