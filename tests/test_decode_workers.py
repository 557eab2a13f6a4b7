"""The collector's decode worker processes: same answers as in-process, and none outlive a killed collector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from conftest import free_port

from appvitals.fleet._decode import decode_chunk
from appvitals.fleet.warehouse._arrow import ArrowBatch

SRC = Path(__file__).resolve().parents[1] / "src"


def test_decode_chunk_numbers_errors_and_drops_repeats():
    data = b"\n".join([
        b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10,"attrs":{"stage":"login"}}',
        b"not json",
        b"",
        b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10}',
        b'{"kind":"session","session_id":"s1","client_id":"c","ts":1,"seq":0}',
    ])
    packed, rejected, errors = decode_chunk(data, 41)
    assert rejected == 1 and [e["line"] for e in errors] == [42]
    batch = ArrowBatch.from_ipc(packed)
    assert (len(batch), batch.duplicates) == (3, 1)
    assert batch.tables["samples"].column("attrs").to_pylist() == ['{"stage":"login"}']
    assert batch.tables["sessions"].num_rows == 1


def test_workers_exit_when_the_collector_is_killed(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "appvitals", "serve", "--db", str(tmp_path / "f.duckdb"), "--port", str(port),
         "--decode-workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "collector did not start"
            time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/ingest", timeout=30, content=(
            b'{"kind":"sample","session_id":"s1","ts":5,"seq":1,"cpu":10}\nbad\n'))
        assert answer.json()["accepted"] == 1 and answer.json()["errors"][0]["line"] == 2
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) >= 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} decode workers outlived the collector"
