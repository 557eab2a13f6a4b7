"""`serve()`: the collector in the foreground under uvicorn, and what it checks before listening
(who may bind where, a free port) and guards while it runs (slow request headers)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.collector.decode import use_system_allocator
from appvitals.fleet.warehouse import Warehouse
from appvitals.httpauth import is_loopback

DEFAULT_PORT = 8420
HEADER_TIMEOUT = 10.0  # seconds a client has to send a request's headers


def check_bind(host: str, tokens: Sequence[str], read_tokens: Sequence[str], insecure: bool) -> None:
    """Refuse to listen beyond loopback without ingest and read tokens, unless `insecure`.
    An empty token counts as none (`--token "$UNSET"` must not open the collector)."""
    if is_loopback(host) or insecure:
        return
    if not [t for t in tokens if t.strip()] or not [t for t in read_tokens if t.strip()]:
        raise ValueError(
            f"refusing to listen on {host} without --token and --read-token "
            "(anyone could write or read); add tokens, or --insecure to allow it"
        )


def header_guard(timeout: float = HEADER_TIMEOUT):
    """uvicorn's HTTP protocol (httptools) with a deadline for request headers: a connection
    whose next request's headers are not complete `timeout` seconds after it opened, or after
    the first byte of that request, is closed (uvicorn alone waits forever for them)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderGuard(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()

    return HeaderGuard


def serve(
    warehouse: str | Warehouse,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tokens: Iterable[str] = (),
    read_tokens: Iterable[str] = (),
    insecure: bool = False,
    retention_days: int | None = None,
    limit_concurrency: int = 256,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    decode_workers: int | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    **options: Any,
) -> None:
    """Run the collector in the foreground until SIGINT/SIGTERM (uvicorn on host:port)."""
    use_system_allocator()  # first: before anything allocates Arrow memory
    import uvicorn

    tokens, read_tokens = tuple(tokens), tuple(read_tokens)
    check_bind(host, tokens, read_tokens, insecure)
    _check_port_free(host, port)
    if decode_workers is None:  # one decode process per core, up to 4 (DuckDB only; see decode.py)
        decode_workers = min(4, os.cpu_count() or 1) if (os.cpu_count() or 1) > 1 else 0
    app = create_app(warehouse, tokens, read_tokens, retention_days=retention_days,
                     decode_workers=decode_workers, **options)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False,
        limit_concurrency=limit_concurrency, timeout_keep_alive=30, lifespan="on",
        timeout_graceful_shutdown=10,  # a client streaming forever must not block a restart
        http=header_guard(header_timeout),
    )
    shown = f"[{host}]" if ":" in host else host
    server = _Server(config, on_ready, f"http://{shown}:{port}")
    _tune_gc()
    try:
        server.run()
    except SystemExit:  # uvicorn exits the process when it cannot start
        server.started = False
    if not server.started:
        raise RuntimeError(f"could not start the collector on {host}:{port}")


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, telling the caller where it listens once it does."""

        def __init__(self, config, on_ready: Callable[[str], None] | None, url: str):
            super().__init__(config)
            self.on_ready = on_ready
            self.url = url

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.on_ready is not None and self.started:
                self.on_ready(self.url)

    return Server


def _Server(config, on_ready, url):  # noqa: N802 - builds the subclass above (uvicorn loads late)
    return _server_class()(config, on_ready, url)


def _tune_gc() -> None:
    # Ingest allocates millions of short-lived container objects (decoded lines, their attrs
    # dicts, key tuples) that refcounting frees; with the default gen0 threshold (700) the
    # cyclic GC ran hundreds of times a second and re-scanned the queued lines each time
    # (~1 us per line measured). Freeze what startup built and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _check_port_free(host: str, port: int) -> None:
    # uvicorn would log a traceback-like error and exit(3); say it in one line instead
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
