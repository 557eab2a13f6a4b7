"""The fleet collector, one noun a module:

- `app`: `create_app`, the ASGI app factory (builds each part once and wires them)
- `runner`: `serve` (uvicorn in the foreground), `check_bind`, the slow-header guard
- `ingest`: `POST /v1/ingest` (who may write, the body as it arrives, the answer)
- `body`: decompression with bounds, line splitting
- `chunker`: a request's lines -> decoded chunks -> the write queue, and its counts
- `writer`: the bounded queue and the writer thread, failures kept to the lines that caused them
- `decode`: line decoding, in-process or in decode worker processes
- `metrics`: the collector's own metrics; `web/`: report, sessions and dashboard routes
"""

from __future__ import annotations


def __getattr__(name: str):
    # lazy: `appvitals.fleet.collector.body` must not pull in Starlette and DuckDB
    if name == "create_app":
        from appvitals.fleet.collector.app import create_app

        return create_app
    if name in ("serve", "check_bind"):
        from appvitals.fleet.collector import runner

        return getattr(runner, name)
    raise AttributeError(name)


__all__ = ["check_bind", "create_app", "serve"]
