"""An append-only on-disk spool of wire lines, so nothing is lost while the collector is away.

Layout of a spool directory:

    000000000001.seg   segment files: one JSON line each, appended, never rewritten
    000000000002.seg   (the highest number is the active one; a new one starts past `segment_bytes`)
    state.json         {"segment", "offset", "dropped_total", "dropped_reported"}
    lock               flock()ed while a process uses the spool

- A line is appended (and fsynced, at most `fsync_every` seconds later) before it is
  uploaded; it is removed only when the uploader `commit`s a position after a `200`.
- `state.json` (the committed position) is written atomically: temp file, fsync, rename,
  fsync of the directory. A crash at any point leaves the old or the new state, never a mix.
- A torn last line (SIGKILL or power loss mid-write) is cut off when the spool is opened;
  every earlier line survives, because segments only ever grow by whole lines.
- Bounded: past `max_bytes`, whole oldest segments are dropped and their unsent lines
  counted in `dropped_total`; the agent reports the count to the collector later. A
  `session` line is never dropped: it moves to the end of the spool, because lines of its
  session may remain or may have been delivered already (the collector applies a session's
  attrs whenever they arrive). Session lines are one small line per app run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, one process per spool is up to you
    fcntl = None  # type: ignore[assignment]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_SUFFIX = ".seg"


def _session_id(line: bytes) -> str | None:
    """The session_id of a `session` line, None for any other line."""
    if b'"session"' not in line:  # cheap: most lines are samples
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("kind") == "session" and isinstance(obj.get("session_id"), str):
        return obj["session_id"]
    return None


class SpoolBusy(RuntimeError):
    """Another process holds this spool directory."""


class Position(NamedTuple):
    """A point in the spool: segment number and byte offset within it."""

    segment: int
    offset: int


class Batch(NamedTuple):
    """Lines read from the spool (without newlines) and the position just after them."""

    lines: list[bytes]
    end: Position
    nbytes: int


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """Append-only, crash-safe, size-bounded queue of lines on disk (thread-safe)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int | None = None,
        fsync_every: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes or max(4096, min(self.max_bytes // 8, 4 * 1024 * 1024)))
        self.fsync_every = fsync_every
        self._lock = threading.RLock()
        self._lock_fd = self._take_lock()
        self._sizes: dict[int, int] = {}
        self._fd: int | None = None
        self._last_fsync = time.monotonic()
        self._dirty = False
        self.committed = Position(0, 0)
        self.dropped_total = 0
        self.dropped_reported = 0
        self.torn_bytes = 0
        self._recover()
        self.backlog_bytes = self.pending_bytes()
        self.backlog_lines = self.pending_lines()

    # ---- opening ---------------------------------------------------------------------------

    def _take_lock(self) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolBusy(f"spool {self.directory} is in use by another process")
        return fd

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"{n:012d}{_SUFFIX}"

    def _recover(self) -> None:
        state_path = self.directory / "state.json"
        if state_path.exists():
            try:
                state = json.loads(state_path.read_bytes())
                self.committed = Position(int(state["segment"]), int(state["offset"]))
                self.dropped_total = int(state.get("dropped_total", 0))
                self.dropped_reported = int(state.get("dropped_reported", 0))
            except (ValueError, KeyError, TypeError):
                # unreadable state: keep every line (a replay is deduplicated by the collector)
                self.committed = Position(0, 0)
        for p in self.directory.glob("*" + _SUFFIX):
            try:
                n = int(p.stem)
            except ValueError:
                continue
            self._sizes[n] = self._cut_torn_tail(p)
        for n in [n for n in self._sizes if n < self.committed.segment]:
            self._delete_segment(n)
        if not self._sizes:
            self._sizes[max(self.committed.segment, 1)] = 0
        self._open_active()

    def _cut_torn_tail(self, path: Path) -> int:
        size = path.stat().st_size
        if size == 0:
            return 0
        with open(path, "rb+") as f:
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = pos - step + i + 1
                    break
                pos -= step
            else:
                keep = 0
            if keep != size:
                self.torn_bytes += size - keep
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        return keep

    def _open_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        n = max(self._sizes)
        self._fd = os.open(self._segment_path(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = n

    def _delete_segment(self, n: int) -> None:
        self._sizes.pop(n, None)
        try:
            os.unlink(self._segment_path(n))
        except FileNotFoundError:
            pass

    def _write_state(self) -> None:
        state = {
            "segment": self.committed.segment,
            "offset": self.committed.offset,
            "dropped_total": self.dropped_total,
            "dropped_reported": self.dropped_reported,
        }
        write_atomic(self.directory / "state.json", json.dumps(state).encode())

    # ---- writing ---------------------------------------------------------------------------

    def append(self, lines: Iterable[bytes]) -> None:
        """Append whole lines (no newline inside); durable within `fsync_every` seconds."""
        data = b"".join(line + b"\n" for line in lines)
        if not data:
            return
        with self._lock:
            if self._fd is None:
                raise ValueError("spool is closed")
            if self._sizes[self._active] and self._sizes[self._active] + len(data) > self.segment_bytes:
                self._roll()
            os.write(self._fd, data)
            self._sizes[self._active] += len(data)
            self._dirty = True
            if self.fsync_every <= 0 or time.monotonic() - self._last_fsync >= self.fsync_every:
                self._sync_locked()
            if self.total_bytes() > self.max_bytes:
                self._enforce_bound()

    def _roll(self) -> None:
        self._sync_locked()
        self._sizes[self._active + 1] = 0
        self._open_active()
        _fsync_dir(self.directory)

    def _sync_locked(self) -> None:
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
            self._dirty = False
        self._last_fsync = time.monotonic()

    def sync(self) -> None:
        """fsync whatever was appended so far."""
        with self._lock:
            self._sync_locked()

    def _enforce_bound(self) -> None:
        # whole oldest segments go; their `session` lines are kept (moved to the end) while
        # lines of that session remain, so surviving samples keep the session's attrs
        dropped = 0
        carried: list[bytes] = []
        while self.total_bytes() + sum(len(c) + 1 for c in carried) > self.max_bytes:
            oldest = min(self._sizes)
            if oldest == self._active:
                if self._sizes[oldest] == 0:  # nothing left to drop but the carried lines
                    break
                self._roll()
            start = self.committed.offset if oldest == self.committed.segment else 0
            if oldest >= self.committed.segment:
                lines = self._read_lines(oldest, start)
                sessions = [line for line in lines if _session_id(line) is not None]
                dropped += len(lines) - len(sessions)
                carried.extend(sessions)
            self._delete_segment(oldest)
            self.committed = max(self.committed, Position(min(self._sizes), 0))
        if carried:
            # every session line is kept: samples of its session may still be in the spool, or may
            # have been delivered already, and the collector applies a session's attrs to its
            # lines whenever the session line arrives; one small line per app run
            data = b"".join(line + b"\n" for line in carried)
            os.write(self._fd, data)  # type: ignore[arg-type]
            self._sizes[self._active] += len(data)
            self._sync_locked()
        if dropped:
            self.dropped_total += dropped
            self._write_state()

    def _read_lines(self, n: int, start: int) -> list[bytes]:
        with open(self._segment_path(n), "rb") as f:
            f.seek(start)
            return f.read().split(b"\n")[:-1]

    def _count_lines(self, n: int, start: int) -> int:
        with open(self._segment_path(n), "rb") as f:
            f.seek(start)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    # ---- reading ---------------------------------------------------------------------------

    def total_bytes(self) -> int:
        """Bytes of all segment files (committed prefix included)."""
        return sum(self._sizes.values())

    def pending_bytes(self) -> int:
        """Bytes of lines not yet committed."""
        with self._lock:
            total = 0
            for n, size in self._sizes.items():
                if n > self.committed.segment:
                    total += size
                elif n == self.committed.segment:
                    total += max(size - self.committed.offset, 0)
            return total

    def pending_lines(self) -> int:
        """How many lines are not yet committed (reads the files: not for hot paths)."""
        with self._lock:
            return sum(
                self._count_lines(n, self.committed.offset if n == self.committed.segment else 0)
                for n in sorted(self._sizes)
                if n >= self.committed.segment
            )

    def read(self, max_bytes: int = 256 * 1024, max_lines: int = 100_000) -> Batch:
        """The oldest uncommitted lines, up to about `max_bytes` (at least one line)."""
        with self._lock:
            lines: list[bytes] = []
            nbytes = 0
            end = self.committed
            for n in sorted(self._sizes):
                if n < self.committed.segment:
                    continue
                start = self.committed.offset if n == self.committed.segment else 0
                size = self._sizes[n]
                if start >= size:
                    end = max(end, Position(n, size))
                    continue
                with open(self._segment_path(n), "rb") as f:
                    f.seek(start)
                    data = f.read(min(size - start, max(max_bytes - nbytes, 0) + 65536))
                pos = start
                for raw in data.split(b"\n")[:-1]:
                    if lines and (nbytes + len(raw) + 1 > max_bytes or len(lines) >= max_lines):
                        return Batch(lines, Position(n, pos), nbytes)
                    lines.append(raw)
                    nbytes += len(raw) + 1
                    pos += len(raw) + 1
                end = Position(n, pos)
                if nbytes >= max_bytes or len(lines) >= max_lines or pos < size:
                    return Batch(lines, end, nbytes)
            return Batch(lines, end, nbytes)

    def last_append_time(self) -> float:
        """When a line was last appended (mtime of the newest segment), 0.0 if never."""
        with self._lock:
            try:
                return os.stat(self._segment_path(self._active)).st_mtime
            except OSError:
                return 0.0

    def commit(self, end: Position) -> None:
        """Forget every line before `end` (call only after the collector answered 200)."""
        with self._lock:
            if end <= self.committed:
                return
            self.committed = end
            self._write_state()
            if self._fd is None:  # closed meanwhile (an upload finishing during close): state only
                return
            for n in [n for n in self._sizes if n < end.segment and n != self._active]:
                self._delete_segment(n)
            if end.segment == self._active and end.offset >= self._sizes[self._active] >= self.segment_bytes // 2:
                # fully sent and big enough: start a fresh segment so the old file can go
                self._roll()

    # ---- dropped lines ---------------------------------------------------------------------

    def dropped_unreported(self) -> int:
        """Lines dropped (over the size bound, or replay declined) not yet reported."""
        return self.dropped_total - self.dropped_reported

    def add_dropped(self, count: int) -> None:
        """Count `count` lines lost elsewhere (e.g. in an adopted spool) as dropped here."""
        with self._lock:
            self.dropped_total += count
            self._write_state()

    def mark_reported(self, count: int) -> None:
        """Record that `count` dropped lines were reported to the collector."""
        with self._lock:
            self.dropped_reported += count
            self._write_state()

    def discard_pending(self) -> int:
        """Drop every uncommitted line (e.g. the user declined a replay); returns how many."""
        with self._lock:
            count = self.pending_lines()
            self.dropped_total += count
            self._roll()
            for n in [n for n in self._sizes if n != self._active]:
                self._delete_segment(n)
            self.committed = Position(self._active, 0)
            self._write_state()
            return count

    def close(self) -> None:
        """fsync and release the files and the lock."""
        with self._lock:
            if self._fd is not None:
                self._sync_locked()
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
