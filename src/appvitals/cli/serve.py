"""`vitals serve` (not built yet)."""

import click

from . import VitalsError


@click.command("serve")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals serve' is not built yet")
