"""A child process for distinct-count and stats-log tests: `python app_child.py MODE DB START STOP [LOG]`.

Adds ids START..STOP-1 to a distinct metric (and counts them), flushes, prints "flushed",
then waits to be killed (SIGKILL: no exit handler runs)."""

import sys
import time

import appvitals

mode, db, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = sys.argv[5] if len(sys.argv) > 5 else None

reg = appvitals.Registry()
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
