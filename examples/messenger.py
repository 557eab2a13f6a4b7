"""A messaging client instrumented like SimpleX Chat's agent stats, simulated.

Per user and per server it counts SMP traffic (messages sent, received, subscriptions,
connection errors) and XFTP file traffic (chunks and bytes uploaded and downloaded), with
latencies, a network state and a ring of recent errors. Stats are persisted in an
encrypted store (the servers a user talks to are private), and deleting a user forgets
every series of that user, in memory and on disk (`reg.forget(user=...)`).

It also counts distinct active queues per user (today, this week, this month; an estimate,
only keyed hashes kept) and can append a daily stats log. Run it again with other servers
(`--smp-servers`) to see current and previously used servers.

    VITALS_STORE_KEY=s3cret python examples/messenger.py --db chat-stats.db --port 9465 --duration 60
    VITALS_STORE_KEY=s3cret vitals metrics --db chat-stats.db --where user=2 --scope past
    python examples/messenger.py --db chat-stats.db --key s3cret --delete-user 3 --delete-after 5
    python examples/messenger.py --db chat-stats.db --key s3cret --smp-servers smp.example.org --log stats.csv
    vitals metrics --db chat-stats.db --key s3cret --previous --where user=1 --metric 'smp_*'
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

USERS = ("1", "2", "3")
SMP_SERVERS = ("smp1.simplex.im", "smp2.simplex.im", "smp.example.org")
XFTP_SERVERS = ("xftp1.simplex.im", "xftp.example.org")


class AgentStats:
    """The agent's instruments: SMP and XFTP traffic per (user, server)."""

    def __init__(self, reg: appvitals.Registry) -> None:
        self.network = reg.state("network_state", "Network", states=("Offline", "Connecting", "Online"),
                                 group="network")
        self.connected = reg.gauge("smp_servers_connected", "SMP servers connected", group="network")
        self.sent = reg.counter("smp_messages_sent", "SMP messages sent", labels=("user", "server"), group="SMP")
        self.received = reg.counter("smp_messages_received", "SMP messages received", labels=("user", "server"),
                                    group="SMP")
        self.subscriptions = reg.counter("smp_subscriptions", "SMP subscriptions", labels=("user", "server"),
                                         group="SMP")
        self.send_errors = reg.counter("smp_send_errors", "SMP send errors", labels=("user", "server"), group="SMP")
        self.send_latency = reg.histogram("smp_send_latency", "SMP send latency", unit="ms", labels=("server",),
                                          group="SMP")
        self.uploaded = reg.counter("xftp_uploaded", "XFTP uploaded", labels=("user", "server"), unit="bytes",
                                    group="XFTP")
        self.downloaded = reg.counter("xftp_downloaded", "XFTP downloaded", labels=("user", "server"), unit="bytes",
                                      group="XFTP")
        self.chunks = reg.counter("xftp_chunks", "XFTP chunks", labels=("user", "direction"), group="XFTP")
        self.chunk_latency = reg.histogram("xftp_chunk_latency", "XFTP chunk latency", unit="ms", group="XFTP")
        self.errors = reg.events("agent_errors", "Agent errors", capacity=50, group="errors")
        self.active_queues = reg.distinct("smp_active_queues", "SMP queues with activity", labels=("user",),
                                          group="SMP")


