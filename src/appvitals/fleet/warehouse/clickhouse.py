"""ClickHouse warehouse (scale-out) through clickhouse-driver's native protocol.

The SQL works on ClickHouse 18.16 (Debian's) and on current releases: arrays instead of
Map, no TTL (retention drops daily partitions), and for the samples' JSON attrs only the
`visitParam*` functions, which every release has.

Tables are `ReplacingMergeTree` ordered by `(session_id, seq, ts)` and partitioned by UTC
day. Exactly-once has two layers:

1. Before each insert the collector asks ClickHouse which of the batch's (session_id, seq)
   keys are already stored, whatever their ts (one query, the keys sent as an external
   table; the primary key narrows the read to those sessions in every partition), and
   skips them, reporting them as duplicates.
2. Two collectors that receive the same line at the same instant can both pass step 1;
   the ReplacingMergeTree key then collapses the copies at the next background merge, and
   `SELECT ... FINAL` (or `OPTIMIZE TABLE ... FINAL`) gives exact answers before it. The
   key holds ts because lines without seq (seq -1) must not collapse into one: so two
   copies of one (session_id, seq) with different ts that race through two collectors at
   the same instant both stay (a misbehaving client; one collector never stores them).

See docs/warehouse.md for the trade-offs and the cluster layout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from appvitals.fleet.warehouse.base import Batch, InsertResult, Warehouse
from appvitals.fleet.wire.protocol import AnyLine
from appvitals.fleet.wire.schema import SCHEMA, Columns, KeyedBatch

_CH_TYPES = {
    "session_id": "String", "client_id": "String", "name": "String", "reason": "String",
    "ts": "Int64", "seq": "Int64", "cpu": "Float64",
    "attr_keys": "Array(String)", "attr_values": "Array(String)",
    "attrs": "String", "vals": "String",
}
PARTITION = "toYYYYMMDD(toDateTime(intDiv(ts, 1000), 'UTC'))"
# Current ClickHouse refuses an insert block spanning more than 100 partitions (days).
MAX_DAYS_PER_INSERT = 90
DAY_MS = 86_400_000


def table_ddl(table: str, database: str, engine: str = "ReplacingMergeTree()") -> str:
    """CREATE TABLE for one schema table (works on ClickHouse 18.16 and current releases)."""
    columns = ", ".join(f"{c} {_CH_TYPES[c]}" for c in SCHEMA[table])
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ({columns}) "
        f"ENGINE = {engine} PARTITION BY {PARTITION} ORDER BY (session_id, seq, ts)"
    )


def parse_url(url: str) -> dict[str, Any]:
    """clickhouse://[user[:password]@]host[:port]/database -> connection settings."""
    parsed = urlparse(url)
    if parsed.scheme != "clickhouse":
        raise ValueError(f"not a clickhouse:// URL: {url}")
    database = parsed.path.strip("/") or "default"
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database name must be letters, digits and _: {database!r}")
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 9000,
        "user": unquote(parsed.username) if parsed.username else "default",
        "password": unquote(parsed.password) if parsed.password else "",
        "database": database,
    }


