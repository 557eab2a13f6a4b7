"""The scenario model and the pure fleet generator (no I/O)."""

from __future__ import annotations

import statistics

import pytest

from appvitals.fleet.sim.scenario import (
    ScenarioError,
    default_scenario,
    load_scenario,
    matches,
    parse_scenario,
    shipped_scenarios,
)
from appvitals.fleet.sim.simulate import count_kinds, generate_lines
from appvitals.fleet.wire.protocol import (
    EndLine,
    EventLine,
    SampleLine,
    SessionLine,
    decode_line,
    encode_line,
)

START = 1_764_000_000_000


def _fleet(**kw):
    args = dict(scenario=None, clients=30, minutes=60, seed=7, start_ms=START)
    args.update(kw)
    return list(generate_lines(**args))


def test_same_seed_same_lines_other_seed_other_lines():
    a = [encode_line(x) for x in _fleet()]
    b = [encode_line(x) for x in _fleet()]
    c = [encode_line(x) for x in _fleet(seed=8)]
    assert a == b
    assert a != c


def test_lines_follow_the_protocol_and_seq_counts_up_per_session():
    lines = _fleet()
    seqs: dict[str, list[int]] = {}
    for line in lines:
        again = decode_line(encode_line(line))
        assert again == line
        seqs.setdefault(line.session_id, []).append(line.seq)
    for seq in seqs.values():
        assert seq == list(range(len(seq)))
    ts = [line.ts for line in lines]
    assert ts == sorted(ts)
    assert START <= ts[0] and ts[-1] <= START + 60 * 60_000


def test_every_session_opens_and_ends_with_a_stage_on_each_sample():
    lines = _fleet(clients=10)
    kinds = count_kinds(lines)
    assert kinds["session"] == kinds["end"] >= 10
    first: dict[str, object] = {}
    last: dict[str, object] = {}
    for line in lines:
        first.setdefault(line.session_id, line)
        last[line.session_id] = line
        if isinstance(line, SampleLine):
            assert line.attrs["stage"]
    assert all(isinstance(x, SessionLine) for x in first.values())
    assert all(isinstance(x, EndLine) for x in last.values())


def _cpu_where(lines, pred):
    attrs = {}
    out = []
    for line in lines:
        if isinstance(line, SessionLine):
            attrs[line.session_id] = line.attrs
        elif isinstance(line, SampleLine) and pred({**attrs[line.session_id], **line.attrs}):
            out.append(line.cpu)
    return out


def test_planted_problems_show_in_the_samples():
    lines = _fleet(clients=60, minutes=90)
    bad_login = _cpu_where(lines, lambda a: a["app_version"] == "7.0.0" and a["stage"] == "login")
    good_login = _cpu_where(lines, lambda a: a["app_version"] != "7.0.0" and a["stage"] == "login")
    assert statistics.mean(bad_login) > 50 > 20 > statistics.mean(good_login)
    long_names = _cpu_where(lines, lambda a: a["stage"] == "receiving" and a["file_name_length"] >= 40
                            and not (a["network"] == "vpn" and a["sync_mode"] == "continuous"))
    short_names = _cpu_where(lines, lambda a: a["stage"] == "receiving" and a["file_name_length"] < 40
                             and not (a["network"] == "vpn" and a["sync_mode"] == "continuous"))
    assert statistics.mean(long_names) > 50 > 20 > statistics.mean(short_names)
    linux_idx = _cpu_where(lines, lambda a: a["os"] == "linux" and a["stage"] == "indexing")
    other_idx = _cpu_where(lines, lambda a: a["os"] != "linux" and a["stage"] == "indexing"
                           and not (a["network"] == "vpn" and a["sync_mode"] == "continuous"))
    assert statistics.mean(linux_idx) > 45 > 20 > statistics.mean(other_idx)
    # the pair: each attr alone is harmless, both together are not
    def idle(pred):
        return _cpu_where(lines, lambda a: a["stage"] == "idle" and pred(a))
    vpn_only = idle(lambda a: a["network"] == "vpn" and a["sync_mode"] != "continuous")
    cont_only = idle(lambda a: a["network"] != "vpn" and a["sync_mode"] == "continuous")
    both = idle(lambda a: a["network"] == "vpn" and a["sync_mode"] == "continuous")
    assert statistics.mean(vpn_only) < 10 and statistics.mean(cont_only) < 10
    assert statistics.mean(both) > 25


def test_file_received_events_carry_the_name_length():
    lines = _fleet(clients=10)
    events = [x for x in lines if isinstance(x, EventLine) and x.name == "file_received"]
    assert events
    assert all(isinstance(e.attrs["file_name_length"], int) for e in events)


