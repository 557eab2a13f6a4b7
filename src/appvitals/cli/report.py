"""`vitals report` (not built yet)."""

import click

from . import VitalsError


@click.command("report")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals report' is not built yet")
