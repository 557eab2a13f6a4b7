"""The fleet collector: the HTTP app (ingest, report, dashboard), request bodies, decode
workers and the collector's own metrics. `create_app` and `serve` are its entry points."""

from __future__ import annotations


def __getattr__(name: str):
    # lazy: `appvitals.fleet.collector.body` must not pull in Starlette and DuckDB
    if name in ("create_app", "serve", "check_bind"):
        from appvitals.fleet.collector import app

        return getattr(app, name)
    raise AttributeError(name)


__all__ = ["check_bind", "create_app", "serve"]
