"""The real collector (`vitals serve --db FILE`) as a child process tests can kill and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from appvitals.fleet.warehouse import open_warehouse
from support.services import free_port

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
VITALS = [sys.executable, "-c", "import sys; from appvitals.cli import main; main(sys.argv[1:])"]


class CollectorProcess:
    """`vitals serve --db FILE --port P` as a child process that can be killed and restarted."""

    def __init__(self, db: str, port: int | None = None) -> None:
        self.db = db
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*VITALS, "serve", "--db", self.db, "--port", str(self.port)],
                                     env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("collector died: " + self.proc.stderr.read().decode())
                time.sleep(0.1)
        raise RuntimeError("collector did not come up")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def stored(self) -> dict[str, list[int]]:
        """session_id -> every stored seq, sorted (read from the warehouse after stop())."""
        wh = open_warehouse(self.db)
        try:
            rows = wh.query(
                "SELECT session_id, seq FROM sessions UNION ALL SELECT session_id, seq FROM samples "
                "UNION ALL SELECT session_id, seq FROM events UNION ALL SELECT session_id, seq FROM ends"
            )
        finally:
            wh.close()
        out: dict[str, list[int]] = {}
        for sid, seq in rows:
            out.setdefault(sid, []).append(seq)
        return {k: sorted(v) for k, v in out.items()}
