"""The collector's ingest log: acknowledged lines, durable before DuckDB has them.

A write to DuckDB costs the collector's one writer thread ~2 us a line plus a few ms a
commit, and while it runs nothing else of the request can happen: the clients wait for their
answers, and the decode workers sit idle (on the ingest bench the writer was busy 45 % of the
time, and the two cores 65 %). With this log, a request is answered once its new lines are
appended here and fsynced; a background thread then inserts them into DuckDB in larger
batches, while the next requests are already being read and decoded.

Format: segment files `<n>.log` in one directory, each a sequence of records

    b"AVL1" | crc32 (u32 LE) | payload length (u64 LE) | payload

where the payload is a msgpack array of maps {table name: Arrow IPC stream bytes} (a record
written by older collectors: one such map). The collector logs the IPC bytes its decode workers
sent as they are, one map per block, instead of serializing the write's tables again. A
record is appended with one writev() and the file fdatasync()ed before the lines are
acknowledged.
When the background insert has committed every record of a segment to DuckDB, the segment
is deleted. At open, segments left by a crash are replayed through the warehouse's
duplicate-checking insert (some of their records may already be in DuckDB) and deleted.

A damaged record (bad magic or checksum) cannot be an acknowledged one unless the disk
lost data after an fsync: the records before it are replayed, and the segment is kept,
renamed `<n>.log.damaged`, for a person to look at -- never deleted silently. A record cut
short at a segment's end is the tail of a write that was not acknowledged (the process died
before the fsync returned): it is dropped, with a warning.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pyarrow as pa

from appvitals.fleet.wire.arrow import tables_from_ipc, tables_to_ipc

log = logging.getLogger("appvitals.collector")

_MAGIC = b"AVL1"
_HEADER = struct.Struct("<4sIQ")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[dict[str, bytes]] | dict[str, bytes]).decode


class IngestLog:
    """Append-only, fsynced segments of Arrow records (see the module docstring)."""

    def __init__(self, directory: str | Path, segment_bytes: int = 16 << 20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        numbers = [int(p.stem) for p in self.directory.glob("*.log") if p.stem.isdigit()]
        self._next = max(numbers, default=0) + 1
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0

    def segments(self) -> list[Path]:
        """The segment files on disk, oldest first."""
        return sorted((p for p in self.directory.glob("*.log") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def append(self, tables: dict[str, pa.Table]) -> Path:
        """Write one record and fdatasync it; returns the segment it went to."""
        return self.append_ipc([tables_to_ipc(tables)])

    def append_ipc(self, parts: list[dict[str, bytes]]) -> Path:
        """`append` for tables already in IPC form (per part: {table name: IPC stream bytes})."""
        payload = _encode(parts)
        header = _HEADER.pack(_MAGIC, zlib.crc32(payload), len(payload))
        if self._fd is None or self._size >= self.segment_bytes:
            self._start()
        assert self._fd is not None and self._path is not None
        views = [memoryview(header), memoryview(payload)]
        try:
            while views:  # a short write continues; a full disk raises
                written = os.writev(self._fd, views)
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if views:
                    views[0] = views[0][written:]
            os.fdatasync(self._fd)
        except OSError:
            # Not acknowledged. What reached the file stays its last bytes (a record cut short,
            # dropped at replay; or whole, replayed, and a resend is then a duplicate): later
            # records go to a new segment. After a failed fsync the page cache cannot be trusted.
            self.seal()
            raise
        self._size += len(header) + len(payload)
        return self._path

    def _start(self) -> None:
        self.seal()
        self._path = self.directory / f"{self._next:012d}.log"
        self._next += 1
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        _fsync_dir(self.directory)  # the new file's name is durable before a record in it is acknowledged

    def current(self) -> Path | None:
        """The segment appends go to now (None when the next append starts a new one)."""
        return self._path

    def seal(self) -> None:
        """Close the current segment: the next append starts a new one."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._path = None

    close = seal

    @staticmethod
    def read(segment: Path) -> Iterator[dict[str, pa.Table]]:
        """The records of one segment, in order (see the module docstring for damaged ones)."""
        data = segment.read_bytes()
        at = 0
        while at < len(data):
            if len(data) - at < _HEADER.size:
                log.warning("ingest log %s: %d bytes cut short at its end (an unacknowledged write), dropped",
                            segment, len(data) - at)
                return
            magic, crc, length = _HEADER.unpack_from(data, at)
            start = at + _HEADER.size
            if magic == _MAGIC and start + length > len(data):
                log.warning("ingest log %s: last record cut short (an unacknowledged write), dropped", segment)
                return
            payload = data[start:start + length]
            if magic != _MAGIC or zlib.crc32(payload) != crc:
                raise DamagedLog(segment, at)
            yield _tables(_decode(payload))
            at = start + length


def _tables(parts: list[dict[str, bytes]] | dict[str, bytes]) -> dict[str, pa.Table]:
    if isinstance(parts, dict):  # a record written by an older collector
        return tables_from_ipc(parts)
    pieces: dict[str, list[pa.Table]] = {}
    for part in parts:
        for name, arrow in tables_from_ipc(part).items():
            pieces.setdefault(name, []).append(arrow)
    return {name: arrows[0] if len(arrows) == 1 else pa.concat_tables(arrows) for name, arrows in pieces.items()}


class DamagedLog(Exception):
    """A segment holds a record that fails its checksum."""

    def __init__(self, segment: Path, offset: int):
        super().__init__(f"ingest log {segment}: damaged record at byte {offset}")
        self.segment = segment
        self.offset = offset


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
