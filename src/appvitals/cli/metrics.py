"""`vitals metrics` (not built yet)."""

import click

from . import VitalsError


@click.command("metrics")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals metrics' is not built yet")