class Messenger:
    """A simulated chat client: `step()` sends and receives a little."""

    def __init__(self, stats: AgentStats, rng: random.Random, users: list[str],
                 servers: tuple[str, ...] = SMP_SERVERS) -> None:
        self.s, self.rng, self.users = stats, rng, users
        self.servers = servers
        self.steps = 0

    def step(self) -> None:
        """One simulation step: connect, send, receive, maybe a file chunk or an error."""
        s, rng = self.s, self.rng
        self.steps += 1
        if self.steps == 1:
            s.network.set("Connecting", reason="app started")
        elif self.steps == 5:
            s.network.set("Online", reason="servers connected")
            s.connected.set(len(self.servers))
            for user in self.users:
                for server in self.servers:
                    s.subscriptions.labels(user=user, server=server).inc(rng.randint(3, 20))
        elif rng.random() < 0.003:
            s.network.set("Connecting", reason="network changed")
            s.connected.set(0)
            self.steps = 1
        if not self.users:
            return
        user = rng.choice(self.users)
        server = rng.choice(self.servers)
        if rng.random() < 0.01:
            s.send_errors.labels(user=user, server=server).inc()
            s.errors.record(type="smp", message=rng.choice(("TIMEOUT", "NETWORK", "AUTH")), user=user, server=server)
        else:
            s.sent.labels(user=user, server=server).inc()
            s.send_latency.labels(server=server).observe(rng.lognormvariate(4.0, 0.5))
        for _ in range(rng.randint(0, 3)):
            receiver = rng.choice(self.users)
            s.received.labels(user=receiver, server=rng.choice(self.servers)).inc()
            s.active_queues.labels(user=receiver).add(f"queue-{receiver}-{rng.randint(1, 400)}")
        if rng.random() < 0.05:
            xftp = rng.choice(XFTP_SERVERS)
            direction = rng.choice(("upload", "download"))
            size = rng.randint(64_000, 4_000_000)
            if rng.random() < 0.03:
                s.errors.record(type="xftp", message="chunk not found", user=user, server=xftp)
            elif direction == "upload":
                s.uploaded.labels(user=user, server=xftp).inc(size)
            else:
                s.downloaded.labels(user=user, server=xftp).inc(size)
            s.chunks.labels(user=user, direction=direction).inc()
            s.chunk_latency.observe(rng.lognormvariate(5.5, 0.7))

    def delete_user(self, reg: appvitals.Registry, user: str, keep_totals: bool = False) -> int:
        """The user is gone: stop using it and forget its stats everywhere (with `keep_totals`, its
        counts stay in "all" under an anonymous series)."""
        if user in self.users:
            self.users.remove(user)
        return reg.forget(user=user, keep_totals=keep_totals)


def own_signals(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C end the main loop, which then stops serving and detaches (a final flush)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    """Run the client until `stop` is set or the duration is over."""
    reg = appvitals.Registry()
    stats = AgentStats(reg)
    store = None
    if args.db:
        key = args.key or os.environ.get("VITALS_STORE_KEY") or None
        if key is None:
            print("note: no --key / VITALS_STORE_KEY: the stats file is not encrypted", file=sys.stderr)
        store = appvitals.Store(args.db, key=key)
        history = HistoryPolicy(fine_every=args.history_every) if args.history_every is not None else None
        reg.attach(store, interval=args.interval, history=history, log=args.log, log_every=args.log_every)
        own_signals(stop)  # after attach: we stop cleanly and detach (final flush) ourselves
    server = appvitals.serve(reg, host=args.host, port=args.port) if args.port is not None else None
    if server is not None:
        print(f"serving {server.url}", flush=True)
    servers = tuple(x.strip() for x in args.smp_servers.split(",") if x.strip()) if args.smp_servers else SMP_SERVERS
    client = Messenger(stats, random.Random(args.seed), list(USERS), servers)
    started = time.monotonic()
    deadline = started + args.duration if args.duration > 0 else float("inf")
    deleted = False
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if args.delete_user and not deleted and time.monotonic() - started >= (args.delete_after or 0):
                n = client.delete_user(reg, args.delete_user, keep_totals=args.keep_totals)
                print(f"deleted user {args.delete_user}: forgot {n} series", flush=True)
                deleted = True
            client.step()
            stop.wait(args.tick)
    finally:
        if server is not None:
            server.stop()
        reg.detach()
        if store is not None:
            store.close()
    print(f"done: {int(reg.snapshot(scope='session').value('smp_messages_sent')):,} messages sent this run",
          flush=True)


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
    p.add_argument("--tick", type=float, default=0.02, help="seconds between simulation steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--delete-user", metavar="USER", help="delete this user (forgetting its stats)")
    p.add_argument("--delete-after", type=float, metavar="SECONDS", help="...after this many seconds (default: at once)")
    p.add_argument("--keep-totals", action="store_true", help="...keeping its counts in the totals, anonymously")
    p.add_argument("--smp-servers", metavar="A,B", help="the SMP servers used in this run (default: all three)")
    p.add_argument("--log", metavar="CSV", help="append one row of stats per closed period to this file")
    p.add_argument("--log-every", default="day", choices=("hour", "day", "week", "month"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run until the duration ends, SIGTERM or Ctrl-C."""
    args = parse_args(argv)
    stop = threading.Event()
    own_signals(stop)
    run(args, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
