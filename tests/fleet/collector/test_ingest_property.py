"""Arbitrary bytes and arbitrary JSON lines at `/v1/ingest` of a real collector (uvicorn, a
DuckDB file with its ingest log), in-process and with decode workers: never a 5xx, every
valid line stored, every invalid line reported by its number."""

from __future__ import annotations

import gzip
import itertools

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.collector import running_app

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.protocol import decode_line

_examples = itertools.count()
TABLES = ("sessions", "samples", "events", "ends")


@pytest.fixture(scope="module", params=[0, 2], ids=["inline", "workers"])
def collector(tmp_path_factory, request):
    wh = DuckDBWarehouse(tmp_path_factory.mktemp("prop") / "fleet.duckdb", ingest_log=True)
    with running_app(create_app(wh, decode_workers=request.param)) as url:
        yield url, wh
    wh.close()


def storable(raw: bytes) -> bool:
    """The oracle: the wire decoder takes the line and its values fit the warehouse's columns."""
    try:
        ArrowBatch.from_lines([decode_line(raw)])
    except Exception:
        return False
    return True


def blank(raw: bytes) -> bool:
    return not raw or raw.isspace()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ints = st.integers(-5, 2**66) | st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1, -1, 10**30])


@st.composite
def wire_lines(draw, prefix: str, index: int) -> bytes:
    """A line that is often valid and often wrong in one field or another."""
    fields: dict = {}
    if draw(st.integers(0, 9)):
        fields["kind"] = draw(st.sampled_from(["session", "sample", "event", "end"]) | st.text(max_size=8))
    if draw(st.integers(0, 9)):
        sid = draw(st.text(max_size=8) | st.just("x" * 130) | st.integers())
        fields["session_id"] = prefix + sid if isinstance(sid, str) else sid
    if draw(st.integers(0, 9)):
        fields["ts"] = draw(ints | st.sampled_from(["2025-11-24T16:00:01.5Z", "0001-01-01T00:00:00+14:00",
                                                     "yesterday", "2025-11-24T16:00:01"]) | st.floats())
    seq = draw(st.sampled_from(["index", "none", "other"]))
    if seq == "index":
        fields["seq"] = index
    elif seq == "other":
        fields["seq"] = draw(ints | st.floats() | st.text(max_size=3))
    if draw(st.booleans()):
        fields["cpu"] = draw(st.floats(allow_nan=False) | st.integers(-1, 2**65) | st.text(max_size=3))
    if draw(st.booleans()):
        fields["client_id"] = draw(st.text(max_size=6))
    if draw(st.booleans()):
        fields["name"] = draw(st.text(max_size=6))
    if draw(st.booleans()):
        fields["attrs"] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=5) | json_values)
    if draw(st.booleans()):
        fields["values"] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        fields[draw(st.text(max_size=6))] = draw(json_values)
    raw = msgspec.json.encode(fields)
    mangle = draw(st.integers(0, 19))
    if mangle == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]  # cut
    elif mangle == 1:
        raw = draw(st.sampled_from([b"", b"   ", b"\t", b"null", b"[]", b"{}", b"\xff\xfe", b"{\"kind\":"]))
    return raw


@st.composite
def bodies(draw) -> tuple[str, list[bytes]]:
    prefix = f"p{next(_examples)}-"
    n = draw(st.integers(0, 40))
    return prefix, [draw(wire_lines(prefix, i)) for i in range(n)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(), gz=st.booleans())
def test_arbitrary_json_lines(collector, body, gz):
    url, wh = collector
    prefix, lines = body
    data = b"\n".join(lines) + (b"\n" if lines else b"")
    headers = {"Content-Type": "application/x-ndjson"}
    if gz:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    r = httpx.post(url + "/v1/ingest", content=data, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    valid = [i + 1 for i, raw in enumerate(lines) if not blank(raw) and storable(raw)]
    invalid = [i + 1 for i, raw in enumerate(lines) if not blank(raw) and not storable(raw)]
    assert answer["accepted"] == len(valid) and answer["duplicates"] == 0, (answer, valid)
    assert answer["rejected"] == len(invalid)
    assert [e["line"] for e in answer["errors"]] == invalid[:100]
    stored = sum(wh.query(f"SELECT count(*) FROM {t} WHERE starts_with(session_id, $p)", {"p": prefix})[0][0]
                 for t in TABLES)
    assert stored == len(valid)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), encoding=st.sampled_from([None, "gzip", "zstd", "deflate"]))
def test_arbitrary_bytes(collector, data, encoding):
    url, _ = collector
    headers = {"Content-Encoding": encoding} if encoding else {}
    r = httpx.post(url + "/v1/ingest", content=data, headers=headers, timeout=60)
    assert r.status_code < 500, r.text
    if encoding is None:
        assert r.status_code == 200
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        answer = r.json()
        counted = [raw for raw in lines if not blank(raw)]
        assert answer["accepted"] + answer["duplicates"] + answer["rejected"] == len(counted)
    else:
        assert r.status_code == 400 or r.json()["rejected"] >= 0
