"""The backend conformance suite: every Warehouse backend must pass this module.

It runs on DuckDB (plain, and with the collector's ingest log) and on a real ClickHouse
server (tests/support/clickhouse.py). A new backend adds itself to BACKENDS.
"""

from __future__ import annotations

import json
import time

import pytest
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 (fixture)

from appvitals.fleet.warehouse import RollupState, Warehouse, open_warehouse
from appvitals.fleet.wire.arrow import ArrowBatch
from appvitals.fleet.wire.protocol import CPU_MAX, MAX_ATTRS, MAX_STRING, SEQ_MAX, TS_MAX, decode_line
from appvitals.fleet.wire.schema import SCHEMA

NOW = int(time.time() * 1000)
DAY = 86_400_000
BACKENDS = ["duckdb", "duckdb+log", "clickhouse"]


def L(template: str, values=()):
    """Decode a line whose %d placeholders take `values`."""
    return decode_line(template % values)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(opener, kind): opener() opens the same warehouse again, as a restarted collector would.

    duckdb+log: as the collector opens it, writes acknowledged from the ingest log."""
    if request.param.startswith("duckdb"):
        path = str(tmp_path / "w.duckdb")
        with_log = request.param == "duckdb+log"
        return (lambda: open_warehouse(path, ingest_log=with_log)), "duckdb"
    url = fresh_database(request.getfixturevalue("clickhouse_url"))
    return (lambda: open_warehouse(url)), "clickhouse"


@pytest.fixture
def wh(backend):
    opener, _ = backend
    w = opener()
    yield w
    w.close()


def fleet_lines():
    return [
        L('{"kind":"sample","session_id":"s1","ts":%d,"seq":1,"cpu":83.5,"attrs":{"stage":"login"},"values":{"rss":12}}', (NOW + 1)),
        L('{"kind":"session","session_id":"s1","client_id":"c9","ts":%d,"seq":0,"attrs":{"app_version":"7.0.0","os":"windows"}}', NOW),
        L('{"kind":"event","session_id":"s1","ts":%d,"seq":2,"name":"file_received","attrs":{"file_name_length":57,"ok":true,"r":0.5}}', (NOW + 2)),
        L('{"kind":"end","session_id":"s1","ts":%d,"seq":3,"reason":"quit"}', (NOW + 3)),
        L('{"kind":"sample","session_id":"s2","ts":%d,"cpu":5}', (NOW + 4)),
    ]


def count(w: Warehouse, table: str, where: str = "1 = 1") -> int:
    final = " FINAL" if w.dialect == "clickhouse" else ""  # racing copies collapse (docs/warehouse.md)
    return int(w.query(f"SELECT count(*) FROM {table}{final} WHERE {where}")[0][0])


def test_schema_columns_in_order(wh):
    for table, cols in SCHEMA.items():
        if wh.dialect == "duckdb":
            names = [r[0] for r in wh.query(f"DESCRIBE {table}")]
        else:
            names = [r[0] for r in wh.query(f"DESCRIBE TABLE {table}")]
        assert tuple(names) == cols


def test_rows_as_the_schema_says(wh):
    assert wh.insert(fleet_lines()).accepted == 5
    assert wh.query("SELECT session_id, client_id, ts, seq, attr_keys, attr_values FROM sessions") == [
        ("s1", "c9", NOW, 0, ["app_version", "os"], ["7.0.0", "windows"])
    ]
    rows = wh.query("SELECT session_id, ts, seq, cpu, attrs, vals FROM samples ORDER BY ts")
    assert rows == [
        ("s1", NOW + 1, 1, 83.5, '{"stage":"login"}', '{"rss":12.0}'),
        ("s2", NOW + 4, -1, 5.0, "{}", "{}"),
    ]
    assert wh.query("SELECT name, attr_keys, attr_values FROM events") == [
        ("file_received", ["file_name_length", "ok", "r"], ["57", "true", "0.5"])
    ]
    assert wh.query("SELECT session_id, seq, reason FROM ends") == [("s1", 3, "quit")]


def test_session_attrs_join_at_query_time(wh):
    # the sample arrives before its session line, in an earlier write; it still gets the session's attrs
    lines = fleet_lines()
    wh.insert([lines[0]])
    wh.insert([lines[1]])
    if wh.dialect == "duckdb":
        sql = ("SELECT s.cpu, x.attr_values[list_position(x.attr_keys, 'app_version')] FROM samples s "
               "JOIN sessions x USING (session_id)")
    else:
        sql = ("SELECT s.cpu, x.attr_values[indexOf(x.attr_keys, 'app_version')] FROM samples AS s "
               "ANY INNER JOIN (SELECT session_id, attr_keys, attr_values FROM sessions) AS x USING (session_id)")
    assert wh.query(sql) == [(83.5, "7.0.0")]


def test_duplicates_within_across_batches_and_restarts(backend):
    opener, _ = backend
    w = opener()
    lines = fleet_lines()
    first, second = w.insert_many([lines[:3], lines[2:] + lines[:1]])
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (second.accepted, second.duplicates) == (2, 2)  # event seq 2 again (same write), sample seq 1 again
    w.close()
    w = opener()  # a restarted collector
    try:
        again = w.insert(fleet_lines())
        # every keyed line is a duplicate; the line without seq is stored again (it has no identity)
        assert (again.accepted, again.duplicates) == (1, 4)
        assert w.query("SELECT count(*) FROM samples WHERE seq >= 0")[0][0] == 1
        assert w.query("SELECT count(*) FROM events")[0][0] == 1
    finally:
        w.close()


def test_a_line_repeated_in_one_write_and_already_stored_counts_once(backend):
    # two requests carrying the same stored lines land in one write: each line is one duplicate
    opener, _ = backend
    w = opener()
    lines = [line for line in fleet_lines() if line.seq is not None]  # lines without seq are never duplicates
    assert w.insert(lines).accepted == len(lines)
    first, second = w.insert_many([lines, lines])
    assert (first.accepted, first.duplicates) == (0, len(lines))
    assert (second.accepted, second.duplicates) == (0, len(lines))
    fresh = [decode_line(b'{"kind":"sample","session_id":"s9","ts":%d,"seq":1,"cpu":1}' % (NOW + 9))]
    first, second = w.insert_many([fresh + lines, fresh])
    assert (first.accepted, first.duplicates) == (1, len(lines))
    assert (second.accepted, second.duplicates) == (0, 1)


def test_other_sessions_sharing_ts_and_seq_are_not_duplicates(backend):
    # many sessions sample at the same ms with the same seq: only the same session's line is a repeat
    opener, _ = backend
    w = opener()
    try:
        line = '{"kind":"sample","session_id":"s%d","ts":%d,"seq":7,"cpu":1}'
        assert w.insert([L(line, (i, NOW)) for i in range(50)]).accepted == 50
        got = w.insert([L(line, (i, NOW)) for i in range(40, 60)])
        assert (got.accepted, got.duplicates) == (10, 10)
        assert w.query("SELECT count(*) FROM samples")[0][0] == 60
    finally:
        w.close()


def test_query_parameters(wh):
    wh.insert(fleet_lines())
    if wh.dialect == "duckdb":
        rows = wh.query("SELECT count(*) FROM samples WHERE cpu > $t", {"t": 30})
    else:
        rows = wh.query("SELECT count() FROM samples WHERE cpu > %(t)s", {"t": 30})
    assert rows[0][0] == 1


def test_retention_in_days(wh):
    old = NOW - 10 * 86_400_000
    wh.insert([
        L('{"kind":"sample","session_id":"old","ts":%d,"seq":1,"cpu":1}', old),
        L('{"kind":"event","session_id":"old","ts":%d,"seq":2,"name":"x"}', old),
        L('{"kind":"sample","session_id":"new","ts":%d,"seq":1,"cpu":2}', NOW),
    ])
    wh.apply_retention(3)
    assert wh.query("SELECT session_id FROM samples") == [("new",)]
    assert wh.query("SELECT count(*) FROM events")[0][0] == 0


def test_many_days_in_one_write(wh):
    # current ClickHouse refuses >100 partitions per insert block; the backend splits such writes
    lines = [L('{"kind":"sample","session_id":"d","ts":%d,"seq":%d,"cpu":1}', (NOW - i * 86_400_000, i))
             for i in range(150)]
    assert wh.insert(lines).accepted == 150
    assert wh.query("SELECT count(*) FROM samples")[0][0] == 150


def test_declared_abilities_have_answers(wh):
    # callers never probe a warehouse: each ability answers, with the base class's default when absent
    assert isinstance(wh.takes_arrow, bool)
    assert wh.insert(fleet_lines()).accepted == 5
    assert wh.sync() is True
    assert wh.pending_lines() == 0
    assert wh.roll_up(NOW + DAY) >= 0
    state = wh.rollup_state()
    assert state is None or (isinstance(state, RollupState) and state.bucket_ms > 0 and state.watermark >= 0)
    assert isinstance(wh, Warehouse)


def test_arrow_batches_when_the_backend_takes_them(wh):
    # takes_arrow says which batches insert_many accepts: ArrowBatch too, or lists of lines only
    lines = fleet_lines()
    head = ArrowBatch.from_lines(lines[:3]) if wh.takes_arrow else lines[:3]
    first, second = wh.insert_many([head, lines[2:]])
    assert (first.accepted, first.duplicates, second.accepted, second.duplicates) == (3, 0, 2, 1)
    assert count(wh, "samples") == 2


def test_counts_and_sessions(wh):
    lines = [L('{"kind":"session","session_id":"c%d","client_id":"x","ts":%d,"seq":0}', (k, NOW)) for k in range(3)]
    lines += [L('{"kind":"sample","session_id":"c%d","ts":%d,"seq":%d,"cpu":%d}', (k, NOW + i, i, i))
              for k in range(3) for i in range(1, 101)]
    got = wh.insert(lines)
    assert (got.accepted, got.duplicates) == (303, 0)
    assert count(wh, "samples") == 300 and count(wh, "sessions") == 3
    assert wh.query("SELECT count(DISTINCT session_id) FROM samples") == [(3,)]
    assert float(wh.query("SELECT sum(cpu) FROM samples")[0][0]) == 3 * sum(range(1, 101))


def test_the_same_key_with_another_ts_is_a_duplicate(backend):
    """SPEC: (session_id, seq) is unique across all four tables, whatever the ts."""
    opener, _ = backend
    w = opener()
    sample = '{"kind":"sample","session_id":"u","ts":%d,"seq":%d,"cpu":1}'
    try:
        assert w.insert([L(sample, (NOW, 5)), L(sample, (NOW + 1, 6))]).accepted == 2
        again = w.insert([L(sample, (NOW + 3 * DAY, 5)), L(sample, (NOW - 1, 6)), L(sample, (NOW + 2, 7))])
        assert (again.accepted, again.duplicates) == (1, 2)
        event = L('{"kind":"event","session_id":"u","ts":%d,"seq":5,"name":"x"}', NOW - 40 * DAY)  # another table
        assert w.insert([event]).duplicates == 1
        one_write = w.insert_many([[L(sample, (NOW + 10, 8))], [L(sample, (NOW + 20, 8))]])
        assert [(r.accepted, r.duplicates) for r in one_write] == [(1, 0), (0, 1)]
    finally:
        w.close()
    w = opener()  # a restarted collector
    try:
        assert w.insert([L(sample, (NOW + 7 * DAY, 5)), L(sample, (NOW - 7 * DAY, 8))]).duplicates == 2
        assert count(w, "samples") == 4 and count(w, "events") == 0
        assert sorted(r[0] for r in w.query("SELECT seq FROM samples")) == [5, 6, 7, 8]
    finally:
        w.close()


def test_a_late_line_below_the_highest_seq_is_stored_when_new(wh):
    # a gap filled later (lines out of order): looked up, not found, stored
    sample = '{"kind":"sample","session_id":"g","ts":%d,"seq":%d,"cpu":1}'
    assert wh.insert([L(sample, (NOW + i, i)) for i in (1, 2, 5, 9)]).accepted == 4
    got = wh.insert([L(sample, (NOW + i, i)) for i in (3, 4, 5, 8, 10)])
    assert (got.accepted, got.duplicates) == (4, 1)
    assert count(wh, "samples") == 8


def test_every_value_the_protocol_accepts_is_stored(wh):
    """The decoder refuses what no backend can hold (tests/fleet/wire); its edges all store."""
    big = json.dumps({f"k{i:02d}": "v" * MAX_STRING for i in range(MAX_ATTRS)})
    lines = [
        decode_line(f'{{"kind":"sample","session_id":"e","ts":{TS_MAX - 1},"seq":{SEQ_MAX},"cpu":{CPU_MAX}}}'),
        decode_line('{"kind":"sample","session_id":"e","ts":0,"seq":0,"cpu":0,"values":{"v":1.7976931348623157e308}}'),
        decode_line(r'{"kind":"event","session_id":"e","ts":"1970-01-01T00:00:00Z","seq":1,"name":"n",'
                    r'"attrs":{"min":-9223372036854775808,"max":9223372036854775807,"f":-1e308,"t":"\u00e9\u4e2d\ud83d\ude00"}}'),
        decode_line(f'{{"kind":"session","session_id":"{"i" * 128}","client_id":"{"c" * 128}","ts":{NOW},"seq":2,'
                    f'"attrs":{big}}}'),
        decode_line(f'{{"kind":"end","session_id":"e","ts":{NOW},"seq":3,"reason":"{"r" * 4000}"}}'),
    ]
    got = wh.insert(lines)
    assert (got.accepted, got.duplicates) == (5, 0)
    assert wh.query("SELECT max(seq), max(ts), max(cpu), min(ts) FROM samples") == [(SEQ_MAX, TS_MAX - 1, CPU_MAX, 0)]
    assert count(wh, "sessions") == 1 and count(wh, "events") == 1 and count(wh, "ends") == 1


def test_a_backlog_sent_newest_first_is_stored_and_its_resends_found(wh):
    # a spool drained newest first: each write lies below the stored range of its session
    sample = '{"kind":"sample","session_id":"b%d","ts":%d,"seq":%d,"cpu":1}'
    for start in (40, 30, 20, 10, 0):
        got = wh.insert([L(sample, (k, NOW + i, i)) for k in range(3) for i in range(start, start + 10)])
        assert (got.accepted, got.duplicates) == (30, 0)
    again = wh.insert([L(sample, (k, NOW + 7 * DAY + i, i)) for k in range(3) for i in (0, 25, 49, 50)])
    assert (again.accepted, again.duplicates) == (3, 9)
    assert count(wh, "samples") == 153
