"""The DuckDB warehouse's sample rollup: samples per (session, attrs text, 10-minute bucket).

The report reads these rows for the closed buckets of its window instead of every sample
(see docs/warehouse.md, "Rollup"). A bucket is rolled up once it ended ROLLUP_GRACE_MS ago;
below the watermark every bucket is in `sample_rollup`, except the dirty ones, which got late
samples since (the write that brought them marked them, in its own transaction) and are
redone at the next `roll_up`.
"""

from __future__ import annotations

import contextlib
import threading
import time

import duckdb

ROLLUP_BUCKET_MS = 600_000
ROLLUP_GRACE_MS = 600_000  # a bucket is rolled up once it ended this long ago
ROLLUP_DDL = [
    "CREATE TABLE IF NOT EXISTS sample_rollup (session_id VARCHAR, attrs VARCHAR, bucket BIGINT, n BIGINT, "
    "cpu_sum DOUBLE, cpu_max DOUBLE, ts_min BIGINT, ts_max BIGINT)",
    # buckets below the watermark that received samples after they were rolled up
    "CREATE TABLE IF NOT EXISTS rollup_dirty (bucket BIGINT)",
    "CREATE TABLE IF NOT EXISTS rollup_mark (watermark BIGINT)",
]


def _rollup_sql(lo_ms: int, hi_ms: int) -> str:
    """INSERT the rollup rows of the samples with ts in [lo_ms, hi_ms)."""
    b = ROLLUP_BUCKET_MS
    return (
        f"INSERT INTO sample_rollup SELECT session_id, coalesce(attrs, '{{}}'), ts // {b}, count(*), sum(cpu), "
        f"max(cpu), min(ts), max(ts) FROM samples WHERE ts >= {int(lo_ms)} AND ts < {int(hi_ms)} GROUP BY ALL"
    )


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection):
    """BEGIN ... COMMIT around the block; ROLLBACK (best effort) and re-raise when it fails."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


class SampleRollup:
    """The rollup tables of one DuckDB file; every method runs under the file's write lock."""

    def __init__(self, con: duckdb.DuckDBPyConnection, write_lock: threading.Lock):
        self._con = con
        self._write_lock = write_lock
        for statement in ROLLUP_DDL:
            con.execute(statement)
        marks = con.execute("SELECT max(watermark) FROM rollup_mark").fetchall()
        self.watermark = int(marks[0][0] or 0)  # buckets below it are in sample_rollup

    def use(self, con: duckdb.DuckDBPyConnection) -> None:
        """Go on with another connection (the file was reopened after a fatal error)."""
        self._con = con

    def late_sql(self, samples_min_ts: int) -> str | None:
        """For a write whose samples start at `samples_min_ts`: the statement (run in the write's
        transaction) that marks the buckets it brings late samples to, or None."""
        if samples_min_ts // ROLLUP_BUCKET_MS >= self.watermark:
            return None
        b = ROLLUP_BUCKET_MS
        # the report reads these buckets from samples until the next roll_up() redoes them
        return (f"INSERT INTO rollup_dirty SELECT DISTINCT ts // {b} FROM _incoming_samples "
                f"WHERE ts // {b} < {self.watermark}")

    def roll_up(self, now_ms: int | None = None, max_buckets: int = 6) -> int:
        """One bounded step (see DuckDBWarehouse.roll_up)."""
        b = ROLLUP_BUCKET_MS
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        target = (now - ROLLUP_GRACE_MS) // b
        with self._write_lock:
            con = self._con
            dirty = [int(r[0]) for r in con.execute(
                f"SELECT DISTINCT bucket FROM rollup_dirty ORDER BY 1 LIMIT {int(max_buckets)}").fetchall()]
            start, end = self.watermark, self.watermark
            if target > self.watermark:
                # skip buckets without samples (an old file, a quiet night) in one step
                after = con.execute(f"SELECT min(ts) FROM samples WHERE ts >= {start * b}").fetchall()[0][0]
                if after is None and start == 0 and not dirty:
                    return 0  # nothing yet: keep the watermark at 0, so no sample arrives "late"
                start = target if after is None else min(target, max(start, int(after) // b))
                end = min(target, start + max_buckets)
                if start == end:  # no samples up to target: just move the watermark
                    end = target
            if not dirty and end == self.watermark:
                return 0
            with transaction(con):
                for bucket in dirty:
                    con.execute(f"DELETE FROM sample_rollup WHERE bucket = {bucket}")
                    con.execute(_rollup_sql(bucket * b, (bucket + 1) * b))
                    con.execute(f"DELETE FROM rollup_dirty WHERE bucket = {bucket}")
                if end > self.watermark:
                    if end > start:
                        con.execute(_rollup_sql(start * b, end * b))
                    con.execute("DELETE FROM rollup_mark")
                    con.execute(f"INSERT INTO rollup_mark VALUES ({end})")
            # buckets rolled up (a jump over buckets without samples counts as one step)
            written = len(dirty) + (max(end - start, 1) if end > self.watermark else 0)
            self.watermark = max(self.watermark, end)
            return written

    def retention_sql(self, cutoff_ms: int) -> list[str]:
        """Statements (for the retention's transaction) that drop the rollup rows before `cutoff_ms`."""
        edge = cutoff_ms // ROLLUP_BUCKET_MS
        statements = [f"DELETE FROM sample_rollup WHERE bucket < {edge}"]
        if edge < self.watermark:  # the bucket the cutoff cuts lost samples: redo it
            statements.append(f"INSERT INTO rollup_dirty VALUES ({edge})")
        return statements
