"""A child process for distinct-count and stats-log tests: `python app_child.py MODE DB START STOP [LOG]`.

Adds ids START..STOP-1 to a distinct metric (and counts them), flushes, prints "flushed",
then waits to be killed (SIGKILL: no exit handler runs)."""

import sys
import time

import appvitals

mode, db, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = sys.argv[5] if len(sys.argv) > 5 else None

# mode "days-ago-N": the registry's clock runs N days behind (history points in the past)
offset = 86400.0 * int(mode.split("-")[2]) if mode.startswith("days-ago-") else 0.0
reg = appvitals.Registry(clock=lambda: time.time() - offset)
active = reg.distinct("active_queues", "Queues with activity", labels=("server",))
msgs = reg.counter("msgs", "Messages", labels=("server",))
kw = {"log": log, "log_every": "day"} if log else {}
reg.attach(appvitals.Store(db), interval=300, **kw)
child = active.labels(server="smp1")
for i in range(start, stop):
    child.add(f"queue-{i}")
    msgs.labels(server="smp1").inc()
reg.flush()
print("flushed", flush=True)
time.sleep(120)
