"""The `vitals` command group, its error types and the entry point behind `appvitals.cli.main`."""

from __future__ import annotations

import importlib
import os
import sys

import click

from appvitals.extras import MissingExtra

# command name -> module under appvitals.cli that defines `command`
_COMMANDS = {
    "demo": "demo",
    "serve": "serve",
    "simulate": "simulate",
    "report": "report",
    "metrics": "metrics",
    "log": "log",
    "watchdog": "watchdog",
}


class VitalsError(click.ClickException):
    """A runtime failure reported as one line on stderr, exit code 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"vitals: error: {self.format_message()}", err=True)


class BadUsage(click.UsageError):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"vitals: {self.format_message()}", err=True)


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        module = _COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"appvitals.cli.{module}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="appvitals")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """appvitals: in-app stats that survive restarts, and a fleet collector that explains high CPU."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or bool(os.environ.get("VITALS_DEBUG"))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `vitals` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("VITALS_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="vitals", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vitals: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"vitals: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except MissingExtra as exc:
        if debug:
            raise
        click.echo(f"vitals: error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # never a traceback unless --debug
        if debug:
            raise
        click.echo(f"vitals: error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
