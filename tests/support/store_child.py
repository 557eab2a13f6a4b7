"""A child process for store tests: `python store_child.py MODE DB [KEY]`."""

import signal
import sys
import time

import appvitals

mode, db = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None

reg = appvitals.Registry()
received = reg.counter("received", "Messages received", labels=("server",))
delivered = reg.counter("delivered", "Messages delivered", labels=("server",))
users = reg.counter("per_user", "Per user", labels=("user", "server"))

if mode in ("sigterm", "sigterm_busy"):
    def on_term(signum, frame):
        open(db + ".app-handler-ran", "w").write("yes")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)

reg.attach(appvitals.Store(db, key=key), interval=300)
print("ready", flush=True)

if mode == "loop":
    # received then delivered, many series, flush after each round: the kill may come at any instant
    n = 0
    while True:
        n += 1
        for s in range(20):
            received.labels(server=f"srv{s}").inc()
            delivered.labels(server=f"srv{s}").inc()
        reg.flush()
        print(f"flushed {n}", flush=True)
elif mode == "forget":
    users.labels(user="user-5-secret", server="smp.five.example").inc(3)
    users.labels(user="user-6", server="smp.six.example").inc(2)
    reg.flush()
    reg.forget(user="user-5-secret")
    print("forgot", flush=True)
    time.sleep(60)
elif mode == "sigterm":
    received.labels(server="a").inc(41)
    received.labels(server="a").inc()
    print("incremented", flush=True)
    time.sleep(60)
elif mode == "hold":
    time.sleep(60)
elif mode == "sigterm_busy":
    # SIGTERM lands while the main thread is inside the instruments' locked sections
    h = reg.histogram("lat", labels=("a",))
    print("busy", flush=True)
    while True:
        h.labels(a="x").observe(1.5)
        received.labels(server="a").inc(2)
