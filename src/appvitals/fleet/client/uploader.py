"""Moves spooled lines to the collector: NDJSON, gzip, batched, retried, exactly once.

One `send_once` reads the oldest uncommitted batch from the spool, POSTs it to
`/v1/ingest` gzip-compressed, and commits the spool past it only on a `200`. Anything
else leaves the lines in the spool to be sent again, so a line may be *sent* twice (a
`200` lost with the connection, a crash before the commit) but is *stored* once: every
line carries `(session_id, seq)` and the collector drops duplicates.

Failures back off exponentially with jitter; `429`/`503` honour `Retry-After` and raise
`pressure`, which the agent uses to sample less often until the collector recovers.
Standard library only (http.client), so the agent adds no dependency to an app.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable

import msgspec

from appvitals.fleet.client.spool import Spool

log = logging.getLogger("appvitals.agent")

INGEST_PATH = "/v1/ingest"


class UploadStats(msgspec.Struct):
    """Running totals of an uploader."""

    requests: int = 0
    batches_ok: int = 0
    lines_sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: int = 0
    pushbacks: int = 0
    skipped: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0


class Outcome(msgspec.Struct):
    """What one `send_once` did: `status` is "sent", "empty", "retry" or "pushback";
    `delay` is how long to wait before the next try (0 when there is no reason to wait)."""

    status: str
    delay: float = 0.0
    lines: int = 0
    http_status: int = 0
    error: str = ""


def ingest_url(url: str) -> tuple[str, str, int, str]:
    """Split a collector URL (base or full ingest URL) into scheme, host, port, path."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) collector URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(INGEST_PATH):
        path += INGEST_PATH
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, path


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (now if now is not None else time.time()), 0.0)


class Uploader:
    """Sends a spool's lines to one collector, with retries, backoff and backpressure."""

    def __init__(
        self,
        url: str,
        spool: Spool,
        token: str | None = None,
        batch_bytes: int = 256 * 1024,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        pressure_max: float = 8.0,
        recover_after: float = 30.0,
        gzip_level: int = 6,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheme, self.host, self.port, self.path = ingest_url(url)
        self.spool = spool
        self.token = token
        self.batch_bytes = batch_bytes
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.pressure_max = pressure_max
        self.recover_after = recover_after
        self.gzip_level = gzip_level
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self.stats = UploadStats()
        self.pressure = 1.0  # the agent divides its sampling rate by this
        self._last_pushback = 0.0
        self._failures_in_row = 0
        self._shrink = 1  # after a 413, send smaller batches for a while
        self._conn: http.client.HTTPConnection | None = None
        self.last_error = ""

    # ---- HTTP ------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        """Close the HTTP connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    # ---- one batch -------------------------------------------------------------------------

    def _backoff(self) -> float:
        self._failures_in_row += 1
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (self._failures_in_row - 1))
        return ceiling * self.rng.uniform(0.5, 1.0)  # "equal jitter": spread clients, keep a floor

    def send_once(self) -> Outcome:
        """Send the oldest unsent batch; commit the spool past it only on a 200."""
        batch = self.spool.read(max_bytes=max(self.batch_bytes // self._shrink, 1))
        if not batch.lines:
            self.spool.commit(batch.end)
            return Outcome("empty")
        raw = b"\n".join(batch.lines) + b"\n"
        body = gzip.compress(raw, compresslevel=self.gzip_level, mtime=0)
        self.stats.requests += 1
        try:
            status, headers, data = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            self.stats.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.debug("upload failed: %s", self.last_error)
            return Outcome("retry", self._backoff(), error=self.last_error)
        if status == 200:
            self.spool.commit(batch.end)
            self._failures_in_row = 0
            self._shrink = max(self._shrink // 2, 1)
            self.stats.batches_ok += 1
            self.stats.lines_sent += len(batch.lines)
            self.stats.raw_bytes += len(raw)
            self.stats.wire_bytes += len(body)
            try:
                answer = json.loads(data)
                self.stats.accepted += int(answer.get("accepted", 0))
                self.stats.duplicates += int(answer.get("duplicates", 0))
                rejected = int(answer.get("rejected", 0))
            except (ValueError, AttributeError, TypeError):
                rejected, answer = 0, {}
            if rejected:  # the collector keeps the good lines; the bad ones are dropped, said once
                self.stats.rejected += rejected
                log.warning("collector rejected %d line(s) of a batch (dropped): %s", rejected,
                            _first_error(answer))
            self._maybe_recover()
            return Outcome("sent", lines=len(batch.lines), http_status=200)
        self.last_error = f"HTTP {status}: {data[:200].decode('utf-8', 'replace').strip()}"
        if status in (429, 503):
            self.stats.pushbacks += 1
            self.pressure = min(self.pressure * 2, self.pressure_max)
            self._last_pushback = self.monotonic()
            wait = parse_retry_after(headers.get("retry-after"))
            delay = self._backoff() if wait is None else wait + self.rng.uniform(0, min(1.0, wait / 4 + 0.05))
            return Outcome("pushback", delay, http_status=status, error=self.last_error)
        if status == 400:
            # the collector refused the body as a whole and says why (a corrupt body): sending
            # it again gets the same answer, so drop it rather than stall the spool behind it
            self.spool.commit(batch.end)
            self.stats.rejected += len(batch.lines)
            log.warning("collector refused a batch of %d line(s) (dropped): %s", len(batch.lines), self.last_error)
            return Outcome("sent", lines=len(batch.lines), http_status=400, error=self.last_error)
        if status == 413:
            if len(batch.lines) == 1:
                # one line the collector will never take: skip it rather than block the spool
                self.spool.commit(batch.end)
                self.stats.skipped += 1
                log.warning("collector refused a line as too large; skipped it")
                return Outcome("sent", http_status=413, error=self.last_error)
            self._shrink = min(self._shrink * 4, 1 << 16)
            return Outcome("retry", 0.0, http_status=413, error=self.last_error)
        self.stats.failures += 1
        log.warning("upload refused: %s", self.last_error)
        return Outcome("retry", self._backoff(), http_status=status, error=self.last_error)

    def _maybe_recover(self) -> None:
        if self.pressure > 1 and self.monotonic() - self._last_pushback >= self.recover_after:
            self.pressure = max(self.pressure / 2, 1.0)
            self._last_pushback = self.monotonic()  # halve again only after another quiet spell

    def flush(self, timeout: float | None = None, sleep: Callable[[float], object] = time.sleep) -> bool:
        """Send until the spool is empty (True) or `timeout` seconds pass (False), retrying."""
        deadline = None if timeout is None else self.monotonic() + timeout
        while True:
            outcome = self.send_once()
            if outcome.status == "empty":
                return True
            if outcome.delay > 0:
                if deadline is not None and self.monotonic() + outcome.delay > deadline:
                    return False
                sleep(outcome.delay)
            if deadline is not None and self.monotonic() >= deadline:
                return self.spool.pending_bytes() == 0


def _first_error(answer: object) -> str:
    try:
        first = answer["errors"][0]  # type: ignore[index]
        return f"line {int(first['line'])} of the batch: {str(first['error'])[:200]}"
    except (KeyError, IndexError, TypeError, ValueError):
        return "no detail given"
