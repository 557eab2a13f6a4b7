"""appvitals: vital signs for applications.

In-app stats (counters, gauges, histograms, state machines, event logs) that are cheap,
thread-safe, persisted across restarts (encrypted when asked) and exported to Prometheus;
and a fleet collector that explains why CPU goes high.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appvitals.stats.instruments import Counter, Events, Gauge, Histogram, LabelError, State
from appvitals.stats.registry import Registry
from appvitals.stats.snapshot import MetricSnapshot, Series, Snapshot

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from appvitals.stats.store import Store


def exposition(registry: Registry, accept: str | None = None) -> bytes:
    """The registry in Prometheus text format 0.0.4 (or OpenMetrics 1.0 when `accept` asks for it)."""
    from appvitals.stats.prometheus import exposition as _exposition

    return _exposition(registry, accept)[0]


def serve(registry: Registry, host: str = "127.0.0.1", port: int = 9464, **kwargs: Any):
    """Start a background HTTP server with /metrics, /v1/snapshot and /v1/events; returns a handle with .stop()."""
    from appvitals.stats.server import serve as _serve

    return _serve(registry, host=host, port=port, **kwargs)


def __getattr__(name: str):
    if name == "Store":
        from appvitals.stats.store import Store

        return Store
    if name == "period_rows":
        from appvitals.stats.periods import period_rows

        return period_rows
    raise AttributeError(name)


__all__ = [
    "Counter", "Events", "Gauge", "Histogram", "LabelError", "MetricSnapshot", "Registry", "Series",
    "Snapshot", "State", "Store", "exposition", "period_rows", "serve",
]
