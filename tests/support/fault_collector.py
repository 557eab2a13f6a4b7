"""A small real HTTP ingest endpoint whose answers a test can script (429, 503, 500, cut).

The real collector (fleet/collector.py) is what the exactly-once tests use; this one
exists to make the failures the real one does not produce on demand. It speaks SPEC
section 3: gzip NDJSON in, `(session_id, seq)` deduplicated, the JSON answer out.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from appvitals.fleet.wire.protocol import LineError, decode_line


class FaultCollector:
    """Stores lines by (session_id, seq); `script` is a list of statuses to answer first."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, int], object] = {}
        self.received = 0
        self.duplicates = 0
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with outer.lock:
                    outer.requests.append(dict(self.headers) | {"_bytes": len(body)})
                    scripted = outer.script.pop(0) if outer.script else None
                if scripted is not None:
                    status, headers = scripted
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                accepted = dups = rejected = 0
                with outer.lock:
                    for raw in body.splitlines():
                        if not raw.strip():
                            continue
                        try:
                            line = decode_line(raw)
                        except LineError:
                            rejected += 1
                            continue
                        outer.received += 1
                        key = (line.session_id, line.seq)
                        if key in outer.lines:
                            dups += 1
                            outer.duplicates += 1
                        else:
                            outer.lines[key] = line
                            accepted += 1
                answer = json.dumps({"accepted": accepted, "duplicates": dups, "rejected": rejected}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
