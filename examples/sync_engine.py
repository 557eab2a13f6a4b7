"""A sync engine instrumented like Spacedrive's sync metrics, simulated.

It moves through Uninitialized -> Backfilling -> CatchingUp -> Ready, broadcasts changes,
receives and applies changes from peers, counts records per model and per device (with each
peer's online status and last sync), bytes sent and received, latencies, HLC drift, retries,
backfill sessions, and keeps the last errors. Groups (state, operations, data, performance,
errors) become the sections of `vitals metrics`, in the order they are declared here; ratios
(share_of, per), display names and the status of each peer are declared with the metrics.

    python examples/sync_engine.py --db sync.db --port 9464 --duration 60
    vitals metrics --url http://127.0.0.1:9464 --watch 1 --title "Sync Metrics (Library: My Library)"
    vitals metrics --db sync.db --since "10 minutes ago" --peer B

Runs for --duration seconds (0: until SIGTERM or Ctrl-C) and persists through
`reg.attach(store)` so a second run adds to the first. With --library ID the stats live under
that namespace of the store, so several libraries share one file:

    python examples/sync_engine.py --db sync.db --library library-7f3a --duration 10
    vitals metrics --db sync.db --namespace library-7f3a --title "Sync Metrics (Library: My Library)"
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time

import appvitals
from appvitals.stats.store import HistoryPolicy

PEERS = ("A", "B", "C")
LOCAL = "self"  # this device's own records
DEVICE_NAMES = {"A": "Device A (MacBook)", "B": "Device B (Desktop)", "C": "Device C (Phone)"}
MODELS = ("entry", "content_identity", "location", "tag")
MODEL_WEIGHTS = (90, 6, 1, 3)
STATES = ("Uninitialized", "Backfilling", "CatchingUp", "Ready")


class SyncMetrics:
    """Every instrument of the sync engine, declared once."""

    def __init__(self, reg: appvitals.Registry) -> None:
        # declared in the order the view shows them: State, Operations, Data, Performance, Errors
        self.state = reg.state("sync_state", "Sync state", states=STATES, group="state")
        self.broadcasts = reg.counter("broadcasts_sent", "Broadcasts sent", labels=("kind",), group="operations/broadcasts")
        self.broadcast_batches = reg.counter("broadcast_batches_sent", "Batches", group="operations/broadcasts",
                                             per="broadcasts_sent", ratio_unit="items/batch")
        self.failed_broadcasts = reg.counter("failed_broadcasts", "Failed broadcasts", group="operations/broadcasts",
                                             share_of="broadcasts_sent")
        self.received = reg.counter("changes_received", "Changes received", labels=("peer", "model"),
                                    group="operations/receives", display=DEVICE_NAMES)
        self.applied = reg.counter("changes_applied", "Changes applied", group="operations/receives",
                                   share_of="changes_received")
        self.rejected = reg.counter("changes_rejected", "Changes rejected", group="operations/receives",
                                    share_of="changes_received")
        self.buffer_depth = reg.gauge("buffer_queue_depth", "Buffer queue", group="operations/receives")
        self.active_backfills = reg.gauge("active_backfill_sessions", "Active backfill sessions", group="operations/backfill")
        self.backfills = reg.counter("backfill_sessions_completed", "Backfill sessions completed", group="operations/backfill",
                                     per="backfill_pagination_rounds", ratio_unit="rounds/session")
        self.pagination = reg.counter("backfill_pagination_rounds", "Backfill pagination rounds", group="operations/backfill")
        self.backfill_duration = reg.histogram("backfill_session_duration", "Backfill session duration",
                                               unit="s", group="operations/backfill")
        self.synced = reg.counter("entries_synced", "Records synced", labels=("model",), group="data")
        self.by_device = reg.counter("records_by_device", "By device", labels=("peer",), group="data",
                                     status="peer_online", display=DEVICE_NAMES, local=LOCAL)
        self.online = reg.gauge("peer_online", "Peer online", labels=("peer",), group="data",
                                status_text={"1": "online", "0": "offline"}, display=DEVICE_NAMES)
        self.last_sync = reg.gauge("last_sync", "Last sync", labels=("peer",), unit="timestamp", group="data",
                                   status="peer_online", display=DEVICE_NAMES)
        self.bytes = reg.counter("bytes_transferred", "Bandwidth", labels=("direction",), unit="bytes", group="data")
        self.broadcast_latency = reg.histogram("broadcast_latency", "Broadcast latency", unit="ms",
                                               group="performance/latency")
        self.apply_latency = reg.histogram("apply_latency", "Apply latency", unit="ms", labels=("model",),
                                           group="performance/latency")
        self.backfill_latency = reg.histogram("backfill_request_latency", "Backfill request latency",
                                              unit="seconds", group="performance/latency")
        self.lag = reg.gauge("watermark_lag", "Sync lag", labels=("peer",), unit="ms", group="performance",
                             display=DEVICE_NAMES)
        self.hlc_drift = reg.gauge("hlc_physical_drift", "HLC physical drift", unit="ms", group="performance")
        self.hlc_counter = reg.gauge("hlc_counter_max", "HLC counter max", group="performance")
        self.errors = reg.events("sync_errors", "Sync errors", capacity=100, group="errors")
        self.retry_depth = reg.gauge("retry_queue_depth", "Retry queue", group="errors")
        self.retry_attempts = reg.counter("retry_attempts", "Retry attempts", group="errors")
        self.retry_successes = reg.counter("retry_successes", "Retry successes", group="errors",
                                           share_of="retry_attempts")


class SyncEngine:
    """A simulated sync engine: `step()` does a few milliseconds' worth of syncing."""

    def __init__(self, metrics: SyncMetrics, rng: random.Random, phase_seconds: float = 1.5, clock=time.time) -> None:
        self.m, self.rng = metrics, rng
        self.phase_seconds = phase_seconds
        self.clock = clock  # wall-clock seconds (a test passes a fake one)
        self.started = clock()
        self.backfill_started = self.started
        self.phase = 0

    def step(self) -> None:
        """One simulation step: maybe a state change, some broadcasts, receives and errors."""
        m, rng = self.m, self.rng
        now = self.clock()
        elapsed = now - self.started
        if self.phase == 0 and elapsed > 0.2:
            m.state.set("Backfilling", reason="peer connected")
            m.active_backfills.inc()
            self.backfill_started = now
            self.phase = 1
        elif self.phase == 1 and elapsed > self.phase_seconds:
            m.backfills.inc()
            m.active_backfills.dec()
            m.backfill_duration.observe(now - self.backfill_started)
            m.state.set("CatchingUp", reason="backfill complete")
            self.phase = 2
        elif self.phase == 2 and elapsed > 2 * self.phase_seconds:
            m.state.set("Ready", reason="caught up")
            self.phase = 3
        elif self.phase == 3 and rng.random() < 0.002:
            m.state.set("CatchingUp", reason="peer reconnected")
            self.phase = 2
            self.started = now - self.phase_seconds

        if self.phase == 1:
            m.pagination.inc()
            m.backfill_latency.observe(rng.lognormvariate(-1.2, 0.6))
        for _ in range(rng.randint(1, 4)):
            kind = "state" if rng.random() < 0.45 else "shared"
            m.broadcasts.labels(kind=kind).inc()
            m.broadcast_latency.observe(rng.lognormvariate(3.6, 0.5))
            m.bytes.labels(direction="sent").inc(rng.randint(200, 4000))
            m.by_device.labels(peer=LOCAL).inc()
        if rng.random() < 0.1:
            m.broadcast_batches.inc()
        online = {peer: not (peer == "C" and rng.random() < 0.3) for peer in PEERS}
        for _ in range(rng.randint(2, 8)):
            peer = rng.choice([p for p in PEERS if online[p]])
            model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
            m.received.labels(peer=peer, model=model).inc()
            m.bytes.labels(direction="received").inc(rng.randint(500, 9000))
            m.by_device.labels(peer=peer).inc()
            m.last_sync.labels(peer=peer).set(now)
            if rng.random() < 0.004:
                m.rejected.inc()
                m.errors.record(type="apply", message="missing parent entry", model=model, peer=peer)
            else:
                m.applied.inc()
                m.synced.labels(model=model).inc()
                m.apply_latency.labels(model=model).observe(rng.lognormvariate(2.4, 0.6))
        if rng.random() < 0.003:
            m.failed_broadcasts.inc()
            peer = rng.choice(PEERS)
            message = rng.choice(("timeout", "connection reset by peer"))
            m.errors.record(type="network", message=message, peer=peer)
        if rng.random() < 0.01:  # a failed send is retried; most retries succeed
            m.retry_attempts.inc()
            if rng.random() < 0.9:
                m.retry_successes.inc()
        m.buffer_depth.set(rng.randint(0, 3))
        m.retry_depth.set(rng.choice((0, 0, 0, 1)))
        m.hlc_drift.set(rng.randint(-20, 20))
        m.hlc_counter.set(rng.choice((0, 1, 1, 2, 3)))
        for peer in PEERS:
            m.online.labels(peer=peer).set(1 if online[peer] else 0)
            m.lag.labels(peer=peer).set(round(rng.expovariate(1 / 80)) if online[peer] else 0)


