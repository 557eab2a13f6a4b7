"""The collector's own metrics, all in one place, on an appvitals Registry (served at /metrics)."""

from __future__ import annotations

from appvitals.stats.registry import Registry


class CollectorMetrics:
    """Instruments the collector updates: lines by result, request latency, queue depth, batch sizes."""

    def __init__(self, registry: Registry | None = None):
        self.registry = reg = registry if registry is not None else Registry()
        lines = reg.counter("vitals_collector_lines", "Wire lines received, by result", labels=("result",))
        self.accepted = lines.labels(result="accepted")
        self.rejected = lines.labels(result="rejected")
        self.duplicate = lines.labels(result="duplicate")
        self.requests = reg.counter("vitals_collector_requests", "Ingest requests answered, by status", labels=("status",))
        self.request_seconds = reg.histogram(
            "vitals_collector_request_duration", "Ingest request latency, first byte to answer", unit="seconds"
        )
        self.queue_depth = reg.gauge("vitals_collector_queue_depth", "Line batches waiting for the writer")
        self.queue_lines = reg.gauge("vitals_collector_queue_lines", "Lines waiting for or being written")
        self.log_pending_lines = reg.gauge(
            "vitals_collector_log_pending_lines",
            "Lines acknowledged from the ingest log and not yet inserted into the warehouse (DuckDB)",
        )
        self.batch_lines = reg.histogram("vitals_collector_write_batch", "Lines per warehouse write (one commit)", unit="lines")
        self.write_seconds = reg.histogram("vitals_collector_write_duration", "Time per warehouse write", unit="seconds")
        self.backpressure_waits = reg.counter(
            "vitals_collector_backpressure_waits", "Times a request had to wait for room in the write queue"
        )
        self.overloaded = reg.counter("vitals_collector_overloaded", "Requests answered 503 because the writer fell behind")

    def lines(self, accepted: int, duplicates: int) -> None:
        """Count stored and duplicate lines of one write."""
        if accepted:
            self.accepted.inc(accepted)
        if duplicates:
            self.duplicate.inc(duplicates)

    def answered(self, status: int, seconds: float) -> None:
        """Count one answered ingest request and its latency."""
        self.requests.labels(status=str(status)).inc()
        self.request_seconds.observe(seconds)
