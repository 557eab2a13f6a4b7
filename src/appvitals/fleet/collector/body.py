"""Incremental request-body decoding for the collector: decompression and line splitting.

Pure and synchronous (no I/O), so it is testable without a server. Memory is bounded:
gzip output is capped per call with `max_length`; zstd input is fed in small slices
(a zstd block can expand ~32000x, so a 256-byte slice yields at most ~8 MiB); a partial
line longer than the line limit is an error, never buffered further.

Work is bounded too: a compressed body may expand to at most `max_output` bytes, and to at
most `max_ratio` times its compressed size past the first `ratio_floor` bytes (a few KB of
gzip that expand to megabytes of blank lines are refused with 413 before they cost CPU).

A compressed body is all or nothing: its plain bytes are held (at most `max_output`) until
the body has ended and its last gzip member (or zstd frame) is complete, its checksum
verified; `finish()` then hands them over. A body that ends inside a member, or holds bad
compressed data anywhere, is `BadCompression` (400) and none of its lines are stored.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

GZIP_OUT_STEP = 1 << 20
ZSTD_IN_STEP = 256
MAX_OUTPUT = 32 << 20  # plain bytes one compressed request may expand to
MAX_RATIO = 100  # plain bytes per compressed byte, past RATIO_FLOOR
RATIO_FLOOR = 1 << 20


class UnsupportedEncoding(ValueError):
    """Content-Encoding the collector cannot read (HTTP 415)."""


class LineTooLong(ValueError):
    """A line over the line limit (HTTP 413)."""


class BodyTooLarge(ValueError):
    """A compressed body that expands beyond the collector's bounds (HTTP 413)."""


class BadCompression(ValueError):
    """The body is not valid gzip/zstd data, or ends inside a compressed member (HTTP 400)."""


class Decompressor:
    """Turn compressed body chunks into plain bytes chunks, bounded per step, released only
    once the member holding them is complete (see the module's doc)."""

    def __init__(self, encoding: str | None, max_output: int = MAX_OUTPUT, max_ratio: float = MAX_RATIO,
                 ratio_floor: int = RATIO_FLOOR):
        enc = (encoding or "identity").strip().lower()
        self.encoding = enc
        self.max_output = max_output
        self.max_ratio = max_ratio
        self.ratio_floor = ratio_floor
        self.compressed = 0  # bytes fed
        self.plain = 0  # bytes produced
        self._held: list[bytes] = []  # plain bytes of the member not yet complete
        self._open = False  # inside a member: input seen since the last complete one
        if enc in ("identity", ""):
            self._feed = self._identity
        elif enc in ("gzip", "x-gzip"):
            self._new = lambda: zlib.decompressobj(wbits=31)
            self._z = self._new()
            self._feed = self._gzip
        elif enc == "deflate":
            self._new = lambda: zlib.decompressobj()
            self._z = self._new()
            self._feed = self._gzip
        elif enc == "zstd":
            try:
                import zstandard
            except ImportError:  # pragma: no cover - zstandard is in the collector extra
                raise UnsupportedEncoding("zstd support needs the 'zstandard' package")
            self._zstd_new = lambda: zstandard.ZstdDecompressor().decompressobj()
            self._zs = self._zstd_new()
            self._zs_error = zstandard.ZstdError
            self._feed = self._zstd
        else:
            raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r} (use gzip or zstd)")

    @property
    def compressed_body(self) -> bool:
        """True unless the body is sent as is."""
        return self.encoding not in ("identity", "")

    def feed(self, data: bytes) -> Iterable[bytes]:
        """Plain bytes ready to use: a plain body's chunk as is; nothing for a compressed body,
        whose plain bytes are checked and counted here and handed over by `finish()`."""
        self.compressed += len(data)
        return self._feed(data)

    def finish(self) -> list[bytes]:
        """The body ended: a compressed body's plain bytes, in bounded pieces; raises
        BadCompression when the body ended inside a member."""
        if self._open:
            self._held = []
            name = "zstd frame" if self.encoding == "zstd" else f"{self.encoding} data"
            raise BadCompression(f"the body ends inside its {name} (cut short?); none of its lines were stored")
        held, self._held = self._held, []
        return held

    def _count(self, out: bytes) -> None:
        self.plain += len(out)
        if self.plain > self.max_output:
            raise BodyTooLarge(f"the body expands to more than {self.max_output} bytes; send smaller requests")
        if self.plain > self.ratio_floor and self.plain > self.max_ratio * self.compressed:
            raise BodyTooLarge(f"the body expands more than {self.max_ratio:g}-fold "
                               f"({self.compressed} bytes to over {self.plain}); send smaller requests")

    def _identity(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def _gzip(self, data: bytes) -> tuple[()]:
        z = self._z
        try:
            while data:
                self._open = True
                out = z.decompress(data, GZIP_OUT_STEP)
                data = z.unconsumed_tail
                if out:
                    self._count(out)
                    self._held.append(out)
                if z.eof:
                    self._open = False
                    # concatenated gzip members are legal: start a new member with what is left
                    rest = z.unused_data
                    self._z = z = self._new()
                    data = rest + data
        except zlib.error as exc:
            self._held = []
            raise BadCompression(f"invalid {self.encoding} data: {exc}")
        return ()

    def _zstd(self, data: bytes) -> tuple[()]:
        try:
            for start in range(0, len(data), ZSTD_IN_STEP):
                piece = data[start:start + ZSTD_IN_STEP]
                while piece:
                    self._open = True
                    out = self._zs.decompress(piece)
                    if out:
                        self._count(out)
                        self._held.append(out)
                    if not self._zs.eof:
                        break
                    self._open = False
                    piece = self._zs.unused_data  # the next frame starts here
                    self._zs = self._zstd_new()
        except self._zs_error as exc:
            self._held = []
            raise BadCompression(f"invalid zstd data: {exc}")
        return ()


BLANK_PIECE = 4096  # a piece of at least this many bytes of whitespace costs no work a line


class LineSplitter:
    """Split a byte stream into lines, refusing lines longer than `max_line_bytes`.

    `feed` returns the complete lines before a too-long one and sets `too_long`; the
    caller handles the good lines first, then answers 413 naming the next line number.

    A piece whose complete lines are all blank (whitespace only) and at least `BLANK_PIECE`
    bytes long is not split at all: `feed` and `feed_block` return nothing for it and set
    `skipped` to the number of lines it held (they still count for line numbers), so a body
    of blank lines costs a few C calls a piece instead of work a line.
    """

    def __init__(self, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self.too_long = False
        self.skipped = 0  # blank lines the last feed/feed_block call passed over
        self._rest = b""

    def _blank(self, data: bytes) -> bool:
        """True (and `skipped` set) when `data`'s complete lines are all blank: they are
        dropped, the partial line after them kept."""
        if not data[:1].isspace():  # a usual piece starts with a line: no scan, no copy
            return False
        cut = data.rfind(b"\n") + 1
        if cut < BLANK_PIECE or not data[:cut].isspace():
            return False
        self.skipped = data.count(b"\n", 0, cut)
        self._rest = data[cut:]
        if len(self._rest) > self.max_line_bytes:
            self.too_long = True
            self._rest = b""
        return True

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines in `data` (plus what was left over before), without newlines."""
        self.skipped = 0
        if self.too_long:
            return []
        if self._rest:
            data = self._rest + data
        if len(data) >= BLANK_PIECE and self._blank(data):
            return []
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
        self.skipped = 0
        if self.too_long:
            return b"", 0
        if self._rest:
            data = self._rest + data
        if len(data) >= BLANK_PIECE and self._blank(data):
            return b"", 0
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
