"""The lean install: `pip install appvitals` brings msgspec only, and the in-app core works
with it; every other part names the extra it needs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from appvitals.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# import name -> distribution name on PyPI
DISTRIBUTIONS = {
    "sqlcipher3": "sqlcipher3", "starlette": "starlette", "uvicorn": "uvicorn", "click": "click",
    "rich": "rich", "psutil": "psutil", "duckdb": "duckdb", "pyarrow": "pyarrow",
    "zstandard": "zstandard", "httptools": "httptools", "clickhouse_driver": "clickhouse-driver",
}
OPTIONAL = sorted(set(DISTRIBUTIONS) | {"prometheus_client"})

# Runs in a child interpreter where every optional module fails to import, as in a venv
# that has only `pip install appvitals`.
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Block())
    import importlib.util
    _find = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else _find(name, *a)
""")


def _core_only(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)


def _requirements(extra: str | None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    out = set()
    for req in reqs:
        name = req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        if name == "appvitals":
            for inner in req.split("[", 1)[1].rstrip("]").split(","):
                out |= _requirements(inner.strip())
        else:
            out.add(name)
    return out


def test_the_core_needs_msgspec_only():
    assert _requirements(None) == {"msgspec"}


def test_each_extra_installs_the_modules_it_promises_and_all_gives_everything():
    everything = set()
    for extra, (_, modules) in EXTRAS.items():
        wanted = {DISTRIBUTIONS[m] for m in modules}
        assert wanted <= _requirements(extra), extra
        everything |= wanted
    assert everything <= _requirements("all")


def test_counting_snapshots_prometheus_and_a_plain_store_work_without_any_extra(tmp_path):
    proc = _core_only("""
        import appvitals
        reg = appvitals.Registry()
        sent = reg.counter("sent", "Sent", labels=("server",))
        sent.labels(server="a").inc(3)
        reg.histogram("lat", "Latency", unit="ms").observe(4.0)
        assert reg.snapshot().to_json()
        assert b'sent_total{server="a"} 3' in appvitals.exposition(reg)
        store = appvitals.Store("stats.db")
        reg.attach(store, interval=300)
        reg.detach()
        store.close()
        again = appvitals.Registry()
        again.counter("sent", "Sent", labels=("server",))
        again.attach(appvitals.Store("stats.db"), interval=300)
        assert again.snapshot().value("sent", server="a") == 3
        import sys
        assert not {m for m in sys.modules if m.split(".")[0] in BLOCKED}
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(("code", "extra"), [
    ("appvitals.serve(appvitals.Registry(), port=0)", "serve"),
    ("appvitals.Store('secret.db', key='k')", "crypto"),
    ("import appvitals.fleet.collector.app", "collector"),
    ("from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse", "collector"),
    ("from appvitals.fleet.client.agent import process_cpu_source; process_cpu_source()", "agent"),
])
def test_a_missing_extra_is_named_with_the_command_that_installs_it(tmp_path, code, extra):
    proc = _core_only(f"""
        import appvitals
        from appvitals.extras import MissingExtra
        try:
            {code}
        except MissingExtra as exc:
            print("MISSING", exc.extra, exc)
    """, tmp_path)
    assert f"MISSING {extra} " in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert f"pip install 'appvitals[{extra}]'" in proc.stdout


def test_the_command_line_without_its_extra_says_which_one_in_one_line(tmp_path):
    proc = _core_only("import sys; sys.argv = ['vitals', '--help']; from appvitals.cli import main; main()",
                      tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "pip install 'appvitals[cli]'" in proc.stderr


@pytest.mark.skipif(os.environ.get("VITALS_SLOW") != "1", reason="a real fresh venv: VITALS_SLOW=1 (set by .ci/run)")
def test_a_fresh_venv_with_plain_pip_install_runs_the_core(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert "deprecated" not in pip.stderr.lower(), pip.stderr[-3000:]
    frozen = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines() if line}
    assert names == {"appvitals", "msgspec"}, names
    code = ("import appvitals; r = appvitals.Registry(); r.counter('c', 'C').inc();"
            "r.attach(appvitals.Store('s.db'), interval=300);"
            "assert b'c_total 1' in appvitals.exposition(r); print('ok')")
    run = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
