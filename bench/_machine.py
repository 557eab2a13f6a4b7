"""What machine a benchmark ran on, so figures from different days can be compared.

The benchmark machines are shared virtual machines whose speed changes from day to day (the
same code measured 2x apart on two days). Each result records a fixed pure-Python workload's
time: divide two results' figures by their `py_loop_10m_s` before comparing absolute times.
"""

from __future__ import annotations

import os
import platform
import time


def machine() -> dict:
    """CPU count, model and a reference timing (sum of range(10M) in a Python loop, best of 3)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "py_loop_10m_s": round(best, 3)}
