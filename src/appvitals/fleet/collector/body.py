"""Incremental request-body decoding for the collector: decompression and line splitting.

Pure and synchronous (no I/O), so it is testable without a server. Memory is bounded:
gzip output is capped per call with `max_length`; zstd input is fed in small slices
(a zstd block can expand ~32000x, so a 256-byte slice yields at most ~8 MiB); a partial
line longer than the line limit is an error, never buffered further.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

GZIP_OUT_STEP = 1 << 20
ZSTD_IN_STEP = 256


class UnsupportedEncoding(ValueError):
    """Content-Encoding the collector cannot read (HTTP 415)."""


class LineTooLong(ValueError):
    """A line over the line limit (HTTP 413)."""


class BadCompression(ValueError):
    """The body is not valid gzip/zstd data (HTTP 400)."""


class Decompressor:
    """Turn compressed body chunks into plain bytes chunks, bounded per step."""

    def __init__(self, encoding: str | None):
        enc = (encoding or "identity").strip().lower()
        self.encoding = enc
        if enc in ("identity", ""):
            self._feed = self._identity
        elif enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(wbits=31)
            self._feed = self._gzip
        elif enc == "deflate":
            self._z = zlib.decompressobj()
            self._feed = self._gzip
        elif enc == "zstd":
            try:
                import zstandard
            except ImportError:  # pragma: no cover - zstandard is in the collector extra
                raise UnsupportedEncoding("zstd support needs the 'zstandard' package")
            self._zs = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
            self._zs_error = zstandard.ZstdError
            self._feed = self._zstd
        else:
            raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r} (use gzip or zstd)")

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Plain bytes for one compressed chunk, in bounded pieces."""
        return self._feed(data)

    def _identity(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def _gzip(self, data: bytes) -> Iterator[bytes]:
        z = self._z
        try:
            while data:
                out = z.decompress(data, GZIP_OUT_STEP)
                data = z.unconsumed_tail
                if out:
                    yield out
                if z.eof:
                    # concatenated gzip members are legal: start a new member with what is left
                    rest = z.unused_data
                    self._z = z = zlib.decompressobj(wbits=31)
                    data = rest + data
        except zlib.error as exc:
            raise BadCompression(f"invalid gzip data: {exc}")

    def _zstd(self, data: bytes) -> Iterator[bytes]:
        zs = self._zs
        try:
            for start in range(0, len(data), ZSTD_IN_STEP):
                out = zs.decompress(data[start:start + ZSTD_IN_STEP])
                if out:
                    yield out
        except self._zs_error as exc:
            raise BadCompression(f"invalid zstd data: {exc}")


class LineSplitter:
    """Split a byte stream into lines, refusing lines longer than `max_line_bytes`.

    `feed` returns the complete lines before a too-long one and sets `too_long`; the
    caller handles the good lines first, then answers 413 naming the next line number.
    """

    def __init__(self, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self.too_long = False
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines in `data` (plus what was left over before), without newlines."""
        if self.too_long:
            return []
        if self._rest:
            data = self._rest + data
        parts = data.split(b"\n")
        self._rest = parts.pop()
        limit = self.max_line_bytes
        if parts and max(map(len, parts)) > limit:
            for i, part in enumerate(parts):
                if len(part) > limit:
                    self.too_long = True
                    self._rest = b""
                    return parts[:i]
        if len(self._rest) > limit:
            self.too_long = True
            self._rest = b""
        return parts

    def feed_block(self, data: bytes) -> tuple[bytes, int]:
        """`feed` without splitting, for bodies parsed elsewhere (the decode workers): the
        complete lines as one bytes object, each line ending in a newline, and their count.

        The length check jumps from newline to newline at most `max_line_bytes` + 1 bytes
        apart (`rfind`, in C), so it costs a few calls per piece instead of one object a
        line: a longer line leaves a window that size with no newline in it."""
        if self.too_long:
            return b"", 0
        if self._rest:
            data = self._rest + data
        cut = data.rfind(b"\n") + 1
        block, self._rest = data[:cut], data[cut:]
        limit = self.max_line_bytes
        pos, size = 0, len(block)
        while size - pos > limit:  # the rest is shorter than the limit: no line in it is longer
            last = block.rfind(b"\n", pos, pos + limit + 1)
            if last < 0:  # the line starting at pos is longer: keep the lines before it
                self.too_long = True
                self._rest = b""
                return block[:pos], block.count(b"\n", 0, pos)
            pos = last + 1
        if len(self._rest) > limit:
            self.too_long = True
            self._rest = b""
        return block, block.count(b"\n")

    def finish(self) -> list[bytes]:
        """The last line when the body did not end with a newline."""
        rest, self._rest = self._rest, b""
        return [rest] if rest.strip() else []

    def check(self) -> None:
        """Raise LineTooLong when a line went over the limit."""
        if self.too_long:
            raise LineTooLong(f"line longer than {self.max_line_bytes} bytes")