SMALL = """
name = "tiny"
sample_every = 1.0
session_minutes = [1.0, 1.0]
pause_minutes = [0.0, 0.0]
[[versions]]
version = "1.0"
[[os]]
name = "linux"
[[stages]]
name = "busy"
cpu = { mean = 50.0 }
duration = [10.0, 10.0]
[[problems]]
name = "always"
when = { stage = "busy", app_version = ["1.0", "2.0"] }
cpu_multiply = 2.0
"""


def test_a_user_written_scenario_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SMALL)
    sc = load_scenario(path)
    lines = list(generate_lines(sc, clients=2, minutes=3, seed=1, start_ms=START))
    samples = [x for x in lines if isinstance(x, SampleLine)]
    assert samples and all(x.cpu == 100.0 for x in samples)
    assert count_kinds(lines)["session"] >= 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t + "\n[[[", "invalid TOML"),
        (lambda t: t.replace('version = "1.0"', 'version = 1.0'), "versions"),
        (lambda t: t.replace("sample_every = 1.0", "sample_every = 0"), "sample_every"),
        (lambda t: t.replace('stage = "busy", ', 'stage = ">=x", '), "comparison"),
        (lambda t: t.replace("duration = [10.0, 10.0]", "duration = [10.0, 1.0]"), "duration"),
        (lambda t: t + "\nbogus = 1\n", "bogus"),
    ],
)
def test_bad_scenarios_fail_with_a_clear_message(edit, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(edit(SMALL), "x.toml")


def test_missing_scenario_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "nope.toml")


def test_matching_rules():
    assert matches({"n": ">=40"}, {"n": 40}) and not matches({"n": ">=40"}, {"n": 39})
    assert matches({"n": "<10"}, {"n": 3.5}) and not matches({"n": "<10"}, {"n": "3"})
    assert matches({"v": ["a", "b"]}, {"v": "b"}) and not matches({"v": "a"}, {})
    assert matches({"flag": True}, {"flag": True}) and not matches({"flag": True}, {"flag": False})


def test_default_scenario_loads():
    sc = default_scenario()
    assert {v.version for v in sc.versions} >= {"7.0.0"}
    assert len(sc.problems) == 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(generate_lines(None, clients=0, minutes=1))
    with pytest.raises(ValueError):
        list(generate_lines(None, clients=1, minutes=0))


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_shipped_scenario_loads_by_name_and_generates(name):
    sc = load_scenario(name)
    lines = list(generate_lines(sc, clients=5, minutes=30, seed=1, start_ms=START))
    kinds = count_kinds(lines)
    assert kinds["session"] >= 5 and kinds["sample"] > 50


def test_rollout_scenario_plants_a_three_way_interaction():
    lines = list(generate_lines("rollout", clients=80, minutes=240, seed=2, start_ms=START))
    def cpu(pred):
        return _cpu_where(lines, lambda a: a["stage"] == "syncing" and a["os_version"] != "10" and pred(a))
    bad = cpu(lambda a: a["app_version"] == "6.6.0" and a["os"] == "macos" and a["codec"] == "heic")
    other = cpu(lambda a: not (a["app_version"] == "6.6.0" and a["os"] == "macos" and a["codec"] == "heic"))
    assert statistics.mean(bad) > 40 > 20 > statistics.mean(other)


def test_weighted_ranges_for_event_attrs():
    text = SMALL.replace('duration = [10.0, 10.0]', 'duration = [10.0, 10.0]\nevent = "got"\n'
                         'event_attrs = { n = { ranges = [{ min = 1, max = 3, weight = 9 }, { min = 50, max = 60 }] } }')
    lines = list(generate_lines(parse_scenario(text), clients=20, minutes=30, seed=1, start_ms=START))
    values = [x.attrs["n"] for x in lines if isinstance(x, EventLine)]
    assert set(values) <= set(range(1, 4)) | set(range(50, 61))
    assert 0.03 < sum(v >= 50 for v in values) / len(values) < 0.25
    with pytest.raises(ScenarioError, match="ranges"):
        parse_scenario(text.replace("min = 50, max = 60", "min = 60, max = 50"))


def test_default_long_file_names_are_a_minority():
    lines = _fleet(clients=40)
    lengths = [x.attrs["file_name_length"] for x in lines if isinstance(x, EventLine) and x.name == "file_received"]
    share = sum(n >= 40 for n in lengths) / len(lengths)
    assert 0.1 < share < 0.3
