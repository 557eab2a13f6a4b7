"""Run every benchmark in bench/ one after the other and print one JSON summary.

`make bench`. Each script also writes its own bench/results/<name>.json. Quick mode
(`--quick`) shrinks the workloads so the whole run takes a minute or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = [
    ("core", ["bench_core.py"], {}),
    ("store", ["bench_store.py"], {}),
    ("serve", ["bench_serve.py"], {}),
    ("agent", ["bench_agent.py"], {}),
    ("ingest", ["bench_ingest.py"], {}),
    ("report", ["bench_report.py"], {}),
    ("report_wide", ["bench_report_wide.py"], {}),
    ("distinct", ["bench_distinct.py"], {}),
]
QUICK = {
    "core": {"BENCH_N": "100000"},
    "store": {"BENCH_SERIES": "20000"},
    "ingest": ["--samples", "200000"],
    "report": ["--sessions", "10000"],
    "report_wide": ["--sessions", "20000", "--repeat", "1"],
    "distinct": {"BENCH_N": "100000"},
}


def main() -> int:
    quick = "--quick" in sys.argv
    summary: dict[str, object] = {}
    failed = 0
    for name, args, env in BENCHES:
        script = os.path.join(HERE, args[0])
        if not os.path.exists(script):
            continue
        extra_env = dict(os.environ, **env)
        argv = [sys.executable, script, *args[1:]]
        if quick and name in QUICK:
            q = QUICK[name]
            if isinstance(q, dict):
                extra_env.update(q)
            else:
                argv += q
        t = time.time()
        print(f"== {name} ({' '.join(argv[1:])})", file=sys.stderr, flush=True)
        proc = subprocess.run(argv, env=extra_env, capture_output=True, text=True)
        if proc.returncode != 0:
            failed += 1
            summary[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
            continue
        result_file = os.path.join(HERE, "results", f"{name}.json")
        try:
            with open(result_file) as fh:
                summary[name] = json.load(fh)
        except (OSError, ValueError):
            summary[name] = {"stdout": proc.stdout[-2000:]}
        summary[name + "_seconds"] = round(time.time() - t, 1)
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
