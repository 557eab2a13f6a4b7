"""`vitals simulate` (not built yet)."""

import click

from . import VitalsError


@click.command("simulate")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals simulate' is not built yet")