def own_signals(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C end the main loop, which then stops serving and detaches (a final flush)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    """Run the engine until `stop` is set or the duration is over."""
    reg = appvitals.Registry()
    metrics = SyncMetrics(reg)
    store = None
    if args.db:
        store = appvitals.Store(args.db, key=args.key or os.environ.get("VITALS_STORE_KEY") or None)
        history = HistoryPolicy(fine_every=args.history_every) if args.history_every is not None else None
        reg.attach(store, interval=args.interval, history=history, namespace=args.library or "")
        own_signals(stop)  # after attach: we stop cleanly and detach (final flush) ourselves
    server = appvitals.serve(reg, host=args.host, port=args.port) if args.port is not None else None
    if server is not None:
        print(f"serving {server.url}", flush=True)
    engine = SyncEngine(metrics, random.Random(args.seed))
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            engine.step()
            stop.wait(args.tick)
    finally:
        if server is not None:
            server.stop()
        reg.detach()
        if store is not None:
            store.close()
    snap = reg.snapshot(scope="session")
    print(f"done: {int(snap.value('changes_received')):,} changes received this run", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the example."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="store file (persist across runs)")
    p.add_argument("--key", help="encrypt the store with this key (or set VITALS_STORE_KEY)")
    p.add_argument("--port", type=int, help="serve /metrics, /v1/snapshot, /v1/events on this port (0: any free)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (0: until SIGTERM / Ctrl-C)")
    p.add_argument("--interval", type=float, default=5.0, help="flush interval of the store, seconds")
    p.add_argument("--history-every", type=float, metavar="SECONDS",
                   help="keep a history point (for --since windows) at most this often (default 60; 0: every flush)")
    p.add_argument("--library", metavar="ID",
                   help="keep the stats under this namespace of the store, one per library (e.g. library-7f3a); "
                        "read them with vitals metrics --namespace ID")
    p.add_argument("--tick", type=float, default=0.05, help="seconds between simulation steps")
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run until the duration ends, SIGTERM or Ctrl-C."""
    args = parse_args(argv)
    stop = threading.Event()
    own_signals(stop)
    try:
        run(args, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