class ClickHouseWarehouse(Warehouse):
    """The warehouse in a ClickHouse database (one server, or a cluster's local tables)."""

    dialect: ClassVar[str] = "clickhouse"
    takes_arrow: ClassVar[bool] = False  # insert_many gets lists of lines

    def __init__(self, url: str, create: bool = True):
        from appvitals.extras import require

        require("clickhouse")
        from clickhouse_driver import Client

        self.url = url
        self.settings = parse_url(url)
        self.database = self.settings["database"]
        self._Client = Client
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list = []
        if create:
            admin = self._new_client(database="default")
            try:
                admin.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
                for table in SCHEMA:
                    admin.execute(table_ddl(table, self.database))
                old = admin.execute(
                    "SELECT count() FROM system.columns WHERE database = %(db)s AND table = 'samples' "
                    "AND name = 'attr_keys'", {"db": self.database})
                if old and old[0][0]:
                    raise RuntimeError(
                        f"{self.database}.samples has the schema of appvitals < 0.2 (attr_keys/attr_values); "
                        "see docs/warehouse.md, 'Upgrading', to move it to the JSON attrs column")
            finally:
                admin.disconnect()
        self._writer = self._new_client()

    def _new_client(self, database: str | None = None):
        s = self.settings
        return self._Client(
            s["host"], port=s["port"], user=s["user"], password=s["password"],
            database=database or self.database, connect_timeout=5, send_receive_timeout=300,
        )

    def _reader(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            with self._write_lock:
                self._readers.append(client)
        return client

    def insert_many(self, batches: Sequence[Batch]) -> list[InsertResult]:
        """Store several batches with one duplicate check and one insert per table; one result per batch."""
        sizes = [len(b) for b in batches]
        lines: list[AnyLine] = [line for batch in batches for line in batch]
        if not lines:
            return [InsertResult() for _ in batches]
        keyed = KeyedBatch(lines)
        with self._write_lock:
            client = self._writer
            if keyed.first:
                keyed.mark_stored(self._stored_keys(client, keyed))
            columns = Columns().add(keyed.fresh_lines())
            for table, cols in columns.tables.items():
                if cols["session_id"]:
                    self._insert_table(client, table, cols)
        dups = keyed.duplicate_counts(sizes)
        return [InsertResult(accepted=size - d, duplicates=d) for size, d in zip(sizes, dups)]

    def _stored_keys(self, client, keyed: KeyedBatch) -> list[tuple[str, int]]:
        # no ts condition: the same key sent again with another ts is a duplicate too (SPEC);
        # session_id leads the primary key, so each partition reads only those sessions' marks
        sids, seqs, _ = keyed.key_columns()
        keys = [{"session_id": s, "seq": q} for s, q in zip(sids, seqs)]
        union = " UNION ALL ".join(
            f"SELECT session_id, seq FROM {self.database}.{table} "
            "WHERE session_id IN (SELECT session_id FROM _keys) "
            "AND (session_id, seq) IN (SELECT session_id, seq FROM _keys)"
            for table in SCHEMA
        )
        rows = client.execute(
            f"SELECT DISTINCT session_id, seq FROM ({union})",
            external_tables=[{"name": "_keys", "structure": [("session_id", "String"), ("seq", "Int64")], "data": keys}],
        )
        return [(r[0], r[1]) for r in rows]

    def _insert_table(self, client, table: str, cols: dict[str, list]) -> None:
        names = SCHEMA[table]
        ts = cols["ts"]
        days = {t // DAY_MS for t in ts}
        sql = f"INSERT INTO {self.database}.{table} ({', '.join(names)}) VALUES"
        if len(days) <= MAX_DAYS_PER_INSERT:
            client.execute(sql, [cols[c] for c in names], columnar=True)
            return
        # rare: a batch spanning many days (old spooled data); insert it in day ranges
        order = sorted(range(len(ts)), key=ts.__getitem__)
        start = 0
        while start < len(order):
            first_day = ts[order[start]] // DAY_MS
            end = start
            while end < len(order) and ts[order[end]] // DAY_MS < first_day + MAX_DAYS_PER_INSERT:
                end += 1
            part = order[start:end]
            client.execute(sql, [[cols[c][i] for i in part] for c in names], columnar=True)
            start = end

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement (ClickHouse dialect, `%(name)s` parameters) and return its rows."""
        client = self._reader()
        return client.execute(sql, params) if params else client.execute(sql)

    def optimize(self) -> None:
        """Merge parts now so ReplacingMergeTree drops racing duplicates (tests, maintenance)."""
        with self._write_lock:
            for table in SCHEMA:
                self._writer.execute(f"OPTIMIZE TABLE {self.database}.{table} FINAL")

    def apply_retention(self, days: int) -> None:
        """Drop the daily partitions that lie wholly before `days` days ago."""
        cutoff_day = int(time.strftime("%Y%m%d", time.gmtime(time.time() - days * 86400)))
        with self._write_lock:
            client = self._writer
            rows = client.execute(
                "SELECT DISTINCT table, partition FROM system.parts "
                "WHERE database = %(db)s AND active AND table IN %(tables)s",
                {"db": self.database, "tables": tuple(SCHEMA)},
            )
            for table, partition in rows:
                try:
                    day = int(str(partition).strip("'"))
                except ValueError:
                    continue
                if day < cutoff_day:
                    client.execute(f"ALTER TABLE {self.database}.{table} DROP PARTITION {day}")

    def close(self) -> None:
        """Disconnect every client."""
        with self._write_lock:
            for client in (self._writer, *self._readers):
                client.disconnect()
            self._readers.clear()
