"""DuckDB-specific warehouse behaviour; what every backend must do is in test_conformance.py."""

from __future__ import annotations

import time

from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse
from appvitals.fleet.wire.protocol import decode_line
from appvitals.fleet.wire.schema import SCHEMA, attr_text

NOW = int(time.time() * 1000)


def L(template: str, values=()):
    """Decode a line whose %d placeholders take `values`."""
    return decode_line(template % values)


def fleet_lines():
    return [
        L('{"kind":"sample","session_id":"s1","ts":%d,"seq":1,"cpu":83.5,"attrs":{"stage":"login"},"values":{"rss":12}}', (NOW + 1)),
        L('{"kind":"session","session_id":"s1","client_id":"c9","ts":%d,"seq":0,"attrs":{"app_version":"7.0.0","os":"windows"}}', NOW),
        L('{"kind":"event","session_id":"s1","ts":%d,"seq":2,"name":"file_received","attrs":{"file_name_length":57,"ok":true,"r":0.5}}', (NOW + 2)),
        L('{"kind":"end","session_id":"s1","ts":%d,"seq":3,"reason":"quit"}', (NOW + 3)),
        L('{"kind":"sample","session_id":"s2","ts":%d,"cpu":5}', (NOW + 4)),
    ]


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
