"""`vitals log`: the periodic stats log of a store, one row per closed hour/day/week/month.

Thin: options become a call to `appvitals.stats.periods.period_rows`; rows are printed as CSV
(stable, named columns) or JSON.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

import click
import msgspec

from appvitals.cli.app import BadUsage, VitalsError
from appvitals.stats import periods as _periods
from appvitals.stats import query as _query


@click.command("log")
@click.option("--db", metavar="FILE", required=True, help="The app's store file (SQLite; SQLCipher with a key).")
@click.option("--key", metavar="KEY", envvar="VITALS_STORE_KEY", show_envvar=True, help="Key of an encrypted store.")
@click.option("--every", type=click.Choice(_periods.EVERY), default="day", show_default=True,
              help="Length of a period (UTC calendar hours, days, ISO weeks or months).")
@click.option("--since", metavar="WHEN", help='First period to show: "7 days ago", ISO 8601... (default: all).')
@click.option("--until", metavar="WHEN", help="Show periods that ended by then (default: now).")
@click.option("--table-prefix", default="", metavar="PREFIX",
              help="The stats live in the app's own database, in tables named PREFIX* (e.g. appvitals_).")
@click.option("--format", "fmt", type=click.Choice(("csv", "json")), default="csv", show_default=True,
              help="CSV with a header line, or a JSON list of rows.")
def command(db, key, every, since, until, table_prefix, fmt) -> None:
    """The periodic stats log: one row per closed period, with each counter's value and delta,
    each gauge's last value, each distinct count and each histogram's count, p50 and p99."""
    now = dt.datetime.now(dt.timezone.utc)
    try:
        since_at = _query.parse_when(since, "since", now)
        until_at = _query.parse_when(until, "until", now)
    except _query.QueryError as exc:
        raise BadUsage(str(exc))
    if not os.path.isfile(db):
        raise BadUsage(f"no store file at {db!r}")
    from appvitals.stats.store import Store, StoreError, StoreKeyError

    try:
        store = Store.open_readonly(db, key=key or None, table_prefix=table_prefix)
    except StoreKeyError:
        raise BadUsage(f"wrong key for the encrypted store {db} (check --key / VITALS_STORE_KEY)" if key else
                       f"{db} is encrypted: pass --key KEY or set VITALS_STORE_KEY")
    except (StoreError, ValueError) as exc:
        raise VitalsError(f"cannot read {db}: {exc}")
    try:
        rows = _periods.period_rows(store, every, since=since_at, until=until_at)
    except StoreError as exc:
        raise VitalsError(f"cannot read {db}: {exc}")
    finally:
        store.close()
    if fmt == "json":
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        sys.stdout.write(_periods.to_csv(rows))
