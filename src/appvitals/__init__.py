"""appvitals: vital signs for applications.

In-app stats (counters, gauges, histograms, state machines, event logs) that are cheap,
thread-safe, persisted across restarts (encrypted when asked) and exported to Prometheus;
and a fleet collector that explains why CPU goes high.
"""

__version__ = "0.1.0"
