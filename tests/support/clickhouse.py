"""A throwaway ClickHouse server for tests: `from svc_clickhouse import clickhouse_url`.

`clickhouse_url` is a session-scoped pytest fixture: it starts Debian's
/usr/sbin/clickhouse-server (18.16, or whatever `clickhouse-server`/`clickhouse server`
is installed) on 127.0.0.1 with a generated config in a temp dir and free ports, waits
until it answers queries, and yields `clickhouse://127.0.0.1:PORT/default`. At the end it
stops the server (SIGTERM, then SIGKILL after a grace period) and removes its files.
A missing binary skips the test, or fails it under VITALS_REQUIRE_ALL=1 (conftest.require).

Each test that wants a clean database should create its own: `fresh_database(url)` makes
a uniquely named database and returns its URL, so tests never see each other's rows.
`ClickHouseServer` can be used directly (a context manager) by scripts outside pytest.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from support.services import free_port, require

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def find_binary() -> list[str] | None:
    """The command that runs a ClickHouse server here, or None."""
    for path in (shutil.which("clickhouse-server"), "/usr/sbin/clickhouse-server"):
        if path and os.access(path, os.X_OK):
            return [path]
    single = shutil.which("clickhouse")  # the all-in-one binary of current releases
    if single:
        return [single, "server"]
    return None


class ClickHouseServer:
    """One ClickHouse server process on 127.0.0.1 with its own temp dir and free ports."""

    def __init__(self, command: list[str], startup_timeout: float = 60.0):
        self.command = command
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="vitals-ch-"))
        self.tcp_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.tcp_port:
            self.http_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """clickhouse://127.0.0.1:PORT/default for the native protocol."""
        return f"clickhouse://127.0.0.1:{self.tcp_port}/default"

    def start(self) -> ClickHouseServer:
        """Write the config, start the server and wait until it answers a query."""
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "config.xml").write_text(
            _CONFIG.format(dir=self.dir, tcp_port=self.tcp_port, http_port=self.http_port)
        )
        (self.dir / "users.xml").write_text(_USERS)
        self._stdout = open(self.dir / "log" / "stdout.log", "wb")
        self.proc = subprocess.Popen(
            [*self.command, f"--config-file={self.dir / 'config.xml'}"],
            cwd=self.dir,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our own process group: Ctrl-C in pytest does not orphan it
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from clickhouse_driver import Client

        # the driver logs every refused connection with a traceback; while starting up that is expected
        quiet = logging.getLogger("clickhouse_driver.connection")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            self._poll_ready(Client)
        finally:
            quiet.setLevel(level)

    def _poll_ready(self, Client) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client = Client("127.0.0.1", port=self.tcp_port, connect_timeout=2, send_receive_timeout=10)
                try:
                    if client.execute("SELECT 1") == [(1,)]:
                        return
                finally:
                    client.disconnect()
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"clickhouse-server did not become ready in {self.startup_timeout:.0f}s: {last}; {self.log_tail()}")

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the server's logs, for error messages."""
        parts = []
        for name in ("stdout.log", "server.err.log"):
            path = self.dir / "log" / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-limit:])
        return " | ".join(p.strip() for p in parts if p.strip())

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if getattr(self, "_stdout", None) is not None:
            self._stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ClickHouseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def fresh_database(url: str, prefix: str = "t") -> str:
    """Create a new, uniquely named database on the server behind `url` and return its URL."""
    from clickhouse_driver import Client

    base, _, _ = url.rpartition("/")
    host_port = base.removeprefix("clickhouse://")
    host, _, port = host_port.partition(":")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    client = Client(host, port=int(port or 9000))
    try:
        client.execute(f"CREATE DATABASE {name}")
    finally:
        client.disconnect()
    return f"{base}/{name}"


_RUNNING: dict[str, ClickHouseServer] = {}


@pytest.fixture(scope="session")
def clickhouse_url():
    """clickhouse://127.0.0.1:PORT/default of the session's test server (started once, stopped at the end)."""
    command = find_binary()
    require("clickhouse-server", command is not None, "install Debian's clickhouse-server (see .ci/run)")
    server = ClickHouseServer(command)  # type: ignore[arg-type]
    server.start()
    _RUNNING["server"] = server
    try:
        yield server.url
    finally:
        _RUNNING.pop("server", None)
        server.stop()


@pytest.fixture(scope="session")
def clickhouse_server(clickhouse_url) -> ClickHouseServer:
    """The running ClickHouseServer behind `clickhouse_url` (ports, temp dir, log_tail())."""
    return _RUNNING["server"]
