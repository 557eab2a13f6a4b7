"""The wire protocol's limits: every line that decodes holds values every warehouse can
store; any other line is refused with a message (and so by number, in a request)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appvitals.fleet.collector.decode import decode_chunk, decode_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.protocol import CPU_MAX, SEQ_MAX, TS_MAX, LineError, decode_block, decode_line

NOW = 1_764_000_000_000
DEEP = "[" * 5000 + "]" * 5000


def sample(**fields) -> bytes:
    line = {"kind": "sample", "session_id": "s", "ts": NOW, "seq": 1, "cpu": 1.0, **fields}
    return json.dumps(line).encode()


REFUSED = {
    "seq beyond 64 bits": sample(seq=2**70),
    "seq just beyond int64": sample(seq=SEQ_MAX + 1),
    "ts beyond 64 bits": sample(ts=2**64),
    "ts negative": sample(ts=-1),
    "ts at the ceiling": sample(ts=TS_MAX),
    "RFC 3339 year 1 at +14:00": sample(ts="0001-01-01T00:00:00+14:00"),
    "RFC 3339 before the epoch": sample(ts="1969-12-31T23:59:59Z"),
    "RFC 3339 year 9999": sample(ts="9999-12-31T23:59:59-14:00"),
    "cpu above the ceiling": sample(cpu=CPU_MAX * 2),
    "cpu beyond the double range": sample(cpu=1) .replace(b'"cpu": 1', b'"cpu": 1e400'),
    "attr integer beyond 64 bits": sample(attrs={"n": 2**70}),
    "attr number beyond the double range": sample(attrs={"n": 1}).replace(b'"n": 1', b'"n": 1e400'),
    "values number beyond the double range": sample(values={"v": 1}).replace(b'"v": 1', b'"v": -1e400'),
    "deep nesting in an unknown field": sample()[:-1] + b', "x": ' + DEEP.encode() + b"}",
    "deep nesting in attrs": sample()[:-1] + b', "attrs": {"k": ' + DEEP.encode() + b"}}",
    "deep nesting in values": sample()[:-1] + b', "values": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_values_storage_cannot_hold_are_refused_by_the_decoder(name):
    raw = REFUSED[name]
    with pytest.raises(LineError) as caught:
        decode_line(raw)
    assert str(caught.value)  # a message for the client
    assert decode_block(raw, 1) is None or _arrow_refuses(decode_block(raw, 1))


def _arrow_refuses(block) -> bool:
    """The block decoder leaves sample attrs/values texts to ArrowBatch, which refuses them."""
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        ArrowBatch.from_lines(block)
    return True


def test_a_refused_line_costs_only_itself_on_both_decode_paths():
    good = [sample(seq=i, session_id=f"g{i}") for i in range(3)]
    bad = list(REFUSED.values())
    raws = [good[0], *bad, good[1], good[2]]
    # in-process path: numbered errors, the good lines kept
    into: list = []
    errors: list = []
    rejected = decode_lines(raws, 1, into, errors)
    assert rejected == len(bad) and [line.session_id for line in into] == ["g0", "g1", "g2"]
    assert [e["line"] for e in errors] == list(range(2, 2 + len(bad)))
    # decode-worker path: the same answer, as Arrow the warehouse stores
    packed, rejected, errors = decode_chunk(b"\n".join(raws), 1)
    assert rejected == len(bad) and [e["line"] for e in errors] == list(range(2, 2 + len(bad)))
    wh = DuckDBWarehouse(":memory:")
    try:
        assert wh.insert_many([ArrowBatch.from_ipc(packed), into])[0].accepted == 3
    finally:
        wh.close()


def test_the_edges_of_every_range_are_stored():
    edges = [sample(seq=SEQ_MAX, ts=TS_MAX - 1, cpu=CPU_MAX), sample(session_id="t", seq=0, ts=0, cpu=0.0),
             sample(session_id="u", ts="1970-01-01T00:00:00Z"), sample(session_id="v", attrs={"n": -(2**63), "m": 2**63 - 1})]
    lines = [decode_line(raw) for raw in edges]
    wh = DuckDBWarehouse(":memory:")
    try:
        assert wh.insert(lines).accepted == 4
        assert wh.query("SELECT max(seq), max(ts), max(cpu), min(ts) FROM samples") == [(SEQ_MAX, TS_MAX - 1, CPU_MAX, 0)]
    finally:
        wh.close()


# -- any JSON: decoded into storable values, or refused --

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, SEQ_MAX, SEQ_MAX + 1, TS_MAX - 1, TS_MAX, 2**64, CPU_MAX, CPU_MAX + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                     "1970-01-01T00:00:00.001+00:00", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00"]),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                     max_leaves=12)
_fields = st.fixed_dictionaries(
    {"kind": st.sampled_from(["session", "sample", "event", "end", "other"])},
    optional={"session_id": st.one_of(st.text(min_size=1, max_size=5), _scalars), "client_id": st.text(max_size=5),
              "ts": _scalars, "seq": _scalars, "cpu": _scalars, "name": st.one_of(st.text(max_size=5), _scalars),
              "reason": st.one_of(st.text(max_size=5), _scalars),
              "attrs": st.one_of(st.dictionaries(st.text(max_size=5), _scalars, max_size=4), _json),
              "values": st.one_of(st.dictionaries(st.text(max_size=5), _scalars, max_size=3), _json),
              "extra": _json},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(objects=st.lists(_fields, min_size=1, max_size=6), nest=st.integers(0, 3))
def test_any_json_is_stored_or_refused_by_line_number(objects, nest):
    raws = [json.dumps(o).encode() for o in objects]
    if nest:  # one line nested far too deep for the decoder, in an unknown field
        raws[nest % len(raws)] = raws[nest % len(raws)][:-1] + b', "deep": ' + DEEP.encode() + b"}"
    into: list = []
    errors: list = []
    rejected = decode_lines(raws, 1, into, errors)
    assert rejected + len(into) == len(raws)
    assert all(1 <= e["line"] <= len(raws) and e["error"] for e in errors)
    packed, worker_rejected, worker_errors = decode_chunk(b"\n".join(raws), 1)
    assert (worker_rejected, [e["line"] for e in worker_errors]) == (rejected, [e["line"] for e in errors])
    wh = DuckDBWarehouse(":memory:")
    try:  # whatever decoded is stored, on both paths, without an error
        results = wh.insert_many([into, ArrowBatch.from_ipc(packed)])
        assert sum(r.accepted + r.duplicates for r in results) == 2 * len(into)
    finally:
        wh.close()
