"""Real collectors for tests: `running_app(app)` (uvicorn in a thread) and `spawn_serve(...)` (a `vitals serve` process).

    from svc_collector import running_app, spawn_serve
    with running_app(create_app(":memory:")) as url: httpx.post(url + "/v1/ingest", ...)
    with spawn_serve("--db", path) as proc: ... proc.url ... proc.kill()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from support.services import free_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


@contextlib.contextmanager
def running_app(app, **config):
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False, **config))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class ServeProcess:
    """A `vitals serve` subprocess on a free port."""

    def __init__(self, args: list[str], port: int, env: dict[str, str], log_path: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appvitals", "serve", "--port", str(port), *args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0, headers: dict | None = None) -> None:
        """Poll /healthz until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vitals serve exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"vitals serve not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        """What the process printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def spawn_serve(*args: str, tmp_path: Path, ready: bool = True):
    """Run `vitals serve ARGS --port FREE` as a subprocess; stop it at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    proc = ServeProcess(list(args), port, env, tmp_path / f"serve-{port}.log")
    try:
        if ready:
            proc.wait_ready()
        yield proc
    finally:
        proc.stop()
