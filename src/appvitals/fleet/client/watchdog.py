"""An external watchdog: measures another process's CPU from outside and reports it.

FilesForYou's preferred design: the app does not measure itself (a starved app cannot
report that it is starved); a small separate process samples its CPU with psutil and
takes the app's events and stage changes over a local socket.

Socket: UDP on 127.0.0.1 (default port 47321); every datagram holds one or more JSON
objects separated by newlines:

    {"stage": "indexing"}                        later samples carry stage=indexing
    {"stage": "receiving", "attrs": {"file_name_length": 57}}   ...and these attrs
    {"stage": null}                              clear the stage
    {"event": "file_received", "attrs": {"file_name_length": 57}}
    {"end": "exit"}                              the app is closing cleanly (optional)

UDP because any language can send a datagram in one line, the app never blocks or fails
when the watchdog is not there, and it works the same on Linux, macOS and Windows.
Everything else (spool, uploads, exactly-once) is the `Agent`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import msgspec

from appvitals.fleet.client.agent import Agent, ConsentCallback

log = logging.getLogger("appvitals.watchdog")

DEFAULT_PORT = 47321
MAX_DATAGRAM = 65507


class Message(msgspec.Struct, forbid_unknown_fields=False):
    """One message from the app: a stage change, an event, or the end."""

    stage: str | None = None
    event: str | None = None
    end: str | None = None
    attrs: dict[str, str | int | float | bool] = {}


_decoder = msgspec.json.Decoder(Message)


def parse_messages(datagram: bytes) -> tuple[list[tuple[str, Message]], list[str]]:
    """Split a datagram into (what, message) pairs, what = "stage"/"event"/"end"; plus errors."""
    out: list[tuple[str, Message]] = []
    errors: list[str] = []
    for raw in datagram.splitlines():
        if not raw.strip():
            continue
        try:
            msg = _decoder.decode(raw)
            keys = json.loads(raw).keys()
        except (msgspec.DecodeError, ValueError, AttributeError) as exc:
            errors.append(f"bad message {raw[:80]!r}: {exc}")
            continue
        if "event" in keys and msg.event:
            out.append(("event", msg))
        elif "stage" in keys:
            out.append(("stage", msg))
        elif "end" in keys:
            out.append(("end", msg))
        else:
            errors.append(f"bad message {raw[:80]!r}: expected a stage, event or end key")
    return out, errors


class Watchdog:
    """Watches process `pid` (or a `command` it starts): its CPU, stages and events, until it exits."""

    def __init__(
        self,
        pid: int | None,
        url: str | None,
        *,
        command: Sequence[str] | None = None,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        app_version: str = "",
        attrs: dict | None = None,
        interval: float = 1.0,
        token: str | None = None,
        home: str | None = None,
        name: str = "watchdog",
        replay_consent: ConsentCallback | None = None,
        poll: float = 0.2,
    ) -> None:
        import psutil

        if (pid is None) == (not command):
            raise ValueError("give either a pid or a command to start")
        self.poll = poll
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise OSError(f"cannot listen on udp {host}:{port}: {exc.strerror or exc}")
        self.sock.settimeout(poll)
        self.address = self.sock.getsockname()
        self.child: subprocess.Popen | None = None
        if command:
            # the app learns where to send its stages and events from the environment
            env = dict(os.environ, VITALS_WATCHDOG_PORT=str(self.address[1]))
            try:
                self.child = subprocess.Popen(list(command), env=env)
            except OSError as exc:
                self.sock.close()
                raise ValueError(f"cannot start {command[0]!r}: {exc.strerror or exc}")
            pid = self.child.pid
        try:
            self.process = psutil.Process(pid)
            self.process.cpu_percent(None)
        except psutil.NoSuchProcess:
            self.sock.close()
            raise ValueError(f"no process with pid {pid}")
        self.pid = pid
        self.exit_code: int | None = None
        self.agent = Agent(
            url, app_version=app_version, attrs=attrs, interval=interval, token=token, home=home,
            name=name, replay_consent=replay_consent, cpu_source=self._cpu, close_at_exit=False,
        )
        self.messages = 0
        self.bad_messages = 0
        self._end_reason: str | None = None
        self._stop = threading.Event()

    def _cpu(self) -> float:
        import psutil

        try:
            return self.process.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._stop.set()
            return 0.0

    def handle(self, datagram: bytes) -> None:
        """Apply one datagram's messages to the agent."""
        messages, errors = parse_messages(datagram)
        self.bad_messages += len(errors)
        for e in errors:
            log.warning("%s", e)
        for what, msg in messages:
            self.messages += 1
            try:
                if what == "event":
                    self.agent.event(msg.event, **msg.attrs)  # type: ignore[arg-type]
                elif what == "stage":
                    self.agent.set_stage(msg.stage, **msg.attrs)
                else:
                    self._end_reason = msg.end or "exit"
                    self._stop.set()
            except (ValueError, RuntimeError) as exc:
                self.bad_messages += 1
                log.warning("message refused: %s", exc)

    def _alive(self) -> bool:
        import psutil

        if self.child is not None:
            return self.child.poll() is None
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _exit_reason(self) -> str:
        if self.child is None:  # not our child: its exit status is not ours to read
            return "process_exit"
        self.exit_code = self.child.wait()
        if self.exit_code == 0:
            return "exit"
        if self.exit_code < 0:
            return f"killed_by_signal_{-self.exit_code}"
        return f"exit_code_{self.exit_code}"

    def stop(self, reason: str = "watchdog_stopped") -> None:
        """Ask `run` to finish (from a signal handler or another thread)."""
        self._end_reason = self._end_reason or reason
        self._stop.set()

    def run(self, on_ready: Callable[[Watchdog], None] | None = None) -> str:
        """Watch until the process exits (or says `end`, or `stop` is called); returns the end reason."""
        self.agent.start()
        if on_ready is not None:
            on_ready(self)
        last_check = 0.0
        try:
            while not self._stop.is_set():
                try:
                    data, _ = self.sock.recvfrom(MAX_DATAGRAM)
                    self.handle(data)
                except TimeoutError:
                    pass
                now = time.monotonic()
                if now - last_check >= self.poll:
                    last_check = now
                    if not self._alive():
                        self._end_reason = self._end_reason or self._exit_reason()
                        break
        finally:
            self.sock.close()
            reason = self._end_reason or "process_exit"
            self.agent.close(reason)
        return reason


