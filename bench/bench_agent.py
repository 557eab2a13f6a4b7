"""Overhead of the agent: its own CPU at 1 Hz sampling, and wire bytes per sample.

Targets (issue #6): at most 1 % of one core at 1 Hz, at most 60 gzip-compressed wire
bytes per sample on average (seed 002's budget: 1-2 kB/s). Peers in the same run: the
external watchdog watching an idle process at 1 Hz, the agent at 10 Hz, and the same
lines uncompressed. Each variant runs in its own process against the real collector
(`vitals serve` on a temporary DuckDB file); CPU is the process's user+system time
after start() divided by wall time.

    python bench/bench_agent.py [--seconds 30]

Prints JSON and writes bench/results/agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path]))

AGENT = """
import json, os, sys, time
from appvitals.fleet.client.agent import Agent
url, home, interval, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
agent = Agent(url, home=home, interval=interval, app_version="1.2.3", close_at_exit=False)
agent.start()
agent.set_stage("idle")
t0, c0 = time.monotonic(), sum(os.times()[:2])
time.sleep(seconds)
cpu = (sum(os.times()[:2]) - c0) / (time.monotonic() - t0) * 100
lines = agent.recorder.next_seq
agent.close(timeout=30)
s = agent.uploader.stats
print(json.dumps({"cpu_percent": cpu, "lines": lines + 1, "lines_sent": s.lines_sent, "requests": s.requests,
                  "wire_bytes": s.wire_bytes, "raw_bytes": s.raw_bytes}))
"""

WATCHDOG = """
import json, os, subprocess, sys, threading, time
from appvitals.fleet.client.watchdog import Watchdog
url, home, interval, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
app = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(%f)" % (seconds + 1)])
dog = Watchdog(app.pid, url, port=0, home=home, interval=interval)
out = {}
def measure():
    t0, c0 = time.monotonic(), sum(os.times()[:2])
    time.sleep(seconds)
    out["cpu_percent"] = (sum(os.times()[:2]) - c0) / (time.monotonic() - t0) * 100
    out["lines"] = dog.agent.recorder.next_seq + 1
threading.Thread(target=lambda: (time.sleep(0.5), measure()), daemon=True).start()
dog.run()
s = dog.agent.uploader.stats
out.update(lines_sent=s.lines_sent, requests=s.requests, wire_bytes=s.wire_bytes, raw_bytes=s.raw_bytes)
print(json.dumps(out))
"""


def _vitals(*args: str, **kw) -> subprocess.Popen:
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, **kw)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _header_bytes(port: int) -> int:
    head = (f"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: identity\r\n"
            "Content-Type: application/x-ndjson\r\nContent-Encoding: gzip\r\nContent-Length: 1234\r\n\r\n")
    return len(head)


def main() -> None:
    """Run the variants side by side and print/write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measuring time per variant")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _vitals("serve", "--db", str(tmp / "fleet.duckdb"), "--port", str(port),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        variants = {
            "agent_1hz": (AGENT, 1.0),
            "watchdog_1hz": (WATCHDOG, 1.0),
            "agent_10hz": (AGENT, 0.1),
        }
        procs = {
            name: subprocess.Popen([sys.executable, "-c", code, url, str(tmp / name), str(interval),
                                    str(args.seconds)], env=ENV, stdout=subprocess.PIPE, text=True)
            for name, (code, interval) in variants.items()
        }
        results = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=args.seconds + 120)
            r = json.loads(out.strip().splitlines()[-1])
            sent = max(r["lines_sent"], 1)
            results[name] = {
                "interval_s": variants[name][1],
                "cpu_percent_of_one_core": round(r["cpu_percent"], 3),
                "lines": r["lines"],
                "requests": r["requests"],
                "wire_bytes_per_line_gzip": round(r["wire_bytes"] / sent, 1),
                "raw_bytes_per_line_uncompressed": round(r["raw_bytes"] / sent, 1),
                "wire_bytes_per_second": round(r["wire_bytes"] / args.seconds, 1),
                # request line + headers as http.client sends them (TCP/IP framing not counted)
                "bytes_per_line_with_http_headers": round((r["wire_bytes"] + r["requests"] * _header_bytes(port))
                                                          / sent, 1),
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    main_variant = results["agent_1hz"]
    report = {
        "benchmark": "agent",
        "seconds_per_variant": args.seconds,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "targets": {"cpu_percent_of_one_core_at_1hz": 1.0, "wire_bytes_per_sample_gzip": 60},
        "meets_targets": {
            "cpu": main_variant["cpu_percent_of_one_core"] <= 1.0,
            "wire_bytes": main_variant["wire_bytes_per_line_gzip"] <= 60,
        },
        "variants": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "agent.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
