"""The simulated fleets the report tests share: a base scenario (TOML) and one planted cause
per case, on a fixed start time."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

START_MS = 1_764_000_000_000
MINUTES = 60

BASE = """
name = "quality"
sample_every = 10.0
session_minutes = [8.0, 20.0]
pause_minutes = [0.0, 2.0]

[[versions]]
version = "6.0.0"
weight = 5
[[versions]]
version = "6.1.0"
weight = 3
[[versions]]
version = "7.0.0"
weight = 2

[[os]]
name = "windows"
version = "10"
weight = 50
[[os]]
name = "macos"
version = "14.5"
weight = 30
[[os]]
name = "linux"
version = "ubuntu-22.04"
weight = 18.5
[[os]]
name = "freebsd"
version = "14.1"
weight = 1.5

[[session_attrs]]
name = "network"
values = [{ value = "wifi", weight = 5 }, { value = "ethernet", weight = 3 }, { value = "vpn", weight = 2 }]
[[session_attrs]]
name = "sync_mode"
values = [{ value = "on_demand", weight = 2 }, { value = "continuous", weight = 1 }]

[[stages]]
name = "login"
once = true
duration = [10.0, 30.0]
cpu = { mean = 8.0, sd = 3.0 }
event = "login"
[[stages]]
name = "idle"
weight = 3
duration = [30.0, 120.0]
cpu = { mean = 3.0, sd = 2.0 }
[[stages]]
name = "indexing"
weight = 2
duration = [30.0, 120.0]
cpu = { mean = 14.0, sd = 5.0 }
event = "indexing_started"
[[stages]]
name = "receiving"
weight = 2
duration = [20.0, 60.0]
cpu = { mean = 10.0, sd = 4.0 }
event = "file_received"
event_attrs = { file_name_length = { min = 5, max = 70 } }

# random background load, unrelated to any attribute: some sessions are just busy
[[problems]]
name = "background"
when = { os = ["windows", "macos", "linux", "freebsd"] }
cpu_add = 30.0
chance = 0.08
"""

PLANTED = {
    "single": '[[problems]]\nname = "7.0.0"\nwhen = { app_version = "7.0.0" }\ncpu_add = 45.0\n',
    "pair": '[[problems]]\nname = "vpn+continuous"\nwhen = { network = "vpn", sync_mode = "continuous" }\ncpu_add = 45.0\n',
    "numeric": '[[problems]]\nname = "long names"\nwhen = { stage = "receiving", file_name_length = ">=40" }\ncpu_add = 55.0\n',
    "cohort": '[[problems]]\nname = "freebsd"\nwhen = { os = "freebsd" }\ncpu_add = 45.0\n',
    "none": "",
}


def _now() -> dt.datetime:
    return dt.datetime.fromtimestamp(START_MS / 1000 + MINUTES * 60, dt.timezone.utc)


BENCH = Path(__file__).resolve().parents[2] / "bench"


def wide_fleet_lines(sessions: int, samples_per_session: int) -> list:
    """The wide report bench's fleet (bench/bench_report_wide.py: ten attrs of 4-40 values, two
    planted causes) as decoded wire lines, for tests that need its shape on a small scale."""
    import msgspec

    from appvitals.fleet.wire.protocol import AnyLine

    sys.path.insert(0, str(BENCH))
    try:
        from bench_report_wide import workload
    finally:
        sys.path.remove(str(BENCH))
    bodies, _ = workload(sessions, samples_per_session)
    dec = msgspec.json.Decoder(AnyLine)
    return [dec.decode(line) for body in bodies for line in body.split(b"\n") if line]