class WatchdogClient:
    """The app's side, for Python apps: fire-and-forget UDP messages to a watchdog.

    The port comes from `port`, else $VITALS_WATCHDOG_PORT (set by `vitals watchdog -- CMD`),
    else 47321. Sending never blocks and never fails the app when no watchdog listens.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.address = (host, int(port or os.environ.get("VITALS_WATCHDOG_PORT") or DEFAULT_PORT))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stage: tuple[str | None, dict] = (None, {})

    def send(self, **message) -> None:
        """Send one message (stage / event / end) as JSON."""
        with contextlib.suppress(OSError):
            self.sock.sendto(json.dumps(message).encode(), self.address)

    def set_stage(self, name: str | None, **attrs) -> None:
        """Later samples carry stage `name` (and `attrs`); None clears it."""
        self._stage = (name, attrs)
        self.send(stage=name, attrs=attrs) if attrs else self.send(stage=name)

    @contextlib.contextmanager
    def stage(self, name: str, **attrs) -> Iterator[None]:
        """`with client.stage("indexing"):` ... then back to the previous stage."""
        previous = self._stage
        self.set_stage(name, **attrs)
        try:
            yield
        finally:
            self.set_stage(previous[0], **previous[1])

    def event(self, name: str, **attrs) -> None:
        """Report an event (login, file_received with file_name_length=57...)."""
        self.send(event=name, attrs=attrs)

    def end(self, reason: str = "exit") -> None:
        """Tell the watchdog the app is closing cleanly."""
        self.send(end=reason)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
