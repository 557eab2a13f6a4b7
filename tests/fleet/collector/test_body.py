"""Body decoding without a server: bounded decompression and line splitting (fleet/_body.py)."""

from __future__ import annotations

import gzip
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from appvitals.fleet.collector.body import (
    BadCompression,
    BodyTooLarge,
    Decompressor,
    LineSplitter,
    LineTooLong,
    UnsupportedEncoding,
)


def inflate(encoding, data: bytes, step: int = 1000, **bounds) -> tuple[bytes, int]:
    d = Decompressor(encoding, **bounds)
    out, biggest = [], 0
    for i in range(0, len(data), step):
        for piece in d.feed(data[i:i + step]):
            biggest = max(biggest, len(piece))
            out.append(piece)
    for piece in d.finish():
        biggest = max(biggest, len(piece))
        out.append(piece)
    return b"".join(out), biggest


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", "x-gzip", "deflate", "zstd", "GZIP"])
def test_round_trip(encoding):
    raw = b"".join(b'{"n":%d}\n' % i for i in range(5000))
    enc = (encoding or "identity").lower()
    packed = {
        "identity": raw, "gzip": gzip.compress(raw), "x-gzip": gzip.compress(raw),
        "deflate": zlib.compress(raw), "zstd": zstandard.ZstdCompressor().compress(raw),
    }[enc]
    assert inflate(encoding, packed)[0] == raw


def test_concatenated_gzip_members():
    assert inflate("gzip", gzip.compress(b"a\n") + gzip.compress(b"b\n"))[0] == b"a\nb\n"


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_bombs_come_out_in_bounded_pieces(encoding):
    zeros = b"0" * (64 << 20)
    packed = gzip.compress(zeros, 9) if encoding == "gzip" else zstandard.ZstdCompressor(level=19).compress(zeros)
    assert len(packed) < 200_000
    out, biggest = inflate(encoding, packed, step=len(packed), max_output=80 << 20, max_ratio=1e9)
    assert out == zeros
    assert biggest <= 16 << 20


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_a_body_that_expands_too_far_is_refused(encoding):
    blank = b"\n" * (20 << 20)  # 20 MiB of blank lines from a few KB
    packed = {"gzip": gzip.compress(blank, 9), "deflate": zlib.compress(blank, 9),
              "zstd": zstandard.ZstdCompressor(level=19).compress(blank)}[encoding]
    assert len(packed) < 40_000
    with pytest.raises(BodyTooLarge, match="fold"):  # by ratio, long before 20 MiB
        inflate(encoding, packed, step=len(packed))
    with pytest.raises(BodyTooLarge, match="more than 1048576 bytes"):  # by size
        inflate(encoding, packed, step=len(packed), max_output=1 << 20, max_ratio=1e9)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_a_compressed_body_cut_short_gives_nothing(encoding, cut):
    raw = b"".join(b'{"n":%d}\n' % i for i in range(5000))
    packed = {"gzip": gzip.compress(raw), "deflate": zlib.compress(raw),
              "zstd": zstandard.ZstdCompressor(write_checksum=True).compress(raw)}[encoding]
    packed = packed[:len(packed) // 2] if cut == "half" else packed[:-4]
    d = Decompressor(encoding)
    assert list(d.feed(packed)) == []  # nothing handed over before the body is whole
    with pytest.raises(BadCompression, match="cut short"):
        d.finish()


def test_a_second_gzip_member_cut_short_spoils_the_first():
    packed = gzip.compress(b"a\n") + gzip.compress(b"b\n" * 1000)[:-10]
    with pytest.raises(BadCompression):
        inflate("gzip", packed)


def test_unknown_and_broken():
    with pytest.raises(UnsupportedEncoding):
        Decompressor("br")
    with pytest.raises(BadCompression):
        inflate("gzip", b"not gzip at all")
    with pytest.raises(BadCompression):
        inflate("zstd", b"not zstd at all")


def test_splitter_joins_lines_across_chunks():
    s = LineSplitter(100)
    assert s.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert s.feed(b":2}\n\n{") == [b'{"b":2}', b""]
    assert s.feed(b'"c":3}') == []
    assert s.finish() == [b'{"c":3}']
    assert s.finish() == []


def test_splitter_stops_before_a_long_line():
    s = LineSplitter(10)
    assert s.feed(b"short\nok\n" + b"x" * 11 + b"\nnever\n") == [b"short", b"ok"]
    assert s.too_long
    with pytest.raises(LineTooLong):
        s.check()
    assert s.feed(b"more\n") == []


def test_splitter_refuses_an_endless_partial_line():
    s = LineSplitter(1000)
    assert s.feed(b"y" * 600) == []
    assert s.feed(b"y" * 600) == [] and s.too_long


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=30), st.lists(st.integers(1, 40), min_size=1, max_size=10),
       st.integers(1, 10), st.booleans())
def test_feed_block_says_what_feed_says(lengths, cuts, limit, newline_at_end):
    # the block form (for the decode workers) keeps the same lines, stops at the same too-long line
    body = b"\n".join(b"x" * n for n in lengths) + (b"\n" if newline_at_end else b"")
    pieces, i = [], 0
    for c in cuts * (len(body) // max(1, sum(cuts)) + 1):
        pieces.append(body[i:i + c])
        i += c
    pieces.append(body[i:])
    by_line, by_block = LineSplitter(limit), LineSplitter(limit)
    lines, blocks, count = [], [], 0
    for piece in pieces:
        lines += by_line.feed(piece)
        block, n = by_block.feed_block(piece)
        blocks.append(block)
        count += n
    joined = b"".join(blocks)
    assert by_block.too_long == by_line.too_long
    assert count == len(lines) == joined.count(b"\n")
    assert joined == b"".join(line + b"\n" for line in lines)
    assert by_block.finish() == by_line.finish()


def test_a_piece_of_blank_lines_is_passed_over_whole():
    s = LineSplitter(100)
    assert s.feed(b"a\n") == [b"a"] and s.skipped == 0
    assert s.feed(b"\n \r\n\t\n" * 2000 + b"b") == [] and s.skipped == 6000  # no object a line
    assert s.feed(b"c\nd\n") == [b"bc", b"d"] and s.skipped == 0
    blocks = LineSplitter(100)
    assert blocks.feed_block(b"\n" * 5000) == (b"", 0) and blocks.skipped == 5000
    assert blocks.feed_block(b"x\n" + b"\n" * 5000) == (b"x\n" + b"\n" * 5000, 5001)  # starts with a line
