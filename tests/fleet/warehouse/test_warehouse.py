"""The Warehouse contract (base.py), run against both backends: DuckDB and a real ClickHouse 18.16 server."""

from __future__ import annotations

import time

import pytest
from support.clickhouse import clickhouse_url, fresh_database  # noqa: F401 (fixture)

from appvitals.fleet.warehouse import open_warehouse
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.protocol import decode_line
from appvitals.fleet.wire.schema import SCHEMA, attr_text

NOW = int(time.time() * 1000)


def L(template: str, values=()):
    """Decode a line whose %d placeholders take `values`."""
    return decode_line(template % values)


@pytest.fixture(params=["duckdb", "duckdb+log", "clickhouse"])
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


def test_attr_text():
    assert [attr_text(v) for v in ("a", 57, True, False, 1.5)] == ["a", "57", "true", "false", "1.5"]


def test_duckdb_memory_file(tmp_path):
    w = DuckDBWarehouse(":memory:")
    assert w.insert(fleet_lines()).accepted == 5
    w.close()


def test_duckdb_finds_repeats_in_every_table_also_after_a_restart(tmp_path):
    # the DuckDB writer keeps each table's ts range in memory and looks a batch's keys up only
    # in tables whose range meets the batch's: a repeat must still be found, also after a restart
    path = tmp_path / "r.duckdb"
    old = NOW - 40 * 86_400_000
    sample = '{"kind":"sample","session_id":"s1","ts":%d,"seq":1,"cpu":1}'
    event = '{"kind":"event","session_id":"s1","ts":%d,"seq":2,"name":"x","attrs":{"n":3}}'
    w = DuckDBWarehouse(path)
    assert w.insert([L(sample, NOW)]).accepted == 1
    assert w.insert([L(event, old)]).accepted == 1  # widens nothing in samples
    fresh = '{"kind":"sample","session_id":"s2","ts":%d,"seq":1,"cpu":1}'
    again = w.insert([L(sample, NOW), L(event, old), L(fresh, NOW + 10)])
    assert (again.accepted, again.duplicates) == (1, 2)
    w.close()
    w = DuckDBWarehouse(path)  # ranges come back from the file
    try:
        again = w.insert([L(event, old), L(fresh, NOW + 10)])
        assert (again.accepted, again.duplicates) == (0, 2)
        assert w.query("SELECT count(*) FROM samples")[0][0] == 2
        assert w.query("SELECT attr_values FROM events") == [(["3"],)]
    finally:
        w.close()


def test_duckdb_file_from_before_json_sample_attrs_is_migrated(tmp_path):
    # a file written by appvitals 0.1 kept sample attrs as parallel arrays: opening it moves
    # them to the JSON column, keeps every row, and the file then takes new lines
    import duckdb

    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE TABLE samples (session_id VARCHAR, ts BIGINT, seq BIGINT, cpu DOUBLE, attr_keys VARCHAR[], "
                "attr_values VARCHAR[], value_keys VARCHAR[], value_values DOUBLE[])")
    con.execute("INSERT INTO samples VALUES ('s1', 1, 1, 50.0, ['stage', 'n'], ['login', '57'], ['rss'], [12.0]), "
                "('s1', 2, 2, 5.0, [], [], [], [])")
    con.close()
    w = DuckDBWarehouse(path)
    rows = w.query("SELECT session_id, seq, cpu, json_extract_string(attrs, '$.stage'), "
                   "json_extract_string(attrs, '$.n'), json_extract_string(vals, '$.rss'), attrs FROM samples ORDER BY seq")
    assert rows == [("s1", 1, 50.0, "login", "57", "12.0", rows[0][-1]), ("s1", 2, 5.0, None, None, None, "{}")]
    assert w.insert([decode_line(b'{"kind":"sample","session_id":"s1","ts":3,"seq":3,"cpu":1,"attrs":{"stage":"idle"}}')]).accepted == 1
    assert w.insert([decode_line(b'{"kind":"sample","session_id":"s1","ts":1,"seq":1,"cpu":50}')]).duplicates == 1
    w.close()
    assert [r[0] for r in DuckDBWarehouse(path).query("DESCRIBE samples")] == list(SCHEMA["samples"])
