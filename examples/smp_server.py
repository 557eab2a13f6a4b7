"""A message relay server instrumented like the SimpleX SMP server's stats, simulated.

The SMP server keeps counters of queue and message events and, per day, week and month, the
number of distinct queues that were active (its `PeriodStats`), and appends one CSV row a day
to a stats log. Here the counters are appvitals counters, the distinct counts a
`reg.distinct` metric (HyperLogLog sketches of keyed hashes: no queue id is ever kept), the
daily CSV `reg.attach(..., log=...)`, and the stats live inside the server's own database
(`table_prefix`), beside its tables.

    python examples/smp_server.py --db server.db --duration 30 --log stats.csv
    vitals metrics --db server.db --table-prefix appvitals_
    vitals log --db server.db --table-prefix appvitals_ --every day
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import threading
import time

import appvitals


class ServerStats:
    """The server's instruments."""

    def __init__(self, reg: appvitals.Registry) -> None:
        self.created = reg.counter("smp_queues_created", "Queues created", group="queues")
        self.deleted = reg.counter("smp_queues_deleted", "Queues deleted", group="queues")
        self.subscribed = reg.counter("smp_subscriptions", "Subscriptions", labels=("result",), group="queues")
        self.msg_sent = reg.counter("smp_messages_sent", "Messages sent", labels=("kind",), group="messages")
        self.msg_recv = reg.counter("smp_messages_received", "Messages received", group="messages")
        self.active_queues = reg.distinct("smp_active_queues", "Queues with activity", labels=("activity",),
                                          group="queues")
        self.clients = reg.gauge("smp_clients_connected", "Clients connected", group="clients")
        self.latency = reg.histogram("smp_command_latency", "Command latency", unit="ms", group="clients")


def run(args: argparse.Namespace) -> int:
    """Serve simulated clients until the duration is over."""
    db = sqlite3.connect(args.db, check_same_thread=False, timeout=10.0)  # the server's own database
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS queues(id TEXT PRIMARY KEY, created_at REAL)")
    db.commit()
    reg = appvitals.Registry()
    s = ServerStats(reg)
    store = appvitals.Store(args.db, table_prefix="appvitals_")
    reg.attach(store, interval=args.interval, log=args.log, log_every=args.log_every)
    rng = random.Random(args.seed)
    queues: list[str] = []
    deadline = time.monotonic() + args.duration
    stop = threading.Event()
    try:
        while time.monotonic() < deadline and not stop.is_set():
            s.clients.set(rng.randint(50, 80))
            if not queues or rng.random() < 0.05:
                qid = f"q{rng.getrandbits(64):016x}"
                queues.append(qid)
                db.execute("INSERT OR IGNORE INTO queues VALUES (?, ?)", (qid, time.time()))
                db.commit()
                s.created.inc()
            qid = rng.choice(queues)
            if rng.random() < 0.3:
                s.subscribed.labels(result="ok" if rng.random() < 0.97 else "auth_error").inc()
                s.active_queues.labels(activity="subscribed").add(qid)
            if rng.random() < 0.6:
                s.msg_sent.labels(kind=rng.choice(("message", "notification"))).inc()
                s.active_queues.labels(activity="sent").add(qid)
            if rng.random() < 0.5:
                s.msg_recv.inc()
            if rng.random() < 0.01 and len(queues) > 1:
                queues.remove(qid)
                s.deleted.inc()
            s.latency.observe(rng.lognormvariate(1.0, 0.6))
            stop.wait(args.tick)
    finally:
        reg.detach()
        db.close()
    print(f"done: {len(queues)} queues", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the example."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="server.db", help="the server's database (stats go into appvitals_* tables)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds to run")
    p.add_argument("--interval", type=float, default=5.0, help="flush interval of the stats, seconds")
    p.add_argument("--tick", type=float, default=0.005, help="seconds between simulated commands")
    p.add_argument("--log", metavar="CSV", help="append one row of stats per closed period to this file")
    p.add_argument("--log-every", default="day", choices=("hour", "day", "week", "month"))
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
