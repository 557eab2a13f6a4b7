"""`vitals watchdog` (not built yet)."""

import click

from . import VitalsError


@click.command("watchdog")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals watchdog' is not built yet")
