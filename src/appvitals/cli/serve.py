"""`vitals serve`: run the fleet collector (a thin wrapper over appvitals.fleet.collector.serve)."""

from __future__ import annotations

import logging

import click

from appvitals.cli.app import BadUsage, VitalsError

DEFAULT_DB = "vitals-fleet.duckdb"


@click.command("serve")
@click.option("--db", "db", metavar="FILE", help=f"DuckDB warehouse file (default: {DEFAULT_DB}).")
@click.option("--clickhouse", "clickhouse", metavar="URL", help="ClickHouse warehouse: clickhouse://host:9000/database.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8420, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--token", "tokens", multiple=True, metavar="T",
              help="Bearer token clients must send to ingest (repeatable; also $VITALS_TOKEN, --token-file).")
@click.option("--token-file", "token_files", multiple=True, metavar="FILE", type=click.Path(dir_okay=False),
              help="File holding ingest token(s), one a line (not shown by ps, unlike --token).")
@click.option("--read-token", "read_tokens", multiple=True, metavar="T",
              help="Bearer token for reports, sessions and /metrics (repeatable; also $VITALS_READ_TOKEN, "
                   "--read-token-file).")
@click.option("--read-token-file", "read_token_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False), help="File holding read token(s), one a line.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="URL",
              help="Web page origin allowed to ingest from a browser, e.g. https://app.example.com "
                   "(repeatable; cross-site browser writes are refused otherwise).")
@click.option("--max-body-mb", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Plain size one compressed request may expand to (larger: 413).")
@click.option("--insecure", is_flag=True, help="Allow listening beyond 127.0.0.1 without tokens.")
@click.option("--retention-days", type=click.IntRange(1, None), metavar="N", help="Drop data older than N days (checked hourly).")
@click.option("--max-queue", type=click.IntRange(1, None), default=64, show_default=True,
              help="Line chunks (1000 lines each) that may wait for the writer before requests slow down.")
@click.option("--decode-workers", type=click.IntRange(0, 64), default=None, metavar="N",
              help="Processes that parse and validate ingested lines beside the server (DuckDB; "
                   "default: one per core up to 4, 0 parses in the server process).")
@click.option("--ingest-log/--no-ingest-log", default=True, show_default=True,
              help="DuckDB: answer once new lines are in the collector's own fsynced log, and insert them "
                   "into the warehouse in the background (--no-ingest-log: answer after the warehouse commit).")
def command(db, clickhouse, host, port, tokens, token_files, read_tokens, read_token_files, allow_origins,
            max_body_mb, insecure, retention_days, max_queue, decode_workers, ingest_log) -> None:
    """Run the fleet collector: POST /v1/ingest, GET /v1/report, /metrics, /healthz."""
    from appvitals.fleet.collector.decode import use_system_allocator

    use_system_allocator()  # before anything imports pyarrow (its C++ side reads it once)
    from appvitals.fleet.collector.runner import check_bind, serve
    from appvitals.httpauth import TokenError, gather_tokens

    # the driver logs each failed connection with a traceback; our one-line error says it all
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)

    if db and clickhouse:
        raise BadUsage("give either --db or --clickhouse, not both")
    if clickhouse and not clickhouse.startswith("clickhouse://"):
        raise BadUsage("--clickhouse wants a URL like clickhouse://127.0.0.1:9000/default")
    warehouse = clickhouse or db or DEFAULT_DB
    try:
        tokens = gather_tokens(tokens, "VITALS_TOKEN", token_files)
        read_tokens = gather_tokens(read_tokens, "VITALS_READ_TOKEN", read_token_files)
    except TokenError as exc:
        raise BadUsage(str(exc))
    try:
        check_bind(host, tokens, read_tokens, insecure)
    except ValueError as exc:
        raise BadUsage(str(exc))
    try:
        from appvitals.fleet.warehouse import open_warehouse

        store = open_warehouse(warehouse, ingest_log=ingest_log)  # open before listening: a bad --db/--clickhouse fails fast
    except Exception as exc:
        raise VitalsError(f"cannot open warehouse {warehouse}: {exc}")

    def ready(url: str) -> None:
        """Say where the collector listens, on stderr."""
        auth = "token required" if tokens else "no token"
        click.echo(f"vitals: collector listening on {url} ({auth}), warehouse {warehouse}", err=True)

    try:
        serve(store, host=host, port=port, tokens=tokens, read_tokens=read_tokens, insecure=insecure,
              retention_days=retention_days, max_queue=max_queue, on_ready=ready, decode_workers=decode_workers,
              close_warehouse=True, allow_origins=allow_origins, max_body_bytes=max_body_mb << 20)
    except RuntimeError as exc:
        raise VitalsError(str(exc))
    finally:
        store.close()
