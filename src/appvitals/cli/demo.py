"""`vitals demo` (not built yet)."""

import click

from . import VitalsError


@click.command("demo")
def command() -> None:
    """Not built yet."""
    raise VitalsError("'vitals demo' is not built yet")
