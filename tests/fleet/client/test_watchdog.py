"""The external watchdog: CPU of another process, its stages and events over UDP, end on exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.fault_collector import FaultCollector
from support.services import free_port

from appvitals.fleet.client.watchdog import parse_messages
from appvitals.fleet.wire.protocol import EndLine, EventLine, SampleLine, SessionLine

APP = """
import json, socket, sys, time
port = int(sys.argv[1])
sys.stdin.readline()                      # wait until the watchdog listens
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def send(**m):
    s.sendto(json.dumps(m).encode(), ("127.0.0.1", port))
send(stage="indexing")
end = time.time() + 1.5
while time.time() < end:                  # burn CPU while indexing
    pass
send(event="file_received", attrs={"file_name_length": 57})
s.sendto(b'{"stage": "idle"}\\nnot json\\n', ("127.0.0.1", port))
time.sleep(1.0)
"""


@pytest.fixture
def server():
    s = FaultCollector()
    yield s
    s.close()


def test_watchdog_reports_another_process_until_it_exits(tmp_path, server):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    app = subprocess.Popen([sys.executable, "-c", APP, str(port)], stdin=subprocess.PIPE, env=env)
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    dog = subprocess.Popen(
        [sys.executable, "-c", code, "watchdog", "--pid", str(app.pid), "--url", server.url, "--port", str(port),
         "--interval", "0.2", "--home", str(tmp_path), "--app-version", "7.0.0", "--attr", "channel=beta"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert "listening on udp" in dog.stderr.readline()
        app.stdin.write(b"go\n")
        app.stdin.flush()
        app.wait(timeout=30)
        dog.wait(timeout=30)
    finally:
        for p in (app, dog):
            if p.poll() is None:
                p.kill()
    assert dog.returncode == 0, dog.stderr.read()
    assert "1 refused" in dog.stderr.read()
    lines = [line for _, line in sorted(server.lines.items(), key=lambda kv: kv[0][1])]
    assert isinstance(lines[0], SessionLine) and lines[0].attrs["app_version"] == "7.0.0"
    assert lines[0].attrs["channel"] == "beta"
    assert isinstance(lines[-1], EndLine) and lines[-1].reason == "process_exit"
    samples = [x for x in lines if isinstance(x, SampleLine)]
    busy = [x.cpu for x in samples if x.attrs.get("stage") == "indexing"]
    idle = [x.cpu for x in samples if x.attrs.get("stage") == "idle"]
    assert busy and max(busy) > 50  # measured from outside: the app burnt a core
    assert idle and min(idle) < 20
    ev = [x for x in lines if isinstance(x, EventLine)]
    assert [(e.name, e.attrs) for e in ev] == [("file_received", {"file_name_length": 57})]


def test_watchdog_refuses_a_missing_pid(tmp_path):
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    time.sleep(0.1)
    r = subprocess.run([sys.executable, "-c", code, "watchdog", "--pid", str(proc.pid), "--url", "http://127.0.0.1:9",
                        "--home", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no process" in r.stderr and "Traceback" not in r.stderr


def test_message_parsing():
    msgs, errors = parse_messages(b'{"stage":"a"}\n{"stage":null}\n{"event":"x","attrs":{"n":1}}\n{"end":"bye"}\n[1]\n{}')
    assert [w for w, _ in msgs] == ["stage", "stage", "event", "end"]
    assert msgs[1][1].stage is None and msgs[2][1].attrs == {"n": 1} and msgs[3][1].end == "bye"
    assert len(errors) == 2


CHILD_APP = """
import sys, time
from appvitals.fleet.client.watchdog import WatchdogClient
client = WatchdogClient()                 # port from $VITALS_WATCHDOG_PORT
time.sleep(0.5)
with client.stage("receiving", file_name_length=45):
    client.event("file_received", file_name_length=45)
    time.sleep(0.6)
sys.exit(3)
"""


def test_watchdog_starts_the_command_and_exits_with_its_code(tmp_path, server):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    r = subprocess.run(
        [sys.executable, "-c", code, "watchdog", "--url", server.url, "--port", "0", "--interval", "0.1",
         "--home", str(tmp_path), "--", sys.executable, "-c", CHILD_APP],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode == 3, r.stderr
    lines = [line for _, line in sorted(server.lines.items(), key=lambda kv: kv[0][1])]
    assert isinstance(lines[-1], EndLine) and lines[-1].reason == "exit_code_3"
    stages = [x.attrs for x in lines if isinstance(x, SampleLine) and x.attrs]
    assert {"stage": "receiving", "file_name_length": 45} in stages
    assert any(isinstance(x, EventLine) and x.name == "file_received" for x in lines)


def test_watchdog_needs_a_pid_or_a_command(tmp_path):
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, "watchdog", "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--pid" in r.stderr


@pytest.mark.parametrize("source", ["env", "file", "empty"])
def test_watchdog_reads_its_token_from_the_environment_or_a_file(tmp_path, server, source):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("VITALS_TOKEN", None)
    extra: list[str] = []
    if source == "env":
        env["VITALS_TOKEN"] = "from-env"
    elif source == "file":
        (tmp_path / "token").write_text("from-file\n")
        extra = ["--token-file", str(tmp_path / "token")]
    else:
        extra = ["--token", ""]
    code = "import sys; from appvitals.cli import main; main(sys.argv[1:])"
    r = subprocess.run(
        [sys.executable, "-c", code, "watchdog", "--url", server.url, "--port", "0", "--interval", "0.1",
         "--home", str(tmp_path / "home"), *extra, "--", sys.executable, "-c", "import time; time.sleep(0.3)"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    if source == "empty":
        assert r.returncode == 2 and "empty token" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert server.requests and {q.get("Authorization") for q in server.requests} == {f"Bearer from-{source}"}
